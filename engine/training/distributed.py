"""The multi-GPU launcher: a run with ``gpus`` (× ``nnodes``) above 1 trains in a torchrun child.

The worker (engine/training/worker.py) claims the run as it claims any other and calls
``run_distributed``, which

1. writes ``runs/<id>/distributed/launch.json``: the run's record and settings, its dataset's
   and model's records and folders, and the dataset's items, so the ranks need nothing else
   (ranks on other machines cannot share the SQLite file: it must not be used over a network
   file system);
2. starts ``python -m torch.distributed.run --nproc-per-node N ... -m engine.training.rank
   launch.json`` in a session of its own, its output in ``distributed/torchrun.log``;
3. waits, turning a stop asked of this process (the app's worker shutting down) into the
   run's stored stop request, which rank 0 polls after every step and tells the other ranks;
4. reads how it ended: rank 0 writes ``result.json`` (status, peak memory); a rank that fails
   writes ``error-rank<r>.json`` (the student-facing message and its traceback), and the
   first of those is the run's error.

Rank 0 reports progress, metrics, events, checkpoints and the adapter to the database as a
one-process run does; the worker keeps the heartbeat and the live series going meanwhile, so
the queue slot, stop, resume and interrupted-run recovery work as for one GPU. If this
process dies, rank 0 notices (its parent pid is gone), stops with a checkpoint, and the run is
found ``interrupted`` by the heartbeat rules.

Multi-machine runs: the same, with torchrun's ``--nnodes``, ``--node-rank`` and
``--rdzv-endpoint``; this machine is machine 0 and the event log names the command each
other machine runs (``other_node_command``, docs/multi-gpu.md).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from engine.errors import NotFoundError, RunError
from engine.training.settings import TrainingSettings, stored_training
from storage import Storage

__all__ = ["DistributedRunError", "launch_command", "other_node_command", "spec_path", "run_distributed",
           "world_size_of"]

FOLDER = "distributed"
SPEC, RESULT, LOG = "launch.json", "result.json", "torchrun.log"
RANK_MODULE = "engine.training.rank"
PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the folder holding engine/ (and storage/)


class DistributedRunError(RunError):
    """A rank of a multi-GPU run failed: its own message, with its traceback as ``details``."""

    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.details = details


def world_size_of(run: dict) -> int:
    """How many processes train ``run`` (1: the worker's own thread does)."""
    return stored_training(run).world_size


def launch_command(spec: Path, config: TrainingSettings, node_rank: int = 0) -> list[str]:
    """The torchrun command line of a run, for machine ``node_rank`` (0: this one).

    Several machines meet with torchrun's static rendezvous at ``rdzv_endpoint``, which fixes
    machine 0 (this one, where the database is) as the home of rank 0, the rank that reports;
    a dynamic (c10d) rendezvous numbers machines in the order they arrive."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(config.gpus)]
    if config.nnodes > 1:
        command += ["--nnodes", str(config.nnodes), "--node-rank", str(node_rank),
                    "--rdzv-endpoint", config.rdzv_endpoint]
    else:  # one machine: torchrun picks a free local port itself
        command += ["--standalone", "--nnodes", "1"]
    return command + ["-m", RANK_MODULE, str(spec)]


def other_node_command(spec: Path, config: TrainingSettings) -> str:
    """What machine K (1 .. nnodes-1) of a multi-machine run starts, with the same data home
    (so ``spec`` is the same path there)."""
    words = ["python"] + launch_command(spec, config, node_rank=0)[1:]
    if "--node-rank" in words:
        words[words.index("--node-rank") + 1] = "K"
    return " ".join(shlex.quote(word) for word in words)


def spec_path(home: Path, run_id: int) -> Path:
    return Path(home) / "runs" / str(int(run_id)) / FOLDER / SPEC


def write_spec(storage: Storage, run: dict, folder: Path) -> Path:
    """Everything a rank needs to train ``run`` without the database."""
    dataset = storage.find_dataset(run["dataset_id"], owner_id=run["owner_id"])
    model = storage.find_model(run["model_id"], owner_id=run["owner_id"])
    if dataset is None or model is None:  # the recipe's own message, as a one-process run says it
        missing = "dataset" if dataset is None else "model"
        name = run["dataset_name"] if dataset is None else run["model_name"]
        raise NotFoundError(f"{missing} {name!r} of this run was deleted; "
                            f"{'import' if dataset is None else 'register'} it again and start a new run")
    spec = {
        "home": str(storage.files.home), "run": run, "dataset": dataset, "model": model,
        "items": {split: storage.dataset_items(dataset["id"], split)
                  for split in ("train", "validation", "test")},
        "parent_pid": os.getpid(),
    }
    path = spec_path(storage.files.home, run["id"])
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(spec, default=str))
    partial.replace(path)
    return path


def run_distributed(storage: Storage, run: dict, local_stop: threading.Event | None = None,
                    poll_seconds: float = 0.5) -> dict:
    """Train ``run`` in a torchrun child until it ends; returns ``{"status", "peak_memory_mb"}``
    or raises ``DistributedRunError`` with the failing rank's message."""
    run_id, config = run["id"], stored_training(run)
    folder = storage.files.run_dir(run_id) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for stale in [folder / RESULT, *folder.glob("error-rank*.json")]:  # from an earlier attempt
        stale.unlink(missing_ok=True)
    spec = write_spec(storage, run, folder)
    command = launch_command(spec, config)
    storage.add_event(run_id, f"starting {config.world_size} training processes with torchrun "
                      f"({config.gpus} per machine on {config.nnodes} machine(s)); their logs are in "
                      f"runs/{run_id}/{FOLDER}/")
    if config.nnodes > 1:
        storage.add_event(run_id, "this machine is one of the run's machines; on each other one, "
                          f"with the same data home, run (K = 1 .. {config.nnodes - 1}): "
                          f"{other_node_command(spec, config)}")
    env = {**os.environ, "LIM_HOME": str(storage.files.home), "PYTHONUNBUFFERED": "1",
           # the child imports the same engine as this process, wherever it is started from
           "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
    with (folder / LOG).open("ab") as log:
        log.write(f"\n$ {shlex.join(command)}\n".encode())
        log.flush()
        # A session of its own: Ctrl-C on a terminal reaches this process, which ends the child
        # in ``finally`` (a run interrupted that way is resumable, as a one-process run is).
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                 cwd=PROJECT_ROOT, start_new_session=True)
        try:
            asked = False
            while child.poll() is None:
                if local_stop is not None and local_stop.is_set() and not asked:
                    storage.request_stop(run_id)  # rank 0 polls it after every step
                    asked = True
                time.sleep(poll_seconds)
        finally:
            end_child(child)
    return outcome(folder, child.returncode, run_id)


def end_child(child: subprocess.Popen, grace_seconds: float = 30.0) -> None:
    """Stop torchrun and its ranks if they still run (SIGTERM, then SIGKILL)."""
    if child.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace_seconds), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        try:
            child.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def outcome(folder: Path, returncode: int | None, run_id: int) -> dict:
    """How the child ended: rank 0's result, else the first rank's error, else the log's tail."""
    result = folder / RESULT
    if result.is_file():
        return json.loads(result.read_text())
    errors = []
    for path in folder.glob("error-rank*.json"):
        try:
            errors.append(json.loads(path.read_text()))
        except ValueError:
            continue
    if errors:
        first = min(errors, key=lambda error: error.get("time", 0))
        message = first.get("message") or "a training process failed"
        if first.get("rank"):  # rank 0's failures read as a one-process run's do
            message = f"training process {first['rank']}: {message}"
        raise DistributedRunError(message, first.get("traceback", ""))
    log = folder / LOG
    tail = log.read_text(errors="replace").strip().splitlines()[-15:] if log.is_file() else []
    raise DistributedRunError(
        f"the training processes exited with code {returncode} before reporting; the last lines "
        f"of runs/{run_id}/{FOLDER}/{LOG}: " + " | ".join(tail)[-1500:], "\n".join(tail))
