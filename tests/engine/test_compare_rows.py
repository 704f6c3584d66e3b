"""Comparison rows: throughput from the logged metric or from the run, tags, differing settings."""

from __future__ import annotations

import pytest

from engine.compare import differing_settings
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
