"""Benchmark: import 1,000 one-second 44.1 kHz stereo clips, and open a 10,000-item dataset.

    .venv/bin/python benchmarks/dataset_import.py [--clips 1000] [--items 10000]

Prints the seconds each step takes. Targets (issue #3): import < 60 s on 2 CPU cores;
the engine calls the Datasets page makes for a 10,000-item dataset < 1 s.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_clips(folder: Path, count: int, rate: int = 44_100) -> Path:
    """``count`` one-second stereo tones (distinct pitches) + metadata.csv, an audiofolder."""
    folder.mkdir(parents=True)
    t = np.arange(rate) / rate
    with (folder / "metadata.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "transcription"])
        for i in range(count):
            wave = 0.3 * np.sin(2 * np.pi * (200 + i) * t)
            soundfile.write(str(folder / f"clip{i:05d}.wav"), np.stack([wave, wave * 0.5], axis=1), rate)
            writer.writerow([f"clip{i:05d}.wav", f"sentence number {i}"])
    return folder


def timed(label: str, action):
    start = time.perf_counter()
    result = action()
    print(f"{label}: {time.perf_counter() - start:.3f} s")
    return result, time.perf_counter() - start


def big_dataset(wb, items: int) -> str:
    """A 10,000-item dataset: imported once at 100 clips, then its rows repeated in the database
    (the page's cost depends on rows, not on how many distinct files they point at)."""
    dataset = wb.get_dataset("clips")
    rows = wb.storage.dataset_items(dataset["id"])
    many = [{**{k: v for k, v in rows[i % len(rows)].items() if k not in ("id", "dataset_id")},
             "position": i, "split": ("train", "validation", "test")[i % 10 // 8 + (i % 10 == 9)],
             "text": f"{rows[i % len(rows)]['text']} copy {i}"} for i in range(items)]
    wb.storage.add_dataset({**{k: dataset[k] for k in ("task", "path", "version", "splits", "labels")},
                            "name": "big", "report": dataset["report"]}, many)
    return "big"


def page_calls(wb, name: str) -> None:
    """What pages/datasets.py asks the engine for on first render of a dataset."""
    wb.list_datasets()
    dataset = wb.get_dataset(name)
    wb.dataset_stats(name)
    wb.find_items(name, limit=0)
    rows, _ = wb.find_items(name, limit=25, offset=0)
    wb.item_view(name, rows[0]["id"])
    wb.dataset_history(name)
    return dataset


def render_page(home: Path, name: str) -> float:
    """The whole Datasets page through Streamlit's AppTest (script run, no browser paint)."""
    from streamlit.testing.v1 import AppTest

    from engine.training.worker import shutdown_all_workers

    os.environ["LIM_HOME"] = str(home)
    app = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=120)
    app.run()
    app.switch_page("pages/datasets.py").run()
    app.selectbox(key="datasets.selected").select(name).run()  # warm: the workbench is cached
    assert not app.exception, app.exception
    _, seconds = timed(f"render the Datasets page of {name} (AppTest rerun)", lambda: app.run())
    assert not app.exception, app.exception
    shutdown_all_workers()  # the app's cached workbench started one
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=1000)
    parser.add_argument("--items", type=int, default=10_000)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(2)
    from engine import Workbench

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
          f"python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        source, _ = timed(f"make {args.clips} clips (44.1 kHz stereo WAV)",
                          lambda: make_clips(scratch / "source", args.clips))
        wb = Workbench(scratch / "home")
        dataset, import_s = timed(f"import + resample {args.clips} clips",
                                  lambda: wb.import_dataset(source, "clips"))
        assert dataset["num_items"] == args.clips
        name = big_dataset(wb, args.items)
        _, cold = timed(f"page engine calls, {args.items} items (first)", lambda: page_calls(wb, name))
        _, warm = timed(f"page engine calls, {args.items} items (again)", lambda: page_calls(wb, name))
        _, search = timed("search 'number 7' + page 3", lambda: wb.find_items(name, query="number 7",
                                                                           limit=25, offset=50))
        render = render_page(scratch / "home", name)
        print(f"RESULT import_s={import_s:.1f} page_first_s={cold:.3f} page_again_s={warm:.3f} "
              f"search_s={search:.3f} page_render_s={render:.3f}")


if __name__ == "__main__":
    main()
