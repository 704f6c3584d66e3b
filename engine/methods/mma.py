"""Modality-routed adapters (after LaVIN's Mixture-of-Modality Adaptation): several low-rank
adapters per targeted layer and a small router that weighs them per input, on a 4-bit base.

Each targeted layer gets n = ``adapters`` LoRA pairs (B_i, A_i) of rank r/n and a router R:

    h = W x + (α/r) Σ_i w_i(x) · B_i A_i x,    w(x) = softmax(R · pool(A x))

where A x stacks every A_i x (r channels), so the router reads a learned projection of the
input (as MMA's router projects the pooled input) at n·r parameters per layer; the adapters
together cost what LoRA at rank r costs. pool is the
mean over time for layers whose input is bidirectional (the audio encoder, the cross-attention
keys and values, which read the encoder's output, and text encoders), and no pooling (one
weight vector per token) for the causal text decoder: a mean over the whole sequence would let
a token's routing see the tokens after it, and generation sees one token at a time. In Whisper
the audio path is the encoder and the cross-attention, the text path the decoder's
self-attention and feed-forward; the router weights of each path are logged every step
(``router/audio_w0``, ...). A text-only model has one modality: the routers still weigh the
adapters per input, the log says so and only ``router/text_w*`` appear.

Why modules of our own (custom_lora.py): the stacked A_i are exactly peft's ``lora_A`` at rank
r; ``lora_B`` becomes a ``RoutedLoraB`` (an ``nn.Linear`` holding the n B_i side by side,
plus the router). B and R start at zero: step 0 is the base model and the adapters start
equally weighted. Not mergeable: the weights depend on the input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from engine.errors import MethodError, SettingsError
from engine.methods.custom_lora import (ADAPTER, AUDIO_ENCODER, CROSS_ATTENTION, TEXT_DECODER,
                                        FourBitAdapterSettings, as_qlora, group_of,
                                        load_custom_adapter, lora_layers, short_name, swap_factor)
from engine.methods.qlora import apply_qlora, quantization_kwargs
from engine.methods.registry import MethodContext, make_method
from engine.settings import setting


@dataclass
class MmaSettings(FourBitAdapterSettings):
    r: int = setting(8, "Rank of a layer's adapters together, split evenly between them (as "
                     "LoRA's r: the same r trains the same LoRA parameters plus the routers).",
                     min=2, max=1024)
    adapters: int = setting(2, "Adapters per layer that the router weighs (each of rank "
                            "r / adapters).", min=2, max=8)

    def validate(self) -> None:
        super().validate()
        if self.r % self.adapters:
            raise SettingsError(f"r ({self.r}) must split evenly between {self.adapters} adapters")


class RoutedLoraB(nn.Linear):
    """peft's ``lora_B`` for ``n`` adapters of rank ``r`` (each) side by side, weighed by a router.

    ``weight`` (out, n·r) holds B_1 .. B_n; ``router`` (n, n·r) reads the stacked A_i x.
    Input h = A x: (B, T, n·r) or (T, n·r); ``pooled`` routes on the mean over T, otherwise per
    token. The last weights it used are kept (detached, mean over the batch) for the log.
    """

    def __init__(self, n: int, r: int, out_features: int, pooled: bool, device=None, dtype=None):
        super().__init__(n * r, out_features, bias=False, device=device, dtype=dtype)
        self.n, self.r, self.pooled = n, r, pooled
        self.router = nn.Parameter(torch.zeros(n, n * r, device=device, dtype=dtype))
        self.last_weights: torch.Tensor | None = None

    def routing(self, h: torch.Tensor) -> torch.Tensor:
        """Softmax weights (…, n): one vector per example (pooled) or per token."""
        source = h.mean(dim=-2, keepdim=True) if self.pooled and h.dim() >= 3 else h
        return torch.softmax(source @ self.router.to(h.dtype).t(), dim=-1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        weights = self.routing(h)  # (B, 1 or T, n)
        self.last_weights = weights.detach().reshape(-1, self.n).float().mean(0)
        gated = h * weights.repeat_interleave(self.r, dim=-1)  # w_i scales A_i x
        return nn.functional.linear(gated, self.weight)


def pooled_input(name: str, task: str) -> bool:
    """Whether a layer's input is bidirectional (mean over time is allowed)."""
    group = group_of(name, task)
    if group == CROSS_ATTENTION:
        return name.rsplit(".", 1)[-1] in {"k_proj", "v_proj"}  # they read the encoder's output
    return group != TEXT_DECODER


def modality(name: str, task: str) -> str:
    return "audio" if group_of(name, task) in (AUDIO_ENCODER, CROSS_ATTENTION) else "text"


def add_routers(model: nn.Module, task: str, adapters: int) -> list[str]:
    """Swap every LoRA layer's ``lora_B`` (zero, r -> out) for a RoutedLoraB of n adapters."""
    converted = []
    for name, layer in list(lora_layers(model)):
        old = layer.lora_B[ADAPTER]
        if old.in_features % adapters:
            raise MethodError(f"{name}: rank {old.in_features} is not {adapters} adapters")
        short = short_name(name)
        new = RoutedLoraB(adapters, old.in_features // adapters, old.out_features,
                          pooled_input(short, task), device=old.weight.device, dtype=old.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(old.weight)
        new.requires_grad_(old.weight.requires_grad)
        new.modality = modality(short, task)
        swap_factor(layer, "lora_B", new)
        converted.append(short)
    return converted


def router_weights(model: nn.Module) -> dict[str, list[float]]:
    """Mean router weights of the last forward pass per modality: {"audio": [w0, w1, ...]}."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, RoutedLoraB) and module.last_weights is not None:
            sums[module.modality] = sums.get(module.modality, 0) + module.last_weights
            counts[module.modality] = counts.get(module.modality, 0) + 1
    return {m: (sums[m] / counts[m]).tolist() for m in sorted(sums)}


def step_metrics(model: nn.Module) -> dict[str, float]:
    return {f"router/{m}_w{i}": w for m, weights in router_weights(model).items()
            for i, w in enumerate(weights)}


def apply_mma(model, settings: MmaSettings, context: MethodContext):
    # peft builds one LoRA pair of rank r per layer: A is the n stacked A_i, B is swapped
    peft_model = apply_qlora(model, as_qlora(settings), context)
    converted = add_routers(peft_model, context.task, settings.adapters)
    modalities = sorted({modality(name, context.task) for name in converted})
    context.report.update({"method": "mma", "adapters": settings.adapters, "modalities": modalities,
                           "layers": [{"name": n, "modality": modality(n, context.task),
                                       "pooled": pooled_input(n, context.task)} for n in converted]})
    if modalities == ["text"]:
        context.log(f"mma: text-only model, one modality: {len(converted)} layers route between "
                    f"{settings.adapters} adapters per input; router weights logged for text only")
    else:
        context.log(f"mma: {settings.adapters} routed adapters in each of {len(converted)} layers "
                    f"({', '.join(modalities)} paths); router weights logged per modality")
    return peft_model


def load_mma(base, adapter_dir, settings: MmaSettings, context: MethodContext):
    return load_custom_adapter(base, adapter_dir,
                               lambda model: add_routers(model, context.task, settings.adapters))


METHOD = make_method(
    name="mma",
    help="Modality-routed adapters (LaVIN's MMA): several adapters per layer and a router "
         "weighing them per input; audio and text paths logged apart; 4-bit base.",
    settings_cls=MmaSettings,
    apply=apply_mma,
    load_kwargs=quantization_kwargs,
    load_adapter=load_mma,
    step_metrics=step_metrics,
    merge_refusal="its adapters are weighed per input by a router, so no single weight "
                  "update stands for them",
    idea="Give each targeted layer a few low-rank adapters and a small router that mixes them "
         "per input from a projection of the pooled input, as LaVIN's Mixture-of-Modality "
         "Adaptation does between image and text. In Whisper the encoder and cross-attention "
         "(audio) and the decoder (text) route on their own inputs; the weights are logged "
         "per modality.",
    formula="h = W_nf4 x + (α/r) Σ_i w_i B_i A_i x,  w = softmax(R · mean_t(A x))  "
            "(per token in the causal decoder)",
    advantages="Input-dependent adaptation for the parameters of LoRA at rank r plus tiny "
               "routers; starts as the base model with the adapters equally weighted.",
    limitations="Cannot be merged (adapter export only); a little slower than LoRA (the "
                "router and the gating); with one modality (text models) it is a routed "
                "mixture with nothing modality-specific; pooling includes padded frames.",
)
