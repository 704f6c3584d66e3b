"""The memory planner (engine/memory/plan.py): partial checkpointing keeps the gradients, and
the plans it picks fit their budget when measured (a real step on the CPU)."""

from __future__ import annotations

import pytest
import torch

from engine.errors import SettingsError
from engine.memory import measure_training_memory_mb
from engine.memory.plan import apply_checkpointing, estimate_for, plan_for_budget
from tiny_models import tiny_qlora_model, tiny_whisper, whisper_batch  # noqa: F401  (a fixture)


def test_checkpointing_gives_the_plain_gradients(tiny_whisper):
    """Recomputing some or all layers (the planner's partial policies) gives exactly the
    gradients of keeping every activation: same dropout masks, nothing cut."""
    model = tiny_qlora_model(tiny_whisper)
    model.train()
    batch = whisper_batch(batch_size=2)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}

    def grads(policy):
        apply_checkpointing(model, policy)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(3)
        model(**batch).loss.backward()
        return {n: p.grad.clone() for n, p in trainable.items()}

    plain = grads(False)
    assert all(g.abs().sum() > 0 for n, g in plain.items() if "lora_B" in n)
    for policy in (True, {"encoder": 1, "decoder": 0}, {"encoder": 0, "decoder": 2}):
        for name, grad in grads(policy).items():
            torch.testing.assert_close(grad, plain[name], msg=f"{policy}: {name}")


def test_planner_choices_fit_the_budget(tiny_whisper):
    """For budgets between 'everything at once' and 'almost nothing', the plan's measured peak
    (a real forward/backward/AdamW step on the CPU, micro-batched as planned) stays within it."""
    model = tiny_qlora_model(tiny_whisper)
    batch = whisper_batch()
    roomy = estimate_for(model, batch, 8, {"encoder": 0, "decoder": 0})
    tight = estimate_for(model, batch, 1, {"encoder": 2, "decoder": 2})
    assert tight < roomy
    generous = plan_for_budget(model, batch, budget_gib=roomy * 2)
    assert generous.micro_batch == 8 and not any(generous.checkpoint.values())
    assert not generous.offload
    for budget in (roomy * 0.9, (roomy + tight) / 2, tight * 1.3):
        plan = plan_for_budget(model, batch, budget_gib=budget)
        assert plan.estimated_gib <= budget
        apply_checkpointing(model, plan.checkpoint)
        peak = 0.0
        for start in range(0, 8, plan.micro_batch):
            part = {k: v[start: start + plan.micro_batch] for k, v in batch.items()}
            peak = max(peak, measure_training_memory_mb(model, part))
        assert peak / 1024 <= budget, (plan.describe(), peak)
        assert "micro-batch" in plan.describe()
    with pytest.raises(SettingsError, match="too small"):
        plan_for_budget(model, batch, budget_gib=tight / 100)
