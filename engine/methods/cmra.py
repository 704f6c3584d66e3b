"""Cross-modality rank allocation: one budget of trainable adapter parameters, split between the
audio encoder, the cross-attention and the text decoder, and across depth, by a strategy.

A LoRA adapter of rank r on a layer with k inputs and d outputs costs r·(k + d) parameters.
Given the budget P, every candidate layer m (the target layers) gets a rank r_m with
Σ r_m (k_m + d_m) ≤ P, as close to P as whole ranks allow (what is left is smaller than
one rank step of any layer that could still grow):

- uniform: the same rank everywhere;
- ratio: the budget is split between the parts by ``ratio`` (audio encoder : cross-attention
  : text decoder), then uniform within each part;
- proportional: r_m ∝ min(k_m, d_m), the layer's width (the largest rank it can have);
- importance: r_m ∝ the layer's mean importance per weight, scored on a few real training
  batches before training: |W ⊙ ∂L/∂W| (gradient × weight, first-order Taylor) or the mean
  absolute output activation.

The ranks go to peft as ``rank_pattern`` and ``alpha_pattern`` (alpha_m = lora_alpha · r_m / r,
so every layer keeps LoRA's scaling lora_alpha / r), on the 4-bit base of ``qlora``. The run
records the allocation (MethodContext.report) and the run page draws it. Anchors: AdaLoRA
moves rank during training; S2-LoRA on Whisper matched AdaLoRA with few parameters. Mergeable
like LoRA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from engine.errors import MethodError, SettingsError
from engine.methods.custom_lora import (AUDIO_ENCODER, CROSS_ATTENTION, TEXT_DECODER, group_of)
from engine.methods.lora import resolve_targets
from engine.methods.qlora import QLoraSettings, apply_qlora, keep_training_layout, quantization_kwargs
from engine.methods.registry import MethodContext, make_method
from engine.settings import setting

STRATEGIES = ["uniform", "ratio", "proportional", "importance"]
RATIO_GROUPS = (AUDIO_ENCODER, CROSS_ATTENTION, TEXT_DECODER)


@dataclass
class CmraSettings(QLoraSettings):
    r: int = setting(8, "Reference rank: with budget 0, the budget is what LoRA at this rank on "
                     "the same targets trains; alpha scales as lora_alpha / r on every layer.",
                     min=1, max=1024)
    budget: int = setting(0, "Trainable adapter parameters to share out (heads not counted); 0: "
                          "what plain LoRA at rank r on the same targets trains.", min=0)
    strategy: str = setting("importance", "How the budget is split: uniform (same rank "
                            "everywhere), ratio (by part, see ratio), proportional (to layer "
                            "width), importance (scored on real batches before training).",
                            choices=STRATEGIES)
    ratio: str = setting("2:1:1", "strategy=ratio: shares of audio encoder : cross-attention : "
                         "text decoder (parts the model lacks are left out).")
    importance_score: str = setting("gradient-x-weight", "strategy=importance: |W ⊙ ∂L/∂W| "
                                    "(gradient-x-weight) or mean |output| (activation).",
                                    choices=["gradient-x-weight", "activation"])
    importance_batches: int = setting(2, "strategy=importance: training batches scored before "
                                      "training.", min=1, max=64)
    min_rank: int = setting(1, "Smallest rank of a layer (0: a layer may get no adapter).", min=0, max=1024)
    max_rank: int = setting(64, "Largest rank of a layer.", min=1, max=4096)

    def validate(self) -> None:
        super().validate()
        parse_ratio(self.ratio)
        if self.min_rank > self.max_rank:
            raise SettingsError(f"min_rank ({self.min_rank}) must not exceed max_rank ({self.max_rank})")
        if self.init_lora_weights == "loftq":
            raise SettingsError("cmra does not combine with init_lora_weights=loftq")


def parse_ratio(text: str) -> dict[str, float]:
    try:
        values = [float(part) for part in text.split(":")]
    except ValueError:
        values = []
    if len(values) != 3 or any(v < 0 or not math.isfinite(v) for v in values) or sum(values) <= 0:
        raise SettingsError(f"ratio must be three non-negative numbers a:b:c (audio encoder : "
                            f"cross-attention : text decoder), got {text!r}")
    return dict(zip(RATIO_GROUPS, values))


# ---------------------------------------------------------------------- allocation
def allocate(costs: dict[str, int], weights: dict[str, float], budget: int, *, min_rank: int,
             max_rank: int) -> dict[str, int]:
    """Whole ranks r_m in [min_rank, max_rank] with Σ r_m·costs[m] ≤ budget, following
    r_m ∝ weights[m] (water-filling under the caps), then topped up one rank at a time where
    the continuous share is furthest ahead of the whole one, until no layer fits another."""
    floor_cost = sum(min_rank * c for c in costs.values())
    if floor_cost > budget:
        raise MethodError(f"a budget of {budget:,} parameters is below min_rank {min_rank} on "
                          f"every layer ({floor_cost:,}); raise the budget or lower min_rank")
    target = {m: float(min_rank) for m in costs}
    free = {m for m in costs if weights.get(m, 0) > 0 and max_rank > min_rank}
    left = budget - floor_cost
    while free and left > 1e-9:  # share what is left in proportion; cap and repeat
        scale = left / sum(weights[m] * costs[m] for m in free)
        capped = {m for m in free if target[m] + scale * weights[m] >= max_rank}
        if not capped:
            for m in free:
                target[m] += scale * weights[m]
            break
        for m in capped:
            left -= (max_rank - target[m]) * costs[m]
            target[m] = float(max_rank)
        free -= capped
    ranks = {m: min(max_rank, int(math.floor(target[m] + 1e-9))) for m in costs}
    used = sum(ranks[m] * costs[m] for m in costs)
    while True:  # top up: largest shortfall first, while a rank step still fits
        growable = [m for m in costs if ranks[m] < max_rank and used + costs[m] <= budget]
        if not growable:
            return ranks
        best = max(growable, key=lambda m: (target[m] - ranks[m], -costs[m], m))
        ranks[best] += 1
        used += costs[best]


def ratio_allocate(costs: dict[str, int], groups: dict[str, str], shares: dict[str, float],
                   budget: int, *, min_rank: int, max_rank: int) -> dict[str, int]:
    """Each part's share of the budget (parts the model lacks left out), uniform within it;
    then what rounding left over is topped up across the whole model."""
    present = {g: shares.get(g, 0.0) for g in set(groups.values())}
    if sum(present.values()) <= 0:
        raise MethodError(f"ratio gives no budget to the parts this model has ({', '.join(sorted(present))})")
    total = sum(present.values())
    ranks: dict[str, int] = {}
    for group, share in present.items():
        members = {m: c for m, c in costs.items() if groups[m] == group}
        part = int(budget * share / total)
        if share <= 0 or part < min_rank * sum(members.values()):
            ranks.update({m: min_rank for m in members})  # below its floor: the floor
            continue
        ranks.update(allocate(members, {m: 1.0 for m in members}, part, min_rank=min_rank,
                              max_rank=max_rank))
    used = sum(ranks[m] * costs[m] for m in costs)
    if used > budget:
        raise MethodError(f"a budget of {budget:,} parameters is below min_rank {min_rank} on "
                          f"every layer ({used:,}); raise the budget or lower min_rank")
    while True:  # the parts' remainders: grow the part furthest below its share
        growable = [m for m in costs if ranks[m] < max_rank and used + costs[m] <= budget
                    and present[groups[m]] > 0]
        if not growable:
            return ranks
        spent = {g: sum(ranks[m] * costs[m] for m in costs if groups[m] == g) for g in present}
        best = min(growable, key=lambda m: (spent[groups[m]] / present[groups[m]], ranks[m], m))
        ranks[best] += 1
        used += costs[best]


# ---------------------------------------------------------------------- scoring
def float_inputs(batch: dict, device, dtype) -> dict:
    return {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in batch.items()}


def importance_scores(model: nn.Module, names: list[str], batches: list[dict], score: str) -> dict[str, float]:
    """Mean importance per weight of each named linear layer over ``batches`` (the loss the
    model computes from each batch's labels). gradient-x-weight: mean |W ⊙ ∂L/∂W|, where
    ∂L/∂W = gᵀx comes from the layer's input x and output gradient g (hooks), so frozen and
    4-bit weights need no gradient of their own; activation: mean |y| of the layer's output."""
    from engine.methods.fast_lora import base_weight

    modules = dict(model.named_modules())
    totals = {name: 0.0 for name in names}
    handles = []

    def hook(name):
        def forward_hook(module, args, output):
            x = args[0].detach()
            if score == "activation":
                totals[name] += float(output.detach().float().abs().mean())
                return None
            if not output.requires_grad:  # a frozen model: start the graph here
                output = output.detach().requires_grad_(True)

            def backward_hook(grad):
                g = grad.reshape(-1, grad.shape[-1]).float()
                gradient = g.t() @ x.reshape(-1, x.shape[-1]).float()  # (out, in) = ∂L/∂W
                weight = base_weight(module, torch.float32)
                totals[name] += float((weight * gradient).abs().mean())
            output.register_hook(backward_hook)
            return output
        return forward_hook

    for name in names:
        handles.append(modules[name].register_forward_hook(hook(name)))
    parameter = next(p for p in model.parameters() if p.is_floating_point())
    was_training = model.training
    model.eval()  # no dropout: the same scores every time
    try:
        for batch in batches:
            inputs = float_inputs(batch, parameter.device, parameter.dtype)
            with torch.enable_grad():
                loss = model(**inputs).loss
                if score != "activation" and loss.requires_grad:
                    loss.float().backward()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {name: totals[name] / max(1, len(batches)) for name in names}


# ---------------------------------------------------------------------- the method
def candidate_layers(model: nn.Module, settings: CmraSettings, context: MethodContext) -> list[str]:
    """Qualified names of the linear layers the targets name (heads never)."""
    targets = resolve_targets(settings, context)
    skip = set(context.head_modules) | set(context.unquantized_modules)
    names = []
    for name in context.linear_module_names:
        parts = name.split(".")
        if skip & set(parts):
            continue
        if targets == "all-linear" or parts[-1] in targets:
            names.append(name)
    if not names:
        raise MethodError("cmra found no layer to adapt among its targets")
    return names


def plan_allocation(model: nn.Module, settings: CmraSettings, context: MethodContext) -> dict:
    """The allocation as the report records it: budget, strategy, ranks, parts, scores."""
    names = candidate_layers(model, settings, context)
    modules = dict(model.named_modules())
    costs = {n: modules[n].in_features + modules[n].out_features for n in names}
    groups = {n: group_of(n, context.task) for n in names}
    budget = settings.budget or settings.r * sum(costs.values())
    strategy, scores, note = settings.strategy, {}, ""
    if strategy == "importance" and context.sample_batches is None:
        strategy, note = "uniform", "no training data at hand (an estimate): uniform ranks"
    if strategy == "uniform":
        weights = {n: 1.0 for n in names}
    elif strategy == "proportional":
        weights = {n: float(min(modules[n].in_features, modules[n].out_features)) for n in names}
    elif strategy == "importance":
        batches = context.sample_batches(settings.importance_batches)
        scores = importance_scores(model, names, batches, settings.importance_score)
        mean = sum(scores.values()) / len(scores) or 1.0
        weights = {n: scores[n] / mean for n in names}
    if strategy == "ratio":
        ranks = ratio_allocate(costs, groups, parse_ratio(settings.ratio), budget,
                               min_rank=settings.min_rank, max_rank=settings.max_rank)
    else:
        ranks = allocate(costs, weights, budget, min_rank=settings.min_rank, max_rank=settings.max_rank)
    parts = {}
    for n in names:
        part = parts.setdefault(groups[n], {"layers": 0, "params": 0})
        part["layers"] += 1
        part["params"] += ranks[n] * costs[n]
    return {"method": "cmra", "strategy": settings.strategy, "used_strategy": strategy, "note": note,
            "budget": budget, "used": sum(ranks[n] * costs[n] for n in names),
            "layers": [{"name": n, "group": groups[n], "rank": ranks[n], "cost_per_rank": costs[n],
                        "params": ranks[n] * costs[n], "score": scores.get(n)} for n in names],
            "parts": parts}


def apply_cmra(model, settings: CmraSettings, context: MethodContext):
    keep_training_layout(model)  # scoring runs the 4-bit model before training (see qlora)
    report = context.report
    if not report.get("layers"):  # a resumed run keeps the ranks it started with
        report.update(plan_allocation(model, settings, context))
    ranks = {layer["name"]: layer["rank"] for layer in report["layers"] if layer["rank"] > 0}
    if not ranks:
        raise MethodError("cmra gave every layer rank 0; raise the budget or min_rank")
    scale = settings.lora_alpha / settings.r
    peft_model = apply_qlora(
        model, settings, context, target_modules=sorted(ranks),
        rank_pattern=dict(ranks), alpha_pattern={n: scale * r for n, r in ranks.items()})
    parts = ", ".join(f"{g} {p['params']:,}" for g, p in report["parts"].items())
    context.log(f"cmra ({report['used_strategy']}): {report['used']:,} of {report['budget']:,} "
                f"adapter parameters over {len(ranks)} layers, ranks {min(ranks.values())}-"
                f"{max(ranks.values())}; {parts}" + (f" ({report['note']})" if report["note"] else ""))
    return peft_model


METHOD = make_method(
    name="cmra",
    help="Cross-modality rank allocation: a budget of adapter parameters shared between "
         "audio encoder, cross-attention and text decoder by strategy, on a 4-bit base.",
    settings_cls=CmraSettings,
    apply=apply_cmra,
    load_kwargs=quantization_kwargs,
    budget_setting="budget",  # studies' --budgets set it (engine/studies.py); --ranks set r
    idea="Instead of one rank everywhere, give each layer a rank from one parameter budget: "
         "by a fixed ratio between the audio encoder, the cross-attention and the text "
         "decoder, by layer width, or by importance scored on real batches before training "
         "(gradient × weight). The ranks go to peft's rank_pattern; the run page draws them.",
    formula="r_m ∝ w_m  with  Σ_m r_m (k_m + d_m) ≤ P;  α_m = α · r_m / r;  "
            "importance w_m = mean |W_m ⊙ ∂L/∂W_m| on a few batches",
    advantages="Equal trainable parameters to plain QLoRA, placed where they matter; the "
               "allocation is a plain LoRA adapter (mergeable, loads in peft).",
    limitations="Importance is measured once, before training (AdaLoRA re-allocates during "
                "training); scoring costs a few forward/backward passes at start-up.",
)
