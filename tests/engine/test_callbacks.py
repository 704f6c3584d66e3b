"""Early stopping, the time limit and SpecAugment: unit rules, then real runs."""

from __future__ import annotations

import torch
from conftest import FAST

from engine.training.augment import SpecAugment
from engine.training.callbacks import EarlyStopping
from engine.training.recipe import FineTuneRecipe


def test_early_stopping_follows_the_metric_direction_and_survives_a_checkpoint():
    wer = EarlyStopping("wer", patience=2)  # lower is better
    assert [wer.update({"wer": v}) for v in (0.5, 0.4, 0.45)] == [False, False, False]
    restored = EarlyStopping("wer", patience=2)
    restored.load_state_dict(wer.state_dict())
    assert restored.update({"wer": 0.41}) is True and restored.best == 0.4

    accuracy = EarlyStopping("accuracy", patience=1)  # higher is better
    assert [accuracy.update({"accuracy": v}) for v in (0.5, 0.6, 0.6)] == [False, False, True]
    assert EarlyStopping("accuracy", patience=0).update({"accuracy": 0.1}) is False


def test_a_run_without_improvement_stops_early_and_still_evaluates(workbench):
    # A learning rate this small leaves predictions unchanged, so WER never improves.
    run_id = workbench.submit_run("demo-speech", "tiny-whisper", "lora", {},
                                  {**FAST, "max_steps": 40, "eval_steps": 2, "early_stopping_patience": 2,
                                   "learning_rate": 1e-12})
    summary = workbench.wait_for_run(run_id)
    assert summary["status"] == "completed", summary["error"]
    assert summary["step"] == 6  # evaluations at 2 (best), 4 and 6 (no better) -> stop
    assert [m["step"] for m in workbench.run_metrics(run_id, ["eval/wer"])] == [2, 4, 6]
    assert any("early stopping at step 6" in e["message"] for e in workbench.run_events(run_id))
    assert workbench.run_evaluation(run_id)["split"] == "validation"


def test_a_time_limit_stops_with_a_checkpoint_and_resume_goes_on(workbench):
    run_id = workbench.submit_run("demo-commands", "tiny-whisper", "lora", {},
                                  {**FAST, "max_steps": 40, "max_time_minutes": 1e-6})
    summary = workbench.wait_for_run(run_id)
    assert summary["status"] == "stopped" and summary["step"] == 1
    assert workbench.get_run(run_id)["checkpoint_dir"].endswith("checkpoint-1")
    assert any("time limit" in e["message"] for e in workbench.run_events(run_id))


def test_spec_augment_masks_training_batches_only(workbench):
    run_id = workbench.submit_run("demo-speech", "tiny-whisper", "lora", {},
                                  {**FAST, "spec_augment": True, "freq_mask_param": 20,
                                   "time_mask_param": 80})
    run = workbench.storage.claim_next_run("test-host:1:1", run_id=run_id)
    recipe = FineTuneRecipe(workbench.storage, run, should_stop=lambda: False)
    recipe.setup()
    examples = [recipe.task_model.encode(item, recipe.dataset_dir) for item in recipe.train_items[:4]]
    plain = recipe.task_model.collate(examples)["input_features"]  # what evaluation sees
    torch.manual_seed(0)
    masked = recipe.augment(recipe.collate_train(examples))["input_features"]  # as train_epoch does
    assert masked.shape == plain.shape
    zeroed = (masked == 0) & (plain != 0)
    assert zeroed.any()  # some bands / spans masked...
    assert torch.equal(masked[~zeroed], plain[~zeroed])  # ...and nothing else touched
    assert zeroed.float().mean() < 0.6


def test_spec_augment_leaves_non_audio_batches_alone():
    batch = {"input_ids": torch.ones(2, 5, dtype=torch.long)}
    assert SpecAugment(10, 10)(batch) is batch
