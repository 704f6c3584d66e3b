"""Headless command line: ``python -m engine ...`` (contract: docs/internals.md).

Every command exits non-zero with a one-line reason on stderr when it cannot do what was
asked. ``--json`` prints machine-readable output on stdout; progress goes to stderr.
``--debug`` (anywhere on the line) adds the traceback behind an error. ``--user NAME`` (or
``LIM_USER``) acts as that account and sees only what it may; with ``LIM_AUTH=on`` every command
but ``demo``, ``methods`` and ``users add`` needs one.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

from engine.errors import SettingsError, WorkbenchError
from engine.progress import LOSS, SAMPLES_PER_S, ProgressReport, StudyProgressReport
from engine.text import printable


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return 2
    # kill (SIGTERM) unwinds like Ctrl-C, so an import's staging and half-written folders go
    if threading.current_thread() is threading.main_thread():  # signal handlers live there only
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        if args.profile is not None:  # before the workbench: every part (the worker too) reads it
            use_profile(args.profile)
        if not getattr(args, "needs_workbench", True):
            return args.handler(None, args) or 0
        return args.handler(workbench_for(args), args) or 0
    except WorkbenchError as error:
        return fail(str(error), args.debug)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug rather than a mistake of the user's: still one line
        first_line = (str(error).splitlines() or [""])[0]
        return fail(f"unexpected {type(error).__name__}: {first_line}"
                    + ("" if args.debug else " (run again with --debug for the traceback)"), args.debug)


def workbench_for(args: argparse.Namespace):
    """The workbench as the user named by ``--user`` / ``LIM_USER`` sees it; the local owner
    without one when auth is off. The command line is for people with access to the data home
    (they could read the database file itself), so naming an account is enough: no password."""
    from engine import Workbench
    from engine.errors import AuthError
    from engine.settings import load_config

    workbench = Workbench()
    name = getattr(args, "user", None) or os.environ.get("LIM_USER", "").strip()
    if name:
        return workbench.for_user(name)
    if load_config().auth == "on" and not getattr(args, "no_user", False):
        raise AuthError("with LIM_AUTH=on the command line acts as an account: pass --user NAME "
                        "or set LIM_USER (python -m engine users add NAME makes one)")
    return workbench


def fail(message: str, debug: bool, details: str | None = None) -> int:
    """One line on stderr (after the traceback, with ``--debug``); exit status 1."""
    if debug:
        print(traceback.format_exc() if details is None else details, file=sys.stderr, end="")
    # names, paths and transcripts come from outside: never send their escapes to a terminal
    print(f"error: {printable(message)}", file=sys.stderr)
    return 1


def add_global_flag(parser: argparse.ArgumentParser, flag: str, default: Any, top: bool = True,
                    **kwargs: Any) -> None:
    """``flag`` before or after the command: sub-commands leave the top's value alone unless
    given (``SUPPRESS``)."""
    parser.add_argument(flag, default=default if top else argparse.SUPPRESS, **kwargs)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in dict.fromkeys(action.choices.values()):
                add_global_flag(command, flag, default, top=False, **kwargs)


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    add_global_flag(parser, "--debug", False, action="store_true",
                    help="show the traceback behind an error")


def add_user_flag(parser: argparse.ArgumentParser) -> None:
    add_global_flag(parser, "--user", None, metavar="NAME",
                    help="act as this account (default: LIM_USER; needed with LIM_AUTH=on)")


def add_profile_flag(parser: argparse.ArgumentParser) -> None:
    add_global_flag(parser, "--profile", None, metavar="NAME",
                    help="device profile for this command (sets LIM_PROFILE): its defaults for "
                         "new runs and, on a CUDA GPU, its memory cap; auto: the Jetson board "
                         "this runs on; see `profiles list`")


def use_profile(name: str) -> None:
    """Make ``name`` the active device profile of this process (checked first)."""
    import os

    from engine.training.profiles import PROFILE_ENV, get_profile

    if name not in ("auto", "none"):
        get_profile(name)
    os.environ[PROFILE_ENV] = name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="LessIsMore Workbench engine")
    commands = parser.add_subparsers(title="commands")

    demo = commands.add_parser("demo", help="add the embedded demo datasets and model presets")
    demo.add_argument("--json", action="store_true")
    demo.set_defaults(handler=cmd_demo, no_user=True)

    worker = commands.add_parser(
        "worker", help="train queued runs (everybody's) in this process until the queue is empty; "
                       "start several for several runs at once (LIM_SLOTS bounds them)")
    worker.set_defaults(handler=cmd_worker, no_user=True)

    datasets = commands.add_parser("datasets", help="list or import datasets").add_subparsers()
    listing = datasets.add_parser("list", help="list datasets")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=cmd_datasets_list)
    imp = datasets.add_parser("import", help="import a dataset folder, .zip, or .csv/.jsonl/.parquet table")
    imp.add_argument("path")
    imp.add_argument("--name", required=True)
    imp.add_argument("--task", choices=["asr", "audio-classification", "text-classification"])
    imp.add_argument("--audio-column", help="column naming the audio files (detected if left out)")
    imp.add_argument("--text-column", help="column with the transcript or text (detected if left out)")
    imp.add_argument("--label-column", help="column with the label (detected if left out)")
    imp.add_argument("--splits", choices=["auto", "keep", "new"], default="auto",
                     help="keep the splits the data came with, or make new ones (auto: keep if >1)")
    imp.add_argument("--validation-fraction", type=float, default=0.1)
    imp.add_argument("--test-fraction", type=float, default=0.1)
    imp.add_argument("--seed", type=int, default=42, help="seed for new splits")
    imp.add_argument("--keep-originals", action="store_true", help="also keep the files as they came")
    imp.add_argument("--skip-bad", action="store_true",
                     help="import without the items the report lists (default: import nothing)")
    imp.add_argument("--json", action="store_true")
    imp.set_defaults(handler=cmd_datasets_import)

    models = commands.add_parser("models", help="list or register models").add_subparsers()
    listing = models.add_parser("list", help="list models")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=cmd_models_list)
    register = models.add_parser("register", help="register a transformers folder, an installed model "
                                 "package, a hub id, or a CTranslate2 Whisper folder / part package / "
                                 ".whl (converted to transformers once)")
    register.add_argument("source")
    register.add_argument("--name", required=True)
    register.add_argument("--json", action="store_true")
    register.set_defaults(handler=cmd_models_register)

    methods = commands.add_parser("methods", help="list PEFT methods").add_subparsers()
    listing = methods.add_parser("list", help="list methods and their settings")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=cmd_methods_list, no_user=True)

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

    study = commands.add_parser(
        "study", help="queue a grid of runs (methods x ranks or budgets x target sets x any "
        "setting's values x seeds) as one study; or list, show, stop or delete studies",
        description="Without a sub-command: queue a study. Each cell is an ordinary run.")
    study.add_argument("--dataset")
    study.add_argument("--model")
    study.add_argument("--methods", help="comma-separated method names, e.g. qlora,lora")
    study.add_argument("--ranks", help="comma-separated ranks (r) for methods that have one, e.g. 4,8")
    study.add_argument("--budgets", help="comma-separated parameter budgets, for methods sized by "
                       "a budget")
    study.add_argument("--targets", action="append", default=[], metavar="LAYERS",
                       help="one target set (comma-separated layer names); repeat for more "
                       "(default: the model family's targets)")
    study.add_argument("--seeds", help="comma-separated seeds (default: 42)")
    study.add_argument("--name", help="the study's name (default: methods, model and dataset)")
    study.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="a setting for every run, e.g. --set max_steps=50")
    study.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                       help="a grid axis over any training or method setting, e.g. --grid "
                       "learning_rate=1e-4,3e-4,1e-3; repeat for more axes")
    study.add_argument("--tune-per-method", action="store_true",
                       help="read the study per method: each method's best cell over the grid "
                       "axes, chosen on the validation split, compared on the test split")
    study.add_argument("--wait", action="store_true", help="train its runs in this process until all end")
    study.add_argument("--ray", metavar="ADDRESS",
                       help="train its runs on a Ray cluster, one Ray task each, and wait: the "
                       "head's host:port (`ray start --head`), or local for a Ray of this "
                       "machine; every machine mounts the data home at the same path")
    study.add_argument("--json", action="store_true")
    study.set_defaults(handler=cmd_study)
    study_commands = study.add_subparsers(title="sub-commands")
    listing = study_commands.add_parser("list", help="list studies, newest first")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=cmd_study_list)
    show = study_commands.add_parser("show", help="one study: its runs, table, comparisons and provenance")
    show.add_argument("id", type=int)
    show.add_argument("--reference", help="the cell (or, tuned, the method) every other is compared "
                      "with (default: the first)")
    show.add_argument("--reading", choices=["cells", "tuned"],
                      help="compare every cell, or each method's tuned cell (default: as launched)")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=cmd_study_show)
    merge = study_commands.add_parser(
        "merge", help="one table from the parts of a grid run on several machines or data homes",
        description="Each FILE is what `study show ID --json` (or `study --wait --json`) printed "
        "for one part: the same dataset, model and settings, each seed of a cell once (say one "
        "seed per GPU). Means, standard deviations and the paired comparisons are computed over "
        "every part's runs as for one study.")
    merge.add_argument("files", nargs="+", type=Path, metavar="FILE")
    merge.add_argument("--reference", help="the cell every other cell is compared with (default: the first)")
    merge.add_argument("--reading", choices=["cells", "tuned"],
                       help="compare every cell, or each method's tuned cell (default: as launched)")
    merge.add_argument("--json", action="store_true")
    merge.set_defaults(handler=cmd_study_merge, needs_workbench=False)
    train = study_commands.add_parser(
        "run", help="train a study's queued runs: here (as --wait), or on a Ray cluster (--ray)")
    train.add_argument("id", type=int)
    train.add_argument("--ray", metavar="ADDRESS", help="as for `study --ray`")
    train.add_argument("--json", action="store_true")
    train.set_defaults(handler=cmd_study_run)
    stop = study_commands.add_parser("stop", help="cancel a study's queued runs, stop its running one")
    stop.add_argument("id", type=int)
    stop.set_defaults(handler=cmd_study_stop)
    delete = study_commands.add_parser("delete", help="delete a study with all its runs")
    delete.add_argument("id", type=int)
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    delete.set_defaults(handler=cmd_study_delete)
    profiles = commands.add_parser("profiles", help="device profiles (Jetson boards, laptop, "
                                   "server)").add_subparsers()
    listing = profiles.add_parser("list", help="every profile: memory for training and the "
                                  "defaults it chooses (* marks the active one)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=cmd_profiles_list, no_user=True)
    selftest = commands.add_parser("selftest", help="one 4-bit (NF4) matmul through bitsandbytes "
                                   "on the GPU (the CPU without one): are the kernels usable here?")
    selftest.add_argument("--require-gpu", action="store_true",
                          help="fail when no CUDA device is visible (the Jetson image does)")
    selftest.add_argument("--json", action="store_true")
    selftest.set_defaults(handler=cmd_selftest, needs_workbench=False)
    add_user_commands(commands)
    add_debug_flag(parser)
    add_user_flag(parser)
    add_profile_flag(parser)
    return parser


def add_user_commands(commands) -> None:
    users = commands.add_parser("users", help="accounts: add, list, disable, enable, reset a password").add_subparsers()
    add = users.add_parser("add", help="add an account; the password is read from standard input")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="make it an admin (the first account is one anyway)")
    add.add_argument("--json", action="store_true")
    add.set_defaults(handler=cmd_users_add, no_user=True)
    listing = users.add_parser("list", help="list accounts (admins)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=cmd_users_list)
    for name, disabled in (("disable", True), ("enable", False)):
        command = users.add_parser(name, help=f"{name} an account (admins)")
        command.add_argument("name")
        command.set_defaults(handler=cmd_users_disable, disabled=disabled)
    reset = users.add_parser("reset-password", help="set an account's password, read from standard input")
    reset.add_argument("name")
    reset.set_defaults(handler=cmd_users_reset)
    share = commands.add_parser("share", help="share your dataset, model, run or study (with its "
                                "runs) read-only with everybody")
    share.add_argument("kind", choices=["dataset", "model", "run", "study"])
    share.add_argument("item", help="name or id")
    share.add_argument("--off", action="store_true", help="stop sharing it")
    share.set_defaults(handler=cmd_share)


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    # json.dumps escapes control characters itself; plain text goes through printable()
    print(json.dumps(data, indent=2, default=str) if getattr(args, "json", False) else printable(text))


def table(rows: list[dict], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def cmd_profiles_list(wb, args) -> None:
    active = wb.device_profile()
    rows = [{**row, "active": bool(active and active["name"] == row["name"])}
            for row in wb.device_profiles()]
    lines = [f"{'*' if row['active'] else ' '} {row['name']}: "
             + (f"{row['training_gib']:g} GiB for training" if row["training_gib"] else "no memory limit")
             + "; defaults " + ", ".join(f"{k}={v}" for k, v in row["defaults"].items())
             for row in rows]
    emit(args, rows, "\n".join(lines))


def cmd_selftest(_wb, args) -> None:
    from engine.selftest import run_selftest

    report = run_selftest(require_gpu=args.require_gpu)
    emit(args, report, f"selftest passed: 4-bit NF4 matmul on {report['device']} "
                       f"({report['device_name']}), bitsandbytes {report['bitsandbytes']}, "
                       f"torch {report['torch']}, max error {report['max_error']:.2e}")


def cmd_demo(wb, args) -> None:
    added = wb.install_demo()
    emit(args, added, f"demo ready: added datasets {added['datasets'] or 'none'}, "
                      f"models {added['models'] or 'none'}")


def cmd_datasets_list(wb, args) -> None:
    rows = wb.list_datasets()
    emit(args, rows, table(rows, ["id", "name", "task", "num_items", "version"]))


def cmd_datasets_import(wb, args) -> None:
    from engine.data.pipeline import ImportOptions

    options = ImportOptions(
        task=args.task, audio_column=args.audio_column, text_column=args.text_column,
        label_column=args.label_column, splits=args.splits, seed=args.seed,
        validation_fraction=args.validation_fraction, test_fraction=args.test_fraction,
        keep_originals=args.keep_originals)

    def progress(done: int, total: int, what: str) -> None:
        unit = " MB" if what.startswith("MB unpacked") else ""
        step = "unpacking" if unit else "importing"
        print(f"\r{step} {done}/{total}{unit}", end="\n" if done == total else "", file=sys.stderr)

    dataset = wb.import_dataset(args.path, args.name, options=options, skip_bad=args.skip_bad,
                                on_progress=progress)
    report = "\n".join(wb.dataset_report_lines(dataset["name"]))
    emit(args, dataset, f"{report}\nimported {dataset['name']}: {dataset['num_items']} items "
                        f"({dataset['task']}), version {dataset['version']}")


def cmd_models_list(wb, args) -> None:
    rows = wb.list_models()
    emit(args, rows, table(rows, ["id", "name", "family", "tasks", "is_preset", "num_parameters"]))


def cmd_models_register(wb, args) -> None:
    model = wb.register_model(args.source, args.name)
    emit(args, model, f"registered {model['name']} ({model['family']})"
                      + (f": {model['note']}" if model.get("note") else ""))


def cmd_methods_list(wb, args) -> None:
    rows = wb.list_methods()
    emit(args, rows, table(rows, ["name", "source", "help"]))


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


def read_password(prompt: str = "Password: ") -> str:
    """From standard input, never from the command line (argv is visible to every user of the
    machine in ``ps``): typed twice without echo on a terminal, one line otherwise."""
    if sys.stdin.isatty():
        password = getpass.getpass(prompt)
        if getpass.getpass("Again: ") != password:
            raise WorkbenchError("the two passwords differ; nothing was changed")
        return password
    return sys.stdin.readline().rstrip("\r\n")


def cmd_users_add(wb, args) -> None:
    user = wb.add_user(args.name, read_password(), is_admin=args.admin)
    emit(args, user, f"added {user['name']}" + (" (admin)" if user["is_admin"] else ""))


def cmd_users_list(wb, args) -> None:
    rows = wb.list_users()
    emit(args, rows, table(rows, ["id", "name", "is_admin", "disabled", "created_at", "last_login_at"]))


def cmd_users_disable(wb, args) -> None:
    user = wb.set_user_disabled(args.name, args.disabled)
    print(f"{user['name']}: {'disabled' if user['disabled'] else 'enabled'}")


def cmd_users_reset(wb, args) -> None:
    wb.reset_password(args.name, read_password("New password: "))
    print(f"{args.name}: password changed")


def cmd_share(wb, args) -> None:
    wb.share(args.kind, args.item, not args.off)
    runs = " (with its runs)" if args.kind == "study" else ""
    print(f"{args.kind} {args.item}{runs}: {'not shared' if args.off else 'shared read-only with everybody'}")


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


# ---------------------------------------------------------------------- studies
def cmd_study(wb, args) -> int:
    from engine.settings import parse_assignments
    from engine.studies import Grid, parse_axes, parse_list

    missing = [f"--{name}" for name in ("dataset", "model", "methods") if not getattr(args, name)]
    if missing:
        return fail(f"study needs {', '.join(missing)} (or a sub-command: list, show, stop, delete)",
                    args.debug)
    grid = Grid(methods=parse_list(args.methods, "--methods", str), ranks=parse_list(args.ranks, "--ranks"),
                budgets=parse_list(args.budgets, "--budgets"),
                target_sets=[t.strip() for t in args.targets] or [""],
                seeds=parse_list(args.seeds, "--seeds") if args.seeds else [42],
                axes=parse_axes(args.grid), tune_per_method=args.tune_per_method)
    study_id = wb.submit_study(args.dataset, args.model, grid, parse_assignments(args.set), args.name)
    study = wb.study_summary(study_id)
    print(f"study {study_id} queued: {study['runs_total']} runs", file=sys.stderr)
    if not (args.wait or args.ray):
        emit(args, study, f"study {study_id} queued; the app's worker will train its runs "
             "(or use --wait to train them here, --ray ADDRESS on a Ray cluster)")
        return 0
    return train_study(wb, args, study_id)


def cmd_study_run(wb, args) -> int:
    return train_study(wb, args, wb.get_study(args.id)["id"])


def train_study(wb, args, study_id: int) -> int:
    """Train the study's runs here (``--wait``) or on Ray (``--ray``) until all have ended,
    print it, exit 1 unless every run completed."""
    if args.ray:
        summary = study_on_ray(wb, args, study_id)
    else:
        def report(run: dict) -> None:
            if not args.json:
                runs = wb.study_runs(study_id)
                done = sum(r["status"] not in ("queued", "running") for r in runs)
                print(f"study {study_id}: run {run['id']} ({_cell_text(run)}) {run['status']} · "
                      f"{done}/{len(runs)} runs ended", file=sys.stderr)

        summary = wb.wait_for_study(study_id, on_run_end=report)
    emit(args, summary, study_text(summary))
    if summary["status"] != "completed":
        return fail(f"study {study_id} ended with runs "
                    + ", ".join(f"{n} {status}" for status, n in summary["status_counts"].items()
                                if status != "completed"), args.debug)
    return 0


def study_on_ray(wb, args, study_id: int) -> dict:
    """``Workbench.run_study_on_ray`` with the study's progress on stderr (none with --json);
    Ctrl-C stops the study's runs at their next step and waits for them."""
    report = None if args.json else StudyProgressReport(study_id)
    print(f"study {study_id}: sending its queued runs to Ray at {args.ray}", file=sys.stderr)
    try:
        return wb.run_study_on_ray(study_id, args.ray, on_progress=(
            (lambda: report.update(wb.study_progress(study_id))) if report else None))
    except KeyboardInterrupt:
        print(f"study {study_id}: stopped (its stopped runs can be resumed: runs resume ID, "
              f"then study run {study_id} --ray ADDRESS)", file=sys.stderr)
        raise
    finally:
        if report:
            report.close(wb.study_progress(study_id))


def _cell_text(run: dict) -> str:
    from engine.studies import cell_label

    return f"{cell_label(run['study_cell'])}, seed {run['study_cell']['seed']}"


def study_text(summary: dict) -> str:
    """A study for a terminal: its cells with mean ± std, the tuned choices, the comparisons
    with their intervals, the power line and the provenance."""
    def pm(row: dict, measure: str, digits: int = 4) -> str:
        mean, std = row[f"{measure}_mean"], row[f"{measure}_std"]
        if mean is None:
            return "–"
        return f"{mean:.{digits}g}" + (f" ± {std:.2g}" if std is not None else "")

    rows = [{"cell": row["cell"], "seeds": f"{row['completed']}/{row['seeds']}",
             (row["metric"] or "metric"): pm(row, "final_metric"),
             "trainable": pm(row, "trainable_params", 6), "peak MiB": pm(row, "peak_memory_mb"),
             "wall s": pm(row, "wall_time_s", 3), "samples/s": pm(row, "samples_per_second", 3)}
            for row in summary["table"]]
    lines = [f"study {summary['id']} {summary['name']}: {summary['status']}, "
             f"{summary['runs_ended']}/{summary['runs_total']} runs ended",
             table(rows, list(rows[0]) if rows else ["cell"])]
    if summary.get("missing"):  # a merge of parts (study merge) that lacks some cell's seed
        lines.append("in no part: " + ", ".join(f"{m['cell']} seed {m['seed']}" for m in summary["missing"]))
    for tuned in summary.get("tuning") or []:
        lines.append(f"tuned {tuned['method']}: {tuned['cell'] or '-'} ({tuned['chosen_by']})")
    if summary["comparisons"]:
        lines.append(f"against {summary['reference']} (test named on each line; Holm-corrected):")
        lines += [f"  {c['method']}: {c['verdict']}" + comparison_text(c) for c in summary["comparisons"]]
    lines += summary.get("notes") or []
    if summary.get("power"):
        lines.append(summary["power"]["text"])
    provenance = summary.get("provenance") or {}
    if provenance.get("recorded"):
        code = (provenance.get("commit") or "")[:12] or provenance.get("version")
        device = provenance.get("device")
        lines.append(f"provenance: code {code}, device "
                     f"{device.get('name') if isinstance(device, dict) else device}"
                     + (f"; differs between runs: {', '.join(provenance['differs'])}" if provenance["differs"] else ""))
    return "\n".join(lines)


def comparison_text(comparison: dict) -> str:
    if comparison["difference"] is None:
        return ""
    text = f" (difference {comparison['difference']:+.4g}"
    if comparison["ci95"]:
        text += f", 95 % interval [{comparison['ci95'][0]:+.4g}, {comparison['ci95'][1]:+.4g}]"
    if comparison["p"] is not None:
        text += f", p = {comparison['p']:.3g}"
    return text + (f"; {comparison['test']})" if comparison["test"] else ")")


def cmd_study_list(wb, args) -> None:
    rows = wb.list_studies()
    emit(args, rows, table(rows, ["id", "name", "status", "runs_ended", "runs_total", "created_at"]))


def cmd_study_show(wb, args) -> None:
    summary = wb.study_summary(args.id, args.reference, None if args.reading is None else args.reading == "tuned")
    emit(args, summary, study_text(summary))


def cmd_study_merge(_wb, args) -> None:
    from engine.study_merge import merge_summaries, part_names, read_summary

    summaries = []
    for path in args.files:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise SettingsError(f"{path}: no such file") from None
        except OSError as error:
            raise SettingsError(f"{path}: cannot be read ({error.strerror})") from None
        summaries.append(read_summary(data, str(path)))
    summary = merge_summaries(summaries, part_names([str(path) for path in args.files]), args.reference,
                              None if args.reading is None else args.reading == "tuned")
    emit(args, summary, study_text(summary))


def cmd_study_stop(wb, args) -> None:
    outcome = wb.stop_study(args.id)
    print(f"study {args.id}: {outcome['cancelled']} queued runs cancelled, "
          f"{outcome['stopping']} running run{'s' if outcome['stopping'] != 1 else ''} stopping")


def cmd_study_delete(wb, args) -> int:
    study = wb.study_summary(args.id)
    if not args.yes:
        if not sys.stdin.isatty():
            return fail(f"deleting study {study['id']} removes its {study['runs_total']} runs with "
                        "their checkpoints and adapters; pass --yes to confirm without a terminal",
                        args.debug)
        answer = input(f"Delete study {study['id']} ({printable(study['name'])}) and its "
                       f"{study['runs_total']} runs with their checkpoints and adapters? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print(f"study {study['id']} kept", file=sys.stderr)
            return 1
    removed = wb.delete_study(study["id"])
    print(f"study {study['id']}: deleted with {len(removed)} runs")
    return 0
