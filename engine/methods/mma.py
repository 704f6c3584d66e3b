"""Modality-routed adapters (after LaVIN's Mixture-of-Modality Adaptation): several low-rank
adapters per targeted layer and a small router per layer that weighs them per input sequence,
on a 4-bit base.

Each targeted layer gets n = ``adapters`` LoRA pairs (B_i, A_i) of rank r/n and a router R:

    h = W x + (α/r) Σ_i n·w_i(s) · B_i A_i x,    w(s) = softmax(R s)

The factor n makes the start exactly LoRA at rank r: the router starts at zero, so every
w_i = 1/n and Σ_i B_i A_i x is one rank-r LoRA (the stacked A_i are peft's ``lora_A`` at rank
r, the B_i its ``lora_B``). Training moves weight from one adapter to another per input, never
the overall step size, so mma is compared with LoRA at the same learning rate and budget.

What the routers read: LaVIN's router reads a modality token, something that differs between
inputs and is known before the layers run. Here every router of a model reads one routing
token per sequence, s, made from the model's input before its first layer: for audio models
the clip's mean log-mel spectrum over its frames (the encoder's input), for text models the
mean of the token embeddings over the real tokens; standardised over its features (layer
norm without parameters), so its scale is the same for every model. The weights are per
sequence in every layer, decoder included, and they never see later tokens (s comes from the
audio, or from the whole text in a bidirectional text encoder).

Modalities, as logged: layers that read audio frames (the audio encoder and the cross-attention
keys and values, which read the encoder's output) are ``audio``; the decoder's self-attention,
feed-forward and cross-attention queries and output (per text token) are ``text``. A text model
has one modality (the log says so). Each step logs the mean weights per modality
(``router/audio_w0`` ...) and their spread between the batch's sequences (``router/audio_spread``:
0 means every input is routed alike); the method report keeps both over training and each
layer's last weights.

Why modules of our own (custom_lora.py): ``lora_B`` becomes a ``RoutedLoraB`` (an ``nn.Linear``
holding the n B_i side by side, plus its router). Not mergeable: the weights depend on the
input. These layers run on peft's path, not the engine's fused LoRA op: their memory and speed
beyond QLoRA's are partly that path's (docs/methods.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from engine.errors import MethodError, SettingsError
from engine.methods.custom_lora import (ADAPTER, AUDIO_ENCODER, CROSS_ATTENTION, FourBitAdapterSettings,
                                        as_qlora, group_of, history_of, load_custom_adapter,
                                        lora_layers, remember_step, short_name, start_history,
                                        swap_factor)
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


class RoutingSignal:
    """The routing token every router of one model reads: (B, dim), one vector per sequence,
    set by a hook on the model's input (``attach_signal``) before its first layer runs."""

    def __init__(self, dim: int):
        self.dim = dim
        self.token: torch.Tensor | None = None

    def set(self, pooled: torch.Tensor) -> None:
        self.token = F.layer_norm(pooled.float(), (self.dim,))


class RoutedLoraB(nn.Linear):
    """peft's ``lora_B`` for ``n`` adapters of rank ``r`` (each) side by side, weighed by a router.

    ``weight`` (out, n·r) holds B_1 .. B_n; ``router`` (n, signal_dim) reads the routing token.
    Input h = A x: (B, T, n·r) or (T, n·r). The last weights it used are kept (detached, one row
    per sequence) for the log.
    """

    def __init__(self, n: int, r: int, out_features: int, signal_dim: int, device=None, dtype=None):
        super().__init__(n * r, out_features, bias=False, device=device, dtype=dtype)
        self.n, self.r = n, r
        self.router = nn.Parameter(torch.zeros(n, signal_dim, device=device, dtype=dtype))
        self.signal: RoutingSignal | None = None
        self.last_weights: torch.Tensor | None = None

    def routing(self, sequences: int, dtype: torch.dtype) -> torch.Tensor:
        """Softmax weights (sequences, n) from the routing token."""
        token = self.signal.token if self.signal is not None else None
        if token is None:
            raise MethodError("mma's routers read a routing token made from the model's input "
                              "(its audio features or token embeddings): run the whole model")
        if token.shape[0] != sequences:  # generation with beams repeats each sequence
            if sequences % token.shape[0]:
                raise MethodError(f"mma: {sequences} sequences in a layer, {token.shape[0]} routing tokens")
            token = token.repeat_interleave(sequences // token.shape[0], dim=0)
        return torch.softmax(F.linear(token.to(dtype), self.router.to(dtype)), dim=-1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        sequences = h.shape[0] if h.dim() >= 3 else 1
        weights = self.routing(sequences, h.dtype)  # (B, n)
        self.last_weights = weights.detach().float()
        gates = (self.n * weights).repeat_interleave(self.r, dim=-1)  # n·w_i = 1 at the start
        gates = gates.view(sequences, *([1] * (h.dim() - 2)), -1) if h.dim() >= 3 else gates
        return F.linear(h * gates, self.weight)


def modality(name: str, task: str) -> str:
    """``audio`` for layers that read audio frames, ``text`` for those that run per token."""
    group = group_of(name, task)
    reads_frames = group == AUDIO_ENCODER or (
        group == CROSS_ATTENTION and name.rsplit(".", 1)[-1] in {"k_proj", "v_proj"})
    return "audio" if reads_frames else "text"


def attach_signal(model: nn.Module, task: str) -> RoutingSignal:
    """Hooks that set the routing token from the model's input: the mean log-mel spectrum over
    the frames the encoder gets (audio; set once per clip, so generation's decoder steps reuse
    it), or the mean token embedding over the real tokens (text)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if task == "text-classification":
        embeddings = base.get_input_embeddings()
        signal = RoutingSignal(embeddings.embedding_dim)
        pad = getattr(base.config, "pad_token_id", None)

        def forget(module, args, kwargs):  # a forward without token ids must not reuse the last
            signal.token = None

        def read_tokens(module, args, output):
            real = (args[0] != pad) if pad is not None else torch.ones_like(args[0], dtype=torch.bool)
            mask = real.unsqueeze(-1).to(output.dtype)
            signal.set((output * mask).sum(1) / mask.sum(1).clamp_min(1))

        base.register_forward_pre_hook(forget, with_kwargs=True)
        embeddings.register_forward_hook(read_tokens)
        return signal
    encoder = base.get_encoder()
    signal = RoutingSignal(base.config.num_mel_bins)

    def read_features(module, args, kwargs):
        features = args[0] if args else kwargs["input_features"]  # (B, mels, frames)
        signal.set(features.mean(dim=-1))

    encoder.register_forward_pre_hook(read_features, with_kwargs=True)
    return signal


def add_routers(model: nn.Module, task: str, adapters: int) -> list[str]:
    """Swap every LoRA layer's ``lora_B`` (zero, r -> out) for a RoutedLoraB of n adapters,
    all reading one routing token."""
    signal = attach_signal(model, task)
    converted = []
    for name, layer in list(lora_layers(model)):
        old = layer.lora_B[ADAPTER]
        if old.in_features % adapters:
            raise MethodError(f"{name}: rank {old.in_features} is not {adapters} adapters")
        short = short_name(name)
        new = RoutedLoraB(adapters, old.in_features // adapters, old.out_features, signal.dim,
                          device=old.weight.device, dtype=old.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(old.weight)
        new.requires_grad_(old.weight.requires_grad)
        new.signal, new.modality = signal, modality(short, task)
        swap_factor(layer, "lora_B", new)
        converted.append(short)
    return converted


def routed(model: nn.Module) -> dict[str, RoutedLoraB]:
    return {short_name(name.removesuffix(".lora_B.default")): module
            for name, module in model.named_modules()
            if isinstance(module, RoutedLoraB) and module.last_weights is not None}


def router_weights(model: nn.Module) -> dict[str, dict]:
    """Per modality, from the last forward pass: the mean weights over layers and sequences
    (``weights``) and the spread between sequences (``spread``: each adapter's standard
    deviation over the batch's sequences, averaged over adapters and layers)."""
    found: dict[str, list[torch.Tensor]] = {}
    for module in routed(model).values():
        found.setdefault(module.modality, []).append(module.last_weights)
    summary = {}
    for name in sorted(found):
        layers = found[name]
        summary[name] = {
            "weights": torch.stack([w.mean(0) for w in layers]).mean(0).tolist(),
            "spread": float(torch.stack([w.std(0, unbiased=False).mean() for w in layers]).mean())}
    return summary


def step_metrics(model: nn.Module) -> dict[str, float]:
    summary = router_weights(model)
    remember_step(model, summary)
    metrics = {}
    for name, values in summary.items():
        metrics.update({f"router/{name}_w{i}": w for i, w in enumerate(values["weights"])})
        metrics[f"router/{name}_spread"] = values["spread"]
    return metrics


def decisions(model: nn.Module) -> dict:
    """For the method report: the routing now per modality and per layer (last batch's mean
    weights), and per modality over training."""
    return {"router": router_weights(model),
            "layer_weights": {name: module.last_weights.mean(0).tolist()
                              for name, module in routed(model).items()},
            **history_of(model)}


def apply_mma(model, settings: MmaSettings, context: MethodContext):
    # peft builds one LoRA pair of rank r per layer: A is the n stacked A_i, B is swapped
    peft_model = apply_qlora(model, as_qlora(settings), context)
    converted = add_routers(peft_model, context.task, settings.adapters)
    modalities = sorted({modality(name, context.task) for name in converted})
    signal = "mean token embedding" if context.task == "text-classification" else "mean log-mel spectrum"
    context.report.update({"method": "mma", "adapters": settings.adapters, "modalities": modalities,
                           "routing_token": signal,
                           "layers": [{"name": n, "modality": modality(n, context.task)} for n in converted]})
    start_history(peft_model, context.report)
    if modalities == ["text"]:
        context.log(f"mma: text-only model, one modality: {len(converted)} layers route between "
                    f"{settings.adapters} adapters per sequence on the {signal}; router weights "
                    "logged for text only")
    else:
        context.log(f"mma: {settings.adapters} routed adapters in each of {len(converted)} layers "
                    f"({', '.join(modalities)} layers), routed per clip on its {signal}; "
                    "router weights and spread logged per modality")
    return peft_model


def load_mma(base, adapter_dir, settings: MmaSettings, context: MethodContext):
    return load_custom_adapter(base, adapter_dir,
                               lambda model: add_routers(model, context.task, settings.adapters))


METHOD = make_method(
    name="mma",
    help="Modality-routed adapters (LaVIN's MMA): several adapters per layer and a router "
         "weighing them per input sequence; starts as LoRA of the same rank; 4-bit base.",
    settings_cls=MmaSettings,
    apply=apply_mma,
    load_kwargs=quantization_kwargs,
    load_adapter=load_mma,
    step_metrics=step_metrics,
    decisions=decisions,
    merge_refusal="its adapters are weighed per input by a router, so no single weight "
                  "update stands for them",
    idea="Give each targeted layer a few low-rank adapters and a small router that mixes them "
         "per input sequence, as LaVIN's Mixture-of-Modality Adaptation routes on a modality "
         "token. Every router reads one routing token made from the input (a clip's mean "
         "log-mel spectrum, a text's mean token embedding). It starts exactly as LoRA of the "
         "same rank (equal weights times n); the weights and their spread between inputs are "
         "logged for the audio and text layers.",
    formula="h = W_nf4 x + (α/r) Σ_i n·w_i B_i A_i x,  w = softmax(R s),  "
            "s = layernorm(mean_t input)",
    advantages="Input-dependent adaptation for the parameters of LoRA at rank r plus tiny "
               "routers; starts as LoRA at rank r, so the comparison with LoRA is at the same "
               "step size.",
    limitations="Cannot be merged (adapter export only); peft's slower LoRA path (the router "
                "and the gating); the audio routing token averages padded frames too; with one "
                "modality (text models) it is a routed mixture with nothing modality-specific.",
)
