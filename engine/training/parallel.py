"""Data parallelism inside one run: each process torchrun starts trains the whole model on its
share of every batch, and the processes average their gradients before each optimizer step.

``DataParallel.from_environment()`` joins the process group torchrun describes (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``; NCCL on GPUs, gloo on CPUs) and returns None in a plain
process, so the recipe's one-process path is untouched. What the recipe asks of it:

* ``shard(batch)``: this rank's part of a batch of the whole run, strided as
  ``DistributedSampler`` strides an epoch (``indices[rank::world]``): the union of the ranks'
  shards is the batch a one-process run at world × the batch size trains on;
* ``share(mine, whole)``: the weight of this rank's mean loss, ``mine × world / whole``, so the
  averaged gradient is the whole batch's mean even when the last batch does not divide evenly
  (DistributedSampler pads it with repeated items instead, which would count them twice);
* ``average(parameters, loss)``: one all-reduce of every trainable gradient and the step's loss
  (a flat float32 buffer, in buckets) after the step's backward passes, before clipping and
  AdamW, so every rank clips and steps identically and logs the same loss;
* ``decide(code)``: rank 0's decision (go on, stop, finish early) broadcast to every rank;
* ``gather_json(value)``: every rank's value on every rank (the RNG states a checkpoint keeps).

Why not ``DistributedDataParallel``: DDP all-reduces from hooks that fire during backward, and
the engine replays backward passes as CUDA graphs (engine/training/graphs.py), where those
CPU-side hooks do not run; it also needs ``no_sync`` around every accumulation micro-batch and
non-reentrant checkpointing without ``find_unused_parameters``. Averaging once per optimizer
step keeps graphs, compiled layers, checkpointing and AdaLoRA's rank updates unchanged (the
update sees averaged gradients and identical weights, so every rank prunes alike). What DDP
buys, overlapping the all-reduce with backward, is worth nothing for adapters: whisper-large-v3
QLoRA's gradients are a few MB, one all-reduce of them takes well under a millisecond on NVLink.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["DataParallel"]

BUCKET_ELEMENTS = 64 * 2**20  # float32 elements per all-reduce (256 MiB): bounds the temporary copy


def collective_timeout() -> timedelta:
    """How long a rank waits for the others. Rank 0 evaluates alone while the others wait, so
    this bounds an evaluation in the middle of a run (``LIM_DISTRIBUTED_TIMEOUT_MIN``)."""
    from engine.settings import load_config

    return timedelta(minutes=load_config().distributed_timeout_min)


class DataParallel:
    def __init__(self, rank: int, world_size: int, local_rank: int, device: str, control):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.device = device
        self.control = control  # a gloo group for small CPU-side messages, whatever the backend

    @classmethod
    def from_environment(cls) -> DataParallel | None:
        """Join torchrun's process group, or None outside torchrun (or with one process)."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1 or "RANK" not in os.environ:
            return None
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
            device, backend = f"cuda:{local_rank}", "nccl"
        else:
            device, backend = "cpu", "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=collective_timeout(),
                                    **({"device_id": torch.device(device)} if backend == "nccl" else {}))
        control = dist.new_group(backend="gloo", timeout=collective_timeout()) if backend != "gloo" else None
        return cls(rank, world_size, local_rank, device, control)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        return f"rank {self.rank} of {self.world_size} ({self.device})"

    # ------------------------------------------------------------------ data
    def shard(self, indices: list[int]) -> list[int]:
        return indices[self.rank::self.world_size]

    def share(self, mine: int, whole: int) -> float:
        return mine * self.world_size / whole

    # ------------------------------------------------------------------ collectives
    def broadcast_parameters(self, parameters: list[torch.Tensor]) -> None:
        """Make every rank start from rank 0's weights (as DDP's constructor does)."""
        with torch.no_grad():
            for parameter in parameters:
                dist.broadcast(parameter.data, src=0)

    @torch.no_grad()
    def average(self, parameters: list[torch.Tensor], loss: torch.Tensor | float) -> float:
        """Average every parameter's ``.grad`` and ``loss`` over the ranks, in place; returns
        the averaged loss. A gradient that is None on some ranks (a layer skipped there) counts
        as zeros there; one that is None on every rank stays None, as in one process."""
        device = parameters[0].device if parameters else torch.device(self.device)
        parts = [p.grad.reshape(-1).float() if p.grad is not None else
                 torch.zeros(p.numel(), device=device) for p in parameters]
        present = torch.tensor([p.grad is not None for p in parameters], dtype=torch.float32, device=device)
        loss_tensor = torch.as_tensor(loss, dtype=torch.float32, device=device).reshape(1)
        parts += [present, loss_tensor]
        reduced = self._all_reduce_mean(parts)
        for parameter, averaged, count in zip(parameters, reduced, reduced[-2].tolist()):
            if count == 0:
                continue
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
            parameter.grad.copy_(averaged.view_as(parameter))
        return float(reduced[-1])

    def _all_reduce_mean(self, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each part summed over the ranks and divided by their number (gloo has no AVG); the
        presence flags come back as sums (divided too, so > 0 means "some rank had one")."""
        out: list[torch.Tensor] = []
        bucket: list[torch.Tensor] = []

        def flush() -> None:
            if not bucket:
                return
            flat = torch.cat(bucket)
            dist.all_reduce(flat)
            flat /= self.world_size
            out.extend(flat.split([part.numel() for part in bucket]))
            bucket.clear()

        size = 0
        for part in parts:
            if bucket and size + part.numel() > BUCKET_ELEMENTS:
                flush()
                size = 0
            bucket.append(part)
            size += part.numel()
        flush()
        return out

    def decide(self, code: int) -> int:
        """Rank 0's ``code`` on every rank (the others' argument is ignored)."""
        value = torch.tensor([code], dtype=torch.int64)
        dist.broadcast(value, src=0, group=self.control)
        return int(value)

    def gather_json(self, value) -> list:
        """Every rank's JSON-able ``value``, in rank order, on every rank (over gloo; JSON, so
        nothing is unpickled)."""
        data = torch.tensor(list(json.dumps(value).encode()), dtype=torch.uint8)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world_size)]
        dist.all_gather(sizes, torch.tensor([data.numel()]), group=self.control)
        longest = int(max(sizes))
        padded = torch.zeros(longest, dtype=torch.uint8)
        padded[: data.numel()] = data
        gathered = [torch.empty(longest, dtype=torch.uint8) for _ in range(self.world_size)]
        dist.all_gather(gathered, padded, group=self.control)
        return [json.loads(bytes(t[: int(n)].tolist())) for t, n in zip(gathered, sizes)]

    def barrier(self) -> None:
        dist.barrier(group=self.control)

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
