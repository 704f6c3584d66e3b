"""The job queue's worker: one thread that trains queued runs one at a time, in queue order.

The queue lives in the database (runs with status ``queued``, in the fair order of
``storage.runs.FAIR_ORDER``: pinned runs, then turns by owner),
so the app, the command line and a restarted process all see the same queue. Claiming a run
is one atomic UPDATE, so two workers never train the same run, nor two runs on one host at
once. Stop requests are stored too: any process may ask, the worker notices at the next step.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import logging
import os
import socket
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable

import psutil
import torch

from engine.errors import WorkbenchError
from engine.settings import load_config, parse_slots
from engine.memory import is_out_of_memory, out_of_memory_message
from engine.training.distributed import run_distributed, world_size_of
from engine.training.settings import stored_training
from engine.training.slots import claim_run, run_device
from engine.series import LiveSeries
from storage import Storage, utc_now

logger = logging.getLogger(__name__)
_started: weakref.WeakSet[Worker] = weakref.WeakSet()  # every Worker started in this process
# Threads of the app's worker with LIM_SLOTS=auto: idle ones only poll the queue.
MAX_SLOTS_IN_PROCESS = 8


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


# A run's worker writes ``heartbeat_at`` every HEARTBEAT_SECONDS from a thread of its own (setup,
# a slow step and a long evaluation beat too); after STALE_AFTER_HEARTBEATS silent intervals the
# run counts as lost. A minute is long enough for a busy SQLite writer and short enough that a
# student who restarts the app after a crash can resume the run at once.
HEARTBEAT_SECONDS = 10.0
STALE_AFTER_HEARTBEATS = 6


def worker_is_alive(worker: str | None, heartbeat_at: float | None, now: float | None = None) -> bool:
    """Whether the process that claimed a run still trains it: its heartbeat is recent.

    The heartbeat decides on any host. A hostname proves little: every ``docker run`` gets a new
    one, and a restarted container reuses the same hostname and pids, so neither "another host"
    nor "this pid exists" may keep a run ``running`` forever. On this host a pid that no longer
    exists tells sooner than the heartbeat (a killed ``train --wait`` is resumable at once).
    """
    if not worker or heartbeat_at is None:
        return False
    host, _, rest = worker.partition(":")
    pid = rest.split(":")[0]
    if host == socket.gethostname() and pid.isdigit() and not psutil.pid_exists(int(pid)):
        return False
    silent_for = (time.time() if now is None else now) - heartbeat_at
    return silent_for < HEARTBEAT_SECONDS * STALE_AFTER_HEARTBEATS


class Periodic:
    """Calls ``action()`` every ``interval`` seconds from a thread of its own while the ``with``
    block runs, so work that blocks the block (a slow step, a whole training run) never delays
    it. A failing call is logged and retried at the next tick; the thread's database connection
    is closed when it ends."""

    def __init__(self, storage: Storage, interval: float, action: Callable[[], object], name: str):
        self.storage, self.interval, self.action = storage, interval, action
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def __enter__(self) -> Periodic:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._done.set()
        self._thread.join()

    def _loop(self) -> None:
        try:
            while not self._done.wait(self.interval):
                try:
                    self.action()
                except Exception:  # a missed tick (a locked database) is retried at the next one
                    logger.exception("%s failed", self._thread.name)
        finally:
            self.storage.close()  # this thread's connection


def heartbeat(storage: Storage, run_id: int, worker: str | None,
              interval: float = HEARTBEAT_SECONDS) -> Periodic:
    """Writes the run's ``heartbeat_at`` while the ``with`` block trains it, from its own thread
    (setup, one long step or evaluation never make a live run look lost), and only while this
    worker still holds the claim."""
    return Periodic(storage, interval, lambda: storage.beat(run_id, worker, time.time()),
                    name=f"lim-heartbeat-{run_id}")


def store_live_series(storage: Storage, run_id: int, interval: float = 60.0) -> Periodic:
    """Stores the run's downsampled series every ``interval`` seconds while it trains, so a
    live monitor opened on a long run reads those plus a minute of rows, never all of them."""
    series = LiveSeries()  # this thread's own: it reads only the rows since its last tick
    return Periodic(storage, interval,
                    lambda: series.store(storage, run_id, storage.get_run(run_id, owner_id=None)["step"] or 0),
                    name=f"lim-series-{run_id}")


def failure_message(run: dict, error: BaseException, device: str = "cpu") -> str:
    """A message a student can act on, for any exception a run may raise."""
    if is_out_of_memory(error):
        return out_of_memory_message(error, device, stored_training(run), run["method"])
    if isinstance(error, WorkbenchError):
        return str(error)
    # Not a known failure: name the exception without blaming the method (it may be the data,
    # the model or the workbench itself); the run's log keeps the traceback.
    return (f"unexpected {type(error).__name__} while training ({run['method']} on "
            f"{run.get('model_name') or 'the model'}): {error}; the run's log has the traceback")


def recover_interrupted(storage: Storage) -> list[int]:
    """Mark runs ``running`` whose process ended or went silent as ``interrupted`` (resumable)."""
    now = time.time()
    lost = [run for run in storage.runs_with_status("running")
            if not worker_is_alive(run["worker"], run["heartbeat_at"], now)]
    for run in lost:
        storage.update_run(run["id"], status="interrupted")
        storage.add_event(run["id"], "the process training this run ended or stopped answering "
                          f"(no heartbeat for {HEARTBEAT_SECONDS * STALE_AFTER_HEARTBEATS:.0f} s); "
                          "resume it to continue from its last checkpoint", "warning")
    return [run["id"] for run in lost]


def execute_run(storage: Storage, run: dict, local_stop: threading.Event | None = None) -> str:
    """Train one claimed run to its end; returns the final status. Never raises.

    A run on more than one GPU trains in a torchrun child (engine/training/distributed.py)
    while this thread keeps its heartbeat and live series, and records how it ended."""
    run_id = run["id"]
    stop = local_stop or threading.Event()

    def should_stop() -> bool:
        return stop.is_set() or storage.stop_requested(run_id)

    try:
        storage.add_event(run_id, "started" if not run.get("checkpoint_dir") else "resuming")
        with heartbeat(storage, run_id, run.get("worker")), store_live_series(storage, run_id):
            if world_size_of(run) > 1:
                ended = run_distributed(storage, run, stop)
                status, peak_memory_mb = ended["status"], ended["peak_memory_mb"]
            else:
                status, peak_memory_mb = train_here(storage, run, should_stop)
        storage.update_run(run_id, status=status, finished_at=utc_now(),
                           peak_memory_mb=peak_memory_mb, stop_requested=0)
        storage.add_event(run_id, f"run {status}")
        return status
    except (KeyboardInterrupt, SystemExit):
        # The process is being stopped (Ctrl-C on train --wait): the run can be resumed.
        storage.update_run(run_id, status="interrupted")
        storage.add_event(run_id, "the process training this run was stopped; resume it to "
                          "continue from its last checkpoint", "warning")
        raise
    except Exception as error:  # (MemoryError too) a failing run must never take the worker down
        if is_out_of_memory(error) and requeue_alone(storage, run):
            return "queued"
        message = failure_message(run, error, "cuda" if torch.cuda.is_available() else "cpu")
        storage.update_run(run_id, status="failed", error=message, finished_at=utc_now())
        storage.add_event(run_id, message, "error")
        # a failed rank's own traceback, not this process's
        storage.add_event(run_id, getattr(error, "details", "") or traceback.format_exc(), "debug")
        logger.exception("run %s failed", run_id)
        return "failed"
    finally:
        store_display_series(storage, run_id)
        release_device_memory()


def train_here(storage: Storage, run: dict, should_stop: Callable[[], bool]) -> tuple[str, float]:
    """Train ``run`` in this process: (status, peak memory MiB). The recipe lives in this frame
    only, so once this returns, ``release_device_memory`` can collect it (a local of
    ``execute_run`` would still hold it, and its GPU memory, when the run has ended)."""
    from engine.training.recipe import FineTuneRecipe

    recipe = FineTuneRecipe(storage, run, should_stop)
    try:
        recipe.setup()
        status, peak_memory_mb = recipe.train(), recipe.memory.peak_mb
    except BaseException as error:
        recipe.cleanup("failed" if isinstance(error, Exception) else "interrupted")
        raise
    recipe.cleanup(status)
    return status, peak_memory_mb


def release_device_memory() -> None:
    """Give the ended run's GPU memory back to the device, not only to this process's cache: the
    run's objects hold each other in cycles (and its CUDA graphs keep private memory pools while
    they live), so collect them first. A worker process between runs then holds next to nothing:
    on the research study's H100 (12 ``engine worker`` processes, issue 28), idle processes held
    4-11 GiB each, and a run re-queued to train alone still ran out of memory: the ended run's
    recipe was still a local of ``execute_run`` when the cache was emptied (``train_here``)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def requeue_alone(storage: Storage, run: dict) -> bool:
    """A run out of memory while others trained beside it on this host is queued again to train
    alone (``run_alone``), from its last checkpoint, instead of failing; True when it was."""
    others = [r for r in storage.running_on_host(str(run.get("worker") or "").split(":", 1)[0])
              if r["id"] != run["id"]]
    if run.get("run_alone") or not others:
        return False
    storage.requeue_run(run["id"], run_alone=1, error=None, finished_at=None)
    storage.add_event(run["id"], f"ran out of memory beside {len(others)} other run(s) on this "
                      "machine: queued again to train alone, from its last checkpoint", "warning")
    return True


def store_display_series(storage: Storage, run_id: int) -> None:
    """Downsample the ended run's series once, for the Compare page; never fails the run."""
    from engine.series import store_run_series

    try:
        store_run_series(storage, run_id)
    except Exception:  # a missing display cache only costs the page a recomputation
        logger.exception("could not store the display series of run %s", run_id)


def shutdown_all_workers() -> None:
    """Stop every worker this process started: a benchmark that ran the app in-process (with
    Streamlit's AppTest) ends its workers before it removes their data home.

    Also run at exit (the app stopped with Ctrl-C or by its service manager): the worker is a
    daemon thread, and one left inside torch while the interpreter tears down crashed the
    process (issue 27: a segmentation fault). Stop is honoured between steps and inside an
    evaluation's generation, so the run ends as ``stopped`` with a checkpoint within seconds."""
    for worker in list(_started):
        worker.shutdown()


atexit.register(shutdown_all_workers)


class Worker:
    """A background thread taking queued runs in the queue's (fair) order."""

    def __init__(self, storage: Storage, poll_seconds: float = 1.0):
        self.storage = storage
        self.poll_seconds = poll_seconds
        self._wake = threading.Event()
        self._shutdown = threading.Event()
        self._stops: dict[int, threading.Event] = {}
        self._threads: list[threading.Thread] = []
        # One thread a slot (LIM_SLOTS; auto: as many as could fit, each claiming only when the
        # next run fits beside the others, engine/training/slots.py).
        self.slots = parse_slots(load_config().slots) or (
            MAX_SLOTS_IN_PROCESS if run_device().startswith("cuda") else 1)

    @property
    def current_runs(self) -> list[int]:
        return list(self._stops)

    def start(self) -> None:
        if self.alive:
            return
        # Each thread claims and trains one run at a time; the claim counts every running run
        # on this host, so all of them together never exceed the slots.
        self._threads = [threading.Thread(target=self._loop, name=f"lim-worker-{i}", daemon=True)
                         for i in range(self.slots)]
        for thread in self._threads:
            thread.start()
        _started.add(self)

    def wake(self) -> None:
        self._wake.set()

    def request_stop(self, run_id: int) -> None:
        if run_id in self._stops:
            self._stops[run_id].set()

    def shutdown(self, timeout: float = 30) -> None:
        self._shutdown.set()
        for event in self._stops.values():
            event.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def alive(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def _loop(self) -> None:
        name = worker_name()
        while not self._shutdown.is_set():
            run = claim_run(self.storage, name)
            if run is None:
                # A run left running by a process that died blocks this device's queue.
                recover_interrupted(self.storage)
                self._wake.wait(self.poll_seconds)
                self._wake.clear()
                continue
            self._stops[run["id"]] = threading.Event()
            try:
                execute_run(self.storage, run, self._stops[run["id"]])
            finally:
                self._stops.pop(run["id"], None)
        self.storage.close()


def run_until_done(storage: Storage, run_id: int, poll_seconds: float = 0.5,
                   on_progress: Callable[[dict], None] | None = None) -> dict:
    """Be the worker in this process until ``run_id`` ends (``train --wait``).

    Runs ahead of it in the queue are trained first (turns by owner); if another
    process already trains it, wait for that one. ``on_progress(run)`` is called every
    ``poll_seconds`` from a thread of its own, whichever process trains the run.
    """
    def report() -> None:
        on_progress(storage.get_run(run_id, owner_id=None))

    name = worker_name()
    with Periodic(storage, poll_seconds, report, name=f"lim-progress-{run_id}") if on_progress \
            else contextlib.nullcontext():
        while True:
            run = storage.get_run(run_id, owner_id=None)
            if run["status"] not in ("queued", "running"):
                return run
            # Queued, or trained elsewhere: meanwhile take the next run while a slot is free
            # (several ``study --wait`` or ``worker`` processes then share a study's runs).
            recover_interrupted(storage)
            claimed = claim_run(storage, name)
            if claimed is not None:
                execute_run(storage, claimed)
                continue
            time.sleep(poll_seconds)


def work_until_empty(storage: Storage, poll_seconds: float = 2.0,
                     on_run_end: Callable[[dict], None] | None = None) -> int:
    """Be one worker in this process (``python -m engine worker``): train queued runs one at a
    time while a slot is free, until none is queued or running; returns how many it trained.
    Start several for several runs at once (each counts against ``slots``)."""
    name, trained, said = worker_name(), 0, ""
    while True:
        recover_interrupted(storage)
        why: list[str] = []
        claimed = claim_run(storage, name, why)
        if why and why[-1] != said:  # why the next run waits (LIM_SLOTS=auto), once per change
            said = why[-1]
            logger.info(said)
            print(said, file=sys.stderr, flush=True)
        if claimed is not None:
            execute_run(storage, claimed)
            trained += 1
            if on_run_end is not None:
                on_run_end(storage.get_run(claimed["id"], owner_id=None))
            continue
        if not storage.runs_with_status("queued") and not storage.runs_with_status("running"):
            return trained
        time.sleep(poll_seconds)
