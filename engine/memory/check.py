"""The submit-time memory check: the one number against the memory free now.

``check_memory`` takes the dry run's estimate of a configuration (the same ``MemoryEstimate``
the Models and Methods pages show) and says whether the run will fit, in the words the New
run form and a queued run's warning use.
"""

from __future__ import annotations

GIB_MB = 1024


def check_memory(estimate: dict | str, *, device: str, free_mb: float, batch_size: int,
                 memory_budget_gb: float = 0.0) -> dict:
    """``estimate``: ``MemoryEstimate.as_dict()`` or the reason there is none. Returns
    ``estimate_mb`` (the one number: what the run's ``peak_memory_mb`` will be measured
    against; None without an estimate), ``free_mb``, ``fits``, ``device``, ``breakdown`` (the
    estimate) and ``message``.

    With ``memory_budget_gb`` the planner fits the run's tensors into that budget at start
    (micro-batch, checkpointing, offload), so the number is capped there.
    """
    if isinstance(estimate, str):
        return {"estimate_mb": None, "free_mb": free_mb, "fits": True, "device": device,
                "breakdown": None, "message": estimate}
    budget_mb = memory_budget_gb * GIB_MB
    training = min(estimate["training_mb"], budget_mb) if budget_mb else estimate["training_mb"]
    total = estimate["process_mb"] + training
    fits = training <= free_mb
    held = ("this process holds already (Python, torch, the app)" if device == "cpu"
            else "already allocated on the GPU")
    message = (f"about {total:,.0f} MiB at peak on {device}: {training:,.0f} MiB for one training "
               f"step with a batch of {batch_size} (weights, gradients, AdamW state, activations) "
               f"+ {estimate['process_mb']:,.0f} MiB {held}; {free_mb:,.0f} MiB free")
    if budget_mb and budget_mb < estimate["training_mb"]:
        message += (f". Without memory_budget_gb={memory_budget_gb:g} it would need "
                    f"{estimate['training_mb']:,.0f} MiB; the planner fits it into the budget "
                    "and says at the start what it chose")
    if not fits and budget_mb:
        message = (f"this configuration will probably not fit: {message}. Lower memory_budget_gb "
                   f"to at most {free_mb / GIB_MB:.1f} (the memory free now)")
    elif not fits:
        message = (f"this configuration will probably not fit: {message}. Set memory_budget_gb "
                   "(the planner picks micro-batch, checkpointing and offload), lower "
                   "per_device_train_batch_size or use qlora")
    return {"estimate_mb": total, "free_mb": free_mb, "fits": fits, "device": device,
            "breakdown": estimate, "message": message}
