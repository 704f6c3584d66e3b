"""The worker: who still trains a run (heartbeats, on any host) and how a run fails (typed messages)."""

from __future__ import annotations

import os
import socket
import time

import pytest
from conftest import FAST

from engine.methods import register_method
from engine.methods.full import FullSettings
from engine.methods.registry import unregister_method
from engine.training import worker as worker_lib
from engine.training.worker import heartbeat, recover_interrupted, worker_is_alive
from storage import Storage

STALE = worker_lib.HEARTBEAT_SECONDS * worker_lib.STALE_AFTER_HEARTBEATS


@pytest.fixture
def storage(tmp_path):
    store = Storage(tmp_path / "home")
    yield store
    store.close()


def claimed_run(storage, worker: str, heartbeat_age_s: float) -> int:
    run_id = storage.create_run({"method": "lora", "settings": {}})
    assert storage.claim_next_run(worker)["id"] == run_id
    storage.update_run(run_id, heartbeat_at=time.time() - heartbeat_age_s)
    return run_id


@pytest.mark.parametrize("worker", [
    "a-container-that-is-gone:1:1",  # every `docker run` gets a new hostname
    f"{socket.gethostname()}:{os.getpid()}:1",  # a restarted container: same hostname, same pid
], ids=["another-host", "this-host-this-pid"])  # ids without the pid: xdist's workers collect alike
def test_a_run_whose_heartbeat_went_stale_is_interrupted_on_any_host(storage, worker):
    run_id = claimed_run(storage, worker, heartbeat_age_s=STALE + 1)
    assert recover_interrupted(storage) == [run_id]
    assert storage.get_run(run_id)["status"] == "interrupted"  # and so resumable
    assert "resume it" in storage.events(run_id)[-1]["message"]


def test_a_run_with_a_recent_heartbeat_on_another_host_keeps_running(storage):
    run_id = claimed_run(storage, "another-host:42:1", heartbeat_age_s=STALE / 2)
    assert recover_interrupted(storage) == []
    assert storage.get_run(run_id)["status"] == "running"


def test_a_dead_pid_on_this_host_is_lost_before_its_heartbeat_goes_stale():
    dead = f"{socket.gethostname()}:{2 ** 22 + 12345}:1"  # above any pid_max: never a process
    assert not worker_is_alive(dead, time.time())
    assert worker_is_alive(f"{socket.gethostname()}:{os.getpid()}:1", time.time())
    assert not worker_is_alive(None, time.time()) and not worker_is_alive("h:1:1", None)


def test_the_heartbeat_beats_while_a_long_step_blocks_the_loop(storage):
    run_id = claimed_run(storage, "h:1:1", heartbeat_age_s=STALE + 1)
    with heartbeat(storage, run_id, "h:1:1", interval=0.05):
        time.sleep(0.5)  # one slow step or evaluation: the training loop writes nothing
        assert time.time() - storage.get_run(run_id)["heartbeat_at"] < 0.5
    assert recover_interrupted(storage) == []


def test_the_heartbeat_stops_once_the_claim_is_taken_away(storage):
    run_id = claimed_run(storage, "h:1:1", heartbeat_age_s=STALE + 1)
    recover_interrupted(storage)
    before = storage.get_run(run_id)["heartbeat_at"]
    assert not storage.beat(run_id, "h:1:1", time.time())  # an interrupted run is not revived
    assert storage.get_run(run_id)["heartbeat_at"] == before


# ---------------------------------------------------------------------------- failures
@pytest.mark.parametrize("gone", ["dataset", "model"])
def test_a_deleted_dataset_or_model_fails_the_run_naming_it_not_the_method(workbench, gone):
    run_id = workbench.submit_run("demo-text", "tiny-bert", "lora", {}, FAST)
    if gone == "dataset":
        workbench.delete_dataset("demo-text")
    else:
        workbench.delete_model("tiny-bert")
    run = workbench.wait_for_run(run_id)
    assert run["status"] == "failed"
    name = "demo-text" if gone == "dataset" else "tiny-bert"
    assert run["error"].startswith(f"{gone} {name!r} of this run was deleted"), run["error"]
    assert "RuntimeError" not in run["error"] and "in method" not in run["error"]


class NeedsTwoArguments(Exception):
    def __init__(self, code: int, detail: str):
        super().__init__(f"code {code}: {detail}")


def raises_an_error_with_its_own_constructor(model, settings, context):
    raise NeedsTwoArguments(7, "the layer names did not match")


def test_a_method_error_that_cannot_be_rebuilt_keeps_its_message(workbench):
    register_method(name="picky", help="raises", settings_cls=FullSettings,
                    apply=raises_an_error_with_its_own_constructor, is_adapter=False, source="test")
    try:
        run = workbench.wait_for_run(workbench.submit_run("demo-text", "tiny-bert", "picky", {}, FAST))
    finally:
        unregister_method("picky")
    assert run["status"] == "failed"
    assert run["error"] == ("method 'picky' failed to apply: NeedsTwoArguments: "
                            "code 7: the layer names did not match"), run["error"]


def test_the_app_process_ends_cleanly_while_its_worker_trains(demo_home, tmp_path):
    """Ctrl-C on a process whose worker thread is in a run: the run stops with a checkpoint and
    the process exits normally, no segmentation fault (issue 27)."""
    import signal
    import subprocess
    import sys
    import time

    from engine import Workbench

    script = tmp_path / "app.py"
    script.write_text(
        "import time\nfrom engine import Workbench\n"
        f"wb = Workbench({str(demo_home)!r})\n"
        "wb.submit_run('demo-speech', 'tiny-whisper', 'qlora', {}, {'max_steps': 400, 'eval_steps': 3,"
        " 'save_steps': 0, 'per_device_train_batch_size': 4, 'per_device_eval_batch_size': 4})\n"
        "wb.start_worker()\nwhile True:\n    time.sleep(0.2)\n")
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    workbench = Workbench(demo_home)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (workbench.list_runs() and workbench.list_runs()[0]["step"]):
        time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=120)[0].decode(errors="replace")
    assert process.returncode not in (-signal.SIGSEGV, -signal.SIGABRT), output[-2000:]
    [run] = workbench.list_runs()
    assert run["status"] == "stopped" and run["checkpoint_dir"], (run["status"], output[-2000:])
    workbench.storage.close()


def test_slots_bound_the_runs_one_host_trains_at_once(workbench, monkeypatch):
    """LIM_SLOTS (issue 29): the atomic claim counts every running run on the host, whichever
    process or thread holds it."""
    ids = [workbench.submit_run("demo-text", "tiny-bert", "lora", {}, {"max_steps": 2}) for _ in range(3)]
    storage = workbench.storage
    assert storage.claim_next_run("host-a:1:1") is not None
    assert storage.claim_next_run("host-a:2:1") is None  # one slot: the second waits
    assert storage.claim_next_run("host-b:1:1") is not None  # another machine has its own
    assert storage.claim_next_run("host-a:2:1", slots=2) is not None
    assert storage.claim_next_run("host-a:3:1", slots=2) is None
    assert {r["status"] for r in workbench.list_runs()} == {"running"} and len(ids) == 3


def test_two_slots_train_two_runs_side_by_side_and_worker_empties_the_queue(workbench, monkeypatch):
    import threading

    from engine.training.worker import work_until_empty

    monkeypatch.setenv("LIM_SLOTS", "2")
    ids = [workbench.submit_run("demo-text", "tiny-bert", "lora", {}, {"max_steps": 3}) for _ in range(4)]
    most, lock = [0], threading.Lock()

    def watch(stop: threading.Event) -> None:
        while not stop.is_set():
            with lock:
                most[0] = max(most[0], len(workbench.storage.runs_with_status("running")))
            time.sleep(0.05)

    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(stop,))
    watcher.start()
    workers = [threading.Thread(target=work_until_empty, args=(workbench.storage, 0.1)) for _ in range(3)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(300)
    stop.set()
    watcher.join()
    assert [workbench.get_run(i)["status"] for i in ids] == ["completed"] * 4
    assert most[0] == 2  # three workers, two slots: never three at once, and two did run together
