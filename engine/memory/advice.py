"""Out-of-memory advice: what ran out, how much was asked versus free, and what to change.

The worker calls ``out_of_memory_message`` when a run fails with ``is_out_of_memory``.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from engine.memory.measure import free_memory_mb

_TRIED = re.compile(r"Tried to allocate\s+([\d.]+)\s*([KMGT]i?B)", re.IGNORECASE)
_FREE = re.compile(r"of which\s+([\d.]+)\s*([KMGT]i?B)\s+is free", re.IGNORECASE)
_UNITS = {"k": 2**-10, "m": 1.0, "g": 2**10, "t": 2**20}


def _size_mb(pattern: re.Pattern, message: str) -> float | None:
    match = pattern.search(message)
    return float(match.group(1)) * _UNITS[match.group(2)[0].lower()] if match else None


def requested_mb(message: str) -> float | None:
    """The size in "Tried to allocate 2.00 GiB" of a CUDA out-of-memory message, in MiB."""
    return _size_mb(_TRIED, message)


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or \
        "out of memory" in str(error).lower()


def out_of_memory_message(error: BaseException, device: str, training: Any = None,
                          method: str = "") -> str:
    """What ran out, how much was asked versus free, and what to change, in that order.

    ``training``: the run's ``TrainingSettings`` (engine.training.settings, a layer above this
    one, hence not imported), or None when they are not known (then no batch advice)."""
    text = str(error)
    on_gpu = isinstance(error, torch.OutOfMemoryError) or "cuda" in text.lower()
    where = "GPU memory" if on_gpu else "RAM (host memory)"
    # CUDA's message says what was free when it failed; later the cache may have been freed.
    free = _size_mb(_FREE, text) if on_gpu else None
    if free is None:
        free = free_memory_mb("cuda" if on_gpu else "cpu")
    needed = requested_mb(text)
    amount = (f"it tried to allocate {needed:,.0f} MiB more while {free:,.0f} MiB were free"
              if needed is not None else f"it needed more than the {free:,.0f} MiB that were free")
    advice = []
    if training is not None and training.per_device_train_batch_size > 1:
        batch, accumulation = training.per_device_train_batch_size, training.gradient_accumulation_steps
        advice.append(f"per_device_train_batch_size={max(1, batch // 2)} with "
                      f"gradient_accumulation_steps={accumulation * 2} (same effective batch)")
    if training is None or not training.gradient_checkpointing:
        advice.append("gradient_checkpointing=true (recompute activations: less memory, slower)")
    if training is None or not training.memory_budget_gb:
        advice.append(f"memory_budget_gb={max(0.1, free / 1024):.1f} (the planner picks micro-batch, "
                      "checkpointing and offload to fit)")
    if method != "qlora":
        advice.append("the qlora method (4-bit base model)")
    advice.append("a shorter audio window (shorter clips, or a model preset with a shorter window)")
    detail = text.splitlines()[0] if text else type(error).__name__
    return f"out of {where}: {amount}. Try: " + "; ".join(advice) + f". Details: {detail}"
