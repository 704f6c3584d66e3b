"""CUDA graphs of a training step's forward and backward.

Profiling the engine on an H100 (docs/benchmarks.md, "Where the time goes") showed the GPU busy
for a third of each step or less: whisper-small QLoRA at batch 16 queues ~4,900 kernels per step,
and a profiled step took 318 ms for 87 ms of GPU work (peft/bitsandbytes/autograd Python per
layer, per 4-bit matmul, per checkpoint). A CUDA graph records those launches once
and replays them with one call, so the step takes as long as its kernels do.

How it is used (``TrainStep`` does all of this when ``cuda_graphs`` is on):

* a batch shape (every tensor's shape and dtype, and the loss weight) runs eagerly ``warmup``
  times first: torch.compile compiles, cuBLAS/cuDNN pick their kernels, the optimizer makes its
  state; then forward + backward of that shape is captured into a graph whose inputs are static
  buffers, and every later batch of that shape is copied into them and replayed;
* gradients accumulate into the parameters' existing ``.grad`` tensors (made before the
  capture, zeroed in place by the optimizer step, never set to None), so the optimizer, the
  clipping, the scheduler and gradient accumulation run unchanged and eagerly;
* all graphs share one memory pool (they never run at the same time), so several shapes cost
  the memory of the largest one, not their sum;
* dropout draws new masks on every replay (PyTorch's CUDA generator is graph-aware);
* a shape that cannot be captured (an op that syncs with the host, a library that refuses
  capture) is logged once and runs eagerly from then on; so do shapes beyond ``max_graphs``.
* randomness drawn on the CPU would be frozen into the graph: ops that copy CPU tensors to the
  GPU refuse capture (and run eagerly), and ``TrainStep`` turns graphs off for models with
  LayerDrop (a Python-side draw of which layers run).

Tasks keep the number of shapes small by padding batches to buckets (``TaskModel.bucket``):
Whisper's label width to multiples of 64 tokens behind 30 s windows (16 with short ones) and
text length to multiples of 16 tokens (ignored labels, masked tokens: the loss
is unchanged) and short-audio windows to whole seconds (up to a second more trailing silence,
as if the batch's longest clip were that much longer).
"""

from __future__ import annotations

import logging
import threading
import traceback
import warnings
from collections import Counter
from typing import Callable

import torch

__all__ = ["CapturedSteps"]

log = logging.getLogger(__name__)

# Held while a graph is captured: CUDA forbids other threads' allocations and synchronisations
# during a capture, so the batch prefetcher (GPU log-mel, pinned copies) waits for it to end.
CAPTURE_LOCK = threading.Lock()


def reset_generators() -> None:
    """Leave the CUDA random generators usable after a failed capture.

    A capture that breaks off never reaches the step that takes the generators out of capture
    mode, and every later random op (dropout) would then refuse to run. An empty capture that
    completes takes them through it."""
    torch.cuda.synchronize()
    with warnings.catch_warnings():  # "The CUDA Graph is empty": that is the point here
        warnings.simplefilter("ignore")
        with torch.cuda.graph(torch.cuda.CUDAGraph()):
            pass


def shape_key(batch: dict[str, torch.Tensor], weight: float) -> tuple:
    return (round(weight, 12),) + tuple((name, tuple(value.shape), value.dtype)
                                        for name, value in sorted(batch.items()))


class CapturedSteps:
    """Replays captured forward+backward passes of ``run(batch, weight)`` for repeated shapes.

    ``run`` must add the batch's gradients to ``.grad`` and return its loss as a 0-d tensor,
    without synchronising with the host."""

    def __init__(self, run: Callable[[dict, float], torch.Tensor], parameters: list[torch.Tensor],
                 *, warmup: int = 2, max_graphs: int = 8, on_message: Callable[[str], None] | None = None,
                 capture_error_mode: str = "global"):
        self.run, self.parameters = run, parameters
        # "thread_local" in a rank of a multi-GPU run: NCCL's watchdog thread queries CUDA
        # events while this thread captures, which "global" forbids.
        self.capture_error_mode = capture_error_mode
        self.warmup, self.max_graphs = warmup, max_graphs
        self.on_message = on_message or (lambda message: log.info(message))
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, dict, torch.Tensor]] = {}
        self.seen: Counter = Counter()
        self.refused: set[tuple] = set()
        self.pool = None
        self.replays = 0
        self.last_error: str | None = None  # the traceback of the last refused capture

    def __call__(self, batch: dict[str, torch.Tensor], weight: float) -> torch.Tensor:
        key = shape_key(batch, weight)
        entry = self.graphs.get(key)
        if entry is None:
            if key in self.refused or self.seen[key] < self.warmup or len(self.graphs) >= self.max_graphs:
                self.seen[key] += 1
                return self.run(batch, weight)
            entry = self.capture(key, batch, weight)
            if entry is None:
                return self.run(batch, weight)
        graph, static, loss = entry
        for name, value in batch.items():
            static[name].copy_(value, non_blocking=True)
        graph.replay()
        self.replays += 1
        return loss.clone()  # the static output is overwritten by the next replay

    def capture(self, key: tuple, batch: dict[str, torch.Tensor], weight: float):
        for parameter in self.parameters:  # backward must add into tensors that outlive the graph
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
        static = {name: value.clone() for name, value in batch.items()}
        graph = torch.cuda.CUDAGraph()
        try:
            with CAPTURE_LOCK:
                torch.cuda.synchronize()
                with torch.cuda.graph(graph, pool=self.pool, capture_error_mode=self.capture_error_mode):
                    loss = self.run(static, weight)
        except Exception as error:  # noqa: BLE001 (any refusal: run this shape eagerly)
            self.refused.add(key)
            self.last_error = traceback.format_exc()
            with CAPTURE_LOCK:
                reset_generators()
            self.on_message(f"CUDA graph capture failed for batch shape "
                            f"{dict((name, shape) for name, shape, _ in key[1:])}; "
                            f"that shape runs without a graph, correct but slower; set "
                            f"cuda_graphs=off to skip the attempt ({type(error).__name__}: "
                            f"{str(error).splitlines()[0][:200] if str(error) else ''})")
            return None
        if self.pool is None:
            self.pool = graph.pool()
        self.graphs[key] = (graph, static, loss)
        self.on_message(f"captured a CUDA graph of forward+backward for batch shape "
                        f"{dict((name, shape) for name, shape, _ in key[1:])} "
                        f"({len(self.graphs)} of at most {self.max_graphs})")
        return self.graphs[key]
