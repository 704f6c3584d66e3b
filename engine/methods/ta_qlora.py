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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from engine.errors import MethodError, SettingsError
from engine.methods.custom_lora import (ADAPTER, AUDIO_ENCODER, FourBitAdapterSettings, as_qlora,
                                        group_of, load_custom_adapter, lora_layers, short_name,
                                        swap_factor)
from engine.methods.qlora import apply_qlora, quantization_kwargs
from engine.methods.registry import MethodContext, make_method
from engine.settings import setting


@dataclass
class TaQLoraSettings(FourBitAdapterSettings):
    temporal_kernel_size: int = setting(
        3, "Frames the convolution inside each encoder adapter sees (odd: centred on the "
        "frame). 1 is plain per-frame QLoRA.", min=1, max=31)

    def validate(self) -> None:
        super().validate()
        if self.temporal_kernel_size % 2 == 0:
            raise SettingsError(f"temporal_kernel_size must be odd (centred on the frame), "
                                f"got {self.temporal_kernel_size}")


class TemporalLoraA(nn.Linear):
    """peft's ``lora_A`` (in -> r, no bias) followed by a depthwise convolution over time.

    A subclass of ``nn.Linear`` so peft finds the ``weight`` it casts inputs to; the kernel
    is an extra parameter (``temporal``, r x 1 x k), saved with the adapter. Input (B, T, in)
    or (T, in); output (B, T, r).
    """

    def __init__(self, in_features: int, r: int, kernel_size: int, device=None, dtype=None):
        super().__init__(in_features, r, bias=False, device=device, dtype=dtype)
        identity = torch.zeros(r, 1, kernel_size, device=device, dtype=dtype)
        identity[:, 0, kernel_size // 2] = 1.0  # starts as per-frame LoRA
        self.temporal = nn.Parameter(identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.linear(x, self.weight)  # (B, T, r)
        squeeze = h.dim() == 2
        if squeeze:
            h = h.unsqueeze(0)
        k = self.temporal.shape[-1]
        mixed = F.conv1d(h.transpose(1, 2), self.temporal.to(h.dtype), padding=k // 2,
                         groups=h.shape[-1]).transpose(1, 2)  # (B, T, r), same length
        return mixed.squeeze(0) if squeeze else mixed


def temporal_layers(model: nn.Module, task: str) -> list[str]:
    """The adapted layers that run over time: every LoRA layer of the audio encoder."""
    return [name for name, _ in lora_layers(model) if group_of(short_name(name), task) == AUDIO_ENCODER]


def add_temporal_convolutions(model: nn.Module, task: str, kernel_size: int) -> list[str]:
    """Swap the ``lora_A`` of every audio-encoder LoRA layer for a TemporalLoraA (same A)."""
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
    converted = add_temporal_convolutions(peft_model, context.task, settings.temporal_kernel_size)
    if not converted:
        raise MethodError("ta-qlora found no encoder layer among its targets; target layers of "
                          "the audio encoder (e.g. q_proj,v_proj)")
    context.log(f"ta-qlora: a {settings.temporal_kernel_size}-tap convolution over time in "
                f"{len(converted)} encoder adapters; the other adapters are plain LoRA")
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
    merge_refusal="its encoder update B·conv_t(A·x) mixes neighbouring frames, which no weight "
                  "matrix can express",
    idea="A per-frame LoRA update B·A·x_t cannot use the frames around t. ta-qlora puts a small "
         "depthwise convolution over time inside the rank-r bottleneck of every encoder adapter, "
         "so each update sees a few neighbouring frames (as Conformer convolutions and GC-LoRA "
         "do), at r·k extra parameters per layer. It starts exactly as QLoRA (identity kernel, "
         "B = 0), on the same 4-bit base.",
    formula="encoder: h_t = W_nf4 x_t + (α/r) · B Σ_j c_j ⊙ (A x_{t+j}),  j = -k/2..k/2;  "
            "decoder: h = W_nf4 x + (α/r) · B A x",
    advantages="Local acoustic context for a few hundred extra parameters; same memory as "
               "QLoRA; step 0 equals the base model.",
    limitations="Cannot be merged into the base weights (adapter export only); a text model "
                "has no time axis to convolve (refused); convolves over padding at clip edges.",
)
