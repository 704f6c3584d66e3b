"""Model FLOPs per training example and the device's peak, for throughput and utilisation.

Model-FLOPs utilisation (MFU) = samples/s x training FLOPs per sample / the device's peak
dense bf16 FLOP/s, as in issue 7's reference table. "Model FLOPs" are the matmuls and
convolutions of the architecture (torch's ``FlopCounterMode``), whatever the implementation
runs: a 4-bit layer counts as the plain linear layer it stands for, recomputation under
gradient checkpointing counts nothing extra, and neither do adapters (a LoRA branch of rank r
adds about 2r / width of a layer's work).

The forward pass is counted on the meta device (shapes only: no weights, no arithmetic: about a
second for whisper-large-v3 on 30 s of audio), the way engine/models/inspect.py builds models.
Fake tensors would do too, but they have crashed the interpreter in garbage collection when
other threads were alive (engine/memory/dryrun.py), and the recipe runs in the app's worker
thread.

    forward = forward_flops_per_sample(task_model)            # from task_model.fake_batch(1)
    train = training_flops_per_sample(forward, trains_base_weights=False)   # 2 x forward
    peak = peak_tflops("cuda")                                 # 989.0 on an H100 SXM

The recipe turns these into per-step metrics (engine/training/monitoring.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import nn

# Peak dense bf16 tensor TFLOP/s (no 2:4 sparsity) from NVIDIA's data sheets, matched against
# torch.cuda.get_device_name() in order (the first pattern found wins). LIM_PEAK_TFLOPS
# overrides the table, for a GPU missing here or a clock-limited one.
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    (r"h200 nvl", 835.0),
    (r"h200", 989.0),  # SXM: the H100 SXM's tensor cores with more memory
    (r"h100 nvl", 835.0),
    (r"h100 pcie", 756.0),
    (r"h100", 989.0),  # "NVIDIA H100 80GB HBM3" is the SXM part
    (r"a100", 312.0),  # SXM and PCIe alike
    (r"l40s", 362.0),
    (r"\bl4\b", 121.0),
    (r"rtx 4090", 165.0),  # with fp32 accumulation (Ada whitepaper)
    # Jetson AGX Orin 64GB: the technical brief gives its GPU 170 sparse INT8 TOPS (16 SMs at
    # 1.3 GHz); dense is half of that and fp16/bf16 half of INT8, so about 42.5. The 32GB
    # module, Orin NX and Orin Nano report the same name with fewer SMs and lower clocks:
    # set LIM_PEAK_TFLOPS for those.
    (r"orin", 42.5),
]


def forward_flops_per_sample(task_model, model_or_builder: nn.Module | Callable[[], nn.Module] | None = None,
                             batch: dict[str, torch.Tensor] | None = None) -> float:
    """FLOPs of one forward pass (loss included) per example in ``batch``.

    ``model_or_builder``: a model, or a function that builds one (called on the meta device);
    by default the task model's architecture from its config, counted once per architecture
    and batch shape in this process. ``batch``: tensors of the shapes to count (values are
    never read on the meta device; a real collated batch gives the real padded lengths); by
    default ``task_model.fake_batch(1)``.
    """
    if batch is None:
        with torch.device("meta"):
            batch = task_model.fake_batch(1)
    # Attention masks change values, not the work done, and transformers reads them
    # (``mask.all()``), which the meta device cannot: counted without them.
    inputs = {name: value for name, value in batch.items()
              if isinstance(value, torch.Tensor) and name != "attention_mask"}
    if model_or_builder is not None:
        with torch.device("meta"):
            model = model_or_builder if isinstance(model_or_builder, nn.Module) else model_or_builder()
        return _count_forward(model, inputs)
    key = _architecture_key(task_model, inputs)
    if key not in _COUNTED:
        from engine.models.inspect import build_on_meta

        if len(_COUNTED) > 256:
            _COUNTED.clear()
        _COUNTED[key] = _count_forward(build_on_meta(task_model), inputs)
    return _COUNTED[key]


# (task model class, config, labels, input shapes) -> forward FLOPs per example: a resumed run,
# or the test suite's many runs of the same preset, count once (a tenth of a second each).
_COUNTED: dict[tuple, float] = {}


def _architecture_key(task_model, inputs: dict[str, torch.Tensor]) -> tuple:
    config = task_model.model_dir / "config.json"
    return (type(task_model), config.read_bytes() if config.is_file() else str(task_model.model_dir),
            tuple(task_model.labels),
            tuple((name, tuple(value.shape), value.dtype) for name, value in inputs.items()))


def _count_forward(model: nn.Module, inputs: dict[str, torch.Tensor]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    inputs = {name: torch.empty_like(value, device=device) if device.type == "meta" else value.to(device)
              for name, value in inputs.items()}
    examples = next(iter(inputs.values())).shape[0]
    # The counter's module tracker hooks every module of the process, so another thread's
    # forward passes it by; it only logs then, and the total comes from this thread's ops.
    counter = FlopCounterMode(display=False)
    was_training = model.training
    model.eval()  # no dropout or SpecAugment draws; the matmuls are the same
    try:
        with counter, torch.no_grad():
            model(**inputs)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / examples


def training_flops_per_sample(forward_flops: float, *, trains_base_weights: bool) -> float:
    """One optimizer step's FLOPs per example: the backward pass costs two forwards (gradients
    of activations and of weights) when the base weights train, one when they are frozen
    (adapters: no weight gradient for the frozen matmuls)."""
    return forward_flops * (3 if trains_base_weights else 2)


def peak_tflops(device: str) -> float | None:
    """Peak dense bf16 TFLOP/s of ``device`` ("cuda", "cuda:1", "cpu"); None when unknown
    (a CPU, a GPU missing from the table). ``LIM_PEAK_TFLOPS`` overrides."""
    from engine.settings import load_config

    override = load_config().peak_tflops  # a bad value is refused there, naming LIM_PEAK_TFLOPS
    if override:
        return override
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    return peak_tflops_of(torch.cuda.get_device_name(torch.device(device)))


def peak_tflops_of(device_name: str) -> float | None:
    """The table's figure for a GPU name as torch reports it, or None."""
    name = device_name.lower()
    return next((peak for pattern, peak in PEAK_BF16_TFLOPS if re.search(pattern, name)), None)


__all__ = ["PEAK_BF16_TFLOPS", "forward_flops_per_sample", "peak_tflops", "peak_tflops_of",
           "training_flops_per_sample"]
