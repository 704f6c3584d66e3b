"""Many runs across machines through Ray: ``study ... --ray ADDRESS`` (docs/multi-gpu.md).

Each queued run of a study becomes one Ray task with its resource needs (its GPUs where the
cluster has GPUs, else a share of a machine's cores). The task trains the run through the
worker's own ``execute_run`` after claiming that run with the queue's atomic claim
(``claim_next_run(worker, run_id=...)``), so a local worker (the app's, ``worker``,
``study --wait``) and Ray never both train one run: a run another worker claimed first is
skipped. How many runs a machine trains at once is Ray's to decide (its resources), not
``LIM_SLOTS``'s.

The data home is shared: every machine mounts it at the same path (a network file system), so
datasets, models and the runs' folders (checkpoints, adapters, evaluation) are where the run's
code looks for them. The database is not shared that way: SQLite must not be written over a
network file system (its WAL needs memory shared by the writers), so every database call of
a task goes to one ``StorageService`` actor pinned to the driver's machine, which holds the
data home's ``Storage``. Results land in the same tables as any run's.

Ray is optional and heavy: it is imported here only, inside the functions that need it
(``is_ray_available`` says whether it is installed), so nothing else pays for it.

    with ray_cluster("local") as ray:           # or "node0:6379"
        jobs = submit_runs(ray, storage, runs)  # runs: queued run records
        jobs.wait(on_progress)
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from engine.errors import ClusterError
from engine.settings import MAX_SLOTS, load_config
from engine.training.settings import stored_training
from engine.training.slots import HEADROOM, RESERVE_MB
from engine.training.worker import execute_run, recover_interrupted
from engine.training.remote_storage import RemoteStorage, StorageService
from storage import Storage

LOCAL = "local"  # --ray local: a Ray of this machine only, started for the command
# Cores a CPU run takes: the small models a study trains gain little from more threads than
# this, so a many-core machine trains several runs at once; a small machine gives each run
# half its cores (2 cores: two runs side by side, one thread each).
CPU_PER_RUN = 4
STOP_GRACE_S = 120.0  # after Ctrl-C, how long the driver waits for its runs to save and stop


def is_ray_available() -> bool:
    """Whether Ray is installed (without importing it: that takes a second)."""
    return importlib.util.find_spec("ray") is not None


def import_ray():
    try:
        import ray
    except ImportError:
        raise ClusterError("Ray is not installed here: pip install ray==2.60.0 (the version "
                           "requirements.txt pins), on every machine of the cluster") from None
    return ray


def check_address(address: str) -> str:
    """``local`` or an address for ``ray.init(address=...)`` (``host:port``, ``auto``,
    ``ray://host:port``), stripped; refuses an empty one and one that could pass for an option."""
    address = (address or "").strip()
    if not address:
        raise ClusterError("give a Ray address (host:port of the head, see `ray start --head`) "
                           "or `local` for a Ray of this machine")
    if address.startswith("-") or len(address) > 200 or not address.isprintable() or " " in address:
        raise ClusterError(f"{address[:60]!r} is not a Ray address: host:port of the cluster's "
                           "head (`ray start --head` prints it), or `local`")
    return address


def check_home(home: Path) -> None:
    """The data home must be on this machine at the driver's path (a shared file system)."""
    if not (home / "workbench.db").is_file():
        raise ClusterError(
            f"{socket.gethostname()}: the data home {home} is not here (no workbench.db): every "
            "machine of the Ray cluster must mount the driver's data home at the same path "
            "(docs/multi-gpu.md, Many runs across machines: Ray)")


def ray_worker_name() -> str:
    """``host:pid:ray``: host and pid first, as ``worker_name()``, so ``worker_is_alive`` can
    tell a Ray worker process that died on this host at once."""
    return f"{socket.gethostname()}:{os.getpid()}:ray"


def train_on_node(service: Any, home: str, run_id: int) -> dict:
    """One Ray task: claim run ``run_id`` and train it on this machine. ``skipped`` when
    another worker has it or it is no longer queued (stopped, cancelled)."""
    ray = import_ray()
    check_home(Path(home))
    storage = RemoteStorage(service, Path(home))
    name = ray_worker_name()
    run = storage.claim_next_run(name, run_id=run_id, slots=None)
    if run is None:
        return {"run": run_id, "status": "skipped", "worker": name}
    # torch takes every core by default; this task was given its share
    cores = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cores)))
    return {"run": run_id, "status": execute_run(storage, run), "worker": name}


def task_resources(run: dict, cluster_gpus: float, node_cpus: float, gpu_mb: float | None = None,
                   node_memory: float | None = None) -> dict:
    """What one run's task asks Ray for.

    With GPUs (the cluster has them and ``LIM_DEVICE`` is not ``cpu``): one GPU per process of
    a multi-process run; a one-process run with a memory estimate (``estimate_mb``, stored when
    it was queued) asks for the share of a GPU of ``gpu_mb`` MiB that its estimate needs, with
    the slots' headroom (``engine.training.slots``), so Ray packs several small runs onto one
    GPU as ``LIM_SLOTS=auto`` does on one machine (Ray's fractional GPUs: it counts, it does not
    enforce); without an estimate or a known GPU size, a whole GPU.
    On CPUs: ``CPU_PER_RUN`` cores or half the smallest machine's, whichever is fewer (at least
    one per process), and the estimate as Ray's ``memory`` (bytes), so a machine is not given
    more runs than its RAM holds (at most ``node_memory``, the smallest machine's: a larger ask
    would wait forever; it then trains alone there)."""
    training = stored_training(run)
    if training.nnodes > 1:
        raise ClusterError(f"run {run['id']} trains over {training.nnodes} machines with torchrun; "
                           "Ray sends whole runs to machines: set nnodes=1")
    processes = training.world_size
    estimate = run.get("estimate_mb")
    if cluster_gpus >= 1 and load_config().device != "cpu":
        if processes > 1 or not estimate or not gpu_mb:
            return {"num_gpus": processes, "num_cpus": processes}
        need = (estimate * HEADROOM + RESERVE_MB) / gpu_mb
        share = max(1 / MAX_SLOTS, min(1.0, math.ceil(need * 100) / 100))  # Ray's GPU shares: two decimals suffice
        return {"num_gpus": share, "num_cpus": 1}
    cores = max(1, min(CPU_PER_RUN, int(node_cpus // 2)))
    resources: dict = {"num_cpus": max(cores, processes)}
    if estimate:
        ask = estimate * HEADROOM * 2**20
        resources["memory"] = int(min(ask, node_memory) if node_memory else ask)
    return resources


def local_gpu_mb() -> float | None:
    """The memory of this machine's smallest GPU (MiB), taken as the cluster's GPU size (the
    driver cannot see other machines' cards; a cluster of unlike GPUs: the smallest one here
    should be the smallest there); None without a GPU."""
    if not torch.cuda.is_available():
        return None
    return min(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())) / 2**20


@contextlib.contextmanager
def ray_cluster(address: str) -> Iterator[Any]:
    """Ray, connected for the ``with`` block: ``local`` starts a Ray of this machine, any other
    address joins that cluster (``ray.init(address=...)``); a Ray this process already runs
    (a test's) is used as it is and left running."""
    ray = import_ray()
    address = check_address(address)
    if ray.is_initialized():
        yield ray
        return
    try:
        # the tasks' own output goes to Ray's log files; the driver's terminal shows progress
        if address == LOCAL:
            ray.init(log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    except Exception as error:
        raise ClusterError(f"could not reach the Ray cluster at {address}: {error}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


class RayRuns:
    """Runs sent to a Ray cluster (``submit_runs``); ``wait`` until their tasks end."""

    def __init__(self, ray: Any, service: Any, tasks: dict[Any, int]):
        self.ray, self.service, self.tasks = ray, service, tasks  # the service lives while we do
        self.pending = list(tasks)
        self.results: list[dict] = []

    def wait(self, on_progress: Callable[[], None] | None = None, poll_seconds: float = 1.0,
             timeout: float | None = None) -> bool:
        """Until every task has ended (True) or ``timeout`` seconds passed (False);
        ``on_progress()`` every ``poll_seconds``. A task that failed (a machine without the data
        home, a lost node) is a result with its ``error``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.pending:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            done, self.pending = self.ray.wait(self.pending, num_returns=len(self.pending),
                                               timeout=poll_seconds)
            for ref in done:
                self.results.append(self._result(ref))
            if on_progress is not None:
                on_progress()
        return True

    def _result(self, ref: Any) -> dict:
        try:
            return self.ray.get(ref)
        except Exception as error:  # RayTaskError wraps the task's own error: say that one
            cause = getattr(error, "cause", None) or error
            return {"run": self.tasks[ref], "status": "error",
                    "error": str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__}

    @property
    def failures(self) -> list[dict]:
        return [result for result in self.results if result["status"] == "error"]

    def end(self, storage: Storage) -> None:
        """After the tasks: a run whose task died mid-run (its machine lost, its process
        killed) is marked ``interrupted`` here when its process is known gone, else once its
        heartbeat is a minute old (by any worker)."""
        recover_interrupted(storage)


def submit_runs(ray: Any, storage: Storage, runs: list[dict]) -> RayRuns:
    """One task per run (queued records), with ``task_resources``; the database service pinned
    to this machine, where ``storage``'s data home is."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    # Threads: Storage keeps one connection per thread, and SQLite serialises the writes.
    service = ray.remote(StorageService).options(
        num_cpus=0, max_concurrency=8, scheduling_strategy=here).remote(str(storage.home))
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    node_cpus = min((resources.get("CPU", 0) for resources in nodes if resources.get("CPU")), default=1)
    node_memory = min((resources["memory"] for resources in nodes if resources.get("memory")), default=None)
    cluster_gpus = ray.cluster_resources().get("GPU", 0)
    train = ray.remote(train_on_node)
    gpu_mb = local_gpu_mb() if cluster_gpus else None
    tasks = {train.options(max_retries=0, **task_resources(run, cluster_gpus, node_cpus, gpu_mb, node_memory))
             .remote(service, str(storage.home), run["id"]): run["id"] for run in runs}
    return RayRuns(ray, service, tasks)
