"""Experiment tracking (issue 27 item 7): a tiny-whisper run writes TensorBoard event files and an
MLflow run that the libraries' own readers open; tracking never fails a run; LIM_TRACKING is
the default of new runs."""

from __future__ import annotations

import pytest
from conftest import FAST

from engine.training import tracking
from engine.training.tracking import RUN_TAG, Tracking, mlflow_store_uri

TRAIN_TAGS = {"train/loss", "train/learning_rate", "train/grad_norm", "train/samples_per_s"}


def test_a_run_with_tracking_writes_tensorboard_events_and_an_mlflow_run(workbench):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_id = workbench.submit_run("demo-speech", "tiny-whisper", "lora", {"r": 4},
                                  {**FAST, "eval_steps": 2, "tracking": "both"})
    summary = workbench.wait_for_run(run_id)
    assert summary["status"] == "completed", summary["error"]
    places = workbench.run_tracking(run_id)
    home = workbench.home.resolve()
    assert places["tensorboard"]["command"] == f"tensorboard --logdir {home}/runs/{run_id}/tensorboard"
    assert places["mlflow"]["command"] == f"mlflow ui --backend-store-uri sqlite:///{home}/mlflow/mlflow.db"
    assert places["tensorboard"]["exists"] and places["mlflow"]["exists"]

    events = EventAccumulator(places["tensorboard"]["where"])
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert TRAIN_TAGS | {"eval/wer", "eval/cer"} <= scalars  # (demo-speech has no test split)
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    losses = {m["step"]: m["value"] for m in workbench.run_metrics(run_id, ["train/loss"])}
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([losses[s] for s in (1, 2, 3, 4)])
    assert [e.step for e in events.Scalars("eval/wer")] == [2, 4]
    assert "settings/text_summary" in events.Tags()["tensors"]  # the run's settings as a table

    client = MlflowClient(tracking_uri=mlflow_store_uri(workbench.home))
    [found] = client.search_runs([client.get_experiment_by_name("lessismore").experiment_id],
                                 f"tags.`{RUN_TAG}` = '{run_id}'")
    assert found.info.status == "FINISHED"
    assert TRAIN_TAGS | {"eval/wer", "eval/cer"} <= set(found.data.metrics)
    assert found.data.metrics["eval/wer"] == pytest.approx(summary["metrics"]["wer"])  # the final score
    assert [m.step for m in client.get_metric_history(found.info.run_id, "train/loss")] == [1, 2, 3, 4]
    params = found.data.params
    assert (params["method"], params["r"], params["learning_rate"], params["max_steps"]) == (
        "lora", "4", str(summary["settings"]["training"]["learning_rate"]), "4")
    assert params["dataset"] == "demo-speech" and params["tracking"] == "both"
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id, "adapter")}
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= artifacts
    assert any(e["message"] == "tracking to TensorBoard and MLflow" for e in workbench.run_events(run_id))


class Broken:
    name = "Broken"

    def scalars(self, step, values):
        raise OSError("disk full")

    def close(self, status):
        raise AssertionError("a switched-off destination is not called again")


class Kept:
    name = "Kept"

    def __init__(self):
        self.calls = []

    def scalars(self, step, values):
        self.calls.append((step, values))

    def close(self, status):
        self.calls.append(status)


def test_a_failing_destination_is_a_warning_and_switched_off():
    said, kept = [], Kept()
    tracker = Tracking([Broken(), kept], lambda message, level: said.append((level, message)))
    tracker.scalars(1, {"train/loss": 2.0, "train/grad_norm": None, "flag": True})
    tracker.scalars(2, {"train/loss": 1.0})
    tracker.close("completed")
    assert kept.calls == [(1, {"train/loss": 2.0}), (2, {"train/loss": 1.0}), "completed"]
    assert said == [("warning", "tracking: writing to Broken failed (OSError: disk full); it is off "
                                "for the rest of this run, which goes on")]


def test_a_missing_package_never_fails_a_run(workbench, monkeypatch):
    def missing(*args, **kwargs):
        raise tracking.TrackingUnavailable(f"MLflow tracking needs mlflow: {tracking.INSTALL['mlflow']}")

    monkeypatch.setattr(tracking, "MlflowWriter", missing)
    monkeypatch.setattr(tracking, "missing_packages", lambda choice: [f"tracking={choice}: mlflow is not installed"])
    run_id = workbench.submit_run("demo-commands", "tiny-whisper", "lora", {}, {**FAST, "tracking": "mlflow"})
    summary = workbench.wait_for_run(run_id)
    assert summary["status"] == "completed", summary["error"]
    log = [(e["level"], e["message"]) for e in workbench.run_events(run_id)]
    assert ("warning", "tracking: mlflow is off for this run: MLflow tracking needs mlflow: "
                       "pip install mlflow-skinny==3.17.2 sqlalchemy==2.1.9 alembic==1.20.1") in log


def test_a_missing_package_is_said_at_submit(monkeypatch):
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None)
    assert tracking.missing_packages("none") == []
    assert tracking.missing_packages("both") == [
        "tracking=both: tensorboard is not installed, so the run will not write to it; "
        "pip install tensorboard==2.21.0",
        "tracking=both: mlflow is not installed, so the run will not write to it; "
        "pip install mlflow-skinny==3.17.2 sqlalchemy==2.1.9 alembic==1.20.1"]


def test_lim_tracking_is_the_default_of_new_runs(workbench, monkeypatch):
    schema = {field["name"]: field for field in workbench.training_settings_schema()}
    assert schema["tracking"]["default"] == "none" and "tensorboard --logdir" in schema["tracking"]["help"]
    monkeypatch.setenv("LIM_TRACKING", "tensorboard")
    schema = {field["name"]: field for field in workbench.training_settings_schema()}
    assert schema["tracking"]["default"] == "tensorboard"
    plan = workbench.check_run("demo-commands", "tiny-whisper", "lora", {}, FAST)
    assert plan["training_settings"]["tracking"] == "tensorboard"
    plan = workbench.check_run("demo-commands", "tiny-whisper", "lora", {}, {**FAST, "tracking": "none"})
    assert plan["training_settings"]["tracking"] == "none"  # a run's own choice wins
    assert "--set" not in workbench.train_command("demo-commands", "tiny-whisper", "lora", {},
                                                  {"tracking": "tensorboard"})


def test_a_resumed_run_replaces_the_tensorboard_steps_it_replays(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from engine.training.tracking import TensorBoardWriter

    first = TensorBoardWriter(tmp_path, {"r": "8"}, resumed_at=0)
    for step in range(1, 6):
        first.scalars(step, {"train/loss": float(step)})
    first.close("stopped")  # stopped after step 5; its checkpoint is at step 3
    resumed = TensorBoardWriter(tmp_path, {"r": "8"}, resumed_at=3)
    for step in range(4, 7):
        resumed.scalars(step, {"train/loss": 10.0 * step})
    resumed.close("completed")
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0), (6, 60.0)]


def test_a_resumed_run_continues_its_mlflow_run(tmp_path):
    from engine.training.tracking import MlflowWriter

    run = {"id": 7, "method": "lora", "task": "asr", "model_name": "tiny-whisper", "dataset_name": "demo-speech"}
    first = MlflowWriter(tmp_path, run, {"r": "8"})
    first.scalars(1, {"train/loss": 2.0})
    first.close("stopped")
    assert first.client.get_run(first.run_id).info.status == "KILLED"
    resumed = MlflowWriter(tmp_path, run, {"r": "8"})
    assert resumed.run_id == first.run_id
    assert resumed.client.get_run(resumed.run_id).info.status == "RUNNING"
    resumed.scalars(2, {"train/loss": 1.0})
    resumed.close("completed")
    found = resumed.client.get_run(resumed.run_id)
    assert found.info.status == "FINISHED" and found.data.params == {"r": "8"}
    assert [m.step for m in resumed.client.get_metric_history(found.info.run_id, "train/loss")] == [1, 2]
