"""Multi-GPU scaling and loss parity, and multi-GPU runs through the command line (issue 19).

Throughput: whisper-small and whisper-large-v3 QLoRA with random weights of the real configs,
30 s windows, batch 16 per GPU, timed on 1 GPU and on 2 GPUs; each measurement is a torchrun
child whose ranks build the model with the engine's ``build_method_model``, train with its
``TrainStep`` and average gradients with the run's ``DataParallel`` (the objects a run uses;
``benchmarks.speed_engine.run_engine`` drives them, as the speed benchmark's engine side). Scaling efficiency = samples/s on 2 GPUs ÷
(2 × samples/s on 1 GPU). Peak memory is ``torch.cuda.max_memory_allocated`` per GPU.

Loss parity: the same global batches of 32 on 1 GPU (batch 32) and on 2 GPUs (16 each); the
per-step losses are compared (bf16 compute: agreement to ~1e-2, not bit for bit).

Command line (``--cli``): in a fresh data home, the demo configuration (engine.demo.DEMO_RUN)
and whisper-small QLoRA (random weights, registered from a folder) train with ``--gpus 2
--wait``; each is stopped from a second command line after a few steps (``runs stop``),
resumed (``runs resume --wait``) and must complete with its metrics in the database.

    python -m benchmarks.multi_gpu --json benchmarks/results-multi-gpu.json --cli

Needs 2 CUDA GPUs; writes every number to ``--json`` and prints a table last.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks.speed_cases import Case
from benchmarks.speed_engine import run_engine
from benchmarks.speed_report import versions
from benchmarks.train_speed import ROOT, make_batches, prepare_model

MODELS = ("whisper-small", "whisper-large-v3")


# --------------------------------------------------------------------------- one rank
def rank_child(payload: dict) -> None:
    """One rank of a measurement (under torchrun): train, then rank 0 writes the result."""
    import torch
    from transformers import WhisperConfig

    from engine.training.parallel import DataParallel

    parallel = DataParallel.from_environment()
    world = parallel.world_size if parallel else 1
    rank = parallel.rank if parallel else 0
    device = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a smoke test (--smoke)
    if not parallel and device == "cuda":
        torch.cuda.set_device(0)
    case = Case(**{**payload["case"], "sides": ("engine",)})
    model_dir = Path(payload["model_dir"])
    config = WhisperConfig.from_pretrained(model_dir)
    window = config.max_source_positions * 2
    total_steps = case.warmup + case.steps
    # The run's global batches (world × the per-GPU batch), each rank training on its rows.
    whole = make_batches(case.with_training(per_device_train_batch_size=case.batch * world), config,
                         min(total_steps, 4), window)
    mine = [{**b, "input_features": b["input_features"][rank::world], "labels": b["labels"][rank::world],
             "frames": b["frames"][rank::world]} for b in whole]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result = run_engine(case, model_dir, mine, total_steps, device, window, parallel=parallel)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30
    peaks = parallel.gather_json(peak) if parallel else [peak]
    if rank == 0:
        result.update(world_size=world, per_gpu_batch=case.batch, peak_gib_per_gpu=peaks,
                      samples_per_s=case.batch * world * case.steps / result["train_s"],
                      device=torch.cuda.get_device_name(0) if device == "cuda" else "cpu")
        Path(payload["out"]).write_text(json.dumps(result))
    if parallel:
        parallel.close()


def measure(case: Case, model_dir: Path, gpus: int, folder: Path, timeout: float) -> dict:
    out = folder / f"{case.model}-{gpus}gpu-b{case.batch}.json"
    payload = json.dumps({"case": asdict(case), "model_dir": str(model_dir), "out": str(out)})
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
               "--nproc-per-node", str(gpus), "-m", "benchmarks.multi_gpu", "--rank-child", payload]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if not out.is_file():
        log = out.with_suffix(".log")
        log.write_text(done.stdout + done.stderr)
        # the ranks' own error lines, not torchrun's summary of them
        errors = [line for line in done.stderr.splitlines() if "Error" in line or "error:" in line]
        return {"error": " | ".join(errors[:4])[-1500:] + f" (whole output: {log})"}
    return json.loads(out.read_text())


def throughput(models, steps: int, warmup: int, checkpoint: str, timeout: float, batch: int = 16,
               device: str = "cuda") -> dict:
    cache = Path(tempfile.mkdtemp(prefix="lim-multi-gpu-"))
    results = {}
    for name in models:
        model_dir = prepare_model(name, cache, device)
        case = Case(name, "qlora", steps=steps, warmup=warmup, sides=("engine",),
                    training={"per_device_train_batch_size": batch,
                              "gradient_checkpointing": checkpoint == "all"},
                    method_settings={"lora_dropout": 0.0})
        one = measure(case, model_dir, 1, cache, timeout)
        two = measure(case, model_dir, 2, cache, timeout)
        big = measure(case.with_training(per_device_train_batch_size=2 * batch), model_dir, 1, cache, timeout)  # loss parity with `two`
        entry = {"one_gpu_b16": one, "two_gpus_b16": two, "one_gpu_b32": big}
        if "error" not in one and "error" not in two:
            entry["scaling_efficiency"] = two["samples_per_s"] / (2 * one["samples_per_s"])
        if "error" not in two and "error" not in big:
            pairs = list(zip(two["losses"], big["losses"]))
            entry["loss_parity"] = {
                "two_gpus_x16": two["losses"], "one_gpu_x32": big["losses"],
                "max_abs_diff": max(abs(a - b) for a, b in pairs),
                "max_rel_diff": max(abs(a - b) / max(abs(b), 1e-12) for a, b in pairs)}
        results[name] = entry
        print(f"[{name}] " + json.dumps({k: v for k, v in entry.items() if k in ("scaling_efficiency",)})
              + "".join(f"\n    {key}: " + (value.get("error") or
                                               f"{value['samples_per_s']:.2f} samples/s, peak "
                                               f"{', '.join(f'{p:.2f}' for p in value['peak_gib_per_gpu'])} GiB")
                        for key, value in entry.items() if isinstance(value, dict) and key != "loss_parity"),
              flush=True)
    return results


# --------------------------------------------------------------------------- command line runs
def progress(message: str) -> None:
    """A phase of the command-line runs, with the time, as it happens: a run cut by a time
    limit still shows how far it got."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def cli(home: Path, *args: str, timeout: float = 3600) -> subprocess.CompletedProcess:
    env = {**os.environ, "LIM_HOME": str(home), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def stop_and_resume(home: Path, train_args: list[str], stop_after: int, timeout: float) -> dict:
    """``train --gpus 2 --wait`` in one process, ``runs stop`` from another after
    ``stop_after`` steps, then ``runs resume --wait``; what the database holds after each."""
    from engine import Workbench

    env = {**os.environ, "LIM_HOME": str(home), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    started = time.perf_counter()
    progress(f"train {' '.join(train_args)} --gpus 2: starting")
    trainer = subprocess.Popen([sys.executable, "-m", "engine", "train", *train_args, "--gpus", "2",
                                "--wait", "--json"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    workbench = Workbench(home)  # reads only: no worker thread of its own
    report: dict = {"command": "python -m engine train " + " ".join(train_args) + " --gpus 2 --wait"}
    run_id = None
    deadline = time.time() + timeout
    while trainer.poll() is None and time.time() < deadline:
        runs = workbench.list_runs()
        if runs and runs[0]["status"] == "running" and (runs[0]["step"] or 0) >= stop_after:
            run_id = runs[0]["id"]
            report["stop"] = cli(home, "runs", "stop", str(run_id)).stdout.strip()
            progress(f"run {run_id}: stop sent at step {runs[0]['step']}")
            break
        time.sleep(1)
    out, err = trainer.communicate(timeout=timeout)
    run_id = run_id or (workbench.list_runs() or [{}])[0].get("id")
    if run_id is None:
        return {**report, "error": err.strip().splitlines()[-3:]}
    first = workbench.run_summary(run_id)
    report["after_stop"] = {"status": first["status"], "step": first["step"], "exit_code": trainer.returncode}
    progress(f"run {run_id}: {first['status']} at step {first['step']} (exit {trainer.returncode}); resuming")
    resumed = cli(home, "runs", "resume", str(run_id), "--wait", "--json", timeout=timeout)
    summary = workbench.run_summary(run_id)
    progress(f"run {run_id}: {summary['status']} at step {summary['step']} of {summary['total_steps']}")
    losses = [row["step"] for row in workbench.run_metrics(run_id, ["train/loss"])]
    report.update(
        run_id=run_id, resume_exit_code=resumed.returncode, status=summary["status"],
        step=summary["step"], total_steps=summary["total_steps"], metrics=summary["metrics"],
        peak_memory_mb=summary["peak_memory_mb"], error=summary["error"],
        loss_steps_logged=len(losses), loss_steps_unique=len(set(losses)),
        samples_per_s_mean=workbench.storage.metric_means(run_id, ["train/samples_per_s"]).get(
            "train/samples_per_s"),
        events=[e["message"] for e in workbench.run_events(run_id)][-12:],
        wall_s=time.perf_counter() - started)
    workbench.shutdown()
    return report


def command_line_runs(timeout: float, steps: int = 300, which: tuple = ("demo", "small")) -> dict:
    from engine.demo import DEMO_RUN

    home = Path(tempfile.mkdtemp(prefix="lim-multi-gpu-home-"))
    progress(f"installing the demo in {home}")
    done = cli(home, "demo", "--json")
    if done.returncode:
        return {"error": done.stderr.strip()}
    results = {}
    demo = ["--dataset", DEMO_RUN["dataset"], "--model", DEMO_RUN["model"], "--method", DEMO_RUN["method"]]
    for key, value in {**DEMO_RUN["method_settings"], **DEMO_RUN["training"]}.items():
        demo += ["--set", f"{key}={value}"]
    models = json.loads(cli(home, "models", "list", "--json").stdout or "[]")
    if "demo" in which and DEMO_RUN["model"] in {m["name"] for m in models}:
        results["demo_config"] = stop_and_resume(home, demo, stop_after=10, timeout=timeout)
    elif "demo" in which:
        results["demo_config"] = {"error": f"{DEMO_RUN['model']} is not installed here (the demo "
                                           "registers it from its Python package)"}
    if "small" not in which:
        results["data_home"] = str(home)
        return results
    small = prepare_model("whisper-small", home / "random-weights", "cuda")
    registered = cli(home, "models", "register", str(small), "--name", "whisper-small-random")
    if registered.returncode:
        results["whisper_small"] = {"error": registered.stderr.strip()}
    else:
        results["whisper_small"] = stop_and_resume(home, [
            "--dataset", "demo-voices", "--model", "whisper-small-random", "--method", "qlora",
            "--set", f"max_steps={steps}", "--set", "per_device_train_batch_size=16", "--set", "eval_steps=0",
            "--set", "save_steps=0", "--set", "generation_max_length=32"], stop_after=10, timeout=timeout)
    results["data_home"] = str(home)
    return results


# --------------------------------------------------------------------------- table
def format_table(results: dict) -> str:
    lines = ["| model | GPUs × batch | samples/s | peak GiB per GPU | scaling efficiency |",
             "|---|---|---|---|---|"]
    for name, entry in results.items():
        for key in ("one_gpu_b16", "two_gpus_b16", "one_gpu_b32"):
            value = entry[key]
            if "error" in value:
                lines.append(f"| {name} | {key} | failed: {value['error'][:300]} | | |")
                continue
            label = f"{value['world_size']} × {value['per_gpu_batch']}"
            efficiency = entry.get("scaling_efficiency") if key == "two_gpus_b16" else None
            lines.append(f"| {name} | {label} | {value['samples_per_s']:.1f} | "
                         + ", ".join(f"{p:.2f}" for p in value["peak_gib_per_gpu"])
                         + f" | {'' if efficiency is None else f'{100 * efficiency:.1f} %'} |")
        parity = entry.get("loss_parity")
        if parity:
            lines.append(f"| {name} | loss, 2 GPUs vs 1 at the same global batch | max |Δ| {parity['max_abs_diff']:.2e} "
                         f"(relative {parity['max_rel_diff']:.2e}) over {len(parity['one_gpu_x32'])} steps | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write every number here (required)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=4, help="untimed steps first (compile, graphs)")
    parser.add_argument("--checkpoint", choices=["all", "none"], default="all",
                        help="all: gradient_checkpointing=true, every layer (train_speed's default); "
                        "none: gradient_checkpointing=false")
    parser.add_argument("--cli", action="store_true", help="also the command-line runs with stop + resume")
    parser.add_argument("--cli-steps", type=int, default=300, help="steps of the whisper-small command-line "
                        "run (a stop is sent after step 10: the run must outlast the polling); the "
                        "demo configuration keeps its own 49 steps, whose evaluations slow it enough")
    parser.add_argument("--cli-runs", help="which command-line runs: demo, small (default: both; "
                        "with --cli-cpu, demo)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per measurement / run")
    parser.add_argument("--cli-cpu", action="store_true", help="the command-line runs alone, as CPU "
                        "processes (gloo) when no 2 GPUs are there: checks the path end to end, "
                        "measures nothing about GPUs (the demo configuration: ~10 min on 2 cores)")
    parser.add_argument("--smoke", action="store_true", help="tiny-whisper, batch 2, 2 steps on CPU "
                        "processes (gloo): checks this script, measures nothing")
    parser.add_argument("--rank-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rank_child:
        rank_child(json.loads(args.rank_child))
        return 0
    if args.json is None:
        parser.error("--json PATH is required: the results are written there")

    import torch

    if args.smoke:
        results = throughput(["tiny-whisper"], 2, 1, args.checkpoint, args.timeout, batch=2, device="cpu")
        args.json.write_text(json.dumps({"smoke": True, "throughput": results}, indent=2))
        print(format_table(results))
        return 1 if any("error" in v for e in results.values() for v in e.values() if isinstance(v, dict)) else 0
    if args.cli_cpu:
        if "small" in (args.cli_runs or "demo").split(","):
            parser.error("--cli-cpu runs the demo configuration only (--cli-runs demo): whisper-small "
                         "at batch 16 would take hours on CPU processes")
        runs = command_line_runs(args.timeout, args.cli_steps, ("demo",))
        args.json.write_text(json.dumps({"versions": versions(), "device": "cpu", "processes": 2,
                                         "command_line": runs}, indent=2, default=str))
        demo = runs.get("demo_config") or {}
        print("demo_config: " + json.dumps({k: demo.get(k) for k in ("status", "after_stop", "step", "total_steps",
                                                                     "loss_steps_logged", "metrics", "error")}))
        return 0 if demo.get("status") == "completed" else 1
    if torch.cuda.device_count() < 2:
        print("needs 2 CUDA GPUs; skipped (--smoke runs the script on CPU processes, --cli-cpu its "
              "command-line runs)")
        return 0
    output = {"versions": versions(), "device": torch.cuda.get_device_name(0),
              "gpus": torch.cuda.device_count(), "steps": args.steps, "warmup": args.warmup,
              "checkpoint": args.checkpoint, "command": " ".join(["python -m benchmarks.multi_gpu", *sys.argv[1:]])}
    output["throughput"] = throughput([m for m in args.models.split(",") if m], args.steps, args.warmup,
                                      args.checkpoint, args.timeout)
    args.json.write_text(json.dumps(output, indent=2))
    if args.cli:
        output["command_line"] = command_line_runs(args.timeout, args.cli_steps, tuple((args.cli_runs or "demo,small").split(",")))
        args.json.write_text(json.dumps(output, indent=2))
    print()
    print(f"device: {output['device']} × {output['gpus']}; " +
          ", ".join(f"{k} {v}" for k, v in output["versions"].items()))
    print(format_table(output["throughput"]))
    for name, run in (output.get("command_line") or {}).items():
        if isinstance(run, dict):
            print(f"{name}: " + json.dumps({k: run.get(k) for k in ("status", "after_stop", "step", "total_steps",
                                                                     "loss_steps_logged", "error")}))
    failed = any("error" in v for e in output["throughput"].values() for v in e.values() if isinstance(v, dict))
    failed |= any(isinstance(r, dict) and (r.get("error") or r.get("status") != "completed")
                  for r in (output.get("command_line") or {}).values() if isinstance(r, dict))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
