"""benchmarks/end_to_end.py: both sides of the whole run, command to exported model, on
tiny-whisper and a handful of clips made from the demo voices."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from command_line import engine_command
from conftest import copy_home

from benchmarks import end_to_end


def in_this_process(module: str, args: list[str], env: dict) -> subprocess.CompletedProcess:
    """Each side's commands in this process (a fresh one costs ~10 s of imports on 2 cores,
    tests/command_line.py): the engine's through its command line's ``main``, the recipe's
    through this benchmark's."""
    if module == "engine":
        return engine_command(*args, home=Path(env["LIM_HOME"]))
    assert module == "benchmarks.end_to_end" and args[0] == "--recipe-spec"
    return subprocess.CompletedProcess(args, end_to_end.main(args), "", "")


def test_both_sides_run_whole_to_an_exported_model(tmp_path, demo_template, monkeypatch, capsys):
    copy_home(demo_template, tmp_path / "home")  # `engine demo` done: tiny-whisper is there
    monkeypatch.setattr(end_to_end, "python_module", in_this_process)
    monkeypatch.setenv("LIM_DEVICE", "cpu")
    out = tmp_path / "end-to-end.json"
    code = end_to_end.main(["--model", "tiny-whisper", "--device", "cpu", "--clips", "8", "--validation", "4",
                            "--test", "4", "--steps", "3", "--eval-steps", "2", "--batch", "4",
                            "--work", str(tmp_path), "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert (result["clips"], result["validation"], result["test"], result["weights"]) == (8, 4, 4, "random")
    assert result["shared_settings"]["r"] == 32 and result["shared_settings"]["seed"] == 42
    sides = {row["side"]: row for row in result["sides"]}
    assert set(sides) == {"engine", "recipe"}
    for side, row in sides.items():
        measured = [seconds for seconds in row["phases_s"].values() if seconds is not None]
        assert len(measured) == (5 if side == "engine" else 4) and all(s > 0 for s in measured), (side, row)
        # the phases are the total's parts: only the gaps between them are left out
        assert 0.8 * row["total_s"] <= sum(measured) <= row["total_s"] + 1e-6, (side, row)
        # one schedule: every eval_steps and after the last step
        assert [point["step"] for point in row["evaluations"]] == [2, 3], (side, row)
        assert 0 < row["evaluation_s"] < row["phases_s"]["train"]
        assert row["test_wer"] is not None
        export = Path(row["export_dir"])
        assert (export / "config.json").exists() and (export / "model.safetensors").exists()
        assert (export / "tokenizer_config.json").exists()
    assert sides["engine"]["dataset_items"] == 16
    printed = capsys.readouterr().out.strip().splitlines()  # the Trainer's logs, then the table
    table = printed[next(i for i, line in enumerate(printed) if line.startswith("| side | import |")):]
    assert "× (recipe ÷ engine)" in table[0] and len(table) == 4
    assert table[2].startswith("| engine |") and table[3].startswith("| recipe |")


def test_the_run_clock_splits_into_training_test_and_saving():
    """From the wall times stored with a run's metrics: a validation point at step 2 (0.5 s
    after its step) and at the last step, the test score after it, the adapter saved last."""
    rows = [{"name": "train/loss", "step": 1, "wall_time": 1.0}, {"name": "train/loss", "step": 2, "wall_time": 2.0},
            {"name": "eval/wer", "step": 2, "wall_time": 2.5}, {"name": "train/loss", "step": 3, "wall_time": 3.5},
            {"name": "eval/wer", "step": 3, "wall_time": 4.0}, {"name": "eval/cer", "step": 3, "wall_time": 4.0},
            {"name": "test/wer", "step": 3, "wall_time": 4.75}]
    clock = end_to_end.run_clock(rows, steps=3, run_s=5.0)
    assert (clock["train_s"], clock["test_s"], clock["save_s"], clock["evaluation_s"]) == (4.0, 0.75, 0.25, 1.0)
    assert clock["evaluations"] == [{"step": 2, "seconds": 0.5}, {"step": 3, "seconds": 0.5}]


def test_help_says_the_sides_model_clips_and_device(capsys):
    with pytest.raises(SystemExit):
        end_to_end.main(["--help"])
    shown = " ".join(capsys.readouterr().out.split()).replace("- ", "-")  # argparse wraps at hyphens
    for words in ("--sides", "engine, recipe", "--model", "whisper-base", "tiny-whisper", "--clips",
                  "--validation", "--test", "1000 on cuda", "--device", "cpu"):
        assert words in shown, words
