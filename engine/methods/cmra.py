"""Cross-modality rank allocation: one budget of trainable adapter parameters, split between the
audio encoder, the cross-attention and the text decoder, and across depth, by a strategy.

A LoRA adapter of rank r on a layer with k inputs and d outputs costs r·(k + d) parameters.
Given the budget P, every candidate layer m (the target layers) gets a rank r_m with
Σ r_m (k_m + d_m) ≤ P, as close to P as whole ranks allow (what is left is smaller than
one rank step of any layer that could still grow):

- uniform: the same rank everywhere;
- ratio: the budget is split between the parts by ``ratio`` (audio encoder : cross-attention
  : text decoder), then uniform within each part;
- proportional: r_m ∝ the effective rank of the layer's frozen weight, exp(entropy of its
  normalised singular values) (Roy & Vetterli 2007): how many directions the pretrained layer
  really uses. Layers of one shape differ in it (in Whisper and MiniLM every targeted layer has
  the same width, so proportion to width was uniform under another name); it is at most the
  width, so wider layers still tend to get more. Needs no data: read from the weights once;
- importance: r_m ∝ the layer's mean importance per weight, scored on a few real training
  batches before training: |W ⊙ ∂L/∂W| (gradient × weight, first-order Taylor) or the mean
  absolute output activation. Scoring takes gradients with ``torch.autograd.grad`` of the
  layers' outputs only, so no parameter is left holding a ``.grad`` (a head's would otherwise
  be added to its first training step).

Step size: with LoRA's scaling α/r on every layer, a layer given a higher rank takes larger
steps (after one Adam step ‖ΔW‖ grows like √r_m), so ranks and step sizes would be confounded.
``scaling=rank-stable`` (the default) scales each layer by α/√(r·r_m) (rsLoRA's α/√r_m, anchored
so that a layer at the reference rank r gets exactly LoRA's α/r: uniform cmra is QLoRA);
``scaling=lora`` keeps α/r everywhere. The ranks and scalings go to peft as ``rank_pattern``
and ``alpha_pattern``, on the 4-bit base of ``qlora``. The run records the allocation
(MethodContext.report: every layer's rank, scaling and score or effective rank) and the run
page draws it. Anchors: AdaLoRA moves rank during training; S2-LoRA on Whisper matched AdaLoRA
with few parameters; rsLoRA (Kalajdzievski 2023) for the scaling. Mergeable like LoRA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from engine.errors import MethodError, SettingsError
from engine.methods.custom_lora import AUDIO_ENCODER, CROSS_ATTENTION, TEXT_DECODER, group_of
from engine.methods.fast_lora import base_weight
from engine.methods.lora import resolve_targets
from engine.methods.qlora import QLoraSettings, apply_qlora, keep_training_layout, quantization_kwargs
from engine.methods.registry import MethodContext, make_method
from engine.settings import setting

STRATEGIES = ["uniform", "ratio", "proportional", "importance"]
SCALINGS = ["rank-stable", "lora"]
RATIO_GROUPS = (AUDIO_ENCODER, CROSS_ATTENTION, TEXT_DECODER)


@dataclass
class CmraSettings(QLoraSettings):
    r: int = setting(8, "Reference rank: with budget 0, the budget is what LoRA at this rank on "
                     "the same targets trains; alpha scales as lora_alpha / r on every layer.",
                     min=1, max=1024)
    budget: int = setting(0, "Trainable adapter parameters to share out (heads not counted); 0: "
                          "what plain LoRA at rank r on the same targets trains.", min=0)
    strategy: str = setting("importance", "How the budget is split: uniform (same rank "
                            "everywhere), ratio (by part, see ratio), proportional (to the "
                            "effective rank of each layer's frozen weight), importance (scored "
                            "on real batches before training).", choices=STRATEGIES)
    ratio: str = setting("2:1:1", "strategy=ratio: shares of audio encoder : cross-attention : "
                         "text decoder (parts the model lacks are left out).")
    importance_score: str = setting("gradient-x-weight", "strategy=importance: |W ⊙ ∂L/∂W| "
                                    "(gradient-x-weight) or mean |output| (activation).",
                                    choices=["gradient-x-weight", "activation"])
    importance_batches: int = setting(2, "strategy=importance: training batches scored before "
                                      "training.", min=1, max=64)
    min_rank: int = setting(1, "Smallest rank of a layer (0: a layer may get no adapter).", min=0, max=1024)
    max_rank: int = setting(64, "Largest rank of a layer.", min=1, max=4096)
    scaling: str = setting("rank-stable", "Each layer's update scaling: rank-stable "
                           "(α/√(r·r_m): comparable step sizes whatever a layer's rank r_m, "
                           "α/r at the reference rank) or lora (α/r everywhere: higher-rank "
                           "layers take larger steps).", choices=SCALINGS)

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
    ∂L/∂W = gᵀx comes from the layer's input x and output gradient g, so frozen and 4-bit
    weights need no gradient of their own; activation: mean |y| of the layer's output.

    The gradients come from ``torch.autograd.grad`` of the layers' outputs, never ``backward``:
    no parameter is left holding a ``.grad`` (a trainable head's would be added to its first
    training step, a frozen weight's would only cost memory). The graph starts at the inputs
    (float inputs and the token embeddings' output), so it exists with every weight frozen."""
    modules = dict(model.named_modules())
    totals = {name: 0.0 for name in names}
    seen: list[tuple[str, torch.Tensor, torch.Tensor]] = []  # (layer, input, output) of one pass

    def hook(name):
        def forward_hook(module, args, output):
            if score == "activation":
                totals[name] += float(output.detach().float().abs().mean())
            elif output.requires_grad:
                seen.append((name, args[0].detach(), output))
        return forward_hook

    def track(module, args, output):  # token embeddings of a frozen model: start the graph here
        return output if output.requires_grad else output.detach().requires_grad_(True)

    handles = [modules[name].register_forward_hook(hook(name)) for name in names]
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and score != "activation":
        handles.append(embeddings.register_forward_hook(track))
    parameter = next(p for p in model.parameters() if p.is_floating_point())
    was_training = model.training
    model.eval()  # no dropout: the same scores every time
    try:
        for batch in batches:
            inputs = float_inputs(batch, parameter.device, parameter.dtype)
            seen.clear()
            with torch.enable_grad():
                for value in inputs.values():
                    if value.is_floating_point() and score != "activation":
                        value.requires_grad_(True)
                loss = model(**inputs).loss
            if not seen or not loss.requires_grad:
                continue
            grads = torch.autograd.grad(loss.float(), [output for _, _, output in seen],
                                        allow_unused=True)
            for (name, x, _), g in zip(seen, grads):
                if g is None:
                    continue
                gradient = g.reshape(-1, g.shape[-1]).float().t() @ x.reshape(-1, x.shape[-1]).float()
                weight = base_weight(modules[name], torch.float32)  # (out, in) like ∂L/∂W
                totals[name] += float((weight * gradient).abs().mean())
            seen.clear()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {name: totals[name] / max(1, len(batches)) for name in names}


def effective_rank(weight: torch.Tensor) -> float:
    """exp of the entropy of the normalised singular values (Roy & Vetterli 2007): 1 for a
    rank-1 matrix, min(k, d) when every direction counts alike."""
    singular = torch.linalg.svdvals(weight.detach().float())
    p = singular / singular.sum().clamp_min(1e-12)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def layer_scaling(settings: CmraSettings, rank: int) -> float:
    """A layer's update scaling at ``rank``: LoRA's (α/r, or α/√r with use_rslora) at the
    reference rank r; with ``scaling=rank-stable`` times √(r / rank)."""
    reference = settings.lora_alpha / (math.sqrt(settings.r) if settings.use_rslora else settings.r)
    if settings.scaling == "lora" or rank == 0:
        return reference
    return reference * math.sqrt(settings.r / rank)


def alpha_for(settings: CmraSettings, rank: int) -> float:
    """peft's lora_alpha that gives ``layer_scaling`` (peft divides by r, or √r with rsLoRA)."""
    return layer_scaling(settings, rank) * (math.sqrt(rank) if settings.use_rslora else rank)


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
        scores = {n: effective_rank(base_weight(modules[n], torch.float32)) for n in names}
        weights = dict(scores)
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
    score_name = {"proportional": "effective rank of the frozen weight",
                  "importance": settings.importance_score}.get(strategy, "")
    return {"method": "cmra", "strategy": settings.strategy, "used_strategy": strategy, "note": note,
            "budget": budget, "used": sum(ranks[n] * costs[n] for n in names),
            "scaling": settings.scaling, "score": score_name,
            "layers": [{"name": n, "group": groups[n], "rank": ranks[n], "cost_per_rank": costs[n],
                        "params": ranks[n] * costs[n], "score": scores.get(n),
                        "scaling": layer_scaling(settings, ranks[n])} for n in names],
            "parts": parts}


def apply_cmra(model, settings: CmraSettings, context: MethodContext):
    keep_training_layout(model)  # scoring runs the 4-bit model before training (see qlora)
    report = context.report
    if not report.get("layers"):  # a resumed run keeps the ranks it started with
        report.update(plan_allocation(model, settings, context))
    ranks = {layer["name"]: layer["rank"] for layer in report["layers"] if layer["rank"] > 0}
    if not ranks:
        raise MethodError("cmra gave every layer rank 0; raise the budget or min_rank")
    peft_model = apply_qlora(
        model, settings, context, target_modules=sorted(ranks), rank_pattern=dict(ranks),
        alpha_pattern={n: alpha_for(settings, r) for n, r in ranks.items()})
    parts = ", ".join(f"{g} {p['params']:,}" for g, p in report["parts"].items())
    context.log(f"cmra ({report['used_strategy']}): {report['used']:,} of {report['budget']:,} "
                f"adapter parameters over {len(ranks)} layers, ranks {min(ranks.values())}-"
                f"{max(ranks.values())}, {settings.scaling} scaling; {parts}"
                + (f" ({report['note']})" if report["note"] else ""))
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
         "decoder, by the effective rank of each layer's pretrained weight, or by importance "
         "scored on real batches before training (gradient × weight). Each layer's scaling "
         "keeps its step size comparable whatever its rank (rsLoRA-style). The ranks go to "
         "peft's rank_pattern; the run page draws them.",
    formula="r_m ∝ w_m  with  Σ_m r_m (k_m + d_m) ≤ P;  scaling_m = α / √(r · r_m);  "
            "importance w_m = mean |W_m ⊙ ∂L/∂W_m| on a few batches; proportional w_m = "
            "exp H(σ(W_m) / Σσ)",
    advantages="Equal trainable parameters to plain QLoRA, placed where they matter; the "
               "allocation is a plain LoRA adapter (mergeable, loads in peft).",
    limitations="Importance is measured once, before training (AdaLoRA re-allocates during "
                "training); scoring costs a few forward/backward passes at start-up.",
)
