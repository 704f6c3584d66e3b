"""Memory: how much a run will need, how to fit it into a budget, what it used, and what to do
when it ran out. One package, one number.

    estimate(request, device=)   the one estimate (``Workbench.estimate_memory`` calls it for the
                                 Models and Methods pages, ``Workbench.check_run`` for the New
                                 run form and the submit warning): the dry run of one training
                                 step on fake tensors (dryrun.py), run in an estimator process
                                 (estimator.py, child.py), plus what the training process already holds
    check_memory(...)            that estimate against the memory free now (check.py)
    plan_for_budget(model, batch, budget_gib=)
                                 budget -> plan: micro-batch, checkpointed layers, offload
                                 (plan.py; the recipe calls it when memory_budget_gb is set)
    MemoryMeter, process_memory_mb, measure_training_memory_mb
                                 what a run measures (measure.py): ``peak_memory_mb``
    is_out_of_memory, out_of_memory_message
                                 advice when a run ran out (advice.py)

Both the dry run and a run build their model with ``engine.methods.build.build_method_model``.
"""

from __future__ import annotations

import torch

from engine.memory.advice import is_out_of_memory, out_of_memory_message, requested_mb
from engine.memory.check import check_memory
from engine.memory.estimator import estimate_in_child, start_estimator
from engine.memory.dryrun import MemoryEstimate, estimate_training_memory
from engine.memory.measure import (MemoryMeter, free_memory_mb, measure_training_memory_mb,
                                   model_tensor_bytes, process_memory_mb)
from engine.memory.plan import MemoryPlan, apply_checkpointing, find_stacks, plan_for_budget

__all__ = ["MemoryEstimate", "MemoryMeter", "MemoryPlan", "apply_checkpointing", "check_memory",
           "estimate", "estimate_training_memory", "find_stacks", "free_memory_mb",
           "is_out_of_memory", "measure_training_memory_mb", "model_tensor_bytes",
           "out_of_memory_message", "plan_for_budget", "process_memory_mb", "requested_mb",
           "start_estimator", "training_device"]


def training_device() -> str:
    """Where a run started now would train."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def estimate(request: dict, *, device: str | None = None) -> dict[str, dict | str]:
    """Method -> ``MemoryEstimate.as_dict()`` (``total_mb`` is the one number) or the reason
    there is none. ``request`` is ``estimate_in_child``'s; ``device`` (default: where a run
    would train) decides what the process already holds (``process_memory_mb``)."""
    results = estimate_in_child(request)
    held = process_memory_mb(device or training_device())  # after: a dry run here imports what training will
    for name, result in results.items():
        if isinstance(result, dict):
            results[name] = {**result, "process_mb": held, "total_mb": result["training_mb"] + held}
    return results
