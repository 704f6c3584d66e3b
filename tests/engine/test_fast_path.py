"""The engine's fast training path: fused LoRA autograd and the speed benchmark (the memory
planner's tests are in tests/engine/memory/test_memory_plan.py).

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
from tiny_models import tiny_qlora_model, tiny_whisper  # noqa: F401  (a fixture)


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


def test_fused_layers_replace_peft_forward(tiny_whisper):
    model = tiny_qlora_model(tiny_whisper)
    names = fused_layers(model)
    assert names and all(n.endswith(("q_proj", "v_proj")) for n in names)


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
