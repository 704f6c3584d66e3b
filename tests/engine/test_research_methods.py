"""What each research method (issues 16 and 28) claims, beyond the plugin matrix of
test_methods.py: ta-qlora starts at the base, sees neighbouring frames and its kernels leave the
identity within a few steps (on the fused path); cmra spends its budget by strategy, scales each
layer for its rank and leaves no gradient behind; qass keeps in 16-bit the layers it says, trims
real silence and records what it saved; mma starts as LoRA of its rank and routes per sequence;
each records what it decided; the baselines are studies' methods; unmergeable methods refuse
merging."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch
from conftest import FAST
from torch import nn

from engine.errors import ExportError, MethodError
from engine.training.recipe import FineTuneRecipe


def recipe_for(workbench, method, settings=None, dataset="demo-speech", model="tiny-whisper", **training):
    """A run of ``method`` set up the way the worker sets it up (4-bit base, real batches)."""
    run_id = workbench.submit_run(dataset, model, method, settings or {},
                                  {**FAST, "max_steps": 3, "learning_rate": 1e-2, **training})
    run = workbench.storage.claim_next_run("test", run_id=run_id)
    recipe = FineTuneRecipe(workbench.storage, run, should_stop=lambda: False)
    recipe.setup()
    return recipe


def train_steps(recipe, steps):
    recipe.model.train()
    for step, batch in enumerate(recipe.sample_batches(steps)):
        recipe.trainer.forward_backward(batch)
        recipe.trainer.optimizer_step(step + 1)


def lora_update(layer, x):
    """What a peft LoRA layer adds to its base layer's output for input x."""
    return layer(x) - layer.base_layer(x)


# ---------------------------------------------------------------------- ta-qlora
def test_ta_qlora_starts_at_the_base_and_its_update_sees_neighbouring_frames(workbench):
    from engine.methods.ta_qlora import TemporalLoraA

    recipe = recipe_for(workbench, "ta-qlora", {"temporal_kernel_size": 3})
    model = recipe.model.eval()
    batch = recipe.sample_batches(1)[0]
    with torch.no_grad():
        adapted = model(**batch).logits
        with model.disable_adapter():
            base = model(**batch).logits
    torch.testing.assert_close(adapted, base, rtol=0, atol=0)  # step 0 is the 4-bit base

    encoder = model.base_model.model.model.encoder.layers[0].self_attn.q_proj
    decoder = model.base_model.model.model.decoder.layers[0].self_attn.q_proj
    assert isinstance(encoder.lora_A["default"], TemporalLoraA)
    assert type(decoder.lora_A["default"]) is nn.Linear  # the decoder keeps plain LoRA
    torch.manual_seed(0)
    with torch.no_grad():
        for layer in (encoder, decoder):
            layer.lora_B["default"].weight.normal_()
        encoder.lora_A["default"].temporal.normal_()
        x = torch.randn(1, 12, encoder.in_features)
        order = torch.randperm(12)
        # A per-frame update commutes with permuting the frames; the temporal one does not.
        torch.testing.assert_close(lora_update(decoder, x[:, order]), lora_update(decoder, x)[:, order])
        moved = lora_update(encoder, x[:, order]) - lora_update(encoder, x)[:, order]
        assert moved.abs().max() > 1e-2


def test_ta_qlora_refuses_a_text_model_and_an_even_kernel(workbench):
    with pytest.raises(MethodError, match="text model"):
        recipe_for(workbench, "ta-qlora", dataset="demo-text", model="tiny-bert")
    from engine.errors import SettingsError

    with pytest.raises(SettingsError, match="odd"):
        workbench.submit_run("demo-speech", "tiny-whisper", "ta-qlora", {"temporal_kernel_size": 4}, FAST)


def kernel_drift(model) -> float:
    from engine.methods.ta_qlora import movement_summary

    return movement_summary(model)["kernel_drift"]


def test_ta_qlora_kernels_leave_the_identity_in_a_few_steps_and_the_run_says_how_far(workbench):
    drift = {}
    for ratio in (1.0, 10.0):
        recipe = recipe_for(workbench, "ta-qlora", {"temporal_lr_ratio": ratio}, learning_rate=1e-3)
        groups = recipe.optimizer.param_groups
        kernels = [p for name, p in recipe.model.named_parameters() if name.endswith(".temporal")]
        if ratio != 1.0:  # the kernels are a group of their own, at 10x the run's rate, no decay
            assert [g["lr"] for g in groups] == [pytest.approx(1e-3), pytest.approx(1e-2)]
            assert {id(p) for p in groups[1]["params"]} == {id(p) for p in kernels}
            assert groups[1]["weight_decay"] == 0.0
        assert kernel_drift(recipe.model) == 0.0  # the identity
        assert recipe.train() == "completed"  # 3 steps: B leaves zero at step 1, then the kernels move
        drift[ratio] = kernel_drift(recipe.model)
    assert drift[10.0] > 0.005 and drift[10.0] > 5 * drift[1.0], drift

    report = workbench.run_method_report(recipe.run_id)  # the last run: ratio 10
    assert report["method"] == "ta-qlora" and report["temporal_lr_ratio"] == 10.0
    assert set(report["kernel_drift"]) == set(report["temporal_layers"]) and report["temporal_layers"]
    assert report["summary"]["kernel_drift"] == pytest.approx(drift[10.0])
    assert all(0 < share < 1 for share in report["neighbour_share"].values())
    assert [e["step"] for e in report["history"]["entries"]] == [1, 2, 3]
    logged = [row for row in workbench.storage.metrics(recipe.run_id, ["temporal/kernel_drift"])]
    assert len(logged) == 3 and logged[-1]["value"] == pytest.approx(drift[10.0])


def test_ta_qlora_trains_on_the_fused_path_with_peft_paths_gradients(workbench):
    from engine.methods.fast_lora import fused_layers
    from engine.methods.ta_qlora import TemporalLoraA

    recipe = recipe_for(workbench, "ta-qlora", {"temporal_kernel_size": 5, "lora_dropout": 0.0})
    fused = set(fused_layers(recipe.model))
    temporal = [name for name, m in recipe.model.named_modules() if isinstance(m, TemporalLoraA)]
    assert temporal and all(name.removesuffix(".lora_A.default") in fused for name in temporal)
    layer = recipe.model.base_model.model.model.encoder.layers[0].self_attn.q_proj
    A, B = layer.lora_A["default"], layer.lora_B["default"]
    torch.manual_seed(0)
    with torch.no_grad():
        B.weight.normal_()
        A.temporal.normal_()
    layer.train()
    x = torch.randn(2, 9, layer.in_features)
    results = []
    for forward in (layer.forward, layer._peft_forward):  # the fused op, then peft's own layers
        inputs = x.clone().requires_grad_(True)
        output = forward(inputs)
        output.pow(2).sum().backward()
        results.append([output.detach()] + [t.grad.clone() for t in (inputs, A.weight, B.weight, A.temporal)])
        for t in (A.weight, B.weight, A.temporal):
            t.grad = None
    for fused_value, peft_value in zip(*results):
        torch.testing.assert_close(fused_value, peft_value, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------- cmra
def test_allocate_spends_the_budget_in_proportion_to_the_weights():
    from engine.methods.cmra import allocate

    costs = {"a": 100, "b": 100, "c": 100}
    ranks = allocate(costs, {"a": 1.0, "b": 2.0, "c": 4.0}, 2800, min_rank=0, max_rank=64)
    assert ranks == {"a": 4, "b": 8, "c": 16}
    ranks = allocate({"a": 96, "b": 160}, {"a": 1.0, "b": 1.0}, 5000, min_rank=1, max_rank=64)
    used = 96 * ranks["a"] + 160 * ranks["b"]
    assert used <= 5000 and 5000 - used < 96 and abs(ranks["a"] - ranks["b"]) <= 1
    capped = allocate(costs, {"a": 1.0, "b": 1.0, "c": 100.0}, 3000, min_rank=1, max_rank=12)
    assert capped["c"] == 12 and sum(capped.values()) * 100 == 3000  # the rest goes elsewhere
    with pytest.raises(MethodError, match="below min_rank"):
        allocate(costs, {"a": 1.0, "b": 1.0, "c": 1.0}, 200, min_rank=1, max_rank=8)


def lora_parameters(model) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)


def test_cmra_allocation_sums_to_the_budget_and_follows_the_strategy(workbench, monkeypatch):
    from engine.methods import cmra
    from engine.methods.cmra import CmraSettings, plan_allocation

    budget = 20_000
    recipe = recipe_for(workbench, "cmra", {"strategy": "importance", "budget": budget})
    report = recipe.method_report
    # Scoring took gradients of layer outputs only: no parameter holds a .grad before step 1.
    assert [name for name, p in recipe.model.named_parameters() if p.grad is not None] == []
    # Each layer's scaling α/√(r·r_m) (rank-stable), and peft's layer uses it.
    from engine.methods.custom_lora import lora_layers, short_name

    lora = {short_name(name): module for name, module in lora_layers(recipe.model)}
    for layer in report["layers"]:
        expected = 16 / (8 * layer["rank"]) ** 0.5
        assert layer["scaling"] == pytest.approx(expected)
        assert lora[layer["name"]].scaling["default"] == pytest.approx(expected)
    smallest = min(layer["cost_per_rank"] for layer in report["layers"])
    assert report["used"] <= budget and budget - report["used"] < smallest
    assert lora_parameters(recipe.model) == report["used"]  # what peft built is what it says
    assert {layer["group"] for layer in report["layers"]} == {"audio encoder", "cross-attention",
                                                             "text decoder"}
    by_score = sorted(report["layers"], key=lambda layer: layer["score"])
    assert all(layer["score"] > 0 for layer in by_score)
    assert [layer["rank"] for layer in by_score] == sorted(layer["rank"] for layer in by_score)
    assert by_score[0]["rank"] < by_score[-1]["rank"]
    assert workbench.run_method_report(recipe.run_id) == report  # recorded for the run page
    from ui.charts import rank_allocation_figure

    figure = rank_allocation_figure(report["layers"])
    assert sorted(trace.name for trace in figure.data) == ["audio encoder", "cross-attention", "text decoder"]
    assert sum(sum(trace.y) for trace in figure.data) == sum(layer["rank"] for layer in report["layers"])

    # A resumed run (set up again from its record) keeps its ranks without scoring again.
    monkeypatch.setattr(cmra, "importance_scores", lambda *a, **k: pytest.fail("scored again"))
    again = FineTuneRecipe(workbench.storage, recipe.run, should_stop=lambda: False)
    again.setup()
    assert again.method_report == report and lora_parameters(again.model) == report["used"]
    monkeypatch.undo()

    base = recipe.model.base_model.model  # the layers' names and sizes are all planning reads
    context = recipe_context(recipe)
    uniform = plan_allocation(base, CmraSettings(strategy="uniform", budget=budget), context)
    ranks = [layer["rank"] for layer in uniform["layers"]]
    assert max(ranks) - min(ranks) <= 1 and budget - uniform["used"] < smallest
    ratio = plan_allocation(base, CmraSettings(strategy="ratio", ratio="3:1:1", budget=budget), context)
    shares = {g: part["params"] / ratio["used"] for g, part in ratio["parts"].items()}
    assert shares["audio encoder"] == pytest.approx(0.6, abs=0.05)
    assert shares["cross-attention"] == pytest.approx(0.2, abs=0.05)
    assert shares["text decoder"] == pytest.approx(0.2, abs=0.05)


def test_cmra_proportional_follows_each_weights_effective_rank(workbench):
    """proportional differs from uniform where layers of one shape differ (their spectra) and
    equals it where they do not; the step size follows the rank only with scaling=lora."""
    from engine.methods import MethodContext
    from engine.methods.cmra import CmraSettings, effective_rank, layer_scaling, plan_allocation
    from engine.models import linear_module_names, task_model_for

    folder = workbench.storage.files.resolve(workbench.get_model("tiny-whisper")["path"])
    task_model = task_model_for("whisper", "asr", folder)
    torch.manual_seed(0)
    model = task_model.load()
    context = MethodContext.for_task_model(task_model, linear_module_names=linear_module_names(model))

    def ranks(strategy):
        plan = plan_allocation(model, CmraSettings(strategy=strategy, min_rank=1), context)
        return {layer["name"]: layer["rank"] for layer in plan["layers"]}, plan

    targets = [name for name in ranks("uniform")[0]]
    assert {name.rsplit(".", 1)[-1] for name in targets} == {"q_proj", "v_proj"}  # one shape everywhere
    shared = torch.randn_like(model.get_submodule(targets[0]).weight)
    with torch.no_grad():  # every layer the same spectrum: proportional must be uniform
        for name in targets:
            model.get_submodule(name).weight.copy_(shared[torch.randperm(shared.shape[0])])
    assert ranks("proportional")[0] == ranks("uniform")[0]

    with torch.no_grad():  # one layer really uses 12 directions, another 2
        low, lower = targets[3], targets[7]
        for name, keep in ((low, 12), (lower, 2)):
            u, sv, vh = torch.linalg.svd(shared)
            model.get_submodule(name).weight.copy_(u[:, :keep] @ torch.diag(sv[:keep]) @ vh[:keep])
    proportional, plan = ranks("proportional")
    uniform = ranks("uniform")[0]
    assert proportional != uniform
    assert proportional[lower] < proportional[low] < min(r for n, r in proportional.items()
                                                          if n not in (low, lower))
    scores = {layer["name"]: layer["score"] for layer in plan["layers"]}
    assert scores[lower] == pytest.approx(effective_rank(model.get_submodule(lower).weight))
    assert plan["score"] == "effective rank of the frozen weight"
    assert plan["used"] <= plan["budget"] and plan["budget"] - plan["used"] < min(
        layer["cost_per_rank"] for layer in plan["layers"])
    # Rank-stable: a layer 4x the reference rank takes half LoRA's scaling; at r the same.
    stable, plain = CmraSettings(r=8), CmraSettings(r=8, scaling="lora")
    assert layer_scaling(stable, 8) == layer_scaling(plain, 8) == pytest.approx(2.0)
    assert layer_scaling(stable, 32) == pytest.approx(1.0) and layer_scaling(plain, 32) == pytest.approx(2.0)


def recipe_context(recipe):
    from engine.methods import MethodContext
    from engine.models import linear_module_names

    base = recipe.model.base_model.model
    names = [name for name in linear_module_names(base)
             if not any(part in name.split(".") for part in ("base_layer", "lora_A", "lora_B"))]
    return MethodContext.for_task_model(recipe.task_model, linear_module_names=names)


# ---------------------------------------------------------------------- qass
def test_qass_keeps_in_16_bit_exactly_the_layers_it_names(workbench):
    recipe = recipe_for(workbench, "qass", {"keep_share": 0.25})
    report = recipe.method_report
    kept = set(report["keep_16bit"])
    layers = {layer["name"]: layer for layer in report["layers"]}
    assert len(kept) == round(0.25 * len(layers)) > 0
    assert min(layers[n]["error"] for n in kept) >= max(
        layer["error"] for n, layer in layers.items() if n not in kept)  # the most sensitive
    base = recipe.model.base_model.model
    for name in layers:
        module = base.get_submodule(name)
        module = getattr(module, "base_layer", module)  # under a LoRA layer
        assert (type(module).__name__ == "Linear4bit") == (name not in kept), name
    assert report["signal"] == {"trim_silence_db": 40.0, "audio_padding": "longest"}
    assert recipe.task_model.windowed  # pads only to the longest clip
    assert report["layers_kept"] == len(kept) and report["layers_measured"] == len(layers)
    assert report["saved_mib_vs_full_precision"] == pytest.approx(
        report["full_precision_mib"] - report["all_4bit_mib"] - report["extra_mib"])
    assert 0 < report["saved_mib_vs_full_precision"] < report["full_precision_mib"]

    from engine.methods.qass import QassSettings, choose_kept

    errors = {n: layer["error"] for n, layer in layers.items()}
    sizes = {n: layer["params"] for n, layer in layers.items()}
    extra = {n: layer["extra_mib"] for n, layer in layers.items()}
    within = choose_kept(errors, sizes, QassSettings(keep_mib=0.05), bytes_per_weight=4)
    assert within and sum(extra[n] for n in within) <= 0.05  # a MiB budget holds
    assert sum(extra[n] for n in within) + min(extra[n] for n in layers if n not in within) > 0.05


def test_trimming_leaves_a_clip_without_silence_unchanged(workbench, tmp_path):
    from engine.models import task_model_for

    rng = np.random.default_rng(0)
    speech = (0.3 * rng.standard_normal(16_000)).astype(np.float32)  # loud throughout
    padded = np.concatenate([np.zeros(8_000, np.float32), speech, np.zeros(8_000, np.float32)])
    soundfile.write(tmp_path / "loud.wav", speech, 16_000)
    soundfile.write(tmp_path / "padded.wav", padded, 16_000)
    folder = workbench.storage.files.resolve(workbench.get_model("tiny-whisper")["path"])
    plain = task_model_for("whisper", "asr", folder, audio_padding="longest")
    trimming = task_model_for("whisper", "asr", folder, audio_padding="longest", trim_silence_db=40.0)
    torch.manual_seed(0)
    model = plain.load().eval()
    for task_model in (plain, trimming):
        task_model.generation_max_length = 6
    item = {"file": "loud.wav", "text": ""}
    same = [task_model.predict(model, task_model.collate([task_model.encode(item, tmp_path)]))
            for task_model in (plain, trimming)]
    assert same[0] == same[1]
    np.testing.assert_array_equal(plain.encode(item, tmp_path)["input_features"],
                                  trimming.encode(item, tmp_path)["input_features"])
    long = plain.encode({"file": "padded.wav", "text": ""}, tmp_path)["input_features"]
    short = trimming.encode({"file": "padded.wav", "text": ""}, tmp_path)["input_features"]
    assert short.shape[-1] < long.shape[-1] * 0.7  # the silent second is gone


def speech_with_silent_edges(root, seconds_of_silence: float = 0.75) -> None:
    """An audiofolder of voiced 1 s clips (a tone with a syllable-rate envelope and a little
    noise) between real digital silence at both ends, as a recording's start and end are."""
    rng = np.random.default_rng(0)
    t = np.arange(16_000) / 16_000
    silence = np.zeros(int(seconds_of_silence * 16_000), np.float32)
    for split, count in (("train", 8), ("validation", 2), ("test", 2)):
        (root / split).mkdir(parents=True)
        rows = ["file_name,transcription"]
        for i in range(count):
            voiced = (0.3 * np.sin(2 * np.pi * (180 + 35 * i) * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
                      + 0.02 * rng.standard_normal(t.size)).astype(np.float32)
            soundfile.write(root / split / f"clip{i}.wav", np.concatenate([silence, voiced, silence]), 16_000)
            rows.append(f"clip{i}.wav,word number {i}")
        (root / split / "metadata.csv").write_text("\n".join(rows) + "\n")


def test_qass_trims_real_silence_and_trains_on_the_signal_beside_its_references(workbench, tmp_path):
    speech_with_silent_edges(tmp_path / "silent-edges")
    workbench.import_dataset(tmp_path / "silent-edges", "silent-edges", "asr")
    plain = recipe_for(workbench, "qlora", dataset="silent-edges", audio_padding="longest")
    qass = recipe_for(workbench, "qass", {"keep_share": 0.25}, dataset="silent-edges")
    frames = {name: recipe.sample_batches(1)[0]["input_features"].shape[-1]  # clips alike: the longest
              for name, recipe in (("qlora", plain), ("qass", qass))}
    assert frames["qlora"] >= 240  # 2.5 s of audio at 100 frames a second: the silence is there
    assert frames["qass"] < 0.6 * frames["qlora"]  # qass's encoder gets the voiced second
    report = qass.method_report
    assert report["signal_frames"]["mean_frames"] < 0.6 * frames["qlora"]
    assert report["layers_kept"] > 0 and report["saved_mib_vs_full_precision"] > 0
    train_steps(qass, 2)

    # The 16-bit references: qass with every measured layer kept (the signal half alone, at
    # 16-bit) and plain LoRA on the full-precision base, on the same data.
    everything = recipe_for(workbench, "qass", {"keep_share": 1.0}, dataset="silent-edges")
    kept = everything.method_report["keep_16bit"]
    assert len(kept) == everything.method_report["layers_measured"]
    assert everything.method_report["saved_mib_vs_full_precision"] == pytest.approx(0.0, abs=1e-9)
    assert not any(type(m).__name__ == "Linear4bit" for m in everything.model.modules())
    lora = recipe_for(workbench, "lora", dataset="silent-edges", audio_padding="longest")
    for recipe in (everything, lora):
        before = {n: p.detach().clone() for n, p in recipe.model.named_parameters() if p.requires_grad}
        train_steps(recipe, 2)
        changed = [n for n, p in recipe.model.named_parameters() if p.requires_grad and not torch.equal(before[n], p)]
        assert changed and any("lora_B" in n for n in changed)


# ---------------------------------------------------------------------- mma
def test_mma_routes_per_sequence_and_records_its_routing_over_training(workbench):
    from engine.methods.mma import RoutedLoraB, router_weights, step_metrics

    recipe = recipe_for(workbench, "mma", {"adapters": 2})
    routed = {name: m for name, m in recipe.model.named_modules() if isinstance(m, RoutedLoraB)}
    assert {m.modality for m in routed.values()} == {"audio", "text"}
    for name, module in routed.items():  # cross-attention queries run per text token
        if ".encoder_attn." in name:
            assert module.modality == ("audio" if ".k_proj." in name or ".v_proj." in name else "text")
    assert recipe.train() == "completed"
    batch = recipe.sample_batches(1)[0]
    recipe.model.eval()
    with torch.no_grad():
        recipe.model(**batch)
    clips = batch["input_features"].shape[0]
    for module in routed.values():  # one weight vector per clip, summing to one
        assert module.last_weights.shape == (clips, 2)
        torch.testing.assert_close(module.last_weights.sum(-1), torch.ones(clips))
    weights = router_weights(recipe.model)
    assert set(weights) == {"audio", "text"}
    for values in weights.values():
        assert sum(values["weights"]) == pytest.approx(1.0, abs=1e-5)
        assert values["spread"] > 0  # clips that differ are routed differently
    assert set(step_metrics(recipe.model)) == {"router/audio_w0", "router/audio_w1", "router/audio_spread",
                                               "router/text_w0", "router/text_w1", "router/text_spread"}
    report = workbench.run_method_report(recipe.run_id)
    assert report["routing_token"] == "mean log-mel spectrum"
    assert set(report["router"]) == {"audio", "text"} and len(report["layer_weights"]) == len(routed)
    history = report["history"]["entries"]
    assert [e["step"] for e in history] == [1, 2, 3] and set(history[-1]["audio"]) == {"weights", "spread"}


def test_mma_starts_equal_to_lora_of_its_rank(workbench):
    """Same seed, same A; the same B values put into both: the same logits and the same first
    gradients on a real batch (not half a LoRA through two gates of 0.5)."""
    settings = {"r": 8, "lora_dropout": 0.0}
    models = {}
    for method in ("qlora", "mma"):
        recipe = recipe_for(workbench, method, settings)
        models[method] = recipe
    batch = models["qlora"].sample_batches(1)[0]
    layers = {}
    for method, recipe in models.items():
        layers[method] = {name: module for name, module in recipe.model.named_modules()
                          if hasattr(module, "lora_B") and "default" in getattr(module, "lora_B", {})}
    assert layers["qlora"].keys() == layers["mma"].keys() and layers["qlora"]
    for name in layers["qlora"]:
        a_q, a_m = (layers[m][name].lora_A["default"].weight for m in ("qlora", "mma"))
        torch.testing.assert_close(a_q, a_m, rtol=0, atol=0)  # the same initialisation
    grads = {}
    for method, recipe in models.items():
        recipe.model.train()
        recipe.trainer.forward_backward(batch)
        grads[method] = {name: layer.lora_B["default"].weight.grad.clone()
                         for name, layer in layers[method].items()}
    for name in layers["qlora"]:  # the first gradients: LoRA's
        torch.testing.assert_close(grads["mma"][name], grads["qlora"][name], rtol=1e-4, atol=1e-6)
    generator = torch.Generator().manual_seed(0)
    for name, layer in layers["qlora"].items():
        values = torch.randn(layer.lora_B["default"].weight.shape, generator=generator) * 0.1
        for method in models:
            with torch.no_grad():
                layers[method][name].lora_B["default"].weight.copy_(values)
    logits = {}
    for method, recipe in models.items():
        recipe.model.eval()
        with torch.no_grad():
            logits[method] = recipe.model(**batch).logits
    base = models["qlora"].model
    with torch.no_grad(), base.disable_adapter():
        untouched = base(**batch).logits
    assert (logits["qlora"] - untouched).abs().max() > 1e-2  # the update is there
    torch.testing.assert_close(logits["mma"], logits["qlora"], rtol=1e-4, atol=1e-4)


def test_mma_on_a_text_model_has_one_modality_and_says_so(workbench):
    recipe = recipe_for(workbench, "mma", dataset="demo-text", model="tiny-bert")
    assert recipe.method_report["modalities"] == ["text"]
    events = " ".join(event["message"] for event in workbench.run_events(recipe.run_id))
    assert "text-only model, one modality" in events


# ---------------------------------------------------------------------- baselines
def test_the_baselines_are_methods_a_study_names(workbench):
    """16-bit LoRA (lora), DoRA on the 4-bit base (qdora) and all-linear QLoRA each make their
    own cells (test_methods trains each and checks every parameter changed)."""
    from engine.studies import Grid

    methods = ["qlora", "lora", "qdora", "qlora-all-linear", "ta-qlora"]
    plan = workbench.plan_study("demo-speech", "tiny-whisper", Grid(methods=methods, ranks=[8], seeds=[1]))
    assert [cell["method"] for cell in plan["cells"]] == methods
    settings = {cell["method"]: run["method_settings"] for cell, run in zip(plan["cells"], plan["plans"])}
    assert settings["qdora"]["use_dora"] and not settings["qlora"]["use_dora"]
    assert settings["qlora-all-linear"]["target_modules"] == "all-linear"
    assert all(settings[m]["r"] == 8 for m in methods)  # the study's rank reaches every one


# ---------------------------------------------------------------------- exports
@pytest.mark.parametrize("method", ["ta-qlora", "mma"])
def test_unmergeable_methods_refuse_a_merged_export(workbench, tmp_path, method):
    from engine.export import RunArtifacts, export_run

    folder = workbench.storage.files.resolve(workbench.get_model("tiny-whisper")["path"])
    summary = {"id": 7, "method": method, "task": "asr",
               "settings": {"training": {}, "method": {}}}
    artifacts = RunArtifacts(summary=summary, adapter_dir=tmp_path / "adapter", base_dir=folder,
                             family="whisper", labels=[], is_adapter=True)
    with pytest.raises(ExportError, match="cannot be exported merged.*export the adapter"):
        export_run(artifacts, "merged", tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_qass_run_merges_onto_its_kept_and_quantised_layers(workbench, tmp_path):
    from transformers import WhisperForConditionalGeneration

    from engine.models import task_model_for

    recipe = recipe_for(workbench, "qass", {"keep_share": 0.25})
    from storage import utc_now

    assert recipe.train() == "completed"
    workbench.storage.update_run(recipe.run_id, status="completed", finished_at=utc_now())  # as the worker
    folder = workbench.export_run(recipe.run_id, "merged", tmp_path / "merged")
    merged = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    stock = task_model_for("whisper", "asr", recipe.model_dir)  # the 30 s window exports run
    batch = stock.collate([stock.encode(item, recipe.dataset_dir) for item in recipe.eval_items[:3]])
    _, trained = workbench.load_trained(recipe.run_id)  # kept layers from the run's report
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, trained(**batch).logits, rtol=1e-2, atol=5e-3)
    for name in recipe.method_report["keep_16bit"]:
        module = trained.base_model.model.get_submodule(name)
        assert type(getattr(module, "base_layer", module)) is nn.Linear, name


@pytest.mark.parametrize("seed", range(6))
def test_silence_edges_equal_librosa_trim(seed):
    """qass's trimming (engine.data.audio.silence_edges, written out to keep librosa's ~60 MB of
    numba and scikit-learn off the GPU kit) cuts where librosa.effects.trim cuts."""
    librosa = pytest.importorskip("librosa")
    from engine.data.audio import silence_edges, trim_silence

    rng = np.random.default_rng(seed)
    lead, body, tail = (int(n) for n in rng.integers(0, 20_000, size=3))
    body = max(body, 1)
    clip = np.concatenate([rng.normal(0, 1e-4, lead), rng.normal(0, 0.3, body) * np.hanning(body),
                           rng.normal(0, 1e-4, tail)]).astype(np.float32)
    for top_db in (20.0, 40.0, 60.0):
        expected = librosa.effects.trim(clip, top_db=top_db)[1]
        assert silence_edges(clip, top_db) == tuple(int(i) for i in expected), (seed, top_db)
        np.testing.assert_array_equal(trim_silence(clip, top_db), librosa.effects.trim(clip, top_db=top_db)[0])
    silent = np.zeros(5_000, np.float32)
    assert silence_edges(silent, 40.0) == tuple(int(i) for i in librosa.effects.trim(silent, top_db=40.0)[1])
    assert trim_silence(silent, 40.0).size == 5_000  # all silence: kept whole
