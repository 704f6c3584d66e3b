"""How many runs one machine trains at once (issue 29): ``LIM_SLOTS`` (WorkbenchConfig ``slots``).

A number is a fixed limit. ``auto`` (the default) decides before each claim whether the next
queued run fits beside the runs already training on this host:

- nothing running: it starts (a run too large for the device fails with its out-of-memory
  message, as it always did);
- on the CPU: one at a time. torch's thread pool belongs to the process, so two runs in one
  process only split the same cores; several CPU runs at once are separate ``engine worker``
  processes with a number here and ``OMP_NUM_THREADS`` each (docs/studies.md);
- on a GPU: the next run's memory estimate (stored with the run when it was queued: the same
  dry run the New run form shows, within ~10 % of the measured peak) plus ``HEADROOM`` must fit
  both in the memory free now and, with every running run at its own estimated peak (they may
  not have reached it yet), in the device's total. A run without an estimate never starts beside
  others.

A run that still runs out of memory beside others is queued again ``run_alone`` (storage:
``claim_next_run``) and continues from its checkpoint with the device to itself.

On a host with several GPUs (``LIM_DEVICE=auto``) each GPU has its own slots: a claim goes to
the GPU with the fewest runs, then the most free memory, where the run fits (so one run per GPU
first, then several per GPU where they fit), and the claim names it: the worker field reads
``host:pid:thread@cuda:1`` and the run trains there (``claimed_device``; the recipe makes it the
thread's current CUDA device). A ``run_alone`` run waits for its GPU to be idle, not the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.settings import MAX_SLOTS, load_config, parse_slots

# Per-run allowance beyond the estimate: the estimate's ~10 % error and the allocator's
# fragmentation between runs sharing one device.
HEADROOM = 1.15
RESERVE_MB = 512.0  # left free on the device for CUDA's own workspaces


@dataclass(frozen=True)
class SlotFacts:
    """What the decision reads: the device kind, the estimates (MiB, None where unknown) of the
    runs training on this host and of the next queued run, and the device's memory now."""

    device: str
    running_estimates_mb: tuple[float | None, ...]
    next_estimate_mb: float | None
    free_mb: float | None = None
    total_mb: float | None = None


def may_start_another(slots: int | None, facts: SlotFacts) -> tuple[bool, str]:
    """Whether one more run may start now, and why (for the log and the docs' table)."""
    running = len(facts.running_estimates_mb)
    if slots is not None:
        return running < slots, f"{running} of {slots} slots in use"
    if running == 0:
        return True, "nothing else is training"
    if running >= MAX_SLOTS:
        return False, f"{MAX_SLOTS} runs at once at most"
    if not facts.device.startswith("cuda"):
        return False, "one run at a time on the CPU (the runs would share its cores)"
    if facts.next_estimate_mb is None or any(e is None for e in facts.running_estimates_mb):
        return False, "a run without a memory estimate trains alone"
    if facts.free_mb is None or facts.total_mb is None:
        return False, "the device's free memory is unknown"
    need = facts.next_estimate_mb * HEADROOM
    planned = sum(e * HEADROOM for e in facts.running_estimates_mb) + need + RESERVE_MB
    if need + RESERVE_MB > facts.free_mb:
        return False, f"needs ~{need:,.0f} MiB, {facts.free_mb:,.0f} MiB free"
    if planned > facts.total_mb:
        return False, f"{running + 1} runs at their peaks need ~{planned:,.0f} of {facts.total_mb:,.0f} MiB"
    return True, f"{running + 1} runs fit: ~{planned:,.0f} of {facts.total_mb:,.0f} MiB at their peaks"


def device_memory_mb(device: str) -> tuple[float | None, float | None]:
    """(free, total) MiB of a CUDA device now; (None, None) elsewhere."""
    if not (device.startswith("cuda") and torch.cuda.is_available()):
        return None, None
    index = int(device.split(":", 1)[1]) if ":" in device else torch.cuda.current_device()
    free, total = torch.cuda.mem_get_info(index)
    return free / 2**20, total / 2**20


def run_device() -> str:
    """Where runs train: ``LIM_DEVICE`` when set, else a CUDA GPU when there is one."""
    device = load_config().device
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


DEVICE_MARK = "@"  # host:pid:thread@cuda:1: the GPU a claim placed its run on


def host_devices() -> list[str]:
    """The devices this host's runs are placed on: each GPU (``cuda:0``, ``cuda:1``, ...) where
    there are several and ``LIM_DEVICE`` is ``auto`` (or ``cuda``), else the one ``run_device``."""
    device = run_device()
    count = torch.cuda.device_count() if device == "cuda" else 0
    return [f"cuda:{index}" for index in range(count)] if count > 1 else [device]


def claimed_device(run: dict) -> str:
    """Where a claimed run trains: the GPU its claim names, else ``run_device()``."""
    worker = run.get("worker") or ""
    return worker.rpartition(DEVICE_MARK)[2] if DEVICE_MARK in worker else run_device()


def claim_run(storage, worker: str, why: list[str] | None = None) -> dict | None:
    """Claim the next queued run for ``worker`` if a slot is free (``LIM_SLOTS``), else None.

    The run checked is the one claimed (by id), so the decision and the claim are about the same
    run; ``why`` (a list) gets the reason a run that does not fit waits. The claim stays atomic (two processes may both decide yes: the claim's running count
    still bounds a fixed number, and with ``auto`` a run that then does not fit is re-queued
    alone, see ``engine.training.worker.execute_run``)."""
    upcoming = storage.next_queued_run()
    if upcoming is None:
        return None
    limit = parse_slots(load_config().slots)
    host = worker.split(":", 1)[0]
    running = storage.running_on_host(host)
    devices = host_devices()
    several = len(devices) > 1
    choices = []  # (runs on it, -free MiB, device, slots for the claim)
    for device in devices:
        mine = [r for r in running if claimed_device(r) == device] if several else running
        free_mb, total_mb = device_memory_mb(device) if limit is None or several else (None, None)
        if limit is not None:
            if len(mine) < limit:
                choices.append((len(mine), -(free_mb or 0.0), device, limit))
            continue
        facts = SlotFacts(device, tuple(r["estimate_mb"] for r in mine), upcoming["estimate_mb"],
                          free_mb, total_mb)
        fits, reason = may_start_another(None, facts)
        if fits:
            choices.append((len(mine), -(free_mb or 0.0), device, len(mine) + 1))
        elif why is not None:  # what a waiting worker says (python -m engine worker prints it)
            why.append(f"run {upcoming['id']} waits{f' for {device}' if several else ''}: {reason}")
    if not several:
        return storage.claim_next_run(worker, run_id=upcoming["id"], slots=choices[0][3]) if choices else None
    for _, _, device, cap in sorted(choices):  # the claim may still refuse (a run_alone on that GPU)
        claimed = storage.claim_next_run(f"{worker}{DEVICE_MARK}{device}", run_id=upcoming["id"], slots=cap,
                                         scope=f"{host}:%{DEVICE_MARK}{device}")
        if claimed is not None:
            return claimed
    return None
