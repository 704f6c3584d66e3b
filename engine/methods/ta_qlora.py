"""Temporal-aware QLoRA: encoder adapters that see neighbouring frames (a depthwise convolution
over time inside the rank-r bottleneck), on a 4-bit base; decoder layers keep plain LoRA.

A per-frame LoRA update ``B A x_t`` cannot use the frames around t. Here the encoder's update
is ``B conv_t(A x)``: A projects each frame to r channels, a depthwise 1-D convolution (one
kernel of ``temporal_kernel_size`` taps per channel) mixes each channel over neighbouring
frames, B projects back. The kernel starts as the identity (centre tap 1) and B at zero, so
step 0 is the 4-bit base exactly, and training starts as plain QLoRA from which the kernel can
move away. Neighbouring work: GC-LoRA (Conformer-style convolution on Whisper's encoder
attention output, up to 10.9 % relative WER reduction). Not mergeable: a convolution over time
is not a weight matrix.

The kernel must be able to leave the identity, or the run tests per-frame LoRA again. No
start can give it gradient at step 0 while step 0 stays the base (it sits between A and B = 0:
whatever multiplies a zero B gets no gradient); from step 1 on it has gradient, and it trains at
``temporal_lr_ratio`` times the run's learning rate (its own AdamW group, LoRA+-style, without
weight decay, which would pull it to zero rather than to the identity). Every step logs how far
the kernels moved from the identity (``temporal/kernel_drift``) and how much of their weight
sits on neighbouring frames (``temporal/neighbour_share``); the run's method report keeps both
per layer and over training. The layers stay on the engine's fused LoRA path
(fast_lora.LoraLinearFunction with ``temporal_mix``), so the memory a run reports is the
method's, not peft's slower path's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from engine.errors import MethodError, SettingsError
from engine.methods.custom_lora import (ADAPTER, AUDIO_ENCODER, FourBitAdapterSettings, as_qlora,
                                        group_of, history_of, load_custom_adapter, lora_layers,
                                        remember_step, short_name, start_history, swap_factor)
from engine.methods.fast_lora import fuse_lora, temporal_mix
from engine.methods.qlora import apply_qlora, quantization_kwargs
from engine.methods.registry import MethodContext, make_method
from engine.settings import setting


@dataclass
class TaQLoraSettings(FourBitAdapterSettings):
    temporal_kernel_size: int = setting(
        3, "Frames the convolution inside each encoder adapter sees (odd: centred on the "
        "frame). 1 is plain per-frame QLoRA.", min=1, max=31)
    temporal_lr_ratio: float = setting(
        10.0, "Learning rate of the temporal kernels as a multiple of the run's (LoRA+-style; "
        "no weight decay). At 1 a short run leaves them near the identity: per-frame LoRA.",
        min=0.01, max=1000.0)

    def validate(self) -> None:
        super().validate()
        if self.temporal_kernel_size % 2 == 0:
            raise SettingsError(f"temporal_kernel_size must be odd (centred on the frame), "
                                f"got {self.temporal_kernel_size}")


def identity_kernel(r: int, kernel_size: int, device=None, dtype=None) -> torch.Tensor:
    """r x 1 x k taps that pass every channel through unchanged (centre tap 1)."""
    identity = torch.zeros(r, 1, kernel_size, device=device, dtype=dtype)
    identity[:, 0, kernel_size // 2] = 1.0
    return identity


class TemporalLoraA(nn.Linear):
    """peft's ``lora_A`` (in -> r, no bias) followed by a depthwise convolution over time.

    A subclass of ``nn.Linear`` so peft finds the ``weight`` it casts inputs to; the kernel
    is an extra parameter (``temporal``, r x 1 x k), saved with the adapter. Input (B, T, in)
    or (T, in); output (B, T, r). Training runs it inside the fused LoRA op (FUSES_TEMPORAL);
    this forward is peft's path (evaluation, generation).
    """

    FUSES_TEMPORAL = True

    def __init__(self, in_features: int, r: int, kernel_size: int, device=None, dtype=None):
        super().__init__(in_features, r, bias=False, device=device, dtype=dtype)
        self.temporal = nn.Parameter(identity_kernel(r, kernel_size, device, dtype))  # per-frame LoRA

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.linear(x, self.weight)  # (..., T, r)
        return temporal_mix(h.reshape(-1, h.shape[-1]), self.temporal, x.shape).view(h.shape)


def kernel_movement(module: TemporalLoraA) -> tuple[float, float]:
    """How far a kernel moved: ‖c − identity‖ / ‖identity‖ (0 at the start; 1 = as large as the
    identity itself), and the share of |c| off the centre tap (0: per-frame LoRA)."""
    kernel = module.temporal.detach().float()
    identity = identity_kernel(kernel.shape[0], kernel.shape[-1], device=kernel.device)
    drift = float((kernel - identity).norm() / identity.norm())
    centre = kernel[:, 0, kernel.shape[-1] // 2].abs().sum()
    total = kernel.abs().sum().clamp_min(1e-12)
    return drift, float((total - centre) / total)


def kernels(model: nn.Module) -> dict[str, TemporalLoraA]:
    return {short_name(name.removesuffix(".lora_A.default")): module
            for name, module in model.named_modules() if isinstance(module, TemporalLoraA)}


def movement_summary(model: nn.Module) -> dict[str, float]:
    moves = [kernel_movement(module) for module in kernels(model).values()]
    if not moves:
        return {}
    drifts, shares = [d for d, _ in moves], [s for _, s in moves]
    return {"kernel_drift": sum(drifts) / len(drifts), "kernel_drift_max": max(drifts),
            "neighbour_share": sum(shares) / len(shares)}


def step_metrics(model: nn.Module) -> dict[str, float]:
    """Logged every step: mean and largest kernel drift, mean neighbour share."""
    summary = movement_summary(model)
    remember_step(model, summary)
    return {f"temporal/{name}": value for name, value in summary.items()}


def decisions(model: nn.Module) -> dict:
    """For the method report: every kernel's drift and neighbour share now, and their means
    over training."""
    layers = {name: kernel_movement(module) for name, module in kernels(model).items()}
    return {"kernel_drift": {name: drift for name, (drift, _) in layers.items()},
            "neighbour_share": {name: share for name, (_, share) in layers.items()},
            "summary": movement_summary(model), **history_of(model)}


def temporal_layers(model: nn.Module, task: str) -> list[str]:
    """The adapted layers that run over time: every LoRA layer of the audio encoder."""
    return [name for name, _ in lora_layers(model) if group_of(short_name(name), task) == AUDIO_ENCODER]


def add_temporal_convolutions(model: nn.Module, task: str, kernel_size: int,
                              lr_ratio: float = 1.0) -> list[str]:
    """Swap the ``lora_A`` of every audio-encoder LoRA layer for a TemporalLoraA (same A), its
    kernel marked to train at ``lr_ratio`` times the run's learning rate without decay."""
    converted = []
    modules = dict(model.named_modules())
    for name in temporal_layers(model, task):
        layer = modules[name]
        old = layer.lora_A[ADAPTER]
        new = TemporalLoraA(old.in_features, old.out_features, kernel_size,
                            device=old.weight.device, dtype=old.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(old.weight)
        new.requires_grad_(old.weight.requires_grad)
        new.temporal.lim_lr_factor = lr_ratio  # engine/training/step.py: parameter_groups
        new.temporal.lim_weight_decay = 0.0
        swap_factor(layer, "lora_A", new)
        converted.append(short_name(name))
    return converted


def check_audio(context: MethodContext) -> None:
    if context.task == "text-classification":
        raise MethodError("ta-qlora adapts an audio encoder over time, and this text model has "
                          "none; use qlora (or mma / cmra, which work on text models)")


def apply_ta_qlora(model, settings: TaQLoraSettings, context: MethodContext):
    check_audio(context)
    peft_model = apply_qlora(model, as_qlora(settings), context)
    converted = add_temporal_convolutions(peft_model, context.task, settings.temporal_kernel_size,
                                          settings.temporal_lr_ratio)
    if not converted:
        raise MethodError("ta-qlora found no encoder layer among its targets; target layers of "
                          "the audio encoder (e.g. q_proj,v_proj)")
    fuse_lora(peft_model)  # swapping A left peft's path; the fused op runs the convolution too
    context.report.update({"method": "ta-qlora", "temporal_kernel_size": settings.temporal_kernel_size,
                           "temporal_lr_ratio": settings.temporal_lr_ratio,
                           "temporal_layers": converted})
    start_history(peft_model, context.report)
    context.log(f"ta-qlora: a {settings.temporal_kernel_size}-tap convolution over time in "
                f"{len(converted)} encoder adapters, learning at {settings.temporal_lr_ratio:g}x the "
                "run's rate; the other adapters are plain LoRA")
    return peft_model


def load_ta_qlora(base, adapter_dir, settings: TaQLoraSettings, context: MethodContext):
    return load_custom_adapter(base, adapter_dir, lambda model: add_temporal_convolutions(
        model, context.task, settings.temporal_kernel_size))


METHOD = make_method(
    name="ta-qlora",
    help="Temporal-aware QLoRA: encoder adapters with a convolution over time in their "
         "bottleneck, on a 4-bit base; decoder adapters stay plain LoRA.",
    settings_cls=TaQLoraSettings,
    apply=apply_ta_qlora,
    load_kwargs=quantization_kwargs,
    load_adapter=load_ta_qlora,
    step_metrics=step_metrics,
    decisions=decisions,
    merge_refusal="its encoder update B·conv_t(A·x) mixes neighbouring frames, which no weight "
                  "matrix can express",
    idea="A per-frame LoRA update B·A·x_t cannot use the frames around t. ta-qlora puts a small "
         "depthwise convolution over time inside the rank-r bottleneck of every encoder adapter, "
         "so each update sees a few neighbouring frames (as Conformer convolutions and GC-LoRA "
         "do), at r·k extra parameters per layer. It starts exactly as QLoRA (identity kernel, "
         "B = 0), on the same 4-bit base; the kernels learn at their own rate "
         "(temporal_lr_ratio) and the run logs how far they moved from the identity.",
    formula="encoder: h_t = W_nf4 x_t + (α/r) · B Σ_j c_j ⊙ (A x_{t+j}),  j = -k/2..k/2;  "
            "decoder: h = W_nf4 x + (α/r) · B A x",
    advantages="Local acoustic context for a few hundred extra parameters; the fused LoRA "
               "path (QLoRA's memory plus the kernels); step 0 equals the base model.",
    limitations="Cannot be merged into the base weights (adapter export only); a text model "
                "has no time axis to convolve (refused); convolves over padding at clip edges.",
)
