"""Stop -> resume is the same run as an uninterrupted one; checkpoints hold everything."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FAST

from engine.training.checkpoint import checkpoints
from engine.training.recipe import FineTuneRecipe
from engine.training.worker import execute_run

# 6 optimizer steps of 2 micro-batches: crosses the epoch boundary of the 40-item demo train
# split, evaluates twice on the way and uses dropout (lora_dropout) and, in one case, masking.
RESUME = {**FAST, "max_steps": 6, "per_device_train_batch_size": 4,
          "gradient_accumulation_steps": 3, "eval_steps": 3, "save_steps": 0,
          "per_device_eval_batch_size": 30, "lr_scheduler_type": "cosine", "warmup_steps": 2,
          "learning_rate": 5e-3}


class StopAtStep:
    """A stop request that fires after a known optimizer step (deterministic, no timing)."""

    def __init__(self, storage, run_id: int, step: int):
        self.storage, self.run_id, self.step = storage, run_id, step

    def is_set(self) -> bool:
        return (self.storage.get_run(self.run_id, owner_id=None)["step"] or 0) >= self.step


def history(workbench, run_id):
    rows = workbench.run_metrics(run_id)
    by_name = {}
    for row in rows:
        by_name.setdefault(row["name"], []).append((row["step"], row["value"]))
    return by_name


@pytest.mark.parametrize("extra", [
    {"spec_augment": True},
    {"precision": "fp16"},
], ids=["fp32-specaugment", "fp16-gradscaler"])
def test_stop_and_resume_logs_what_an_uninterrupted_run_logs(workbench, extra):
    settings = {**RESUME, **extra}
    straight = workbench.submit_run("demo-speech", "tiny-whisper", "lora", {"lora_dropout": 0.2}, settings)
    assert workbench.wait_for_run(straight)["status"] == "completed"

    interrupted = workbench.submit_run("demo-speech", "tiny-whisper", "lora", {"lora_dropout": 0.2}, settings)
    claimed = workbench.storage.claim_next_run("test-host:1:1", run_id=interrupted)
    status = execute_run(workbench.storage, claimed, StopAtStep(workbench.storage, interrupted, 4))
    assert status == "stopped" and workbench.get_run(interrupted)["step"] == 4
    state = json.loads((workbench.home / workbench.get_run(interrupted)["checkpoint_dir"]
                        / "state.json").read_text())
    assert state["step"] == 4 and state["micro_batches"] == 12
    if extra.get("precision") == "fp16":
        assert state["scaler"]["scale"] > 0  # the gradient scaler travels with the checkpoint
    workbench.resume_run(interrupted)
    resumed = workbench.wait_for_run(interrupted)
    assert resumed["status"] == "completed", resumed["error"]

    expected, got = history(workbench, straight), history(workbench, interrupted)
    assert resumed["step"] == workbench.get_run(straight)["step"] == 6
    for name in ("train/loss", "train/learning_rate", "train/grad_norm", "eval/wer", "eval/cer"):
        assert [s for s, _ in got[name]] == [s for s, _ in expected[name]], name
        torch.testing.assert_close(torch.tensor([v for _, v in got[name]], dtype=torch.float64),
                                   torch.tensor([v for _, v in expected[name]], dtype=torch.float64),
                                   rtol=1e-5, atol=1e-6, msg=name)
    assert set(got) == set(expected)
    assert [s for s, _ in got["train/loss"]] == [1, 2, 3, 4, 5, 6]
    assert resumed["metrics"] == pytest.approx(workbench.get_run(straight)["metrics"])


def test_checkpoints_one_folder_per_step_keeping_the_newest(workbench):
    run_id = workbench.submit_run("demo-commands", "tiny-whisper", "lora", {},
                                  {**FAST, "max_steps": 7, "save_steps": 2, "save_total_limit": 2})
    assert workbench.wait_for_run(run_id)["status"] == "completed"
    folders = checkpoints(workbench.home / "runs" / str(run_id))
    assert [f.name for f in folders] == ["checkpoint-4", "checkpoint-6"]
    assert workbench.get_run(run_id)["checkpoint_dir"].endswith("checkpoints/checkpoint-6")
    for folder in folders:
        assert {p.name for p in folder.iterdir()} == {"trainable.safetensors", "optimizer.pt", "state.json"}


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_gradient_checkpointing_still_trains_every_adapter_weight(workbench, method):
    run_id = workbench.submit_run("demo-speech", "tiny-whisper", method, {"target_modules": "q_proj,v_proj,fc1"},
                                  {**FAST, "max_steps": 3, "gradient_checkpointing": True,
                                   "learning_rate": 1e-2})
    run = workbench.storage.claim_next_run("test-host:1:1", run_id=run_id)
    recipe = FineTuneRecipe(workbench.storage, run, should_stop=lambda: False)
    recipe.setup()
    assert recipe.model.base_model.model.model.encoder.gradient_checkpointing
    before = {name: p.detach().clone() for name, p in recipe.model.named_parameters() if p.requires_grad}
    assert before and all("lora_" in name for name in before)
    assert recipe.train() == "completed"
    after = dict(recipe.model.named_parameters())
    unchanged = [name for name, value in before.items() if torch.equal(value, after[name].detach())]
    assert unchanged == []  # a cut gradient path would leave some adapter weights untouched
