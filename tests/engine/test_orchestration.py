"""The queue, recovery after a killed process, out-of-memory runs, cloning, settings refused
at submit, and readers watching a run while it trains."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from command_line import engine_command
import torch
from conftest import FAST
from test_training import wait_until

from engine.errors import WorkbenchError
from engine.methods import register_method
from engine.methods.full import FullSettings
from engine.methods.registry import unregister_method
from engine.training.clock import plan_of, timings_of

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------- queue
def test_queue_order_move_cancel_and_restart(workbench, demo_home):
    from engine import Workbench

    a, b, c = (workbench.submit_run("demo-commands", "tiny-whisper", "lora", {}, FAST) for _ in range(3))
    assert [row["id"] for row in workbench.queue()] == [a, b, c]
    assert workbench.move_run(c, 1) == [c, a, b]
    workbench.cancel_run(a)
    assert workbench.get_run(a)["status"] == "cancelled"
    assert [(row["position"], row["id"]) for row in workbench.queue()] == [(1, c), (2, b)]
    assert workbench.run_summary(b)["queue_position"] == 2
    with pytest.raises(WorkbenchError, match="only queued runs"):
        workbench.move_run(a, 1)

    restarted = Workbench(demo_home)  # the queue lives in the database
    assert [row["id"] for row in restarted.queue()] == [c, b]
    claimed = restarted.storage.claim_next_run("this-host:1:1")
    assert claimed["id"] == c
    # One run per device: a second worker on the same host waits until the first is done.
    assert restarted.storage.claim_next_run("this-host:2:1") is None
    restarted.storage.update_run(c, status="completed")
    assert restarted.storage.claim_next_run("this-host:2:1")["id"] == b


def test_queue_estimates_from_earlier_runs_and_cli_moves(workbench, demo_home):
    done = workbench.submit_run("demo-commands", "tiny-whisper", "lora", {}, FAST)
    assert workbench.wait_for_run(done)["status"] == "completed"
    first = workbench.submit_run("demo-commands", "tiny-whisper", "lora", {}, FAST)
    second = workbench.submit_run("demo-commands", "tiny-whisper", "lora", {}, {**FAST, "max_steps": 8})
    rows = workbench.queue()
    # From the finished run's own steps and final scoring (engine/training/clock.py): the same
    # scoring for both, and four more steps for the second
    timed = timings_of(workbench.storage, workbench.get_run(done), plan_of(workbench.storage, workbench.get_run(done)))
    assert timed.short_s and timed.eval_per_item_s
    scoring = rows[0]["estimated_duration_s"] - 4 * timed.short_s
    assert scoring > 0
    assert rows[1]["estimated_duration_s"] == pytest.approx(8 * timed.short_s + scoring)
    assert rows[1]["estimated_start_in_s"] == pytest.approx(rows[0]["estimated_duration_s"])

    moved = engine_command("runs", "move", str(second), "--to", "1", home=demo_home)
    assert moved.returncode == 0, moved.stderr
    assert [row["id"] for row in workbench.queue()] == [second, first]


def test_clone_run_with_changes(workbench):
    original = workbench.submit_run("demo-speech", "tiny-whisper", "qlora", {"r": 4},
                                    {**FAST, "learning_rate": 2e-3})
    clone = workbench.clone_run(original, {"r": 16})
    settings, source = workbench.get_run(clone)["settings"], workbench.get_run(original)["settings"]
    assert settings["method"] == {**source["method"], "r": 16}
    assert settings["training"] == source["training"]
    assert workbench.get_run(clone)["method"] == "qlora"
    with pytest.raises(WorkbenchError, match="r must be at least 1"):
        workbench.clone_run(original, {"r": 0})
    with pytest.raises(WorkbenchError, match="unknown setting colour"):
        workbench.clone_run(original, {"colour": "red"})


# ---------------------------------------------------------------------------- recovery
def test_killed_worker_leaves_an_interrupted_run_that_resumes_without_lost_rows(demo_home):
    from engine import Workbench

    command = [sys.executable, "-m", "engine", "train", "--dataset", "demo-speech",
               "--model", "tiny-whisper", "--method", "lora", "--set", "max_steps=500",
               "--set", "save_steps=2", "--set", "eval_steps=0", "--set", "per_device_train_batch_size=2",
               "--wait"]
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "LIM_HOME": str(demo_home)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    watcher = Workbench(demo_home)
    try:
        wait_until(lambda: watcher.list_runs() and (watcher.list_runs()[0]["step"] or 0) >= 5,
                   timeout=300)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    [run] = watcher.list_runs()
    assert run["status"] == "running"  # nobody could tell the database: the process died
    before = {m["step"]: m["value"] for m in watcher.run_metrics(run["id"], ["train/loss"])}
    assert len(before) >= 5

    restarted = Workbench(demo_home)
    run = restarted.get_run(run["id"])
    assert run["status"] == "interrupted"
    checkpoint_step = int(run["checkpoint_dir"].rsplit("-", 1)[1])
    assert checkpoint_step >= 4 and checkpoint_step % 2 == 0
    # Finish soon: three more steps past the checkpoint.
    settings = run["settings"]
    settings["training"]["max_steps"] = checkpoint_step + 3
    restarted.storage.update_run(run["id"], settings=settings)
    restarted.resume_run(run["id"])
    summary = restarted.wait_for_run(run["id"])
    assert summary["status"] == "completed", summary["error"]
    rows = restarted.run_metrics(run["id"], ["train/loss"])
    assert [m["step"] for m in rows] == list(range(1, checkpoint_step + 4))  # each step once
    after = {m["step"]: m["value"] for m in rows}
    for step in range(1, checkpoint_step + 1):  # nothing written before the crash was lost
        assert after[step] == before[step]


# ---------------------------------------------------------------------------- out of memory
def raises_cuda_oom(model, settings, context):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a "
                                 "total capacity of 7.6 GiB of which 1.1 GiB is free.")


def raises_host_oom_on_the_third_step(model, settings, context):
    calls = {"n": 0}

    def hook(module, args, kwargs):
        calls["n"] += 1
        if calls["n"] == 3 and module.training:
            raise MemoryError()

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return model


@pytest.mark.parametrize("apply, where, needed", [
    (raises_cuda_oom, "GPU memory", "tried to allocate 2,048 MiB more while"),
    (raises_host_oom_on_the_third_step, "RAM", "it needed more than the"),
])
def test_out_of_memory_fails_with_numbers_and_advice_and_the_queue_goes_on(workbench, apply, where, needed):
    register_method(name="oom", help="runs out of memory", settings_cls=FullSettings, apply=apply,
                    is_adapter=False, source="test")
    try:
        workbench.start_worker()
        bad = workbench.submit_run("demo-commands", "tiny-whisper", "oom", {}, FAST)
        good = workbench.submit_run("demo-commands", "tiny-whisper", "lora", {}, FAST)
        wait_until(lambda: workbench.get_run(good)["status"] in ("completed", "failed"))
    finally:
        unregister_method("oom")
    failed = workbench.get_run(bad)
    assert failed["status"] == "failed"
    error = failed["error"]
    assert error.startswith(f"out of {where}") and needed in error and "were free" in error
    for advice in ("per_device_train_batch_size=2", "gradient_accumulation_steps=2",
                   "gradient_checkpointing=true", "qlora", "shorter audio window"):
        assert advice in error
    assert workbench.get_run(good)["status"] == "completed"
    if apply is raises_host_oom_on_the_third_step:  # steps before the failure are kept
        assert [m["step"] for m in workbench.run_metrics(bad, ["train/loss"])] == [1, 2]


# ---------------------------------------------------------------------------- settings
def only_validation_items(workbench) -> str:
    source = workbench.get_dataset("demo-commands")
    items = [dict(i, id=None) for i in workbench.storage.dataset_items(source["id"], "validation")]
    for item in items:
        item.pop("id")
        item.pop("dataset_id")
    workbench.storage.add_dataset({"name": "no-train", "task": source["task"], "path": source["path"],
                                   "version": "x", "splits": ["validation"], "labels": source["labels"]},
                                  items)
    return "no-train"


@pytest.mark.parametrize("method_values, training_values, field", [
    ({}, {"learning_rate": 0}, "learning_rate"),
    ({}, {"learning_rate": -1e-3}, "learning_rate"),
    ({"r": 0}, {}, "r must be at least 1"),
    ({}, {"per_device_train_batch_size": 1000}, "per_device_train_batch_size"),
    ({"target_modules": "query,value"}, {}, "target_modules: this model has no layer named query"),
    ({}, {"max_time_minutes": -5}, "max_time_minutes"),
    ({}, {"early_stopping_patience": 2, "eval_steps": 0}, "early_stopping_patience"),
    ({}, {"precision": "fp8"}, "precision"),
])
def test_invalid_settings_are_refused_at_submit(workbench, method_values, training_values, field):
    with pytest.raises(WorkbenchError, match=field):
        workbench.submit_run("demo-speech", "tiny-whisper", "lora", method_values, {**FAST, **training_values})
    assert workbench.list_runs() == []


def test_a_split_with_no_items_is_refused_at_submit(workbench):
    name = only_validation_items(workbench)
    with pytest.raises(WorkbenchError, match="no items in its train split"):
        workbench.submit_run(name, "tiny-whisper", "lora", {}, FAST)
    assert workbench.list_runs() == []


# ---------------------------------------------------------------------------- monitor
def test_many_readers_while_the_worker_writes(workbench):
    workbench.start_worker()
    run_id = workbench.submit_run("demo-speech", "tiny-whisper", "lora", {},
                                  {**FAST, "max_steps": 12, "eval_steps": 4, "save_steps": 3,
                                   "per_device_train_batch_size": 2})
    errors, observations = [], []
    done = threading.Event()

    def reader():
        seen = 0
        try:
            while not done.is_set():
                run = workbench.get_run(run_id)
                steps = sorted({m["step"] for m in workbench.run_metrics(run_id, ["train/loss"])})
                assert steps == list(range(1, len(steps) + 1))  # never a hole, never a duplicate
                assert len(steps) >= seen  # never going back
                seen = len(steps)
                workbench.run_events(run_id)
                workbench.queue()
                observations.append(run["status"])
        except Exception as error:  # noqa: BLE001 (reported by the main thread)
            errors.append(error)
        finally:
            workbench.storage.close()

    readers = [threading.Thread(target=reader) for _ in range(4)]
    for thread in readers:
        thread.start()
    try:
        wait_until(lambda: workbench.get_run(run_id)["status"] in ("completed", "failed"), timeout=300)
    finally:
        done.set()
        for thread in readers:
            thread.join(60)
    assert errors == []
    assert workbench.get_run(run_id)["status"] == "completed"
    assert "running" in observations and len(observations) > 8


def test_queue_commands_on_the_command_line(workbench, demo_home):
    import json

    first = workbench.submit_run("demo-commands", "tiny-whisper", "qlora", {"r": 4}, FAST)
    def cli(*args):
        return engine_command(*args, home=demo_home)

    cloned = cli("runs", "clone", str(first), "--set", "r=16", "--json")
    assert cloned.returncode == 0, cloned.stderr
    clone_id = json.loads(cloned.stdout)["id"]
    assert workbench.get_run(clone_id)["settings"]["method"]["r"] == 16
    listed = cli("runs", "queue", "--json")
    assert [row["id"] for row in json.loads(listed.stdout)] == [first, clone_id]
    assert cli("runs", "cancel", str(first)).returncode == 0
    assert workbench.get_run(first)["status"] == "cancelled"
    refused = cli("runs", "cancel", str(first))
    assert refused.returncode == 1
    assert refused.stderr.strip() == f"error: run {first} is cancelled; only queued runs can be cancelled (stop a running one)"


def test_submit_checks_leave_models_other_threads_build_alone(workbench):
    """The form estimates memory while the worker loads a model: the weightless copy made for
    the checks must not turn the worker's weights into meta tensors (it once did)."""
    from engine.training.preflight import model_outline

    stop, wrong = threading.Event(), []

    def build_layers():
        while not stop.is_set():
            layer = torch.nn.Linear(16, 16)
            if layer.weight.device.type != "cpu":
                wrong.append(layer.weight.device.type)

    builder = threading.Thread(target=build_layers)
    builder.start()
    try:
        for _ in range(15):
            model_outline.cache_clear()
            workbench.check_run("demo-speech", "tiny-whisper", "qlora", {}, FAST)
    finally:
        stop.set()
        builder.join(30)
    assert wrong == []
