"""The Training and Home pages on issue 27 items 4 and 7: the presenter's clock (ETA from the
run's own steps and evaluations, elapsed that moves, mean throughput, a busy machine, the demo's
measured time) and how to open a run's experiment tracking."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest
from test_pages import APP, open_page


@pytest.fixture
def app(demo_home):
    """The app, with room for a machine busy with other work (these pages read only)."""
    from ui.state import shutdown_workbenches

    yield AppTest.from_file(APP, default_timeout=240)
    shutdown_workbenches()


def test_the_run_page_says_how_to_open_its_tracking(app, demo_home):
    from engine import Workbench

    workbench = Workbench(demo_home)
    run_id = workbench.submit_run("demo-commands", "tiny-whisper", "lora", {},
                                  {"max_steps": 4, "per_device_train_batch_size": 4, "tracking": "both"})
    workbench.storage.update_run(run_id, status="stopped", step=2, total_steps=4, wall_time_s=3.0)
    home = demo_home.resolve()
    open_page(app, "pages/training.py")
    assert app.selectbox(key="train.watch_select").value == run_id
    [expander] = [e for e in app.expander if "Experiment tracking" in e.label]
    assert expander.label == "Experiment tracking: open in TensorBoard and MLflow"
    commands = [code.value for code in expander.code]
    assert commands == [f"tensorboard --logdir {home}/runs/{run_id}/tensorboard",
                        f"mlflow ui --backend-store-uri sqlite:///{home}/mlflow/mlflow.db"]
    assert any("pip install mlflow==3.17.2" in caption.value for caption in expander.caption)


def running_run_with_history(demo_home) -> tuple[object, int]:
    """A run "training" in this very process (the app's worker leaves it alone), with 8 of 12
    steps logged: short steps of 2 s, a whole window (every 4th) of 60 s, an evaluation after
    step 6; samples/s 10, 20, ... and 0.1 at the last step."""
    import os
    import socket
    import time

    from engine import Workbench

    workbench = Workbench(demo_home)
    run_id = workbench.submit_run("demo-speech", "tiny-whisper", "lora", {}, {
        "max_steps": 12, "audio_padding": "longest", "full_window_every": 4, "eval_steps": 6,
        "per_device_train_batch_size": 2, "generation_max_length": 8})
    workbench.storage.claim_next_run(f"{socket.gethostname()}:{os.getpid()}:0", run_id=run_id)
    wall = 0.0
    for step in range(1, 9):
        wall += 60.0 if step % 4 == 0 else 2.0
        workbench.storage.add_metrics(run_id, step, wall, {
            "train/loss": 1.0, "train/samples_per_s": 0.1 if step == 8 else 20.0 if step % 2 else 10.0})
        if step == 6:
            wall += 30.0
            workbench.storage.add_metrics(run_id, step, wall, {"eval/wer": 0.5})
    workbench.storage.update_run(run_id, step=8, total_steps=12, wall_time_s=wall,
                                 wall_time_at=time.time() - 3600, heartbeat_at=time.time() + 3600)
    return workbench, run_id


def test_the_monitor_shows_the_runs_clock_and_mean_throughput(app, demo_home):
    workbench, run_id = running_run_with_history(demo_home)
    open_page(app, "pages/training.py")
    assert app.selectbox(key="train.watch_select").value == run_id
    bar = app.get("progress")[0].proto.text
    # elapsed kept moving for the hour since the last step was written, and the ETA counts the
    # whole-window step 12 and the final scoring, not 4 × the mean step
    assert "step 8 / 12 · elapsed 1h 0" in bar and "· ETA " in bar and "at least" not in bar
    [caption] = [c.value for c in app.caption if c.value.startswith("ETA: ")]
    assert caption.startswith("ETA: short steps 0m 06s + whole-window steps 1m 00s + evaluations ")
    assert caption.endswith("timed on this run.")
    metrics = {m.label: m for m in app.metric}
    assert metrics["samples / s"].value == "13.8"  # the run's mean, not the last step's 0.1
    assert "the last step: 0.1" in metrics["samples / s"].help
    workbench.storage.update_run(run_id, status="stopped")


def test_home_says_where_the_demo_time_was_measured_and_what_to_expect_here(app, demo_home):
    from engine import Workbench
    from engine.demo import DEMO_RUN

    app.run()
    assert not app.exception
    [said] = [c.value for c in app.caption if c.value.startswith("Timed: ")]
    measured = Workbench(demo_home).demo_story()["measured"]
    assert said.startswith(f"Timed: {measured['minutes']:.1f} min of training on a 2-core x86_64 CPU "
                           "with nothing else running")
    assert "has no finished whisper-base run to estimate from yet" in said

    workbench = Workbench(demo_home)  # a demo run finished here: its time is what to expect
    run_id = workbench.start_demo_run()
    workbench.storage.claim_next_run("elsewhere:1:1", run_id=run_id)
    workbench.storage.update_run(run_id, status="completed", step=DEMO_RUN["training"]["max_steps"],
                                 wall_time_s=22 * 60 + 35)
    app.run()
    [said] = [c.value for c in app.caption if c.value.startswith("Timed: ")]
    assert f"On this machine the last demo run (#{run_id}) took **22m 35s**." in said
