"""The job queue's worker: one thread that trains queued runs one at a time, in queue order.

The queue lives in the database (runs with status ``queued``, ordered by ``queue_position``),
so the app, the command line and a restarted process all see the same queue. Claiming a run
is one atomic UPDATE, so two workers never train the same run, nor two runs on one host at
once. Stop requests are stored too: any process may ask, the worker notices at the next step.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable

import psutil
import torch

from engine.errors import WorkbenchError
from storage import Storage, utc_now

logger = logging.getLogger(__name__)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def worker_is_alive(worker: str | None) -> bool:
    """Whether the process that claimed a run still exists (only knowable on this host)."""
    if not worker:
        return False
    host, _, rest = worker.partition(":")
    pid = int(rest.split(":")[0]) if rest.split(":")[0].isdigit() else -1
    if host != socket.gethostname():
        return True  # another machine: trust it (its heartbeat tells)
    return pid == os.getpid() or psutil.pid_exists(pid)


def failure_message(run: dict, error: BaseException, device: str = "cpu") -> str:
    """A message a student can act on, for any exception a run may raise."""
    from engine.training.memory import is_out_of_memory, out_of_memory_message

    if is_out_of_memory(error):
        return out_of_memory_message(error, device, (run.get("settings") or {}).get("training"),
                                     run.get("method", ""))
    if isinstance(error, WorkbenchError):
        return str(error)
    return f"{type(error).__name__} in method {run['method']!r}: {error}"


def recover_interrupted(storage: Storage) -> list[int]:
    """Mark runs left ``running`` by a process that no longer exists as ``interrupted``."""
    lost = [run for run in storage.runs_with_status("running") if not worker_is_alive(run["worker"])]
    for run in lost:
        storage.update_run(run["id"], status="interrupted")
        storage.add_event(run["id"], "the process training this run ended; "
                          "resume it to continue from its last checkpoint", "warning")
    return [run["id"] for run in lost]


def execute_run(storage: Storage, run: dict, local_stop: threading.Event | None = None) -> str:
    """Train one claimed run to its end; returns the final status. Never raises."""
    from engine.training.recipe import FineTuneRecipe

    run_id = run["id"]
    stop = local_stop or threading.Event()

    def should_stop() -> bool:
        return stop.is_set() or storage.stop_requested(run_id)

    try:
        storage.add_event(run_id, "started" if not run.get("checkpoint_dir") else "resuming")
        recipe = FineTuneRecipe(storage, run, should_stop)
        recipe.setup()
        status = recipe.train()
        storage.update_run(run_id, status=status, finished_at=utc_now(),
                           peak_memory_mb=recipe.memory.peak_mb, stop_requested=0)
        storage.add_event(run_id, f"run {status}")
        return status
    except (KeyboardInterrupt, SystemExit):
        # The process is being stopped (Ctrl-C on train --wait): the run can be resumed.
        storage.update_run(run_id, status="interrupted")
        storage.add_event(run_id, "the process training this run was stopped; resume it to "
                          "continue from its last checkpoint", "warning")
        raise
    except Exception as error:  # (MemoryError too) a failing run must never take the worker down
        message = failure_message(run, error, "cuda" if torch.cuda.is_available() else "cpu")
        storage.update_run(run_id, status="failed", error=message, finished_at=utc_now())
        storage.add_event(run_id, message, "error")
        storage.add_event(run_id, traceback.format_exc(), "debug")
        logger.exception("run %s failed", run_id)
        return "failed"
    finally:
        store_display_series(storage, run_id)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def store_display_series(storage: Storage, run_id: int) -> None:
    """Downsample the ended run's series once, for the Compare page; never fails the run."""
    from engine.series import store_run_series

    try:
        store_run_series(storage, run_id)
    except Exception:  # a missing display cache only costs the page a recomputation
        logger.exception("could not store the display series of run %s", run_id)


class Worker:
    """A background thread taking queued runs in submission order."""

    def __init__(self, storage: Storage, poll_seconds: float = 1.0):
        self.storage = storage
        self.poll_seconds = poll_seconds
        self._wake = threading.Event()
        self._shutdown = threading.Event()
        self._stops: dict[int, threading.Event] = {}
        self._thread: threading.Thread | None = None
        self.current_run: int | None = None

    def start(self) -> None:
        if self._thread and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._loop, name="lim-worker", daemon=True)
        self._thread.start()

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
        if self._thread:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return bool(self._thread and self._thread.is_alive())

    def _loop(self) -> None:
        name = worker_name()
        while not self._shutdown.is_set():
            run = self.storage.claim_next_run(name)
            if run is None:
                # A run left running by a process that died blocks this device's queue.
                recover_interrupted(self.storage)
                self._wake.wait(self.poll_seconds)
                self._wake.clear()
                continue
            self._stops[run["id"]] = threading.Event()
            self.current_run = run["id"]
            try:
                execute_run(self.storage, run, self._stops[run["id"]])
            finally:
                self.current_run = None
                self._stops.pop(run["id"], None)
        self.storage.close()


def run_until_done(storage: Storage, run_id: int, poll_seconds: float = 0.5,
                   on_progress: Callable[[dict], None] | None = None) -> dict:
    """Be the worker in this process until ``run_id`` ends (``train --wait``).

    Runs queued before it are trained first (the queue is first-in, first-out); if another
    process already trains it, wait for that one.
    """
    name = worker_name()
    while True:
        run = storage.get_run(run_id, owner_id=None)
        if run["status"] not in ("queued", "running"):
            return run
        if run["status"] == "queued":
            recover_interrupted(storage)
            claimed = storage.claim_next_run(name)
            if claimed is not None:
                execute_run(storage, claimed)
                continue
        if on_progress:
            on_progress(run)
        time.sleep(poll_seconds)
