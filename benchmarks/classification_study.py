"""Seed 003's comparison, rerun fairly (issue 28 item 5): LoRA against full fine-tuning against a
frozen encoder with a trained head, on real whisper-base classifying demo-commands, each method at
its own tuned learning rate, seeds paired; training time against validation AUC and loss.

    python -m benchmarks.classification_study --home /tmp/cls-home --out benchmarks/results/<date>-classification

Everything goes through the command line a user has (``engine demo``, ``study``, ``engine worker``,
``study show``, ``runs show``). demo-commands has no test split, so the tuned cells are chosen
and reported on the validation split (the runner says so: optimistic). Writes
``study-tuned.json``, ``study-cells.json``, ``runs.json`` (each run's final metrics) and
``summary.md`` (the table of time against AUC and loss) under ``--out``; the Studies page draws
the same cells against training time (tab "vs training time").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from benchmarks.research_study import engine, train_with_workers

TRAINING = {"max_steps": 45, "per_device_train_batch_size": 8, "warmup_steps": 4, "eval_steps": 0,
            "save_steps": 0, "audio_padding": "longest"}


def summary_table(runs: list[dict]) -> str:
    """Per cell: seeds, training time, validation accuracy, AUC and loss (mean ± sd)."""
    cells: dict[str, list[dict]] = {}
    for run in runs:
        cells.setdefault(run["cell"], []).append(run)

    def spread(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
        values = [v * scale for v in values if v is not None]
        if not values:
            return "–"
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"

    lines = ["| cell | seeds | training time (s) | validation accuracy | validation AUC | validation loss |",
             "|---|---|---|---|---|---|"]
    for cell, mine in cells.items():
        metrics = [run["metrics"] or {} for run in mine]
        lines.append(
            f"| {cell} | {len(mine)} | {spread([r['wall_time_s'] for r in mine], digits=0)} "
            f"| {spread([m.get('accuracy') for m in metrics])} | {spread([m.get('roc_auc') for m in metrics])} "
            f"| {spread([m.get('loss') for m in metrics])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="a fresh data home")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="whisper-base", help="(tiny-whisper: a quick check of the pipeline)")
    parser.add_argument("--methods", default="lora,full,frozen-encoder")
    parser.add_argument("--learning-rates", default="3e-5,3e-4,3e-3")
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--workers", type=int, default=1, help="runs at once (LIM_SLOTS; one GPU holds several)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "LIM_HOME": str(args.home), "LIM_AUTH": "off", "LIM_SLOTS": str(args.workers)}
    settings = {**TRAINING, **dict(item.split("=", 1) for item in args.set)}
    started = time.time()
    with open(args.out / "log.txt", "a") as log:
        engine(["demo"], env, log)
        shown = json.loads(engine(
            ["study", "--dataset", "demo-commands", "--model", args.model, "--name", "seed 003: lora vs full vs frozen encoder",
             "--methods", args.methods, "--ranks", "8", "--seeds", args.seeds,
             "--grid", f"learning_rate={args.learning_rates}", "--tune-per-method", "--json",
             *[part for key, value in settings.items() for part in ("--set", f"{key}={value}")]],
            env, log, capture=True))
        study_id = shown["id"]
        train_with_workers(args.workers, env, log)
        for reading in ("tuned", "cells"):
            text = engine(["study", "show", str(study_id), "--json", "--reading", reading], env, log, capture=True)
            (args.out / f"study-{reading}.json").write_text(text)
        cells = json.loads((args.out / "study-cells.json").read_text())
        runs = []
        for run in cells["runs"]:
            record = json.loads(engine(["runs", "show", str(run["id"]), "--json"], env, log, capture=True))
            runs.append({"id": run["id"], "cell": run["cell"], "seed": run["seed"], "status": record["status"],
                         "wall_time_s": record.get("wall_time_s"), "metrics": record.get("metrics")})
        (args.out / "runs.json").write_text(json.dumps(runs, indent=1))
        log.write(f"wall time: {time.time() - started:.0f} s\n")
    table = summary_table([r for r in runs if r["status"] == "completed"])
    (args.out / "summary.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
