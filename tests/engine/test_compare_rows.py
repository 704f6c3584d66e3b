"""Comparison rows: throughput from the logged metric or from the run, tags, differing settings;
which runs the Compare page offers (filters, the kept selection)."""

from __future__ import annotations

import pytest

from engine.compare import (comparable, default_selection, differing_settings, filter_options, filter_runs,
                            kept_selection)
from engine.errors import SettingsError


def finished_looking_run(workbench, batch=4, accumulation=2, steps=10, wall=5.0) -> int:
    run_id = workbench.submit_run("demo-speech", "tiny-whisper", "lora", {},
                                  {"per_device_train_batch_size": batch,
                                   "gradient_accumulation_steps": accumulation, "max_steps": steps})
    workbench.storage.update_run(run_id, status="completed", step=steps, wall_time_s=wall)
    return run_id


def test_throughput_is_computed_when_the_run_did_not_log_it(workbench):
    run_id = finished_looking_run(workbench, batch=4, accumulation=2, steps=10, wall=5.0)
    [row] = workbench.compare_runs([run_id])
    assert row["samples_per_second"] == pytest.approx(4 * 2 * 10 / 5.0)
    assert row["adapter_bytes"] is None  # no adapter folder: unknown, not zero
    assert row["mfu_percent"] is None and row["device"] is None  # nothing logged: unknown


def test_logged_throughput_and_utilisation_are_averaged(workbench):
    run_id = finished_looking_run(workbench)
    for step, (samples, mfu) in enumerate([(30.0, 10.0), (50.0, 20.0)], start=1):
        workbench.storage.add_metrics(run_id, step, step * 0.1, {
            "train/samples_per_s": samples, "train/tflops": samples / 10, "train/mfu_percent": mfu,
            "system/cpu_percent": 50.0, "system/gpu_memory_mb": 900.0})
    [row] = workbench.compare_runs([run_id])
    assert row["samples_per_second"] == pytest.approx(40.0)  # the mean, not steps x batch / wall
    assert row["achieved_tflops"] == pytest.approx(4.0) and row["mfu_percent"] == pytest.approx(15.0)
    assert row["audio_hours_per_hour"] is None and row["device"] == "GPU"


def test_tags_are_cleaned_stored_and_refused_when_odd(workbench):
    run_id = finished_looking_run(workbench)
    assert workbench.tag_run(run_id, " baseline, r16 ,baseline,, ") == ["baseline", "r16"]
    assert workbench.get_run(run_id)["tags"] == ["baseline", "r16"]
    assert workbench.compare_runs([run_id])[0]["tags"] == "baseline, r16"
    with pytest.raises(SettingsError, match="tag"):
        workbench.tag_run(run_id, ["<script>"])
    assert workbench.tag_run(run_id, []) == [] and workbench.get_run(run_id)["tags"] == []


def test_differing_settings_name_only_what_differs():
    rows = [{"run": 1, "method.r": 8, "training.seed": 1, "training.learning_rate": 1e-3},
            {"run": 2, "method.r": 16, "training.seed": 1, "training.learning_rate": 1e-3},
            {"run": 3, "training.seed": 1, "training.learning_rate": 1e-3}]
    assert differing_settings(rows) == ["method.r"]
    assert differing_settings(rows[:1]) == []


def test_filters_narrow_the_runs_and_a_selection_survives_what_they_still_allow():
    def run(run_id, method, status="completed", tags=(), step=10):
        return {"id": run_id, "dataset_name": "demo-speech", "model_name": "tiny-whisper",
                "method": method, "status": status, "tags": list(tags), "step": step}

    runs = [run(5, "qlora", tags=["baseline"]), run(4, "lora", "stopped"), run(3, "full", tags=["baseline", "big"]),
            run(2, "lora"), run(1, "ia3", "queued", step=0)]
    assert [r["id"] for r in comparable(runs)] == [5, 4, 3, 2]  # nothing trained yet: nothing to compare
    runs = comparable(runs)
    assert filter_options(runs) == {"dataset": ["demo-speech"], "model": ["tiny-whisper"],
                                    "method": ["full", "lora", "qlora"], "status": ["completed", "stopped"],
                                    "tag": ["baseline", "big"]}
    assert [r["id"] for r in filter_runs(runs, {"method": ["lora"], "tag": []})] == [4, 2]
    assert [r["id"] for r in filter_runs(runs, {"method": ["lora", "full"], "status": ["completed"]})] == [3, 2]
    assert [r["id"] for r in filter_runs(runs, {"tag": ["big", "nope"]})] == [3]
    with pytest.raises(ValueError, match="unknown filter"):
        filter_runs(runs, {"colour": ["red"]})

    assert default_selection(runs) == [5, 3, 2]  # the first three completed
    assert default_selection([runs[1]]) == [4]  # none completed: the first two
    assert kept_selection(None, runs) == [5, 3, 2]  # nothing chosen yet: the default
    lora = filter_runs(runs, {"method": ["lora"]})
    assert kept_selection([2, 5], lora) == [2]  # what the filters still allow
    assert kept_selection([5, 3], lora) == [2]  # the filters removed all: the default again
    assert kept_selection([], lora) == []  # emptied by the user: stays empty
