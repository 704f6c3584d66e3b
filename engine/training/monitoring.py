"""What the live monitor plots besides the loss: CPU/RAM/GPU, throughput, utilisation (the
run's own memory is sampled by engine.memory.MemoryMeter), and ``RunRecorder``, which writes
them.

Every sample is a plain dict of metric name -> value (names from engine/names.py) that the
recipe's ``RunRecorder`` writes with the step's other metrics, so the page only ever reads rows
from ``run_metrics``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import psutil
import torch

from engine.flops import forward_flops_per_sample, peak_tflops, training_flops_per_sample
from engine.names import (AUDIO_HOURS_PER_HOUR, AUDIO_SECONDS_PER_S, CPU_PERCENT, GPU_MEMORY_MB, GRAD_NORM,
                          LEARNING_RATE, LOSS, MEMORY_MB, MFU_PERCENT, RAM_USED_MB, SAMPLES_PER_S, TFLOPS)

if TYPE_CHECKING:
    from engine.memory import MemoryMeter
    from engine.training.tracking import Tracking
    from storage import Storage

def system_sample(device: str) -> dict[str, float]:
    """Machine-wide CPU and RAM use, and GPU memory in use when training on one."""
    memory = psutil.virtual_memory()
    sample = {
        # Since the previous call: the first call of a process reads 0, later ones the
        # average over the last step, which is what a per-step chart wants.
        CPU_PERCENT: psutil.cpu_percent(interval=None),
        RAM_USED_MB: (memory.total - memory.available) / 2**20,
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


def count_flops(task_model, first_batch: Callable[[], dict], trains_base_weights: bool, device: str,
                world_size: int, log: Callable[..., None]) -> tuple[float | None, float | None]:
    """Model FLOPs of one training example (on the first batch's padded shapes, counted on
    the meta device) and the device's peak TFLOP/s, for the utilisation metrics
    (engine/flops.py). Never fails a run: what cannot be worked out is not logged.
    ``world_size``: the processes of a multi-GPU run (1 on one device)."""
    try:
        first = first_batch()
        flops = training_flops_per_sample(forward_flops_per_sample(task_model, batch=first),
                                          trains_base_weights=trains_base_weights)
    except Exception as error:  # noqa: BLE001 (a run trains without these figures)
        log(f"no utilisation figures: counting the model's FLOPs failed ({error!r})", "warning")
        return None, None
    try:
        peak = peak_tflops(device)
    except ValueError as error:
        log(f"no utilisation %: {error}", "warning")
        peak = None
    if peak and world_size > 1:  # samples/s count every rank's examples: so does the peak
        peak *= world_size
    log(f"{flops / 1e9:.3g} GFLOP per training example ({3 if trains_base_weights else 2} x forward); "
        + (f"peak {peak:g} TFLOP/s" if peak else f"no known peak on {device}: no utilisation %"))
    return flops, peak


class RunRecorder:
    """Where a run's numbers go as it trains: its metric rows in storage (what the live monitor
    and Compare read) and its experiment tracking (engine/training/tracking.py), each at a step
    and the run's wall time. ``step`` writes what one optimizer step logs; the evaluations write
    their scores through ``metrics`` (engine/training/evaluation.py, ``RunScoring``)."""

    def __init__(self, storage: Storage, run_id: int, tracking: Tracking, device: str, memory: MemoryMeter,
                 flops_per_sample: float | None = None, peak_tflops: float | None = None,
                 method_metrics: Callable[[], dict] | None = None):
        self.storage, self.run_id, self.tracking, self.device = storage, run_id, tracking, device
        self.memory = memory  # the run's own memory now and at peak (engine.memory.MemoryMeter)
        self.flops_per_sample, self.peak_tflops = flops_per_sample, peak_tflops  # ``count_flops``
        self.method_metrics = method_metrics  # the method's own per-step figures (Method.step_metrics)

    def metrics(self, step: int, wall: float, values: dict) -> None:
        self.storage.add_metrics(self.run_id, step, wall, values)
        self.tracking.scalars(step, values)

    def step(self, step: int, wall: float, loss: float, grad_norm: float | None, rates: dict,
             learning_rate: float) -> None:
        """One optimizer step: loss, learning rate, gradient norm, memory, throughput
        (``rates``, from ``Throughput.take``), utilisation, the machine and the method's own
        metrics; then the run's step, wall time and peak memory."""
        memory_mb = self.memory.sample()
        values = {
            LOSS: loss, LEARNING_RATE: learning_rate,
            GRAD_NORM: grad_norm, MEMORY_MB: memory_mb, **rates,
            **utilisation_metrics(rates[SAMPLES_PER_S], self.flops_per_sample, self.peak_tflops),
            **system_sample(self.device),
            **(self.method_metrics() if self.method_metrics else {}),
        }
        self.metrics(step, wall, values)
        self.storage.update_run(self.run_id, step=step, wall_time_s=wall, wall_time_at=time.time(),
                                peak_memory_mb=self.memory.peak_mb)


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
