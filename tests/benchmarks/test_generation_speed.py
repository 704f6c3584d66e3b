"""benchmarks/generation_speed.py (issue 31, goal 2): the recipe's generate against evaluation's
sorted, bounded greedy decoding with each cache, on the same clips, transcripts compared."""

from __future__ import annotations

import json

from conftest import copy_home

from benchmarks import generation_speed
from engine import Workbench


def test_every_side_decodes_every_clip_and_the_transcripts_are_compared(tmp_path, demo_template, capsys):
    home = tmp_path / "home"
    copy_home(demo_template, home)
    workbench = Workbench(home)
    try:
        folder = workbench.storage.files.resolve(workbench.get_model("tiny-whisper")["path"])
    finally:
        workbench.shutdown()
    out = tmp_path / "generation.json"
    assert generation_speed.main(["--home", str(home), "--model-dir", str(folder), "--clips", "5", "--batch", "2",
                                  "--max-new-tokens", "6", "--device", "cpu", "--json", str(out)]) == 0
    rows = {row["side"]: row for row in json.loads(out.read_text())["sides"]}
    assert set(rows) == set(generation_speed.SIDES)
    for row in rows.values():
        assert len(row["texts"]) == 5 and row["seconds"] > 0 and row["warmup_s"] > 0
        assert row["differ_from_recipe"] == 0  # the same greedy words, whatever the order and cache
    assert rows["recipe"]["x_recipe"] == 1.0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 3 and "× recipe" in table[0]  # the header, a row per side
