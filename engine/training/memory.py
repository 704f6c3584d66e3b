"""A rough memory plan for a run, the memory free on the device, and out-of-memory advice.

``estimate_run_memory_mb`` is deliberately simple (weights by precision, gradients and AdamW
state of the trainable parameters, a rough activation term): it answers at submit time without
building the model. The precise estimate is the fake-tensor dry run of engine/models/memory.py
(the Models and Methods pages); folding the two into one module is issue 13's "One memory
module".
"""

from __future__ import annotations

import re

import psutil
import torch

BYTES_PER_WEIGHT = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "nf4": 0.5 + 0.02, "fp4": 0.5 + 0.02}
OVERHEAD_MB = {"cpu": 600.0, "cuda": 400.0}  # libraries / CUDA context: a floor, not a detail


def estimate_run_memory_mb(*, total_params: int, trainable_params: int, quantized_params: int = 0,
                           weight_format: str = "fp32", quantized_format: str = "nf4",
                           batch_size: int = 8, sequence_length: int = 1500, hidden_size: int = 512,
                           num_layers: int = 12, activation_bytes: float = 4.0,
                           gradient_checkpointing: bool = False, device: str = "cpu") -> dict:
    """Megabytes a training step needs, term by term, and their ``total``.

    weights: quantised linear weights at ~4.5 bits, the rest at ``weight_format``;
    gradients + AdamW: 4 + 8 bytes per trainable parameter (fp32 master state);
    activations: ~16 values per token, hidden unit and layer (attention, MLP, norms), kept for
    every layer, or about two layers' worth with gradient checkpointing.
    """
    mb = 2**20
    weights = (quantized_params * BYTES_PER_WEIGHT[quantized_format]
               + (total_params - quantized_params) * BYTES_PER_WEIGHT[weight_format]) / mb
    optimizer = trainable_params * (4 + 8) / mb
    kept_layers = min(num_layers, 2) if gradient_checkpointing else num_layers
    activations = batch_size * sequence_length * hidden_size * 16 * kept_layers * activation_bytes / mb
    overhead = OVERHEAD_MB["cuda" if device.startswith("cuda") else "cpu"]
    total = weights + optimizer + activations + overhead
    return {"weights_mb": weights, "gradients_and_optimizer_mb": optimizer,
            "activations_mb": activations, "overhead_mb": overhead, "total_mb": total}


def free_memory_mb(device: str) -> float:
    """Memory free for a new allocation: on a GPU what CUDA reports, else available RAM."""
    if device.startswith("cuda") and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return free / 2**20
    return psutil.virtual_memory().available / 2**20


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


def out_of_memory_message(error: BaseException, device: str, training: dict | None = None,
                          method: str = "") -> str:
    """What ran out, how much was asked versus free, and what to change, in that order."""
    training = training or {}
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
    batch = int(training.get("per_device_train_batch_size") or 0)
    accumulation = int(training.get("gradient_accumulation_steps") or 1)
    advice = []
    if batch > 1:
        advice.append(f"per_device_train_batch_size={max(1, batch // 2)} with "
                      f"gradient_accumulation_steps={accumulation * 2} (same effective batch)")
    if not training.get("gradient_checkpointing"):
        advice.append("gradient_checkpointing=true (recompute activations: less memory, slower)")
    if method != "qlora":
        advice.append("the qlora method (4-bit base model)")
    advice.append("a shorter audio window (shorter clips, or a model preset with a shorter window)")
    detail = text.splitlines()[0] if text else type(error).__name__
    return f"out of {where}: {amount}. Try: " + "; ".join(advice) + f". Details: {detail}"
