"""Module-scoped trained runs shared by the export and playground tests (training is the slow part)."""

from __future__ import annotations

from conftest import FAST, copy_home

from engine.training.recipe import FineTuneRecipe

EVAL_ITEMS = 6


def train_with_recipe(workbench, dataset: str, method: str) -> dict:
    """Train a run through the recipe (as the worker does) and keep the recipe's own evaluation
    predictions on the first validation items, for comparison with the playground."""
    from storage import utc_now

    run_id = workbench.submit_run(dataset, "tiny-whisper", method, {}, FAST)
    run = workbench.storage.claim_next_run("test", run_id=run_id)
    recipe = FineTuneRecipe(workbench.storage, run, should_stop=lambda: False)
    recipe.setup()
    assert recipe.train() == "completed"
    items = recipe.eval_items[:EVAL_ITEMS]
    _, predictions = recipe.scoring.evaluate(items)
    # What the worker's execute_run does once the recipe returns.
    workbench.storage.update_run(run_id, status="completed", finished_at=utc_now())
    return {"run_id": run_id, "items": items, "predictions": predictions,
            "dataset_dir": recipe.dataset_dir, "task": recipe.task_model.task}


def make_trained_home(tmp_path_factory, demo_template):
    from engine import Workbench

    home = tmp_path_factory.mktemp("trained") / "home"
    copy_home(demo_template, home)
    workbench = Workbench(home)
    runs = {"speech": train_with_recipe(workbench, "demo-speech", "qlora"),
            "commands": train_with_recipe(workbench, "demo-commands", "lora")}
    return workbench, runs
