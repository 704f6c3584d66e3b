"""benchmarks/generation_speed.py (issue 31, goal 2): the recipe's generate against evaluation's
sorted, bounded greedy decoding with each cache, on the same clips, transcripts compared."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import copy_home

from benchmarks import generation_speed
from engine import Workbench

ROOT = Path(__file__).resolve().parents[2]


def test_every_side_decodes_every_clip_and_the_transcripts_are_compared(tmp_path, demo_template):
    home = tmp_path / "home"
    copy_home(demo_template, home)
    workbench = Workbench(home)
    try:
        folder = workbench.storage.files.resolve(workbench.get_model("tiny-whisper")["path"])
    finally:
        workbench.shutdown()
    out = tmp_path / "generation.json"
    # its own process, as it is run: a model loaded in a pytest worker that earlier tests left
    # threads in was once found with parameters on the meta device (the suite, not the benchmark)
    done = subprocess.run([sys.executable, "-m", "benchmarks.generation_speed", "--home", str(home),
                           "--model-dir", str(folder), "--clips", "5", "--batch", "2", "--max-new-tokens", "6",
                           "--device", "cpu", "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {row["side"]: row for row in json.loads(out.read_text())["sides"]}
    assert set(rows) == set(generation_speed.SIDES)
    for row in rows.values():
        assert len(row["texts"]) == 5 and row["seconds"] > 0 and row["warmup_s"] > 0
        assert row["differ_from_recipe"] == 0  # the same greedy words, whatever the order and cache
    assert rows["recipe"]["x_recipe"] == 1.0
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 3 and "× recipe" in table[0]  # the header, a row per side
