"""Multi-GPU runs through the real launcher: torchrun with two CPU processes (gloo backend).

Each launch starts torchrun and two Python processes importing torch and transformers (some
seconds each on two cores), so the runs are a few steps of tiny-whisper on demo-commands
(classification: each example's loss is a mean over the batch, so two shards averaged equal
the whole batch exactly).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from engine.errors import SettingsError
from engine.training.distributed import DistributedRunError, launch_command, other_node_command, outcome
from engine.training.settings import TrainingSettings
from engine.training.worker import execute_run

# 3 optimizer steps of 2 micro-batches per rank, a validation at step 2 and at the end.
STEPS = {"max_steps": 3, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2,
         "eval_steps": 2, "save_steps": 0, "per_device_eval_batch_size": 30, "learning_rate": 5e-3,
         "lr_scheduler_type": "cosine", "warmup_steps": 1}
CURVES = ("train/loss", "train/learning_rate", "train/grad_norm", "eval/accuracy", "eval/macro_f1")


def curves(workbench, run_id) -> dict[str, list[tuple[int, float]]]:
    found: dict[str, list] = {}
    for row in workbench.run_metrics(run_id):
        found.setdefault(row["name"], []).append((row["step"], row["value"]))
    return found


def assert_same_curves(got: dict, expected: dict) -> None:
    for name in CURVES:
        assert [s for s, _ in got[name]] == [s for s, _ in expected[name]], name
        torch.testing.assert_close(torch.tensor([v for _, v in got[name]], dtype=torch.float64),
                                   torch.tensor([v for _, v in expected[name]], dtype=torch.float64),
                                   rtol=1e-5, atol=1e-6, msg=name)


def rank_log(workbench, run_id: int, rank: int) -> str:
    return (workbench.home / "runs" / str(run_id) / "distributed" / f"rank-{rank}.log").read_text()


def test_two_processes_log_the_curve_of_one_process_at_twice_the_batch(workbench):
    # AdaLoRA: its rank budget moves every step from the gradients (on_optimizer_step), so the
    # adapters only agree if both ranks prune alike, after the all-reduce. No dropout: the two
    # runs would draw masks from different streams.
    adalora = {"lora_dropout": 0.0, "init_r": 6, "target_r": 3, "deltaT": 1}
    one = workbench.submit_run("demo-commands", "tiny-whisper", "adalora", adalora,
                               {**STEPS, "per_device_train_batch_size": 8})
    assert workbench.wait_for_run(one)["status"] == "completed"
    two = workbench.submit_run("demo-commands", "tiny-whisper", "adalora", adalora, {**STEPS, "gpus": 2})
    summary = workbench.wait_for_run(two)
    assert summary["status"] == "completed", summary["error"]

    got = curves(workbench, two)
    assert_same_curves(got, curves(workbench, one))
    assert [step for step, _ in got["train/loss"]] == [1, 2, 3]
    final, expected = summary["metrics"], workbench.get_run(one)["metrics"]
    assert final["accuracy"] == expected["accuracy"] and final["macro_f1"] == expected["macro_f1"]
    # untrained scores nearly tie: weights equal to 1e-6 may swap a pair's order
    assert final["roc_auc"] == pytest.approx(expected["roc_auc"], abs=0.01)
    adapter = load_file(workbench.home / summary["adapter_dir"] / "adapter_model.safetensors")
    reference = load_file(workbench.home / workbench.run_summary(one)["adapter_dir"] / "adapter_model.safetensors")
    assert adapter.keys() == reference.keys()
    for name, tensor in adapter.items():
        torch.testing.assert_close(tensor, reference[name], rtol=1e-4, atol=1e-6, msg=name)
    # (the shapes agreed too: both runs kept the same ranks in every layer)
    singular = [t for name, t in adapter.items() if "lora_E" in name]  # start at zero
    assert singular and any(t.abs().sum() > 0 for t in singular)  # trained
    assert len({t.shape[0] for t in singular}) > 1  # the budget moved between layers (init_r 6 each)

    # Rank 0 reported once; rank 1 trained the same steps and only logged.
    events = [e["message"] for e in workbench.run_events(two)]
    assert sum("adalora on tiny-whisper (2 processes" in message for message in events) == 1
    assert sum(message.startswith("step 2: validation") for message in events) == 1
    second = rank_log(workbench, two, 1)
    assert "rank 1 of 2 (cpu)" in second and "run completed" in second
    assert "step 2: validation" not in second and "saved adapter" not in second  # rank 0's work only
    assert "saved adapter" in " ".join(events)


def test_a_stop_reaches_every_rank_and_resume_continues_as_if_never_stopped(workbench):
    lora = {"lora_dropout": 0.3}  # each rank draws its own dropout masks: resume restores both
    settings = {**STEPS, "gpus": 2}
    straight = workbench.submit_run("demo-commands", "tiny-whisper", "lora", lora, settings)
    assert workbench.wait_for_run(straight)["status"] == "completed"

    stopped = workbench.submit_run("demo-commands", "tiny-whisper", "lora", lora, settings)
    claimed = workbench.storage.claim_next_run("test-host:1:1", run_id=stopped)
    workbench.storage.request_stop(stopped)  # rank 0 reads it after the first step
    assert execute_run(workbench.storage, claimed) == "stopped"
    run = workbench.get_run(stopped)
    assert run["step"] == 1
    # every rank stopped at the same step, none was killed
    assert "stopped at step 1 of 3" in rank_log(workbench, stopped, 1)
    assert "run stopped" in rank_log(workbench, stopped, 0) and "run stopped" in rank_log(workbench, stopped, 1)
    assert any("stopped at step 1 of 3" in e["message"] for e in workbench.run_events(stopped))
    state = json.loads((workbench.home / run["checkpoint_dir"] / "state.json").read_text())
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    assert state["rng_ranks"][0]["torch"] != state["rng_ranks"][1]["torch"]

    workbench.resume_run(stopped)
    resumed = workbench.wait_for_run(stopped)
    assert resumed["status"] == "completed", resumed["error"]
    assert_same_curves(curves(workbench, stopped), curves(workbench, straight))
    assert resumed["metrics"] == pytest.approx(workbench.get_run(straight)["metrics"])


def test_the_first_failing_rank_names_the_error(tmp_path):
    (tmp_path / "error-rank0.json").write_text(json.dumps(
        {"rank": 0, "time": 20.0, "message": "Connection closed by peer", "traceback": "later"}))
    (tmp_path / "error-rank1.json").write_text(json.dumps(
        {"rank": 1, "time": 10.0, "message": "out of memory on cuda:1", "traceback": "first"}))
    with pytest.raises(DistributedRunError) as raised:
        outcome(tmp_path, 1, run_id=7)
    assert str(raised.value) == "training process 1: out of memory on cuda:1"
    assert raised.value.details == "first"
    (tmp_path / "error-rank0.json").unlink()
    (tmp_path / "error-rank1.json").unlink()
    (tmp_path / "torchrun.log").write_text("ChildFailedError: rank 1 exited with -9\n")
    with pytest.raises(DistributedRunError, match="exited with code -9 before reporting.*rank 1 exited"):
        outcome(tmp_path, -9, run_id=7)
    (tmp_path / "result.json").write_text(json.dumps({"status": "stopped", "peak_memory_mb": 3.0}))
    assert outcome(tmp_path, 0, run_id=7) == {"status": "stopped", "peak_memory_mb": 3.0}


def test_launch_commands_for_one_and_several_machines(tmp_path):
    spec = tmp_path / "launch.json"
    one = launch_command(spec, TrainingSettings(gpus=4))
    assert one[1:] == ["-m", "torch.distributed.run", "--nproc-per-node", "4", "--standalone",
                       "--nnodes", "1", "-m", "engine.training.rank", str(spec)]
    several = TrainingSettings(gpus=8, nnodes=2, rdzv_endpoint="node0:29500")
    assert launch_command(spec, several)[4:11] == ["8", "--nnodes", "2", "--node-rank", "0",
                                                  "--rdzv-endpoint", "node0:29500"]
    assert other_node_command(spec, several).startswith(
        "python -m torch.distributed.run --nproc-per-node 8 --nnodes 2 --node-rank K "
        "--rdzv-endpoint node0:29500 -m engine.training.rank")
    with pytest.raises(SettingsError, match="nnodes=2 needs rdzv_endpoint"):
        TrainingSettings(nnodes=2).validate()


def test_more_gpus_than_the_machine_has_is_refused(workbench, monkeypatch):
    monkeypatch.setattr(type(workbench), "gpu_count", staticmethod(lambda: 2))
    with pytest.raises(SettingsError, match="gpus=4, but this machine has 2 GPUs"):
        workbench.check_run("demo-commands", "tiny-whisper", "lora", {}, {**STEPS, "gpus": 4})
    with pytest.raises(SettingsError, match=r"× 2 GPUs is larger than the train split"):
        workbench.check_run("demo-commands", "tiny-whisper", "lora", {},
                            {**STEPS, "gpus": 2, "per_device_train_batch_size": 100})
    monkeypatch.setattr(type(workbench), "gpu_count", staticmethod(lambda: 0))
    plan = workbench.check_run("demo-commands", "tiny-whisper", "lora", {}, {**STEPS, "gpus": 2})
    assert any("2 CPU processes (gloo" in warning for warning in plan["warnings"])


def test_the_command_line_queues_a_multi_gpu_run_and_names_each_other_machines_command(demo_home, capsys):
    from engine.cli import main

    base = ["train", "--dataset", "demo-commands", "--model", "tiny-whisper", "--method", "lora"]
    assert main([*base, "--gpus", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["settings"]["training"]["gpus"] == 2
    assert main([*base, "--gpus", "2", "--nnodes", "2"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: nnodes=2 needs rdzv_endpoint: the host:port of the first machine, where the "
        "machines meet (docs/multi-gpu.md)")
    assert main([*base, "--gpus", "2", "--nnodes", "3", "--rdzv-endpoint", "node0:29500", "--json"]) == 0
    printed = capsys.readouterr()
    run = json.loads(printed.out)
    assert {k: run["settings"]["training"][k] for k in ("gpus", "nnodes", "rdzv_endpoint")} == {
        "gpus": 2, "nnodes": 3, "rdzv_endpoint": "node0:29500"}
    spec = demo_home / "runs" / str(run["id"]) / "distributed" / "launch.json"
    assert (f"run (K = 1 .. 2): python -m torch.distributed.run --nproc-per-node 2 --nnodes 3 "
            f"--node-rank K --rdzv-endpoint node0:29500 -m engine.training.rank {spec}") in printed.err


def test_rank_0_stops_when_the_process_that_launched_the_run_is_gone():
    import os
    import subprocess

    from engine.training.rank import parent_gone

    gone = subprocess.Popen(["true"])
    gone.wait()
    assert not parent_gone(os.getpid()) and not parent_gone(None)
    assert parent_gone(gone.pid)  # its run is then found interrupted by the heartbeat rules
