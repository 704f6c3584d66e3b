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
