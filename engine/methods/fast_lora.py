"""The engine's fast LoRA path: one autograd function per adapted layer, 16-bit frozen weights,
and checkpointing only where memory needs it.

peft's LoRA layer on a 4-bit base runs, per forward: the 4-bit matmul, a defensive clone of its
output, dropout, two skinny matmuls, a scaling multiply and an add, each a kernel of its own and
each with an autograd node; ``prepare_model_for_kbit_training`` also upcasts every frozen
non-quantised weight (norms, convolutions, embeddings) to fp32, so under autocast the residual
stream of Whisper's encoder runs in fp32. Profiling the reference recipe on an H100 (see
docs/benchmarks.md) showed those memory-bound passes, not the matmuls, taking most of the step.

``fuse_lora(model)`` replaces the forward of every peft ``lora.Linear`` / ``lora.Linear4bit``
that uses plain LoRA (one active adapter, no DoRA) with :class:`LoraLinearFunction`:

    y = x W^T + b + s · (drop(x) A^T) B^T

computed as one base GEMM (the 4-bit weight dequantised into a temporary that is freed at
once, never kept for backward) and one ``addmm`` that adds the LoRA product. Backward
dequantises the weight again and produces grad_x, grad_A, grad_B with four GEMMs. It saves
only x (shared by q_proj and v_proj, which read the same normalised input), the dropout mask
and the rank-r product ``drop(x) A^T``. Dropout draws come from ``torch.native_dropout``, the
op ``nn.Dropout`` uses on a GPU, so the masks equal peft's for the same RNG state.

ta-qlora's encoder adapters (a ``lora_A`` that marks itself ``FUSES_TEMPORAL`` and holds a
depthwise kernel ``temporal``, r x 1 x k) run through the same op with ``temporal_mix`` between
A and B: it saves the same tensors plus the kernel, and backward recomputes the r-channel
convolution, so such a layer costs the fused path's memory, not peft's.

The module keeps its peft structure: state dicts, ``save_pretrained`` and adapter loading are
unchanged, and ``unfuse_lora`` restores peft's forward.
"""

from __future__ import annotations

import types

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["LoraLinearFunction", "fuse_lora", "unfuse_lora", "fused_layers", "base_weight",
           "temporal_mix"]


def base_weight(layer: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """The frozen weight of a plain or bitsandbytes 4-bit linear layer, (out, in), in ``dtype``.

    For a 4-bit layer this is a fresh dequantised temporary: the caller drops it after use.
    """
    weight = layer.weight
    quant_state = getattr(weight, "quant_state", None)
    if quant_state is not None:
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(weight.data, quant_state).to(dtype)
    return weight.to(dtype)


def temporal_mix(h: torch.Tensor, kernel: torch.Tensor, x_shape: torch.Size) -> torch.Tensor:
    """h (tokens, r), the rank-r bottleneck of an input shaped ``x_shape`` (..., T, in), mixed
    over time: each channel convolved with its own k taps (``kernel``: r x 1 x k, zero padding
    at the clip edges), per sequence. Returns (tokens, r)."""
    r, k = kernel.shape[0], kernel.shape[-1]
    frames = x_shape[-2] if len(x_shape) >= 3 else h.shape[0]  # a 2-D input is one sequence
    sequences = h.reshape(-1, frames, r).transpose(1, 2)  # (B, r, T)
    mixed = F.conv1d(sequences, kernel.to(h.dtype), padding=k // 2, groups=r)
    return mixed.transpose(1, 2).reshape(-1, r)


class LoraLinearFunction(torch.autograd.Function):
    """y = x W^T + b + scaling · mix(dropout(x) A^T) B^T with W frozen (plain or 4-bit); mix is
    the identity, or ``temporal_mix`` with a kernel (ta-qlora)."""

    @staticmethod
    def forward(ctx, x, lora_A, lora_B, base_layer, scaling: float, dropout: float, training: bool,
                temporal=None):
        dtype = x.dtype
        x2 = x.reshape(-1, x.shape[-1])
        weight = base_weight(base_layer, dtype)
        bias = base_layer.bias
        out = (torch.addmm(bias.to(dtype), x2, weight.t()) if bias is not None
               else torch.mm(x2, weight.t()))
        del weight  # the dequantised copy is not kept for backward
        mask = None
        if training and dropout > 0:
            xd, mask = torch.native_dropout(x2, dropout, True)
        else:
            xd = x2
        a, b = lora_A.to(dtype), lora_B.to(dtype)
        h = torch.mm(xd, a.t())  # (tokens, r)
        mixed = h if temporal is None else temporal_mix(h, temporal, x.shape)
        # Out of place: selective activation checkpointing caches op outputs and refuses
        # tensors mutated after they were produced.
        out = torch.addmm(out, mixed, b.t(), alpha=scaling)
        ctx.save_for_backward(x2, mask, h, lora_A, lora_B, temporal)
        ctx.base_layer, ctx.scaling, ctx.dropout = base_layer, scaling, dropout
        ctx.x_shape = x.shape
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):
        x2, mask, h, lora_A, lora_B, temporal = ctx.saved_tensors
        dtype, scaling = x2.dtype, ctx.scaling
        g = grad_out.reshape(-1, grad_out.shape[-1]).to(dtype)
        a, b = lora_A.to(dtype), lora_B.to(dtype)
        gb = torch.mm(g, b)  # (tokens, r): the gradient of the mixed bottleneck
        grad_x = grad_A = grad_B = grad_temporal = None
        mixed = h
        if temporal is not None:  # recompute the small convolution, then back through it
            with torch.enable_grad():
                h_in = h.detach().requires_grad_(True)
                kernel = temporal.detach().requires_grad_(True)
                mixed = temporal_mix(h_in, kernel, ctx.x_shape)
                gb, grad_temporal = torch.autograd.grad(mixed, (h_in, kernel), gb)
            mixed = mixed.detach()
            grad_temporal = grad_temporal.mul_(scaling) if ctx.needs_input_grad[7] else None
        if ctx.needs_input_grad[0]:
            grad_x = torch.mm(g, base_weight(ctx.base_layer, dtype))
            if mask is None:
                grad_x.addmm_(gb, a, alpha=scaling)
            else:
                grad_x.add_(torch.mm(gb, a) * mask, alpha=scaling / (1.0 - ctx.dropout))
            grad_x = grad_x.view(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            xd = x2 if mask is None else x2 * mask * (1.0 / (1.0 - ctx.dropout))
            grad_A = torch.mm(gb.t(), xd).mul_(scaling).to(lora_A.dtype)
        if ctx.needs_input_grad[2]:
            grad_B = torch.mm(g.t(), mixed).mul_(scaling).to(lora_B.dtype)
        return grad_x, grad_A, grad_B, None, None, None, None, grad_temporal


def _fusable(module: nn.Module) -> bool:
    """A peft LoRA linear layer running plain LoRA with exactly one adapter."""
    if not (hasattr(module, "lora_A") and hasattr(module, "base_layer")):
        return False
    if not (type(module).__module__.startswith("peft.tuners.lora")
            and type(module).__name__ in {"Linear", "Linear4bit"}):
        return False  # AdaLoRA's SVD layers, embeddings, convolutions, 8-bit bases
    base = module.base_layer
    plain = type(base) is nn.Linear or type(base).__name__ == "Linear4bit"
    # ta-qlora and mma put modules of their own in lora_A / lora_B (a convolution, a router):
    # only plain linear factors, and ta-qlora's temporal lora_A, compute what
    # LoraLinearFunction computes.
    plain = plain and all(
        type(factors[adapter]) is nn.Linear
        or (factors is module.lora_A and getattr(type(factors[adapter]), "FUSES_TEMPORAL", False))
        for adapter in module.active_adapters for factors in (module.lora_A, module.lora_B)
        if adapter in factors)
    return (plain and len(module.active_adapters) == 1 and not getattr(module, "lora_variant", {})
            and not getattr(module, "use_dora", {}).get(module.active_adapters[0], False))


def _fused_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    name = self.active_adapters[0]
    if (self.disable_adapters or self.merged or args or kwargs or name not in self.lora_A
            or not torch.is_grad_enabled()):
        return self._peft_forward(x, *args, **kwargs)  # inference, merged or unusual: peft's path
    dropout_module = self.lora_dropout[name]
    p = dropout_module.p if isinstance(dropout_module, nn.Dropout) else 0.0
    if x.dtype != _compute_dtype(self.base_layer, x):
        x = x.to(_compute_dtype(self.base_layer, x))
    lora_A = self.lora_A[name]
    return LoraLinearFunction.apply(x, lora_A.weight, self.lora_B[name].weight, self.base_layer,
                                    float(self.scaling[name]), float(p), self.training,
                                    getattr(lora_A, "temporal", None))


def _compute_dtype(base: nn.Module, x: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    dtype = getattr(base, "compute_dtype", None) or getattr(base.weight, "dtype", x.dtype)
    return dtype if dtype.is_floating_point else x.dtype


def fuse_lora(model: nn.Module) -> int:
    """Route every plain LoRA linear layer of ``model`` through :class:`LoraLinearFunction`.

    Returns how many layers were fused; layers peft runs differently (DoRA, several adapters,
    embeddings, 8-bit bases) keep peft's own forward.
    """
    count = 0
    for module in model.modules():
        if _fusable(module) and not hasattr(module, "_peft_forward"):
            module._peft_forward = module.forward
            module.forward = types.MethodType(_fused_forward, module)
            count += 1
    return count


def unfuse_lora(model: nn.Module) -> None:
    for module in model.modules():
        if hasattr(module, "_peft_forward"):
            module.forward = module._peft_forward
            del module._peft_forward


def fused_layers(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if hasattr(module, "_peft_forward")]


def run_in_dtype(model: nn.Module, dtype: torch.dtype, head_modules: list[str]) -> nn.Module:
    """Train with the frozen base in ``dtype`` (bf16) and no autocast.

    Trainable parameters (LoRA matrices, task heads) stay in fp32 for the optimizer; the fused
    LoRA op casts them per use, head modules get their input cast to fp32, and the output
    embedding (Whisper's ``proj_out``) returns fp32 logits so the loss is computed in fp32, as
    autocast would. The recipe reads ``lim_pure_dtype`` and runs without autocast, casting the
    floating inputs of each batch to ``dtype``.
    """
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()

    def to_float(module, args):
        return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)

    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in head_modules:
            module.register_forward_pre_hook(to_float)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is not None:
        output.register_forward_hook(lambda module, args, out: out.float())
    model.lim_pure_dtype = dtype
    return model
