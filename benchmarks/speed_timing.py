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


def profile_breakdown(prof, steps: int, elapsed: float, device: str) -> dict:
    """Per optimizer step: wall ms, device-busy ms and device launches (GPU), and the 12 costliest
    device ops (on a CPU: operators by self CPU time)."""
    from torch.autograd import DeviceType

    events = prof.key_averages()
    if device == "cuda":
        rows = [e for e in events if e.device_type != DeviceType.CPU]
        cost = lambda e: e.self_device_time_total  # noqa: E731
    else:
        rows, cost = list(events), (lambda e: e.self_cpu_time_total)
    top = sorted(rows, key=cost, reverse=True)[:12]
    gpu = device == "cuda"
    return {"steps": steps, "wall_ms_per_step": 1000 * elapsed / steps,
            "device_busy_ms_per_step": sum(map(cost, rows)) / 1000 / steps if gpu else None,
            "device_ops_per_step": sum(e.count for e in rows) / steps if gpu else None,
            "top": [{"name": e.key[:80], "ms_per_step": cost(e) / 1000 / steps,
                     "calls_per_step": e.count / steps} for e in top]}

