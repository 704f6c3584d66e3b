"""Issue 29's goal: a study's cells several at a time on one GPU (``LIM_SLOTS``) against one
run at a time, end to end, on real whisper-base QLoRA and demo-voices.

    python -m benchmarks.slots_study --home /tmp/slots --out /tmp/slots-out \\
        --sides processes:12,threads,sequential --deadline-s 1500

One data home gets the demo (``engine demo``: whisper-base from its wheels); each side trains
the same study (methods x ranks x learning rates x seeds, 24 cells by default, 96 steps each)
in its own copy of that home, from the study's submission to its last run's end:

- ``sequential``: one ``engine worker`` with ``LIM_SLOTS=1`` (the workbench before slots);
- ``processes:N``: N ``engine worker`` processes with ``LIM_SLOTS=auto`` (each claims a run
  only when the memory estimator says it fits beside the others);
- ``processes:N:fixed``: the same N processes with ``LIM_SLOTS=N`` (no memory decision: what
  the device gives when every process trains at once);
- ``threads``: the app's in-process worker (``Workbench.start_worker``) with ``LIM_SLOTS=auto``.

Sides run one after another, never together (each is a timing); a later call with the same
``--out`` adds its sides to the earlier ones'. A side still training at
``--deadline-s`` is stopped: its finished cells count, its wall time is projected to the whole
study from them and marked so. Writes ``slots.json`` (per side: wall time, per run status,
wall time, peak memory and metrics) and ``summary.md`` (wall times, speed-ups against
``sequential`` and the largest per-cell metric difference to it) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.research_study import engine

TRAINING = {"max_steps": 96, "per_device_train_batch_size": 8, "warmup_steps": 8, "eval_steps": 32,
            "save_steps": 0, "audio_padding": "longest", "language": "en", "task": "transcribe"}
# The app's worker, in a process of its own: train until the queue is empty, then end.
THREADS = """
import sys, time
from engine import Workbench
wb = Workbench(sys.argv[1])
wb.start_worker()
while wb.storage.runs_with_status("queued") or wb.storage.runs_with_status("running"):
    time.sleep(1)
wb.shutdown()
"""


# Every run of the study with its events' times (where setup, evaluation and training went), read
# in one process: a command line per run costs its imports each time (~20 s on the GPU machine).
COLLECT = """
import json, sys
from engine import Workbench
wb = Workbench(sys.argv[1])
runs = []
for run in wb.study_runs(int(sys.argv[2])):
    record = wb.run_summary(run["id"])
    runs.append({"id": run["id"], "cell": run["study_cell"], "seed": run["study_cell"]["seed"],
                 "status": record["status"], "wall_time_s": record["wall_time_s"],
                 "peak_memory_mb": record["peak_memory_mb"], "started_at": record["started_at"],
                 "finished_at": record["finished_at"], "metrics": record["metrics"],
                 "estimate_mb": run["estimate_mb"], "worker": run["worker"],
                 "events": [(e["time"], e["message"][:120]) for e in wb.run_events(run["id"])]})
print(json.dumps(runs))
"""


def side_command(side: str) -> tuple[list[list[str]], str]:
    """The processes a side starts and its ``LIM_SLOTS``."""
    worker = [sys.executable, "-m", "engine", "worker"]
    if side == "sequential":
        return [worker], "1"
    if side.startswith("processes:"):  # processes:N (LIM_SLOTS=auto) or processes:N:fixed (LIM_SLOTS=N)
        parts = side.split(":")
        count = parts[1]
        return [worker] * int(count), (count if parts[2:] == ["fixed"] else "auto")
    if side == "threads":
        return [[sys.executable, "-c", THREADS, "{home}"]], "auto"
    raise SystemExit(f"unknown side {side!r}: sequential, processes:N or threads")


def run_side(side: str, base: Path, args, settings: dict, log) -> dict:
    home = args.home / side.replace(":", "-")
    shutil.rmtree(home, ignore_errors=True)
    shutil.copytree(base, home, symlinks=True)
    commands, slots = side_command(side)
    env = {**os.environ, "LIM_HOME": str(home), "LIM_SLOTS": slots, "LIM_AUTH": "off"}
    log.write(f"--- side {side} (LIM_SLOTS={slots}, {len(commands)} process(es))\n")
    started = time.time()
    submitted = json.loads(engine(
        ["study", "--dataset", args.dataset, "--model", args.model, "--name", f"slots: {side}",
         "--methods", args.methods, "--ranks", args.ranks, "--seeds", args.seeds,
         "--grid", f"learning_rate={args.learning_rates}", "--json",
         *[part for key, value in settings.items() for part in ("--set", f"{key}={value}")]],
        env, log, capture=True))
    study_id = submitted["id"]
    submit_s = time.time() - started  # the same for every side: checking and queueing the cells
    processes = [subprocess.Popen([part.format(home=home) for part in command], env=env, stdout=log,
                                  stderr=log) for command in commands]
    deadline = started + args.deadline_s
    while any(p.poll() is None for p in processes) and time.time() < deadline:
        time.sleep(2)
    cut = any(p.poll() is None for p in processes)
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        process.wait()
    wall = time.time() - started
    train_s = wall - submit_s
    runs = json.loads(subprocess.run([sys.executable, "-c", COLLECT, str(home), str(study_id)], env=env,
                                     check=True, text=True, stdout=subprocess.PIPE, stderr=log).stdout)
    done = sum(r["status"] == "completed" for r in runs)
    projected = submit_s + train_s * len(runs) / done if cut and done else None
    log.write(f"side {side}: {done}/{len(runs)} completed in {wall:.0f} s"
              + (f" (cut at the deadline; projected {projected:.0f} s)" if projected else "") + "\n")
    log.flush()
    return {"side": side, "slots": slots, "processes": len(commands), "wall_s": round(wall, 1),
            "submit_s": round(submit_s, 1), "train_s": round(train_s, 1),
            "cut_at_deadline": cut, "projected_wall_s": round(projected, 1) if projected else None,
            "completed": done, "runs": runs}


def summary(sides: list[dict]) -> str:
    """Wall time per side, its speed-up against ``sequential`` and the largest difference of a
    cell's metrics to the sequential side's (same cell, same seed)."""
    reference = next((s for s in sides if s["side"] == "sequential"), None)

    def key(run: dict) -> str:
        return json.dumps(run["cell"], sort_keys=True)

    base = {key(r): r for r in reference["runs"] if r["status"] == "completed"} if reference else {}
    base_wall = reference and (reference["projected_wall_s"] or reference["wall_s"])
    lines = ["| side | LIM_SLOTS | processes | completed | wall s | × sequential | run wall s (mean ± sd) "
             "| peak MiB (max) | cells compared | largest metric difference |", "|---|---|---|---|---|---|---|---|---|---|"]
    for side in sides:
        done = [r for r in side["runs"] if r["status"] == "completed"]
        wall = side["projected_wall_s"] or side["wall_s"]
        walls = [r["wall_time_s"] for r in done if r["wall_time_s"]]
        diffs = {}
        for run in done:
            other = base.get(key(run))
            for name, value in (run["metrics"] or {}).items():
                if other and isinstance(value, (int, float)) and isinstance(other["metrics"].get(name), (int, float)):
                    diffs[name] = max(diffs.get(name, 0.0), abs(value - other["metrics"][name]))
        compared = sum(key(r) in base for r in done)
        spread = f"{statistics.mean(walls):.1f} ± {statistics.stdev(walls):.1f}" if len(walls) > 1 else "–"
        lines.append(
            f"| {side['side']} | {side['slots']} | {side['processes']} | {len(done)}/{len(side['runs'])} "
            f"| {wall:.0f}{' (projected)' if side['projected_wall_s'] else ''} "
            f"| {base_wall / wall:.2f} | {spread} | {max((r['peak_memory_mb'] or 0) for r in done) if done else 0:,.0f} "
            f"| {compared} | {', '.join(f'{k} {v:.4g}' for k, v in sorted(diffs.items())) or '–'} |"
            if base_wall and wall else f"| {side['side']} | {side['slots']} | {side['processes']} | "
            f"{len(done)}/{len(side['runs'])} | {wall:.0f} | – | {spread} | – | – | – |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="a folder for the data homes")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sides", default="processes:12,threads,sequential",
                        help="in the order run: sequential, processes:N, threads")
    parser.add_argument("--model", default="whisper-base", help="(tiny-whisper: a quick check of the pipeline)")
    parser.add_argument("--dataset", default="demo-voices")
    parser.add_argument("--methods", default="qlora")
    parser.add_argument("--ranks", default="4,8,16,32")
    parser.add_argument("--learning-rates", default="3e-4,1e-3,3e-3")
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--deadline-s", type=float, default=3600, help="per side")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    settings = {**TRAINING, **dict(item.split("=", 1) for item in args.set)}
    base = args.home / "base"
    # Sides measured by an earlier call with the same --out stay (one lease may run them apart).
    earlier = args.out / "slots.json"
    results = json.loads(earlier.read_text())["sides"] if earlier.exists() else []
    with open(args.out / "log.txt", "a") as log:
        engine(["demo"], {**os.environ, "LIM_HOME": str(base), "LIM_AUTH": "off"}, log)  # idempotent
        for side in args.sides.split(","):
            results = [r for r in results if r["side"] != side] + [run_side(side, base, args, settings, log)]
            (args.out / "slots.json").write_text(json.dumps({"settings": settings, "sides": results}, indent=1))
    table = summary(results)
    (args.out / "summary.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
