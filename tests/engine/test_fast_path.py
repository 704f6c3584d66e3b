"""The engine's fast training path: fused LoRA autograd and the speed benchmark (the memory
planner's tests are in tests/engine/memory/test_memory_plan.py).

All on the CPU with tiny models: the fused op against the formula it implements, the engine's
loss against the reference recipe's (Seq2SeqTrainer + peft + bitsandbytes) step by step, the
benchmark's engine side against a real run's set-up (``prepare_training``), its cases' settings
checked by name, and the benchmark runner end to end.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import FAST
from torch import nn
from transformers import WhisperConfig

from benchmarks import speed_engine, train_speed
from engine.errors import SettingsError
from engine.methods.fast_lora import LoraLinearFunction, fused_layers
from engine.training.recipe import FineTuneRecipe
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


class _NormLoraLayer(nn.Module):
    """A transformer layer in miniature: layer norm, then q and v projections (LoRA targets)."""

    def __init__(self):
        super().__init__()
        self.norm, self.q_proj, self.v_proj = nn.LayerNorm(32), nn.Linear(32, 32), nn.Linear(32, 32)

    def forward(self, x):
        h = self.norm(x)
        return x + self.q_proj(h) * torch.sigmoid(self.v_proj(h))


def test_compiled_layers_draw_the_eager_dropout_masks():
    """``compile_layers`` lets random ops run eager's kernels: a compiled layer with LoRA dropout
    gives the eager layer's output and gradients for the same seed (inductor's own RNG draws
    other masks; checkpointed, the recomputation in backward must draw the same ones again)."""
    import copy

    import torch._dynamo
    from peft import LoraConfig, get_peft_model
    from transformers.modeling_layers import GradientCheckpointingLayer

    from engine.memory import apply_checkpointing
    from engine.methods.fast_lora import fuse_lora
    from engine.training.step import compile_layers

    class Layer(GradientCheckpointingLayer, _NormLoraLayer):
        pass

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([Layer(), Layer()])

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    torch.manual_seed(0)
    model = get_peft_model(Model(), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.3,
                                               target_modules=["q_proj", "v_proj"]))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero; the masks must show in the output
            nn.init.normal_(parameter)
    assert fuse_lora(model) == 4
    eager = copy.deepcopy(model)
    for built in (model, eager):
        apply_checkpointing(built, True)
    torch._dynamo.reset()
    assert compile_layers(model) == 2
    x = torch.randn(6, 10, 32)
    results = []
    for built in (eager, model):
        built.train()
        torch.manual_seed(3)
        out = built(x)
        out.square().mean().backward()
        results.append([out.detach()] + [p.grad for p in built.parameters() if p.requires_grad])
    assert len(results[1]) == 9  # the output and eight LoRA matrices, every one with a gradient
    for got, want in zip(results[1], results[0]):
        assert got is not None and want is not None
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_engine_loss_equals_the_reference_recipe(tiny_whisper):
    """Same seed, same batches, same LoRA init: the fused fp32 path on the CPU logs the losses
    the Seq2SeqTrainer + peft + bitsandbytes recipe logs (which rounds them to 4 decimals)."""
    case = train_speed.Case("tiny-whisper", "qlora", steps=3, warmup=1,
                            training={"per_device_train_batch_size": 2, "learning_rate": 1e-2},
                            method_settings={"lora_dropout": 0.0})
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


def test_benchmark_runner_end_to_end(tmp_path, capsys, monkeypatch):
    """`make bench`'s runner: both sides of a case, and the memory-planned case, into JSON and
    the table (the short-audio case of the CPU suite is left out here: the suite's time)."""
    whole, planned = train_speed.SUITES["cpu"][0], train_speed.SUITES["cpu"][2]
    assert planned.training.get("memory_budget_gb")
    monkeypatch.setitem(train_speed.SUITES, "cpu", [whole, planned])
    out = tmp_path / "bench.json"
    code = train_speed.main(["--suite", "cpu", "--steps", "1",
                             "--json", str(out), "--cache", str(tmp_path / "models")])
    printed = capsys.readouterr().out
    assert code == 0, printed
    data = json.loads(out.read_text())
    sides = {(row["case_id"], row["side"]) for row in data["runs"]}
    assert sides == {(0, "reference"), (0, "engine"), (1, "engine")}
    for row in data["runs"]:
        assert row["samples_per_s"] > 0 and row["peak_gib"] > 0 and len(row["losses"]) == 2
    assert data["runs"][-1]["plan"]["micro_batch"] >= 1
    lines = printed.strip().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| model | method"))
    assert len(lines) - header == 2 + 3 and all(line.startswith("|") for line in lines[header:])
    assert "× reference" in lines[header] and "memory plan" in lines[-1]


def test_a_profiled_step_is_split_by_kind_of_work(tmp_path, monkeypatch, capsys):
    """LIM_BENCH_PROFILE: the timed steps' operators, summed by kind of work (issue 18, goal 2).
    On the CPU a tiny QLoRA step shows its matmuls, attention, 4-bit dequantisation (bitsandbytes
    dequantises on the CPU too), norms and optimizer, and the groups add up to the step's total."""
    folder = tmp_path / "prof"
    monkeypatch.setenv("LIM_BENCH_PROFILE", str(folder))
    monkeypatch.setitem(train_speed.SUITES, "cpu", [train_speed.Case(
        "tiny-whisper", "qlora", steps=2, warmup=1, sides=("engine",), training={"per_device_train_batch_size": 2})])
    out = tmp_path / "bench.json"
    assert train_speed.main(["--suite", "cpu", "--json", str(out), "--cache", str(tmp_path / "models")]) == 0
    profile = json.loads(out.read_text())["runs"][0]["profile"]
    groups = profile["categories_ms_per_step"]
    for kind in ("GEMM", "attention", "4-bit dequantisation", "norms, activations, dropout, residuals", "optimizer"):
        assert groups.get(kind, 0) > 0, (kind, groups)
    assert "idle" not in groups  # a CPU has no device to sit idle
    assert groups == dict(sorted(groups.items(), key=lambda kv: -kv[1]))
    top = sum(row["ms_per_step"] for row in profile["top"])
    assert sum(groups.values()) >= top > 0  # every operator counted once, the costliest among them
    assert list(folder.glob("engine-tiny-whisper-*.txt"))


@pytest.mark.parametrize("name, kind", [
    ("nvjet_sm90_tst_192x192_64x4_1x2_h_bz_coopB_bias_TNN", "GEMM"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26_64x64x64_1x4", "attention"),
    ("void kDequantizeBlockwise<__nv_bfloat16, 512, 64, 8, 2>(float*, unsigned char*)", "4-bit dequantisation"),
    ("triton_red_fused_add_gemm_4bit_native_layer_norm_6", "norms, activations, dropout, residuals"),
    ("triton_poi_fused_clone_transpose_view_4", "copies and casts"),
    ("triton_tem_fused_mm_3", "GEMM"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>", "optimizer"),
    ("Memcpy HtoD (Pinned -> Device)", "copies and casts"),
    ("void at::native::cunn_SoftMaxForward<8, float>", "loss"),
    ("some_kernel_nobody_knows", "other"),
])
def test_gpu_kernel_names_fall_in_their_kind_of_work(name, kind):
    """Kernel names as torch.profiler reported them on the H100 (benchmarks/results/*/profile)."""
    from benchmarks.speed_timing import kernel_category

    assert kernel_category(name) == kind


def test_a_case_pins_the_attention_kernel_by_its_torch_name():
    with pytest.raises(ValueError, match="attention 'flash' is not one of CUDNN_ATTENTION"):
        train_speed.Case("whisper-small", attention="flash")
    case = train_speed.Case("whisper-small", attention="MATH")
    cuda = torch.backends.cuda
    kinds = [(cuda.cudnn_sdp_enabled, cuda.enable_cudnn_sdp), (cuda.flash_sdp_enabled, cuda.enable_flash_sdp),
             (cuda.mem_efficient_sdp_enabled, cuda.enable_mem_efficient_sdp),
             (cuda.math_sdp_enabled, cuda.enable_math_sdp)]
    before = [enabled() for enabled, _ in kinds]
    try:
        speed_engine.pin_attention(case.attention)
        assert [enabled() for enabled, _ in kinds] == [False, False, False, True]
    finally:  # process-wide flags: leave them as found
        for (_, enable), value in zip(kinds, before):
            enable(value)


def test_a_case_sets_inductor_settings_after_the_engine_set_up(tiny_whisper):
    """The dropout lever's row: the engine compiles with eager's random kernels, a case may set
    inductor's own RNG back for its layers; a name inductor does not have is refused."""
    import torch._inductor.config as inductor_config

    with pytest.raises(SettingsError, match="fallback_randm is not a torch._inductor.config setting"):
        speed_engine.check_cases([train_speed.Case("whisper-small", inductor={"fallback_randm": False})])
    case = train_speed.Case("tiny-whisper", "qlora", steps=1, warmup=1, inductor={"fallback_random": False},
                            training={"per_device_train_batch_size": 2, "compile_layers": "on"})
    config = WhisperConfig.from_pretrained(tiny_whisper)
    batches = train_speed.make_batches(case, config, 1, config.max_source_positions * 2)
    before = inductor_config.fallback_random
    try:
        setup = speed_engine.setup_engine(case, tiny_whisper, batches, "cpu")
        assert setup.prepared.compiled_layers > 0  # compile_layers ran, and chose eager's kernels first
        assert inductor_config.fallback_random is False
    finally:  # process-wide: leave it as found
        inductor_config.fallback_random = before


# Settings a benchmark case and a run share, none of them at its default, so that a set-up
# that dropped or renamed one would build a different optimizer or schedule.
SHARED_TRAINING = {"per_device_train_batch_size": 2, "learning_rate": 5e-3, "lr_scheduler_type": "cosine",
                   "warmup_steps": 2, "weight_decay": 0.01, "max_grad_norm": 0.5, "seed": 3,
                   "gradient_checkpointing": True}
SHARED_LORA = {"r": 4, "lora_alpha": 8, "target_modules": "q_proj,v_proj", "lora_dropout": 0.0}


def optimisation_set_up(model, step) -> dict:
    """What ``prepare_training`` decided for ``model``, in comparable terms."""
    names = {id(p): name for name, p in model.named_parameters()}
    groups = [({k: v for k, v in group.items() if k != "params"},
               [(names[id(p)], tuple(p.shape), p.dtype) for p in group["params"]])
              for group in step.optimizer.param_groups]
    lrs = []
    with warnings.catch_warnings():  # the schedule alone, without optimizer steps
        warnings.simplefilter("ignore")
        for _ in range(6):
            lrs.append(step.scheduler.get_last_lr())
            step.scheduler.step()
    return {"optimizer": type(step.optimizer), "groups": groups, "lrs": lrs, "scaler": step.scaler, "graphs": step.graphs, "micro_batch": step.micro_batch,
            "offload": step.offload, "pure_dtype": step.pure_dtype, "autocast": type(step.autocast()),
            "checkpointed": speed_engine.checkpoint_policy(model),
            "compiled": sum(hasattr(m, "_lim_compiled") for m in model.modules())}


def test_the_benchmark_engine_side_sets_up_training_as_a_run_does(workbench):
    """A case and a run with the same settings get the same optimizer class and groups (the
    same trainable parameters, lr, weight decay), the same schedule step by step, and the same
    checkpointing, compilation, precision and CUDA graph choices: both call prepare_training."""
    case = train_speed.Case("tiny-whisper", "qlora", steps=4, warmup=2, training=SHARED_TRAINING,
                            method_settings=SHARED_LORA)
    run_id = workbench.submit_run("demo-speech", "tiny-whisper", "qlora", SHARED_LORA,
                                  {**FAST, **SHARED_TRAINING, "max_steps": case.total_steps})
    recipe = FineTuneRecipe(workbench.storage, workbench.storage.claim_next_run("test", run_id=run_id),
                            should_stop=lambda: False)
    recipe.setup()
    config = WhisperConfig.from_pretrained(recipe.model_dir)
    batches = train_speed.make_batches(case, config, 2, config.max_source_positions * 2)
    bench = speed_engine.setup_engine(case, recipe.model_dir, batches, "cpu")

    run_side = optimisation_set_up(recipe.model, recipe.trainer)
    bench_side = optimisation_set_up(bench.model, bench.prepared.step)
    assert bench_side == run_side
    assert run_side["optimizer"] is torch.optim.AdamW
    [(hyper, params)] = run_side["groups"]
    assert hyper["initial_lr"] == 5e-3 and hyper["weight_decay"] == 0.01
    assert params and all("lora_" in name for name, _, _ in params)
    lrs = [lr for [lr] in run_side["lrs"]]
    assert lrs[0] == 0 and lrs[2] == pytest.approx(5e-3) and lrs[-1] < lrs[2]  # warmup, then cosine
    assert set(run_side["checkpointed"].values()) != {0}  # gradient_checkpointing reached the layers
    assert bench.settings.max_grad_norm == recipe.config.max_grad_norm == 0.5


@pytest.mark.parametrize("group, values, expected", [
    ("training", {"gradient_checkpoint": False}, "did you mean 'gradient_checkpointing'?"),
    ("training", {"checkpoint": "none"}, "'checkpoint' is training gradient_checkpointing"),
    ("training", {"max_steps": 5}, "max_steps comes from the case (its warmup + steps)"),
    ("training", {"eval_steps": 5}, "'eval_steps' never reaches the benchmark's steps"),
    ("method_settings", {"kernel": "peft"}, "did you mean 'kernels'?"),
])
def test_a_case_with_a_wrong_setting_name_fails_before_anything_is_measured(group, values, expected,
                                                                            monkeypatch, capsys):
    bad = train_speed.Case("tiny-whisper", "qlora", steps=1, warmup=1, label="typo", **{group: values})
    with pytest.raises(SettingsError) as error:
        speed_engine.engine_settings(bad)
    assert "benchmark case 'tiny-whisper qlora 30s b16 (typo)'" in str(error.value)
    assert expected in str(error.value)

    def measured(*args, **kwargs):
        raise AssertionError("a case with a wrong setting was measured")

    monkeypatch.setitem(train_speed.SUITES, "cpu", [train_speed.SUITES["cpu"][0], bad])
    monkeypatch.setattr(train_speed, "run_child", measured)
    monkeypatch.setattr(train_speed, "prepare_model", measured)
    assert train_speed.main(["--suite", "cpu"]) == 2
    assert expected in capsys.readouterr().err


def test_every_suite_case_is_one_a_run_could_be_given():
    """The GPU suites cannot run here, but their settings are checked here."""
    cases = [case for suite in train_speed.SUITES.values() for case in suite]
    speed_engine.check_cases(cases)
    assert {case.training["gradient_checkpointing"] for case in cases} == {True, False}
