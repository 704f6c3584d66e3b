"""One optimizer step of a run: forward, backward, clipping, AdamW, schedule; and its set-up.

``prepare_training`` turns a built model and its ``TrainingSettings`` into a ``TrainStep``: the
memory plan (``memory_budget_gb``), gradient checkpointing, compiled layers, then AdamW, the
schedule, the fp16 scaler, autocast and CUDA graphs. The recipe (engine/training/recipe.py)
calls it for stored runs and the speed benchmark's engine side (benchmarks/speed_engine.py)
calls it with synthetic batches, so what the benchmark times is what a run executes.

A batch is split into ``micro_batch``-sized chunks when a memory plan asks for it (each chunk's
loss weighted by its share of the batch, so the gradient equals the whole batch's); activation
offload keeps what backward needs in pinned host memory. With ``cuda_graphs`` the forward and
backward of each repeated batch shape are captured once and replayed (engine/training/graphs.py).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.memory import MemoryPlan, apply_checkpointing, find_stacks, plan_for_budget
from engine.progress import COMPILING
from engine.training.settings import TrainingSettings

__all__ = ["COMPILE_MIN_STEPS", "PreparedTraining", "TrainStep", "autocast_dtype", "compile_layers", "prepare_training",
           "use_compile_cache", "wants_compile", "wants_graphs"]


# "auto" compiles a GPU run of at least this many optimizer steps. Measured on an H200 (docs/
# benchmarks.md, "Short runs and compiling"): compiled layers step 18-24 % faster once CUDA graphs
# replay the step (whisper-small, large-v3; nothing for whisper-base at batch 4), but compiling
# costs 27-39 s per model and window with an empty cache (86 s for whisper-base's three short-
# audio shapes): paid back after ~530 (large-v3) to ~2,000 (whisper-small) steps. Shorter runs,
# such as the demo's 96 steps, finish sooner without it.
COMPILE_MIN_STEPS = 1000


def wants_compile(setting: str, device: str, total_steps: int | None = None) -> bool:
    """``on``; or ``auto`` on a CUDA device for a run of at least ``COMPILE_MIN_STEPS`` steps
    (``total_steps`` None: a run of unknown length, compiled)."""
    long_enough = total_steps is None or total_steps >= COMPILE_MIN_STEPS
    return setting == "on" or (setting == "auto" and device.startswith("cuda") and long_enough)


def wants_graphs(setting: str, device: str, offload: bool = False) -> bool:
    """CUDA graphs need a CUDA device; activation offload copies to host memory it allocates
    on the fly, which a graph cannot replay."""
    return setting == "auto" and device.startswith("cuda") and not offload


def use_compile_cache(folder: Path) -> Path:
    """Keep torch.compile's caches (inductor's compiled graphs, Triton's kernels) in ``folder``
    unless ``TORCHINDUCTOR_CACHE_DIR`` names a folder of the user's. Inductor's default is in
    /tmp, which a reboot or a new container empties: a short run then compiles again from
    scratch (on an H200, 40 compiled steps of whisper-base took 103.8 s with an empty cache and
    51.7 s with a filled one; docs/benchmarks.md, "Short runs and compiling"). Returns the
    folder in use."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is not None and current != default_cache_dir():
        return Path(current)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)  # read by inductor at each use
    return folder


def compile_layers(model: torch.nn.Module) -> int:
    """torch.compile transformer layers in place, checkpoint wrapper included (a recomputed
    layer recomputes compiled code); identical layers share compiled graphs.

    Every layer is compiled when all of them are checkpointed or none is. When a memory plan
    mixes the two, only the checkpointed ones are: with torch 2.11 on an H100 (see
    docs/benchmarks.md) compiled plain layers beside compiled checkpointed ones failed
    inductor's stride checks (on the encoder's permuted first input and on SDPA's saved
    log-sum-exp), and a save-everything selective checkpoint around the plain ones failed on a
    mutated cached tensor. Random ops run eager's kernels (``fallback_random``: the same masks
    as an eager layer for the same seed). Returns the number of layers compiled."""
    import torch._dynamo
    import torch._inductor.config

    # Random ops (LoRA's dropout masks) run as eager's kernels inside the compiled graphs, so a
    # compiled layer draws the masks an eager one draws for the same seed. Inductor's own RNG
    # lowering fused the q/v LoRA dropout into the layer-norm kernel at ~10x its memory
    # traffic: 32.6 ms of large-v3's 421 ms step on an H200 (docs/benchmarks.md, "Large-v3:
    # where the step goes"). Process-wide, as dynamo's cache limit below.
    torch._inductor.config.fallback_random = True
    stacks = find_stacks(model)
    flags = [bool(getattr(layer, "gradient_checkpointing", False))
             for stack in stacks for layer in stack.layers]
    mixed = any(flags) and not all(flags)
    count = 0
    for stack in stacks:
        for layer in stack.layers:
            if hasattr(layer, "_lim_compiled"):
                continue
            if mixed and not getattr(layer, "gradient_checkpointing", False):
                continue
            _compile_for_training(layer)
            count += 1
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    return count


def _compile_for_training(layer: torch.nn.Module) -> None:
    """Route ``layer``'s calls through torch.compile while it trains; evaluation and
    generation call the eager forward. (Compiled, generation's growing key/value cache
    recompiled the decoder layers at every new length, until dynamo's limit: a 40-step
    tiny-whisper run on an H100 spent two minutes evaluating.)"""
    compiled = torch.compile(layer._call_impl, dynamic=False)
    eager = layer._call_impl

    def call(*args, **kwargs):
        if layer.training and torch.is_grad_enabled():
            return compiled(*args, **kwargs)
        return eager(*args, **kwargs)

    layer._compiled_call_impl = call  # what nn.Module.__call__ runs, as Module.compile sets it
    layer._lim_compiled = True


def layer_drop(model: torch.nn.Module) -> str:
    """The model config's LayerDrop settings above zero, e.g. "encoder_layerdrop=0.1"."""
    config = getattr(model, "config", None)
    return ", ".join(f"{name}={getattr(config, name)}" for name in
                     ("layerdrop", "encoder_layerdrop", "decoder_layerdrop")
                     if (getattr(config, name, 0) or 0) > 0)


def autocast_dtype(precision: str, device: str) -> torch.dtype | None:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if precision == "auto" and device.startswith("cuda") and torch.cuda.is_bf16_supported():
        dtype = torch.bfloat16
    return dtype


# A method may give some of its parameters their own learning rate, LoRA+-style (ta-qlora's
# temporal kernels): ``parameter.lim_lr_factor`` multiplies the run's learning rate (the
# schedule scales every group alike) and ``parameter.lim_weight_decay`` replaces its decay.
LR_FACTOR, WEIGHT_DECAY = "lim_lr_factor", "lim_weight_decay"


def parameter_groups(parameters: list[torch.nn.Parameter], config: TrainingSettings) -> list[dict]:
    """AdamW's parameter groups: the parameters at the run's learning rate first (the logged
    ``train/learning_rate`` is theirs), then one group per factor and decay a method set."""
    groups: dict[tuple[float, float], list] = {}
    for parameter in parameters:
        key = (float(getattr(parameter, LR_FACTOR, 1.0)),
               float(getattr(parameter, WEIGHT_DECAY, config.weight_decay)))
        groups.setdefault(key, []).append(parameter)
    plain = (1.0, float(config.weight_decay))
    order = sorted(groups, key=lambda key: (key != plain, key))
    return [{"params": groups[key], "lr": config.learning_rate * key[0], "weight_decay": key[1]}
            for key in order]


class TrainStep:
    def __init__(self, model: torch.nn.Module, config: TrainingSettings, device: str,
                 total_steps: int, *, on_optimizer_step=None, micro_batch: int = 0,
                 offload: bool = False, cuda_graphs: bool = False, on_message=None,
                 capture_error_mode: str = "global", compiled: bool = False, on_phase=None):
        from transformers import get_scheduler

        self.model, self.config, self.device = model, config, device
        # With compiled layers the first batch of each shape compiles them (dynamic=False):
        # on_phase(COMPILING) before it and on_phase(None) after, so a page can say why the
        # step takes long instead of looking stuck.
        self.compiled, self.on_phase, self.shapes_seen = compiled, on_phase, set()
        self.on_optimizer_step = on_optimizer_step
        self.micro_batch, self.offload = micro_batch, offload
        # A method that put the frozen base in bf16 (lim_pure_dtype) runs without autocast.
        self.pure_dtype = getattr(model, "lim_pure_dtype", None)
        # No key/value cache while training: non-checkpointed decoder layers would otherwise
        # keep every layer's cross-attention keys and values (generation turns it back on).
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        if getattr(getattr(base, "config", None), "use_cache", False):
            base.config.use_cache = False
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        fused = device.startswith("cuda") and all(p.is_cuda and p.is_floating_point()
                                                  for p in self.parameters)
        self.optimizer = torch.optim.AdamW(parameter_groups(self.parameters, config),
                                           lr=config.learning_rate, weight_decay=config.weight_decay,
                                           **({"fused": True} if fused else {}))
        self.scheduler = get_scheduler(config.lr_scheduler_type, self.optimizer,
                                       num_warmup_steps=config.warmup_steps,
                                       num_training_steps=total_steps)
        # fp16 gradients underflow without loss scaling; bf16 and fp32 need none.
        self.scaler = (torch.amp.GradScaler(device.split(":")[0])
                       if config.precision == "fp16" and self.pure_dtype is None else None)
        self.graphs = None
        drop = layer_drop(base)
        if cuda_graphs and drop:
            # LayerDrop picks layers with the CPU's RNG in Python: a graph would replay one pick.
            (on_message or (lambda message: None))(
                f"CUDA graphs off: the model skips layers at random while training ({drop})")
        elif cuda_graphs and self.scaler is None:  # a scaler's scale changes between replays
            from engine.training.graphs import CapturedSteps

            self.graphs = CapturedSteps(self._forward_backward, self.parameters, on_message=on_message,
                                        capture_error_mode=capture_error_mode)

    def autocast(self):
        dtype = None if self.pure_dtype is not None else autocast_dtype(self.config.precision,
                                                                         self.device)
        if dtype is None:
            return nullcontext()
        # A graph replays the casts it captured; autocast's weight-cast cache would hand it
        # tensors freed after the capture.
        return torch.autocast(device_type=self.device.split(":")[0], dtype=dtype,
                              cache_enabled=self.graphs is None)

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        moved = {}
        for key, value in batch.items():
            value = value.to(self.device, non_blocking=True)
            if self.pure_dtype is not None and value.is_floating_point():
                value = value.to(self.pure_dtype)
            moved[key] = value
        return moved

    def forward_backward(self, batch: dict[str, torch.Tensor], weight: float = 1.0) -> torch.Tensor:
        """Loss of ``batch`` (detached), its gradient added with ``weight`` (1 / accumulation)."""
        new_shape = False
        if self.compiled and self.on_phase is not None:  # only then is a shape worth keying
            shape = tuple((name, tuple(value.shape)) for name, value in sorted(batch.items()))
            new_shape = shape not in self.shapes_seen
        if new_shape:
            self.shapes_seen.add(shape)
            self.on_phase(COMPILING)
        try:
            batch = self.to_device(batch)
            if self.graphs is not None:
                return self.graphs(batch, weight)
            return self._forward_backward(batch, weight)
        finally:
            if new_shape:
                self.on_phase(None)

    def _forward_backward(self, batch: dict[str, torch.Tensor], weight: float) -> torch.Tensor:
        size = next(iter(batch.values())).shape[0]
        chunk = self.micro_batch if 0 < self.micro_batch < size else size
        total = torch.zeros((), device=self.device)
        for start in range(0, size, chunk):
            part = {k: v[start: start + chunk] for k, v in batch.items()}
            share = part[next(iter(part))].shape[0] / size
            offload = (torch.autograd.graph.save_on_cpu(pin_memory=self.device.startswith("cuda"))
                       if self.offload else nullcontext())
            with offload, self.autocast():
                loss = self.model(**part).loss
            scaled = loss * (share * weight)
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            total += loss.detach().float() * share
        return total

    def optimizer_step(self, step: int) -> float | None:
        """Clip, step, schedule; ``step`` is the number of the step being completed."""
        max_norm = self.config.max_grad_norm if self.config.max_grad_norm > 0 else float("inf")
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.parameters, max_norm))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skipped when the gradients overflowed
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        if self.on_optimizer_step is not None:
            self.on_optimizer_step(self.model, step)
        # Captured backward passes add into the existing gradient tensors: zero them in place.
        self.optimizer.zero_grad(set_to_none=self.graphs is None)
        return grad_norm if math.isfinite(grad_norm) else None


@dataclass
class PreparedTraining:
    """What ``prepare_training`` set up: the step (AdamW, schedule, scaler, autocast, CUDA
    graphs), the memory plan it followed (None without ``memory_budget_gb``) and how many
    layers it compiled."""

    step: TrainStep
    plan: MemoryPlan | None
    compiled_layers: int


def prepare_training(model: torch.nn.Module, config: TrainingSettings, device: str, total_steps: int, *,
                     plan_batch: Callable[[], dict[str, torch.Tensor]] | None = None,
                     on_optimizer_step: Callable | None = None,
                     log: Callable[[str], None] | None = None,
                     parallel: bool = False, compile_cache: Path | None = None,
                     on_phase: Callable[[str | None], None] | None = None) -> PreparedTraining:
    """The optimisation set-up of a built ``model`` (the one path of a run and of the speed
    benchmark): with ``memory_budget_gb`` the planner picks micro-batch, checkpointed layers
    and offload on ``plan_batch()`` (a batch whose shapes bound the run's; only called then),
    else ``gradient_checkpointing`` checkpoints every layer or none; ``compile_layers`` then
    compiles; the ``TrainStep`` makes the optimizer and the rest. ``on_optimizer_step`` is the
    method's hook, ``log`` gets what was chosen, ``parallel`` marks one process of a multi-GPU
    run (CUDA graphs are then captured thread-locally), ``compile_cache`` the folder compiled
    kernels are kept in across processes (``use_compile_cache``; a run's: its data home's),
    ``on_phase`` hears when a step compiles for a new batch shape (``TrainStep``)."""
    log = log or (lambda message: None)
    plan = None
    if config.memory_budget_gb > 0:
        if plan_batch is None:
            raise ValueError("memory_budget_gb needs plan_batch: the batch the plan is made for")
        plan = plan_for_budget(model, plan_batch(), budget_gib=config.memory_budget_gb)
        log(plan.describe())
    apply_checkpointing(model, plan.checkpoint if plan else bool(config.gradient_checkpointing))
    compiled = 0
    if config.compile_layers == "auto" and device.startswith("cuda") and not wants_compile(
            "auto", device, total_steps):
        log(f"layers not compiled: {total_steps} steps end before compiling would pay for itself "
            f"(auto compiles runs of {COMPILE_MIN_STEPS:,} steps or more; compile_layers=on "
            "compiles anyway)")
    if wants_compile(config.compile_layers, device, total_steps):
        cache = use_compile_cache(compile_cache) if compile_cache is not None else None
        compiled = compile_layers(model)
        log(f"compiling {compiled} layers with torch.compile (the first steps are slower while it compiles"
            + (f"; kernels compiled before are reused from {cache})" if cache else ")"))
    offload = plan.offload if plan else False
    step = TrainStep(model, config, device, total_steps, on_optimizer_step=on_optimizer_step,
                     micro_batch=plan.micro_batch if plan else 0, offload=offload,
                     cuda_graphs=wants_graphs(config.cuda_graphs, device, offload), on_message=log,
                     capture_error_mode="thread_local" if parallel else "global",
                     compiled=compiled > 0, on_phase=on_phase)
    return PreparedTraining(step, plan, compiled)
