"""How long the Compare page takes with many long runs (default: 20 runs x 100,000 steps).

    .venv/bin/python benchmarks/compare_render.py [--runs 20] [--points 100000]

Seeds a throwaway data home with finished runs whose ``train/loss`` has one point per step
(plus ``eval/wer`` every 100 steps), opens the Compare page in Streamlit's AppTest, selects every
run and times: the first render (reads and downsamples every series), a rerun (series come from
``st.cache_data``), and the figure work alone. Results go to docs/benchmarks.md by hand, with the
machine. Nothing here is asserted: timings belong in the benchmark record, not in tests.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def seed(home: Path, runs: int, points: int) -> list[int]:
    from engine import Workbench
    from engine.training.worker import store_display_series

    workbench = Workbench(home)
    workbench.install_demo()
    rng = random.Random(0)
    ids = []
    for index in range(runs):
        method = ("qlora", "lora", "full")[index % 3]
        run_id = workbench.submit_run("demo-speech", "tiny-whisper", method, {},
                                      {"max_steps": points, "learning_rate": 1e-3 * (1 + index % 4)})
        rows = []
        for step in range(1, points + 1):
            loss = 3 * math.exp(-step / (points / 5)) + 0.3 + rng.gauss(0, 0.05)
            rows.append({"run_id": run_id, "step": step, "wall_time": step * 0.02,
                         "name": "train/loss", "value": loss})
            if step % 100 == 0:
                rows.append({"run_id": run_id, "step": step, "wall_time": step * 0.02,
                             "name": "eval/wer", "value": 0.9 * math.exp(-step / points) + rng.random() * 0.02})
        with workbench.storage.atomic() as db:
            db["run_metrics"].insert_all(rows, batch_size=5000)
        workbench.storage.update_run(
            run_id, status="completed", step=points, total_steps=points, wall_time_s=points * 0.02,
            trainable_params=10_000 * (1 + index), total_params=330_000, peak_memory_mb=300 + 40 * index,
            metrics={"wer": 0.4 + index / 100})
        store_display_series(workbench.storage, run_id)  # what the worker does when a run ends
        ids.append(run_id)
    workbench.storage.close()
    return ids


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--points", type=int, default=100_000)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="lim-bench-"))
    os.environ["LIM_HOME"] = str(home)
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        seconds = timed(lambda: seed(home, args.runs, args.points))
        print(f"seeded {args.runs} runs x {args.points:,} points in {seconds:.1f} s")
        report(home, args.runs, args.points)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def report(home: Path, runs: int, points: int) -> None:
    from streamlit.testing.v1 import AppTest

    from engine import Workbench

    ids = [run["id"] for run in Workbench(home).list_runs()]
    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    app.run()
    app.switch_page("pages/compare.py").run()
    assert not app.exception, app.exception
    select_all = app.multiselect(key="compare.runs").set_value(ids)
    cold = timed(select_all.run)
    assert not app.exception, app.exception
    charts = app.get("plotly_chart")
    warm = min(timed(app.run) for _ in range(3))
    step_axis = timed(app.radio(key="compare.x").set_value("step").run)
    points_sent = sum(len(trace["x"]) for chart in charts[:2]
                      for trace in __import__("json").loads(chart.proto.spec)["data"])
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}")
    print(f"{len(ids)} runs x {points:,} points, {len(charts)} charts, "
          f"{points_sent:,} points drawn in the two curve charts")
    print(f"first render (read + downsample + draw): {cold:.2f} s")
    print(f"rerun (cached series):                   {warm:.2f} s")
    print(f"switch x axis to step (cached series):   {step_axis:.2f} s")


if __name__ == "__main__":
    main()
