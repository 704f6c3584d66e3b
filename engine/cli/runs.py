"""``worker``, ``train`` and ``runs list|show|stop|resume|export|queue|move|cancel|delete|clone``;
``--wait`` trains here with progress on stderr (``finish``)."""

from __future__ import annotations

import sys

from engine.cli.common import emit, fail, table
from engine.progress import LOSS, SAMPLES_PER_S, ProgressReport
from engine.text import printable


def add_worker_parser(commands) -> None:
    worker = commands.add_parser(
        "worker", help="train queued runs (everybody's) in this process until the queue is empty; "
                       "start several for several runs at once (LIM_SLOTS bounds them)")
    worker.set_defaults(handler=cmd_worker, no_user=True)


def add_parser(commands) -> None:
    train = commands.add_parser("train", help="queue a fine-tuning run")
    train.add_argument("--dataset", required=True)
    train.add_argument("--model", required=True)
    train.add_argument("--method", required=True)
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="a method or training setting, e.g. --set r=16 --set max_steps=50")
    train.add_argument("--wait", action="store_true", help="train in this process until the run ends")
    train.add_argument("--gpus", type=int, metavar="N", help="train on N GPUs of this machine "
                       "(torchrun, data parallel; the setting gpus): batch per GPU stays "
                       "per_device_train_batch_size (docs/multi-gpu.md)")
    train.add_argument("--nnodes", type=int, metavar="M", help="train on M machines with N GPUs "
                       "each (needs --rdzv-endpoint and a shared data home; docs/multi-gpu.md)")
    train.add_argument("--rdzv-endpoint", metavar="HOST:PORT",
                       help="where the machines of a multi-machine run meet: this machine's address")
    train.add_argument("--json", action="store_true")
    train.set_defaults(handler=cmd_train)

    runs = commands.add_parser("runs", help="list, show, stop, resume, export or delete runs").add_subparsers()
    listing = runs.add_parser("list", help="list runs, newest first")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=cmd_runs_list)
    show = runs.add_parser("show", help="one run's status, settings and results")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=cmd_runs_show)
    stop = runs.add_parser("stop", help="stop a running run (or cancel a queued one)")
    stop.add_argument("id", type=int)
    stop.set_defaults(handler=cmd_runs_stop)
    resume = runs.add_parser("resume", help="continue a stopped or interrupted run")
    resume.add_argument("id", type=int)
    resume.add_argument("--wait", action="store_true")
    resume.add_argument("--json", action="store_true")
    resume.set_defaults(handler=cmd_runs_resume)
    export = runs.add_parser("export", help="export a finished run: adapter zip, merged model, ONNX "
                             "or CTranslate2 (faster-whisper)")
    export.add_argument("id", type=int)
    export.add_argument("--format", required=True, choices=["adapter", "merged", "onnx", "ct2"])
    export.add_argument("--out", required=True, help="a .zip file or folder (adapter), "
                        "a new or empty folder (merged, onnx, ct2)")
    export.add_argument("--quantization", help="ct2 only: the CTranslate2 weight type, float16 "
                        "(default), int8, float32, int8_float16 or bfloat16")
    export.add_argument("--json", action="store_true")
    export.set_defaults(handler=cmd_runs_export)
    queue = runs.add_parser("queue", help="queued runs in the order they will train")
    queue.add_argument("--json", action="store_true")
    queue.set_defaults(handler=cmd_runs_queue)
    move = runs.add_parser("move", help="move a queued run to another queue position")
    move.add_argument("id", type=int)
    move.add_argument("--to", type=int, required=True, metavar="POSITION", help="1 = next to train")
    move.set_defaults(handler=cmd_runs_move)
    cancel = runs.add_parser("cancel", help="take a queued run out of the queue")
    cancel.add_argument("id", type=int)
    cancel.set_defaults(handler=cmd_runs_cancel)
    delete = runs.add_parser("delete", help="delete a finished run with its checkpoints and adapter")
    delete.add_argument("id", type=int)
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    delete.set_defaults(handler=cmd_runs_delete)
    clone = runs.add_parser("clone", help="queue a copy of a run, with changed settings")
    clone.add_argument("id", type=int)
    clone.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    clone.add_argument("--wait", action="store_true")
    clone.add_argument("--json", action="store_true")
    clone.set_defaults(handler=cmd_runs_clone)


def cmd_train(wb, args) -> int:
    from engine.settings import parse_assignments
    from engine.training.settings import stored_training

    values = parse_assignments(args.set)
    launch = {"gpus": args.gpus, "nnodes": args.nnodes, "rdzv_endpoint": args.rdzv_endpoint}
    values |= {key: value for key, value in launch.items() if value is not None}
    method_values, training_values = wb.split_settings(args.method, values)
    run_id = wb.submit_run(args.dataset, args.model, args.method, method_values, training_values)
    print(f"run {run_id} queued", file=sys.stderr)
    nnodes = stored_training(wb.get_run(run_id)).nnodes
    if nnodes > 1:  # this machine is machine 0, where the database is
        print(f"on each other machine, with the same data home, run (K = 1 .. {nnodes - 1}): "
              f"{wb.other_node_command(run_id)}", file=sys.stderr)
    for event in wb.run_events(run_id):
        if event["level"] == "warning":
            print(f"warning: {printable(event['message'])}", file=sys.stderr)
    return finish(wb, args, run_id)


def cmd_worker(wb, args) -> None:
    from engine.training.worker import work_until_empty

    def ended(run: dict) -> None:
        print(f"run {run['id']} ({run['method']}): {run['status']}", flush=True)

    trained = work_until_empty(wb.storage, on_run_end=ended)
    print(f"queue empty: this worker trained {trained} run(s)")


def cmd_runs_list(wb, args) -> None:
    rows = wb.list_runs()
    emit(args, rows, table(rows, ["id", "status", "method", "dataset_name", "model_name", "step",
                                  "total_steps", "created_at"]))


def cmd_runs_show(wb, args) -> None:
    summary = wb.run_summary(args.id)
    emit(args, summary, "\n".join(f"{key}: {value}" for key, value in summary.items()))


def cmd_runs_stop(wb, args) -> None:
    outcome = wb.stop_run(args.id)
    print(f"run {args.id}: {outcome}")


def cmd_runs_resume(wb, args) -> int:
    wb.resume_run(args.id)
    print(f"run {args.id} queued to resume", file=sys.stderr)
    return finish(wb, args, args.id)


def cmd_runs_export(wb, args) -> None:
    path = wb.export_run(args.id, args.format, args.out,
                         on_progress=lambda message: print(f"run {args.id}: {message}", file=sys.stderr),
                         quantization=args.quantization)
    emit(args, {"id": args.id, "format": args.format, "path": str(path)},
         f"exported run {args.id} ({args.format}) to {path}")


def cmd_runs_queue(wb, args) -> None:
    rows = wb.queue()
    emit(args, rows, table(rows, ["position", "id", "method", "model", "dataset",
                                  "estimated_duration_s", "estimated_start_in_s"]))


def cmd_runs_move(wb, args) -> None:
    order = wb.move_run(args.id, args.to)
    print(f"run {args.id} is now number {order.index(args.id) + 1} in the queue")


def cmd_runs_cancel(wb, args) -> None:
    wb.cancel_run(args.id)
    print(f"run {args.id}: cancelled")


def cmd_runs_delete(wb, args) -> int:
    run = wb.get_run(args.id)
    if not args.yes:
        if not sys.stdin.isatty():
            return fail(f"deleting run {run['id']} removes its checkpoints and adapter; "
                        "pass --yes to confirm without a terminal", args.debug)
        answer = input(f"Delete run {run['id']} ({run['method']} on {printable(run['dataset_name'] or '')}, "
                       f"{run['status']}) with its checkpoints and adapter? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print(f"run {run['id']} kept", file=sys.stderr)
            return 1
    wb.delete_run(run["id"])
    print(f"run {run['id']}: deleted")
    return 0


def cmd_runs_clone(wb, args) -> int:
    from engine.settings import parse_assignments

    run_id = wb.clone_run(args.id, parse_assignments(args.set))
    print(f"run {run_id} queued (a clone of run {args.id})", file=sys.stderr)
    return finish(wb, args, run_id)


def finish(wb, args, run_id: int) -> int:
    """With --wait: train here until the run ends, exit 1 unless it completed."""
    if not args.wait:
        emit(args, wb.run_summary(run_id), f"run {run_id} queued; the app's worker will train it "
             "(or use --wait to train here)")
        return 0
    # Progress on stderr: a bar on a terminal, plain lines in a log; none with --json.
    report = None if args.json else ProgressReport(
        run_id, lambda: wb.latest_metrics(run_id, [LOSS, SAMPLES_PER_S]), clock=lambda: wb.run_clock(run_id))
    try:
        summary = wb.wait_for_run(run_id, on_progress=report.update if report else None)
    finally:  # Ctrl-C too: end the bar's line before the error line
        if report:
            report.close(wb.get_run(run_id))
    emit(args, summary, "\n".join(f"{key}: {value}" for key, value in summary.items()))
    if summary["status"] != "completed":
        tracebacks = [event["message"] for event in wb.run_events(run_id) if event["level"] == "debug"]
        return fail(f"run {run_id} ended {summary['status']}"
                    + (f": {summary['error']}" if summary["error"] else ""), args.debug,
                    details=tracebacks[-1] if tracebacks else "")
    return 0
