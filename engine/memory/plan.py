"""The memory planner: fit a run into a memory budget (a Jetson, a small GPU, a capped share).

Given the built model, the batch size and a budget, ``plan_for_budget`` chooses the micro-batch
(the batch is split and its gradients summed, so the optimizer sees the same batch), how many
layers of each stack recompute their activations in backward (gradient checkpointing, layer by
layer), and whether saved activations go to pinned host memory (offload). It picks the plan with
the highest estimated throughput whose estimated peak fits the budget, and says what it chose.

The estimate is analytic, per token and per layer, for the engine's fast LoRA path (bf16 base,
fused LoRA, SDPA attention), and its constants are checked against measured peaks on a GPU
(docs/benchmarks.md, "The memory planner against measured peaks") and on the CPU
(tests/engine/memory/test_memory_plan.py, ``test_planner_choices_fit_the_budget``). Where a
device profile sets the budget (``memory_budget_gb``), ``plan_for_budget`` is the one call
from budget to plan; the recipe makes it with a batch of the longest training items. The
estimate before launch is the dry run (engine/memory/dryrun.py), which needs no weights;
this one needs the built model, and is fast enough to try every candidate plan:

* a layer that keeps its activations saves, per token, its input and the normalised input,
  q, k, v and the attention output, the second residual (7·d values), the MLP's hidden
  pre-activation (ffn values) and its activation (ffn values, counted for safety), and a
  1-byte dropout mask per adapted input (2·d bytes);
* a checkpointed layer keeps only its input (d values) and, in backward, recomputes one layer
  at a time (one layer's activations live at once);
* a cross-attention layer (Whisper's decoder) also keeps k and v of the encoder's tokens;
* weights, gradients and AdamW state are the model's real tensors plus 12 bytes per trainable
  parameter; logits cost (2·elem + 8) bytes per vocabulary entry per label token, and are
  gone before the layers' backward needs its working set, so the larger of the two counts.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import asdict, dataclass

import torch
from torch import nn

from engine.errors import SettingsError
from engine.memory.measure import model_tensor_bytes

GIB = 2**30
SAFETY = 0.85  # the allocator's fragmentation and cuBLAS workspaces live in the rest
EFFICIENCY_TOKENS = 8192  # a micro-batch of this many tokens runs at ~half the GPU's best rate
OFFLOAD_SLOWDOWN = 0.3  # measured: whisper-small on an H100, offload vs checkpointing (docs)


@dataclass
class Stack:
    """A run of identical layers (Whisper's encoder or decoder, BERT's encoder)."""

    name: str
    layers: list[nn.Module]
    d: int
    ffn: int
    tokens: int = 0  # per sample
    cross_tokens: int = 0  # tokens of the other stack this one attends to


@dataclass
class MemoryPlan:
    batch_size: int
    micro_batch: int
    checkpoint: dict[str, int]  # stack name -> checkpointed layers (the first ones)
    layers: dict[str, int]
    offload: bool
    estimated_gib: float
    budget_gib: float
    relative_speed: float  # estimated throughput against no checkpointing, no offload, full batch

    @property
    def accumulation(self) -> int:
        return -(-self.batch_size // self.micro_batch)

    def describe(self) -> str:
        stacks = ", ".join(f"{name} {self.checkpoint[name]}/{self.layers[name]}"
                           for name in self.checkpoint)
        return (f"memory plan for {self.budget_gib:.2f} GiB: micro-batch {self.micro_batch} × "
                f"{self.accumulation} per batch of {self.batch_size}; checkpointed layers: "
                f"{stacks or 'none'}; activation offload {'on' if self.offload else 'off'}; "
                f"estimated peak {self.estimated_gib:.2f} GiB, about "
                f"{self.relative_speed:.0%} of the unconstrained speed")

    def as_dict(self) -> dict:
        return {**asdict(self), "accumulation": self.accumulation}


def find_stacks(model: nn.Module) -> list[Stack]:
    """The repeated layer stacks of a transformers model, with their widths from its config."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    config = getattr(model, "config", None)
    groups: dict[str, list[nn.Module]] = {}
    for name, module in model.named_modules():
        if isinstance(module, GradientCheckpointingLayer):
            groups.setdefault(name.rsplit(".", 1)[0], []).append(module)
    stacks = []
    for path, layers in groups.items():
        kind = "decoder" if "decoder" in path else "encoder"
        d = getattr(config, "d_model", None) or getattr(config, "hidden_size", 0)
        ffn = (getattr(config, f"{kind}_ffn_dim", None) or getattr(config, "intermediate_size", None)
               or 4 * d)
        stacks.append(Stack(kind, layers, int(d), int(ffn)))
    return stacks


def sample_tokens(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, int]:
    """Tokens per sample each stack sees for ``batch``'s shapes."""
    tokens = {}
    if "input_features" in batch:  # Whisper: two conv frames per encoder position
        tokens["encoder"] = batch["input_features"].shape[-1] // 2
        if "labels" in batch and batch["labels"].dim() == 2:
            tokens["decoder"] = batch["labels"].shape[-1]
    elif "input_values" in batch:  # wav2vec2 / HuBERT: one position per 20 ms
        tokens["encoder"] = batch["input_values"].shape[-1] // 320
    elif "input_ids" in batch:
        tokens["encoder"] = batch["input_ids"].shape[-1]
    return tokens


def _elem_bytes(model: nn.Module) -> int:
    dtype = getattr(model, "lim_pure_dtype", None)
    if dtype is not None:
        return torch.finfo(dtype).bits // 8
    return 4  # fp32 weights; under autocast some activations are 16-bit, counted as 32


def _fixed_bytes(model: nn.Module) -> int:
    """What does not grow with the batch: the model's tensors (4-bit weights with their block
    scales), gradients and AdamW state of the trainable parameters (12 bytes each), and the
    largest 4-bit weight dequantised twice over (forward temporary, backward temporary)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    largest = max((int(torch.Size(p.quant_state.shape).numel()) * 2 for p in model.parameters()
                   if getattr(p, "quant_state", None) is not None), default=0)
    return model_tensor_bytes(model) + trainable * 12 + 2 * largest


def _layer_bytes(stack: Stack, elem: int) -> int:
    """Activations one layer keeps for backward, per sample."""
    self_part = stack.tokens * ((7 * stack.d + 2 * stack.ffn) * elem + 2 * stack.d)
    cross = stack.cross_tokens * 2 * stack.d * elem if stack.cross_tokens else 0
    return self_part + cross


def _layer_flops(stack: Stack) -> float:
    """Forward FLOPs of one layer, per sample (matmuls and attention)."""
    t, d, f = stack.tokens, stack.d, stack.ffn
    flops = t * 2 * (4 * d * d + 2 * d * f) + 4 * t * t * d
    if stack.cross_tokens:
        flops += 2 * 2 * stack.cross_tokens * d * d + 4 * t * stack.cross_tokens * d
    return flops


def estimate_peak_bytes(fixed: int, elem: int, stacks: list[Stack], micro: int,
                        checkpoint: dict[str, int], offload: bool, inputs: int, logits: int) -> int:
    """Estimated peak bytes: ``fixed`` (weights, optimizer state), plus per sample the inputs,
    what the layers keep, and the larger of the logits (alive from the loss until the top
    layer's backward) and one layer's backward working set (recomputed activations and
    gradients)."""
    kept = 0
    transient = 0
    for stack in stacks:
        full = _layer_bytes(stack, elem)
        ckpt = checkpoint.get(stack.name, 0)
        kept_stack = ckpt * stack.tokens * stack.d * elem + (len(stack.layers) - ckpt) * full
        kept += 0 if offload else kept_stack
        transient = max(transient, full + 4 * stack.tokens * stack.d * elem)
    per_sample = inputs + kept + max(logits, transient)
    return int(fixed + micro * per_sample)


def _shapes(model: nn.Module, batch: dict,
            vocab_size: int | None = None) -> tuple[list[Stack], tuple[int, int]]:
    """The model's stacks with their token counts for ``batch``, and the per-sample bytes
    outside the stacks (inputs, logits)."""
    stacks = find_stacks(model)
    tokens = sample_tokens(model, batch)
    for stack in stacks:
        stack.tokens = tokens.get(stack.name, stack.tokens)
    encoder = next((s for s in stacks if s.name == "encoder"), None)
    for stack in stacks:
        if stack.name == "decoder" and encoder is not None:
            stack.cross_tokens = encoder.tokens
    elem = _elem_bytes(model)
    inputs = sum(v[0].numel() * (4 + elem) for v in batch.values() if v.is_floating_point())
    logits = 0
    if "labels" in batch and batch["labels"].dim() == 2:
        vocab = vocab_size or getattr(getattr(model, "config", None), "vocab_size", 0) or 0
        logits = batch["labels"].shape[-1] * vocab * (2 * elem + 8)
    return stacks, (inputs, logits)


def estimate_for(model: nn.Module, batch: dict, micro: int, checkpoint: dict[str, int],
                 offload: bool = False) -> float:
    """Estimated peak (GiB) of training ``model`` on micro-batches of ``batch``'s shapes."""
    stacks, (inputs, logits) = _shapes(model, batch)
    return estimate_peak_bytes(_fixed_bytes(model), _elem_bytes(model), stacks, micro, checkpoint,
                               offload, inputs, logits) / GIB


def plan_for_budget(model: nn.Module, batch: dict[str, torch.Tensor], *, budget_gib: float,
                    vocab_size: int | None = None) -> MemoryPlan:
    """The fastest plan whose estimated peak fits ``budget_gib`` (raises when none does).

    ``batch`` is a full-size batch of the longest items (it gives the batch size and the
    per-sample shapes).
    """
    stacks, (inputs, logits) = _shapes(model, batch, vocab_size)
    fixed, elem = _fixed_bytes(model), _elem_bytes(model)
    estimate = functools.partial(estimate_peak_bytes, fixed, elem, stacks, inputs=inputs,
                                 logits=logits)
    batch_size = next(iter(batch.values())).shape[0]
    widest = max((s.tokens for s in stacks), default=1)

    def efficiency(samples: int) -> float:  # GPU efficiency of a micro-batch of that many tokens
        return samples * widest / (samples * widest + EFFICIENCY_TOKENS)

    budget = budget_gib * GIB * SAFETY
    total_flops = 2 * sum(_layer_flops(s) * len(s.layers) for s in stacks) or 1.0
    micros = sorted({max(1, -(-batch_size // 2**k)) for k in range(0, batch_size.bit_length() + 1)},
                    reverse=True)
    options = []
    for stack in stacks:
        n = len(stack.layers)
        options.append(sorted({0, n // 4, n // 2, (3 * n) // 4, n}))
    # Offloading to host memory only helps where activations live in device memory.
    on_device = any(p.device.type != "cpu" for p in model.parameters())
    offload_options = (False, True) if on_device else (False,)
    best = None
    for micro in micros:
        for counts in itertools.product(*options) if stacks else [()]:
            checkpoint = {s.name: c for s, c in zip(stacks, counts)}
            for offload in offload_options:
                peak = estimate(micro, checkpoint, offload)
                if peak > budget:
                    continue
                recompute = sum(_layer_flops(s) * checkpoint[s.name] for s in stacks)
                speed = total_flops / (total_flops + recompute)
                speed *= efficiency(micro) / efficiency(batch_size)
                if offload:
                    speed *= OFFLOAD_SLOWDOWN
                key = (speed, -peak)
                if best is None or key > best[0]:
                    best = (key, micro, checkpoint, offload, peak)
    if best is None:
        smallest = estimate(1, {s.name: len(s.layers) for s in stacks}, on_device)
        raise SettingsError(
            f"memory_budget_gb={budget_gib:g} is too small for this model: even one example at a "
            f"time with every layer checkpointed{' and activations offloaded' if on_device else ''} "
            f"needs about "
            f"{smallest / SAFETY / GIB:.2f} GiB; raise the budget or use a smaller model / qlora")
    (speed, negative_peak), micro, checkpoint, offload, peak = best
    return MemoryPlan(batch_size=batch_size, micro_batch=micro, checkpoint=checkpoint,
                      layers={s.name: len(s.layers) for s in stacks}, offload=offload,
                      estimated_gib=peak / GIB, budget_gib=budget_gib, relative_speed=speed)


def apply_checkpointing(model: nn.Module, checkpoint: dict[str, int] | bool) -> None:
    """Checkpoint the first N layers of each stack (``True``: all, ``False``: none), with
    non-reentrant checkpointing (no input needs ``requires_grad``; RNG state is restored, so
    dropout masks in the recomputation equal the first pass's)."""
    from torch.utils.checkpoint import checkpoint as torch_checkpoint

    recompute = functools.partial(torch_checkpoint, use_reentrant=False)
    for stack in find_stacks(model):
        count = (len(stack.layers) if checkpoint is True else 0 if checkpoint is False
                 else checkpoint.get(stack.name, 0))
        for index, layer in enumerate(stack.layers):
            layer.gradient_checkpointing = index < count
            layer._gradient_checkpointing_func = recompute
