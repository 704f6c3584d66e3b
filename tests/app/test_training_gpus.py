"""The New run form's GPUs choice: offered only where more than one GPU is visible."""

from __future__ import annotations

from test_pages import app  # noqa: F401  (fixture)
from test_training_form import open_form


def test_gpus_are_a_choice_only_with_several_gpus_and_start_stores_it(app, demo_home, monkeypatch):  # noqa: F811
    from engine.workbench.run_planning import RunPlanningMixin

    workbench = open_form(app, demo_home)  # this machine: no GPU
    assert not [w for w in app.selectbox if w.key == "train.training.gpus"]
    assert not [w for w in app.number_input if w.key in ("train.training.gpus", "train.training.nnodes")]

    monkeypatch.setattr(RunPlanningMixin, "gpu_count", staticmethod(lambda: 4))
    app.run()
    gpus = app.selectbox(key="train.training.gpus")
    assert gpus.options == ["1", "2", "3", "4"] and gpus.value == 1
    gpus.select(2).run()
    assert not app.exception, app.exception
    app.button(key="train.start").click().run()
    assert not app.exception, app.exception
    run = workbench.list_runs()[0]
    assert {k: run["settings"]["training"][k] for k in ("gpus", "nnodes", "rdzv_endpoint")} == {
        "gpus": 2, "nnodes": 1, "rdzv_endpoint": ""}
