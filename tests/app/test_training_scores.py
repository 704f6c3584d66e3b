"""The Training page's scores (issue 27): one format for WER and CER (percent), every score
labelled with its split, before and after on the final score's split; and the one-click fix
for a value that blocks Start."""

from __future__ import annotations

import json

import pytest

from page_fixtures import no_memory_estimate  # noqa: F401  (a fixture)
from seeded_runs import seed_runs
from test_pages import app, open_page  # noqa: F401  (a fixture)

pytestmark = pytest.mark.usefixtures("no_memory_estimate")  # not what these tests are about


def write_evaluation(home, run_id: int, **before) -> None:
    """A finished ASR run's evaluation.json as the recipe writes it (test split, no training)."""
    from engine.training.evaluation import EVALUATION_FILE, PREDICTIONS_FILE

    run_dir = home / "runs" / str(run_id)
    summary = {"split": "test", "fell_back_to_validation": False, "metrics": {"wer": 0.012, "cer": 0.005},
               "task": "asr", "labels": [], "num_examples": 1, "confusion": None,
               "validation_before": None, "test_before": None, **before}
    (run_dir / EVALUATION_FILE).write_text(json.dumps(summary))
    (run_dir / PREDICTIONS_FILE).write_text(json.dumps(
        {"split": "test", "position": 0, "file": "a.flac", "reference": "open the door",
         "prediction": "open the doors", "wer": 0.25, "cer": 0.0769}) + "\n")


def finished_asr_run(home, **before) -> int:
    from engine import Workbench

    run_id = seed_runs(home)[-1]  # the newest: the one a fresh tab watches
    Workbench(home).storage.update_run(run_id, metrics={"wer": 0.012, "cer": 0.005})
    write_evaluation(home, run_id, **before)
    return run_id


def test_wer_is_in_percent_with_its_split_and_before_after_on_that_split(app, demo_home):
    """WER 0.012 (test split, a fraction) stood above 71.9 % → 1.4 % (validation, percent)."""
    finished_asr_run(demo_home, test_before={
        "split": "test", "before": {"wer": 0.719, "cer": 0.40}, "after": {"wer": 0.012, "cer": 0.005},
        "steps": 40, "before_window": None, "after_window": None},
        validation_before={"split": "validation", "before": {"wer": 0.70}, "after": {"wer": 0.014},
                           "steps": 40, "before_window": None, "after_window": None})
    open_page(app, "pages/training.py")
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["WER (test split)"] == "1.2%" and metrics["CER (test split)"] == "0.5%"
    assert metrics["WER: 71.9% before training"] == "1.2%"  # the test split's before, not validation's
    assert "#### Before and after 40 steps (test split)" in [m.value for m in app.markdown]
    assert not any("validation split)" in m.value for m in app.markdown)
    examples = app.dataframe[0].value
    assert examples["wer"].tolist() == ["25.0%"] and examples["cer"].tolist() == ["7.7%"]


def test_an_older_run_says_its_before_is_on_the_validation_split(app, demo_home):
    finished_asr_run(demo_home, validation_before={  # no "split": written before test_before existed
        "before": {"wer": 0.70}, "after": {"wer": 0.014}, "steps": 40,
        "before_window": None, "after_window": None})
    open_page(app, "pages/training.py")
    assert "#### Before and after 40 steps (validation split)" in [m.value for m in app.markdown]
    assert any("final test-split score has no before" in c.value for c in app.caption)
    assert {m.label: m.value for m in app.metric}["WER: 70.0% before training"] == "1.4%"


def test_a_batch_larger_than_the_train_split_is_fixed_in_one_click(app, demo_home):
    """The default batch of 8 blocked Start on a 4-item train split; the fix sat among ~35
    advanced fields. Now the message has its button."""
    from engine import Workbench
    from seeded_runs import hold_worker

    workbench = Workbench(demo_home)
    hold_worker(workbench)
    train_items = workbench.storage.count_items(workbench.get_dataset("demo-commands")["id"])["train"]
    open_page(app, "pages/training.py")
    app.selectbox(key="train.dataset").select("demo-commands").run()
    app.number_input(key="train.training.per_device_train_batch_size").set_value(train_items + 1).run()
    assert any("larger than the train split" in e.value for e in app.error)
    assert app.button(key="train.start").disabled
    fix = app.button(key="train.fix")
    assert fix.label == f"Set Batch size to {train_items}"
    fix.click().run()
    assert not app.exception, app.exception
    assert app.number_input(key="train.training.per_device_train_batch_size").value == train_items
    assert not app.error and not app.button(key="train.start").disabled


def test_the_absurd_steps_warning_names_the_device_used(app, demo_home, monkeypatch):
    """It spoke of GPUs on a CPU machine."""
    from engine import memory
    from engine import Workbench
    from seeded_runs import hold_worker

    monkeypatch.setattr(memory, "training_device", lambda: "cpu")
    hold_worker(Workbench(demo_home))
    open_page(app, "pages/training.py")
    app.radio(key="train.training.train_for").set_value("steps").run()
    app.number_input(key="train.training.max_steps").set_value(2_000_000).run()
    warnings = " ".join(w.value for w in app.warning)
    assert "max_steps 2,000,000 will take weeks on this machine's CPU (it has no GPU)" in warnings
    assert "GPU;" not in warnings
