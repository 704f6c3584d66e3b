"""``datasets list|import``."""

from __future__ import annotations

import sys

from engine.cli.common import emit, table


def add_parser(commands) -> None:
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
