"""What the live monitor plots besides the loss: CPU/RAM/GPU, throughput, utilisation (the
run's own memory is sampled by engine.memory.MemoryMeter).

Every sample is a plain dict of metric name -> value that the recipe writes with the step's
other metrics, so the page only ever reads rows from ``run_metrics``.
"""

from __future__ import annotations

import threading
import time

import psutil
import torch

# Per-step throughput metrics (names the Training and Compare pages read).
SAMPLES_PER_S = "train/samples_per_s"
AUDIO_SECONDS_PER_S = "train/audio_seconds_per_s"
AUDIO_HOURS_PER_HOUR = "train/audio_hours_per_hour"  # the same ratio, as speech people say it
TFLOPS = "train/tflops"  # achieved model TFLOP/s
MFU_PERCENT = "train/mfu_percent"  # model-FLOPs utilisation: achieved / the device's peak, in %
CPU_PERCENT, GPU_MEMORY_MB = "system/cpu_percent", "system/gpu_memory_mb"  # every run / GPU runs


def system_sample(device: str) -> dict[str, float]:
    """Machine-wide CPU and RAM use, and GPU memory in use when training on one."""
    memory = psutil.virtual_memory()
    sample = {
        # Since the previous call: the first call of a process reads 0, later ones the
        # average over the last step, which is what a per-step chart wants.
        CPU_PERCENT: psutil.cpu_percent(interval=None),
        "system/ram_used_mb": (memory.total - memory.available) / 2**20,
    }
    if device.startswith("cuda"):
        free, total = torch.cuda.mem_get_info()
        sample[GPU_MEMORY_MB] = (total - free) / 2**20
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
        rates = {SAMPLES_PER_S: self.examples / elapsed}
        if self.audio_seconds:
            rates[AUDIO_SECONDS_PER_S] = rates[AUDIO_HOURS_PER_HOUR] = self.audio_seconds / elapsed
        self.mark, self.examples, self.audio_seconds = now, 0, 0.0
        return rates


def utilisation_metrics(samples_per_s: float, train_flops_per_sample: float | None,
                        peak_tflops: float | None) -> dict[str, float]:
    """Achieved model TFLOP/s and, when the device's peak is known, the utilisation in %
    (engine/flops.py counts the FLOPs and knows the peaks)."""
    if not train_flops_per_sample:
        return {}
    achieved = samples_per_s * train_flops_per_sample / 1e12
    metrics = {TFLOPS: achieved}
    if peak_tflops:
        metrics[MFU_PERCENT] = 100 * achieved / peak_tflops
    return metrics


class MachineLoad:
    """How much other processes load this machine: the CPU they used since the last call, as
    a share of all cores, and the 1-minute load average, so the run page can say when a run is
    slow because the machine is busy with other work (issue 27: a demo on a shared 2-core
    machine took 22 minutes where 3.4 were measured). Thread-safe; the first call has no interval
    yet and reports only the load average."""

    BUSY_PERCENT = 25.0  # other processes using a quarter of every core
    BUSY_LOAD_PER_CORE = 1.5

    def __init__(self):
        self._lock = threading.Lock()
        self._last: tuple[float, float, dict[int, float]] | None = None  # (time, busy CPU s, {pid: CPU s})

    @staticmethod
    def _cpu_seconds(pid: int) -> float:
        try:
            times = psutil.Process(pid).cpu_times()
            return times.user + times.system + getattr(times, "children_user", 0.0) + getattr(
                times, "children_system", 0.0)
        except (psutil.Error, OSError):
            return 0.0

    def sample(self, own_pids: set[int], now: float | None = None) -> dict:
        """``{"cores", "load_average", "others_percent" (None on the first call), "busy"}``;
        ``own_pids``: the processes whose CPU is the workbench's (the app, a run's trainer)."""
        now = time.monotonic() if now is None else now
        cores = psutil.cpu_count() or 1
        times = psutil.cpu_times()
        busy_s = sum(times) - times.idle - getattr(times, "iowait", 0.0)
        own = {pid: self._cpu_seconds(pid) for pid in own_pids}
        with self._lock:
            last, self._last = self._last, (now, busy_s, own)
        others = None
        if last is not None and now > last[0]:
            own_used = sum(max(0.0, seconds - last[2].get(pid, seconds)) for pid, seconds in own.items())
            others = max(0.0, 100.0 * (busy_s - last[1] - own_used) / ((now - last[0]) * cores))
        load = psutil.getloadavg()[0]
        busy = (others is not None and others >= self.BUSY_PERCENT) or load > self.BUSY_LOAD_PER_CORE * cores
        return {"cores": cores, "load_average": load, "others_percent": others, "busy": busy}
