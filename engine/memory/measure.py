"""What a run measures: the memory the process holds now, its peak, and a real step's peak.

``process_memory_mb`` is the one definition of "memory in use" everywhere: on a GPU the CUDA
allocations (``torch.cuda.memory_allocated``), on a CPU the process's resident set (psutil:
Python, torch, the app and the tensors). ``MemoryMeter`` samples it every step of a run and
keeps the peak the run stores as ``peak_memory_mb``; the estimate adds its tensors to the same
figure taken before the run (``MemoryEstimate.process_mb``), so the two compare directly.
``measure_training_memory_mb`` measures the tensors of one real step (tests and benchmarks
check the dry run and the planner against it).
"""

from __future__ import annotations

import psutil
import torch

MIB = 2**20


def process_memory_mb(device: str) -> float:
    """Memory this process holds now on ``device`` (see the module docstring)."""
    if device.startswith("cuda"):
        return torch.cuda.memory_allocated() / MIB
    return psutil.Process().memory_info().rss / MIB


def free_memory_mb(device: str) -> float:
    """Memory free for a new allocation: on a GPU what CUDA reports, else available RAM."""
    if device.startswith("cuda") and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return free / MIB
    return psutil.virtual_memory().available / MIB


class MemoryMeter:
    """Memory in use now and at peak during a run, as ``process_memory_mb`` defines it."""

    def __init__(self, device: str):
        self.device = device
        self.peak_mb = 0.0
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()

    def sample(self) -> float:
        now = process_memory_mb(self.device)
        if self.device.startswith("cuda"):  # the allocator's own peak sees between samples too
            self.peak_mb = max(self.peak_mb, torch.cuda.max_memory_allocated() / MIB)
        self.peak_mb = max(self.peak_mb, now)
        return now


def measure_training_memory_mb(model, batch: dict, lr: float = 1e-4) -> float:
    """Measured peak tensor memory of one real forward/backward/AdamW step, in MiB.

    On CUDA this is ``torch.cuda.max_memory_allocated`` over the step plus what was allocated
    before it. On a CPU there is no allocator counter, so the torch profiler's per-op memory
    accounting, replayed in time order, gives the peak of what the step allocates, added to
    the bytes of the model's own tensors (parameters, buffers, 4-bit quantisation state).
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr)
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        _step(model, batch, optimizer)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / MIB
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _step(model, batch, optimizer)
    # Each op's own allocations minus frees (self usage, children excluded), plus the
    # "[memory]" events for frees that happen outside any op, replayed in time order.
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    current = peak = 0
    for event in events:
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return (model_tensor_bytes(model) + peak) / MIB


def _step(model, batch, optimizer) -> None:
    model.train()
    model(**batch).loss.backward()
    optimizer.step()


def model_tensor_bytes(model) -> int:
    seen, total = set(), 0
    tensors = list(model.parameters()) + list(model.buffers())
    for parameter in model.parameters():  # bitsandbytes keeps block scales beside a 4-bit weight
        state = getattr(parameter, "quant_state", None)
        if state is not None:
            tensors += [t for t in (state.absmax, getattr(state.state2, "absmax", None),
                                    getattr(state, "code", None)) if isinstance(t, torch.Tensor)]
    for tensor in tensors:
        key = tensor.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += tensor.untyped_storage().nbytes()
    return total
