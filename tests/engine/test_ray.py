"""A study's runs on a Ray cluster (engine/training/cluster.py): a local Ray of two CPUs trains a
2-cell study through the command line to the same table and losses as the same study trained
here one run after another; a run another worker claimed is not trained twice; owners and
admins stay as they are. Skipped where Ray is not installed."""

from __future__ import annotations

import json

import pytest

ray = pytest.importorskip("ray")

from conftest import copy_home  # noqa: E402

from engine import Workbench  # noqa: E402
from engine.cli import main  # noqa: E402
from engine.errors import AuthError, ClusterError, NotFoundError  # noqa: E402
from engine.studies import Grid  # noqa: E402
from engine.training import cluster  # noqa: E402

pytestmark = pytest.mark.timeout(240)
STUDY = ["study", "--dataset", "demo-text", "--model", "tiny-bert", "--methods", "lora",
         "--ranks", "2,4", "--seeds", "1", "--set", "max_steps=3", "--set", "eval_steps=0",
         "--set", "save_steps=0", "--set", "per_device_train_batch_size=4", "--json"]
LOSS = "train/loss"


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (starting one takes seconds): what `--ray local` would start,
    with two CPUs as CI has. `--ray` uses a Ray this process already runs."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def losses(home, summary: dict) -> dict[tuple, list[float]]:
    """(cell, seed) -> the run's training loss at every step."""
    workbench = Workbench(home)
    try:
        return {(run["cell"], run["seed"]): workbench.storage.metric_series(run["id"], LOSS)["value"]
                for run in summary["runs"]}
    finally:
        workbench.storage.close()


def test_a_study_on_a_local_ray_equals_the_same_study_trained_here(local_ray, demo_template, tmp_path,
                                                                   monkeypatch, capsys):
    """Each cell a Ray task (both at once on two CPUs), claimed through the queue and trained
    by the worker's own code: the same table and the same losses step by step as `--wait`."""
    results = {}
    for way in ("--wait", "--ray=local"):
        home = tmp_path / way.strip("-=")
        copy_home(demo_template, home)
        monkeypatch.setenv("LIM_HOME", str(home))
        assert main([*STUDY, way]) == 0
        results[way] = (home, json.loads(capsys.readouterr().out))
    (here_home, here), (ray_home, on_ray) = results["--wait"], results["--ray=local"]
    assert on_ray["status"] == "completed" and on_ray["runs_ended"] == 2
    workbench, stranger = Workbench(ray_home), Workbench(ray_home, owner_id=2)
    workers = {run["worker"] for run in workbench.list_runs()}
    assert len(workbench.list_runs()) == 2 and all(worker.endswith(":ray") for worker in workers)
    # the owner's runs stay the owner's, wherever they trained
    assert stranger.list_studies() == [] and stranger.list_runs() == []
    with pytest.raises(NotFoundError):
        stranger.study_summary(on_ray["id"])
    workbench.storage.close()
    assert [row["cell"] for row in on_ray["table"]] == [row["cell"] for row in here["table"]]
    for ray_row, here_row in zip(on_ray["table"], here["table"]):
        assert ray_row["completed"] == here_row["completed"] == 1
        assert ray_row["values"] == pytest.approx(here_row["values"])
        assert ray_row["trainable_params_mean"] == here_row["trainable_params_mean"]
    ray_losses, here_losses = losses(ray_home, on_ray), losses(here_home, here)
    assert set(ray_losses) == set(here_losses) and all(len(v) == 3 for v in ray_losses.values())
    for key, values in here_losses.items():  # one thread a run on Ray, two here: sums may round apart
        assert ray_losses[key] == pytest.approx(values, rel=1e-4), key


def test_a_run_another_worker_claimed_is_not_trained_twice(local_ray, workbench):
    study_id = workbench.submit_study("demo-text", "tiny-bert", Grid(["lora"], seeds=[1]),
                                      {"max_steps": 2, "eval_steps": 0, "save_steps": 0})
    [run] = workbench.study_runs(study_id)  # read while queued, as a driver reads it
    other = "elsewhere:4242:worker"
    assert workbench.storage.claim_next_run(other, run_id=run["id"]) is not None
    with cluster.ray_cluster("local") as connected:
        jobs = cluster.submit_runs(connected, workbench.storage, [run])
        assert jobs.wait(timeout=180)  # ~11 s alone; minutes on a loaded machine
    assert jobs.results == [{"run": run["id"], "status": "skipped", "worker": jobs.results[0]["worker"]}]
    after = workbench.get_run(run["id"])
    assert (after["status"], after["worker"], after["step"]) == ("running", other, 0)
    assert workbench.storage.metrics(run["id"]) == []


def test_a_task_asks_ray_for_its_estimated_share_of_a_gpu_or_of_a_machines_memory(monkeypatch):
    """Ray packs runs by what they ask for: a one-process run with an estimate asks for its
    share of a GPU (the slots' headroom included, rounded up to hundredths); a multi-process
    run or one without an estimate asks for whole GPUs; on CPUs the estimate is Ray's
    ``memory``, never more than the smallest machine has (the task would wait forever)."""
    from engine.training.slots import HEADROOM, RESERVE_MB

    def run(estimate, gpus=1):
        return {"id": 1, "estimate_mb": estimate, "settings": {"training": {"gpus": gpus}}}

    monkeypatch.setenv("LIM_DEVICE", "auto")
    share = cluster.task_resources(run(1500.0), 1, 16, gpu_mb=81559.0)
    assert share == {"num_gpus": 0.03, "num_cpus": 1}
    assert share["num_gpus"] >= (1500 * HEADROOM + RESERVE_MB) / 81559
    assert cluster.task_resources(run(60000.0), 1, 16, gpu_mb=81559.0)["num_gpus"] == 0.86  # 0.8523 up
    assert cluster.task_resources(run(90000.0), 1, 16, gpu_mb=81559.0)["num_gpus"] == 1.0
    assert cluster.task_resources(run(None), 1, 16, gpu_mb=81559.0) == {"num_gpus": 1, "num_cpus": 1}
    assert cluster.task_resources(run(1500.0), 1, 16, gpu_mb=None) == {"num_gpus": 1, "num_cpus": 1}
    assert cluster.task_resources(run(1500.0, gpus=2), 2, 16, gpu_mb=81559.0) == {"num_gpus": 2, "num_cpus": 2}
    on_cpus = cluster.task_resources(run(1000.0), 0, 2, node_memory=8 * 2**30)
    assert on_cpus == {"num_cpus": 1, "memory": int(1000 * HEADROOM * 2**20)}
    assert cluster.task_resources(run(1000.0), 0, 2, node_memory=2**29)["memory"] == 2**29
    assert "memory" not in cluster.task_resources(run(None), 0, 2, node_memory=2**30)
    monkeypatch.setenv("LIM_DEVICE", "cpu")  # runs kept off the GPUs: a CPU task
    assert "num_gpus" not in cluster.task_resources(run(1500.0), 1, 16, gpu_mb=81559.0)


def test_a_machine_without_the_data_home_says_so_and_leaves_the_run_queued(local_ray, workbench, tmp_path):
    study_id = workbench.submit_study("demo-text", "tiny-bert", Grid(["lora"], seeds=[1]), {"max_steps": 2})
    [run] = workbench.study_runs(study_id)
    service = ray.remote(cluster.StorageService).options(num_cpus=0).remote(str(workbench.home))
    task = ray.remote(cluster.train_on_node).remote(service, str(tmp_path / "not-mounted"), run["id"])
    with pytest.raises(ray.exceptions.RayTaskError, match="no workbench.db.*same path"):
        ray.get(task, timeout=60)
    assert workbench.get_run(run["id"])["status"] == "queued"


def test_only_the_owner_or_an_admin_sends_a_study_to_ray(workbench, monkeypatch):
    """With accounts on a Ray address is an admin's to give (it reaches other machines)."""
    monkeypatch.setenv("LIM_AUTH", "on")
    admin = workbench.for_user(workbench.sign_up("ada", "a long enough secret"))  # the first: admin
    bob = workbench.for_user(workbench.sign_up("bob", "another long secret"))
    carol = workbench.for_user(workbench.sign_up("carol", "plum orchard winter"))
    study_id = bob.submit_study("demo-text", "tiny-bert", Grid(["lora"], seeds=[1]), {"max_steps": 2})
    assert not bob.ray_allowed() and admin.ray_allowed()
    with pytest.raises(AuthError, match="only an admin may send runs to a Ray cluster"):
        bob.run_study_on_ray(study_id, "local")
    with pytest.raises(AuthError):
        bob.launch_study_on_ray(study_id, "local")
    with pytest.raises(NotFoundError):
        carol.run_study_on_ray(study_id, "local")
    assert carol.list_studies() == [] and [s["id"] for s in bob.list_studies()] == [study_id]
    assert [run["status"] for run in bob.study_runs(study_id)] == ["queued"]


def test_addresses_that_could_pass_for_options_are_refused():
    assert cluster.check_address(" node0:6379 ") == "node0:6379"
    for bad in ("", "--help", "a b", "x\x1b[2J"):
        with pytest.raises(ClusterError):
            cluster.check_address(bad)
