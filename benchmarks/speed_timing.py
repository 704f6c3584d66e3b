"""Timing and profiling of the training speed benchmark, the same for both sides.

Throughput counts the optimizer steps after the warm-up steps, timed with the device
synchronised; with ``LIM_BENCH_PROFILE=folder`` torch.profiler watches the timed steps. No engine
import here: the reference side (speed_reference.py) uses it too.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


class StepProfiler:
    """With ``LIM_BENCH_PROFILE=folder``, torch.profiler over the timed steps (their wall time is
    then inflated by the profiler): :meth:`stop` returns a per-step breakdown (device-busy time of
    kernels, copies and memsets; device launches; the costliest kernels) and writes the kernel
    table to the folder. Without the variable it does nothing and returns None."""

    def __init__(self, name: str, device: str):
        self.folder = os.environ.get("LIM_BENCH_PROFILE")
        self.name, self.device, self.prof = name, device, None

    def start(self) -> None:
        if not self.folder:
            return
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device == "cuda" else [])
        self.prof = profile(activities=activities)
        self.prof.__enter__()

    def stop(self, steps: int, elapsed: float) -> dict | None:
        if self.prof is None:
            return None
        self.prof.__exit__(None, None, None)
        breakdown = profile_breakdown(self.prof, steps, elapsed, self.device)
        sort = "self_cuda_time_total" if self.device == "cuda" else "self_cpu_time_total"
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.name)
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        Path(self.folder, name + ".txt").write_text(
            json.dumps(breakdown, indent=1) + "\n\n" +
            self.prof.key_averages().table(sort_by=sort, row_limit=50, max_name_column_width=90))
        return breakdown


def timed_loop(step_fn, batches, total_steps, warmup, device, profiler: StepProfiler):
    import torch

    losses, started = [], None
    for index in range(total_steps):
        if index == warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            profiler.start()
            started = time.perf_counter()
        losses.append(step_fn(batches[index % len(batches)], index))
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    return losses, elapsed, profiler.stop(total_steps - warmup, elapsed)


# Where a step's time goes, by kind of work (issue 18, goal 2). A GPU kernel's name, or on a CPU
# an operator's, says what it does; the first group whose words the lower-cased name contains
# takes it. Written here (no library sorts kernels into these groups): the words are those of
# the kernels torch 2.11, cuBLAS (nvjet, cutlass, xmma), cuDNN, bitsandbytes and inductor launch.
# Inductor's fused kernels (``triton_...``) hold the norms, activations, dropout and residual
# adds, with the casts between them folded in; one that only copies or re-lays-out a tensor
# counts as a copy, and its matmul templates (``triton_tem``) as GEMM.
CATEGORIES = (
    ("attention", ("sdpa", "flash", "fmha", "attention")),
    ("4-bit dequantisation", ("dequantize", "kdequant")),
    ("optimizer", ("adam", "multi_tensor_apply", "_foreach_")),
    ("loss", ("nll_loss", "log_softmax", "softmaxforward", "softmaxbackward", "cross_entropy")),
    ("GEMM", ("nvjet", "gemm", "cutlass", "xmma", "cublas", "splitkreduce", "triton_tem", "aten::mm",
              "aten::addmm", "aten::bmm", "aten::baddbmm", "conv")),
    ("copies and casts", ("memcpy", "memset", "copy", "cat_", "catarray", "aten::clone", "contiguous",
                          "aten::to", "fill_")),
    ("norms, activations, dropout, residuals", ("triton", "norm", "gelu", "dropout", "elementwise",
                                                "reduce", "aten::add", "aten::mul")),
)
_LAYOUT = {"clone", "transpose", "view", "permute", "expand", "unsafe", "to", "copy", ""}


def kernel_category(name: str) -> str:
    """The kind of work a kernel (GPU) or operator (CPU) named ``name`` does: one of
    ``CATEGORIES``' names or ``other``."""
    low = name.lower()
    if low.startswith("triton_") and "fused_" in low and not low.startswith("triton_tem"):
        words = {w for w in low.split("fused_", 1)[1].split("_") if not w.isdigit()}  # minus the kernel's number
        if words <= _LAYOUT:  # nothing but copies and re-layouts
            return "copies and casts"
        if "gemm_4bit" in low or "dequantize" in low:  # names the op it sits next to, not dequantises
            low = low.replace("gemm_4bit", "").replace("dequantize", "")
    for category, words in CATEGORIES:
        if any(word in low for word in words):
            return category
    return "other"


def profile_breakdown(prof, steps: int, elapsed: float, device: str) -> dict:
    """Per optimizer step: wall ms, device-busy ms and device launches (GPU), the busy time by
    kind of work (``kernel_category``; on a GPU also ``idle``: the wall time no kernel ran), and
    the 12 costliest device ops (on a CPU: operators by self CPU time)."""
    from torch.autograd import DeviceType

    events = prof.key_averages()
    gpu = device == "cuda"
    if gpu:
        rows = [e for e in events if e.device_type != DeviceType.CPU]
        cost = lambda e: e.self_device_time_total  # noqa: E731
    else:
        # operators only (not the profiler's own step markers or Python frames)
        rows = [e for e in events if "::" in e.key]
        cost = lambda e: e.self_cpu_time_total  # noqa: E731
    top = sorted(rows, key=cost, reverse=True)[:12]
    categories: dict[str, float] = {}
    for event in rows:
        category = kernel_category(event.key)
        categories[category] = categories.get(category, 0.0) + cost(event) / 1000 / steps
    busy = sum(map(cost, rows)) / 1000 / steps
    wall = 1000 * elapsed / steps
    if gpu:
        categories["idle"] = max(0.0, wall - busy)
    return {"steps": steps, "wall_ms_per_step": wall,
            "device_busy_ms_per_step": busy if gpu else None,
            "device_ops_per_step": sum(e.count for e in rows) / steps if gpu else None,
            "categories_ms_per_step": dict(sorted(categories.items(), key=lambda kv: -kv[1])),
            "top": [{"name": e.key[:80], "ms_per_step": cost(e) / 1000 / steps,
                     "calls_per_step": e.count / steps} for e in top]}

