"""The engine's fast training path: fused LoRA autograd, the memory planner, the speed benchmark.

All on the CPU with tiny models: the fused op against the formula it implements, the engine's
loss against the reference recipe's (Seq2SeqTrainer + peft + bitsandbytes) step by step, the
planner's choices against measured peaks, and the benchmark runner end to end.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from benchmarks import train_speed
from engine.methods.fast_lora import LoraLinearFunction, fused_layers
from engine.memory import measure_training_memory_mb
from engine.memory.plan import apply_checkpointing, estimate_for, plan_for_budget
from engine.errors import SettingsError


@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_lora_op_matches_its_formula(dropout, bias):
    torch.manual_seed(0)
    base = nn.Linear(24, 16, bias=bias)
    x = torch.randn(3, 5, 24, requires_grad=True)
    a = torch.randn(4, 24, requires_grad=True)
    b = torch.randn(16, 4, requires_grad=True)
    torch.manual_seed(1)
    out = LoraLinearFunction.apply(x, a, b, base, 0.5, dropout, True)
    grad = torch.randn_like(out)
    out.backward(grad)
    fused = (out.detach(), x.grad.clone(), a.grad.clone(), b.grad.clone())

    x.grad = a.grad = b.grad = None
    torch.manual_seed(1)  # the same mask: the op draws it with native_dropout
    flat = x.reshape(-1, 24)
    dropped = torch.native_dropout(flat, dropout, True)[0] if dropout else flat
    expected = (base(flat) + 0.5 * dropped @ a.t() @ b.t()).view(3, 5, 16)
    expected.backward(grad)
    torch.testing.assert_close(fused[0], expected.detach())
    for got, want in zip(fused[1:], (x.grad, a.grad, b.grad)):
        torch.testing.assert_close(got, want)


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory):
    return train_speed.prepare_model("tiny-whisper", tmp_path_factory.mktemp("bench"), "cpu")


def test_engine_loss_equals_the_reference_recipe(tiny_whisper):
    """Same seed, same batches, same LoRA init: the fused fp32 path on the CPU logs the losses
    the Seq2SeqTrainer + peft + bitsandbytes recipe logs (which rounds them to 4 decimals)."""
    case = train_speed.Case("tiny-whisper", "qlora", batch=2, steps=3, warmup=1, lora_dropout=0.0,
                            learning_rate=1e-2)
    reference = train_speed.measure("reference", case, tiny_whisper)
    engine = train_speed.measure("engine", case, tiny_whisper)
    assert len(reference["losses"]) == len(engine["losses"]) == 4
    assert reference["losses"][0] != reference["losses"][-1]  # training moved the loss
    for ref, got in zip(reference["losses"], engine["losses"]):
        assert got == pytest.approx(ref, abs=2e-4)


def _tiny_qlora_model(model_dir):
    from engine import settings as settings_lib
    from engine.methods import get_method
    from engine.models.whisper import WhisperSpeechRecognition
    from engine.methods.build import build_method_model

    task_model = WhisperSpeechRecognition(model_dir)
    method = get_method("qlora")
    settings = settings_lib.build(method.settings_cls, {"r": 8}, section="qlora")
    model = build_method_model(task_model, method, settings, family="whisper", device="cpu",
                               seed=0, total_steps=10)
    return model


def _batch(batch_size=8, frames=500, tokens=40):
    return {"input_features": torch.randn(batch_size, 80, frames),
            "labels": torch.randint(0, 400, (batch_size, tokens))}


def test_checkpointing_gives_the_plain_gradients(tiny_whisper):
    """Recomputing some or all layers (the planner's partial policies) gives exactly the
    gradients of keeping every activation: same dropout masks, nothing cut."""
    model = _tiny_qlora_model(tiny_whisper)
    model.train()
    batch = _batch(batch_size=2)
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


def test_fused_layers_replace_peft_forward(tiny_whisper):
    model = _tiny_qlora_model(tiny_whisper)
    names = fused_layers(model)
    assert names and all(n.endswith(("q_proj", "v_proj")) for n in names)


def test_planner_choices_fit_the_budget(tiny_whisper):
    """For budgets between 'everything at once' and 'almost nothing', the plan's measured peak
    (a real forward/backward/AdamW step on the CPU, micro-batched as planned) stays within it."""
    model = _tiny_qlora_model(tiny_whisper)
    batch = _batch()
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


def test_benchmark_runner_end_to_end(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = train_speed.main(["--suite", "cpu", "--steps", "1",
                             "--json", str(out), "--cache", str(tmp_path / "models")])
    printed = capsys.readouterr().out
    assert code == 0, printed
    data = json.loads(out.read_text())
    sides = {(row["case_id"], row["side"]) for row in data["runs"]}
    assert sides == {(0, "reference"), (0, "engine"), (1, "reference"), (1, "engine"), (2, "engine")}
    for row in data["runs"]:
        assert row["samples_per_s"] > 0 and row["peak_gib"] > 0 and len(row["losses"]) == 2
    assert data["runs"][-1]["plan"]["micro_batch"] >= 1
    lines = printed.strip().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| model | method"))
    assert len(lines) - header == 2 + 5 and all(line.startswith("|") for line in lines[header:])
    assert "× reference" in lines[header] and "memory plan" in lines[-1]
