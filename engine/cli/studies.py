"""``study`` (queue a grid of runs as one study) and ``study list|show|merge|run|stop|delete``;
a study as text for a terminal (``study_text``)."""

from __future__ import annotations

import sys
from pathlib import Path

from engine.cli.common import emit, fail, table
from engine.errors import SettingsError
from engine.progress import StudyProgressReport
from engine.text import printable


def add_parser(commands) -> None:
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
