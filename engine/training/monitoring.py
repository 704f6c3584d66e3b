"""What the live monitor plots besides the loss: memory, CPU/RAM/GPU and throughput.

Every sample is a plain dict of metric name -> value that the recipe writes with the step's
other metrics, so the page only ever reads rows from ``run_metrics``.
"""

from __future__ import annotations

import time

import psutil
import torch


class MemoryMeter:
    """Memory in use now and at peak: CUDA allocations on a GPU, process RSS on a CPU."""

    def __init__(self, device: str):
        self.device = device
        self.process = psutil.Process()
        self.peak_mb = 0.0
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()

    def sample(self) -> float:
        if self.device.startswith("cuda"):
            now = torch.cuda.memory_allocated() / 2**20
            self.peak_mb = max(self.peak_mb, torch.cuda.max_memory_allocated() / 2**20)
        else:
            now = self.process.memory_info().rss / 2**20
            self.peak_mb = max(self.peak_mb, now)
        return now


def system_sample(device: str) -> dict[str, float]:
    """Machine-wide CPU and RAM use, and GPU memory in use when training on one."""
    memory = psutil.virtual_memory()
    sample = {
        # Since the previous call: the first call of a process reads 0, later ones the
        # average over the last step, which is what a per-step chart wants.
        "system/cpu_percent": psutil.cpu_percent(interval=None),
        "system/ram_used_mb": (memory.total - memory.available) / 2**20,
    }
    if device.startswith("cuda"):
        free, total = torch.cuda.mem_get_info()
        sample["system/gpu_memory_mb"] = (total - free) / 2**20
    return sample


class Throughput:
    """Examples and seconds of audio per second of training, per optimizer step."""

    def __init__(self):
        self.mark = time.perf_counter()
        self.examples = 0
        self.audio_seconds = 0.0

    def add(self, examples: int, audio_seconds: float) -> None:
        self.examples += examples
        self.audio_seconds += audio_seconds

    def take(self) -> dict[str, float]:
        """Rates since the last ``take`` (one optimizer step), then start counting again."""
        now = time.perf_counter()
        elapsed = max(now - self.mark, 1e-9)
        rates = {"train/samples_per_s": self.examples / elapsed}
        if self.audio_seconds:
            rates["train/audio_seconds_per_s"] = self.audio_seconds / elapsed
        self.mark, self.examples, self.audio_seconds = now, 0, 0.0
        return rates
