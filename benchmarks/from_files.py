"""Training speed end to end from audio files: ``python -m engine train`` on a real audio set.

The speed table in docs/benchmarks.md feeds pre-made log-mel tensors; a real run decodes audio
files and extracts features too. This benchmark makes an audio set of ``--clips`` clips of
1-10 s (the demo voices' recordings, 1-4 joined with short pauses, transcripts joined alike),
imports it, and trains a random-weight Whisper of a real size on it through the command line
in a fresh process per variant, two epochs each:

  cpu-eager     features on the CPU, built when the step needs them (the engine before this)
  cpu-prefetch  features on the CPU, built ahead on a thread (``prefetch_batches=2``)
  gpu-prefetch  features per batch on the GPU (``feature_device=auto``), built ahead
  gpu-workers   the same, audio decoded and tokenised in ``--workers`` DataLoader worker
                processes (``dataloader_num_workers``): no interpreter lock shared with the step
  cpu-workers   features on the CPU too, extracted in the worker processes

Epoch 1 must decode and extract everything; in epoch 2 the feature cache holds every item, so
epoch 2 of ``cpu-prefetch`` is the model-step throughput the data path should keep up with.
Reported per variant: samples/s and audio hours per hour in each epoch (from the run's own
step clock, steps after the first ``--skip`` left out: compiling and graph capture), the whole
run's wall time, and the peak accelerator memory.

    python -m benchmarks.from_files --model whisper-small --clips 2000 --json out.json
    python -m benchmarks.from_files --model whisper-large-v3 --clips 1000 \
        --variants gpu-prefetch,gpu-workers --set gradient_checkpointing=true --json out.json

``--set KEY=VALUE`` adds a run setting to every variant (e.g. checkpointing, as goal 1's
large-v3 measurement trains).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VOICES = ROOT / "assets" / "demo" / "demo-voices"
VARIANTS = {
    "cpu-eager": {"feature_device": "cpu", "prefetch_batches": 0},
    "cpu-prefetch": {"feature_device": "cpu", "prefetch_batches": 2},
    "gpu-prefetch": {"feature_device": "auto", "prefetch_batches": 2},
    "gpu-workers": {"feature_device": "auto", "prefetch_batches": 2, "dataloader_num_workers": None},
    "cpu-workers": {"feature_device": "cpu", "prefetch_batches": 2, "dataloader_num_workers": None},
}
DEFAULT_VARIANTS = "cpu-eager,cpu-prefetch,gpu-prefetch"

def make_audio_set(target: Path, clips: int, seed: int = 0, validation: int = 16, test: int = 16) -> Path:
    """An audiofolder (train / validation / test with metadata.csv) of ``clips`` training clips
    of 1-10 s made from the demo voices, ``validation`` and ``test`` clips in the other splits
    (made alike: every split draws on all the demo's recordings, so the held-out splits score
    speed, not generalisation)."""
    import soundfile

    if (target / "train" / "metadata.csv").exists():
        return target
    sources = []
    for split in ("train", "validation", "test"):
        with open(VOICES / split / "metadata.csv", newline="") as handle:
            for row in csv.DictReader(handle):
                audio, rate = soundfile.read(VOICES / split / row["file_name"], dtype="float32")
                sources.append((audio, row["transcription"]))
    assert rate == 16_000
    pause = np.zeros(int(0.15 * rate), dtype=np.float32)
    rng = random.Random(seed)
    for split, count in (("train", clips), ("validation", validation), ("test", test)):
        folder = target / split
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for index in range(count):
            parts, seconds = [], 0.0
            goal = rng.uniform(1.0, 10.0)
            while not parts or seconds < goal:
                audio, text = rng.choice(sources)
                if parts and seconds + len(audio) / rate > 10.0:
                    break
                parts.append((audio, text))
                seconds += len(audio) / rate + 0.15
            # a lead-in of its own length: no two clips are the same recording (the import
            # would drop repeats as duplicates)
            lead = np.zeros(int(rng.uniform(0.0, 0.3) * rate) + index % 97, dtype=np.float32)
            audio = np.concatenate([lead] + [piece for a, _ in parts for piece in (a, pause)])[:10 * rate]
            name = f"{index:05d}.flac"
            soundfile.write(folder / name, audio, rate)
            rows.append({"file_name": name, "transcription": " ".join(t for _, t in parts)})
        with open(folder / "metadata.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["file_name", "transcription"])
            writer.writeheader()
            writer.writerows(rows)
    return target


def engine(*args: str, env: dict) -> dict:
    result = subprocess.run([sys.executable, "-m", "engine", *args, "--json"], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"engine {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return json.loads(result.stdout)


def epoch_rates(storage, run_id: int, steps_per_epoch: int, batch: int, seconds_per_item: float,
                skip: int) -> list[dict]:
    walls = {row["step"]: row["wall_time"] for row in storage.metrics(run_id, ["train/loss"])}
    epochs = []
    for epoch in range(max(walls) // steps_per_epoch):
        first, last = epoch * steps_per_epoch + (skip if epoch == 0 else 0), (epoch + 1) * steps_per_epoch
        if first not in walls or last not in walls or last <= first:
            continue
        elapsed = walls[last] - walls[first]
        samples = (last - first) * batch
        epochs.append({"epoch": epoch + 1, "steps": last - first, "seconds": round(elapsed, 2),
                       "samples_per_s": round(samples / elapsed, 1),
                       "audio_hours_per_hour": round(samples * seconds_per_item / elapsed, 1)})
    return epochs


def first_epoch_detail(storage, run_id: int, steps_per_epoch: int) -> dict:
    """Where the first epoch's time went: each step's seconds (from the run's step clock) and
    the run's messages about CUDA graphs (each new batch shape is captured after eager steps)."""
    walls = {row["step"]: row["wall_time"] for row in storage.metrics(run_id, ["train/loss"])}
    steps = [round(walls[s] - walls[s - 1], 3) for s in range(2, steps_per_epoch + 1) if s in walls and s - 1 in walls]
    graphs = [e["message"][:160] for e in storage.events(run_id, limit=500) if "CUDA graph" in e["message"]]
    return {"epoch1_step_s": steps, "graph_messages": graphs}


def features_check(storage, dataset: dict, home: Path, device: str) -> dict:
    """The largest difference between per-batch GPU features and per-item CPU features on 16
    training clips, and the time each takes."""
    import torch

    from engine.models import task_model_for

    model = storage.list_models()[0]
    task = task_model_for("whisper", "asr", home / model["path"], None, audio_padding="30s")
    items, folder = storage.dataset_items(dataset["id"], split="train")[:16], home / dataset["path"]
    began = time.perf_counter()
    cpu = task.collate([task.encode(item, folder) for item in items])["input_features"]
    cpu_s = time.perf_counter() - began
    task.extract_features_on(device)
    encoded = [task.encode(item, folder) for item in items]
    task.collate(encoded)  # warm-up (cuFFT plans)
    torch.cuda.synchronize()
    began = time.perf_counter()
    gpu = task.collate(encoded)["input_features"]
    gpu_s = time.perf_counter() - began
    return {"max_abs_diff": float((gpu - cpu).abs().max()), "cpu_decode_and_features_s": round(cpu_s, 3),
            "gpu_features_s": round(gpu_s, 4), "clips": len(items)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="whisper-small", help="a size benchmarks.train_speed knows")
    parser.add_argument("--clips", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--skip", type=int, default=10, help="first steps left out (compile, capture)")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--workers", type=int, default=8, help="worker processes of the *-workers variants")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a run setting for every variant (repeatable)")
    parser.add_argument("--home", type=Path, default=Path("/tmp/lim-from-files"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    extra = dict(item.split("=", 1) for item in args.set if "=" in item)
    if len(extra) != len(args.set):
        parser.error("--set takes KEY=VALUE")

    import torch

    from benchmarks.train_speed import prepare_model
    from storage import Storage

    device = "cuda" if torch.cuda.is_available() else "cpu"
    env = {**os.environ, "LIM_HOME": str(args.home / "home"), "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    audio = make_audio_set(args.home / "audio", args.clips)
    made_s = time.perf_counter() - started
    if not (args.home / "home").exists():
        engine("datasets", "import", str(audio), "--name", "from-files", "--task", "asr",
               "--splits", "keep", env=env)
        engine("models", "register", str(prepare_model(args.model, args.home / "models", device)),
               "--name", args.model, env=env)
    storage = Storage(args.home / "home")
    dataset = storage.find_dataset("from-files")
    items = storage.dataset_items(dataset["id"], split="train")
    seconds_per_item = sum(item["duration_s"] for item in items) / len(items)
    steps_per_epoch = -(-len(items) // args.batch)  # the last batch may be partial
    rows = []
    check = features_check(storage, dataset, args.home / "home", device) if device == "cuda" else None
    for variant in args.variants.split(","):
        sets = {"per_device_train_batch_size": args.batch, "max_steps": steps_per_epoch * args.epochs,
                "eval_steps": 0, "save_steps": 0, "audio_padding": "30s", "generation_max_length": 8,
                "per_device_eval_batch_size": 16, "r": 32, "lora_alpha": 64, **extra,
                **{key: args.workers if value is None else value for key, value in VARIANTS[variant].items()}}
        flags = [flag for key, value in sets.items() for flag in ("--set", f"{key}={value}")]
        began = time.perf_counter()
        summary = engine("train", "--dataset", "from-files", "--model", args.model, "--method", "qlora",
                         *flags, "--wait", env=env)
        wall = time.perf_counter() - began
        run_id = summary["id"]
        row = {"variant": variant, "run": run_id, "status": summary["status"], "process_wall_s": round(wall, 1),
               "train_wall_s": round(summary["wall_time_s"] or 0, 1),
               "peak_memory_gib": round((summary["peak_memory_mb"] or 0) / 1024, 2),
               "epochs": epoch_rates(storage, run_id, steps_per_epoch, args.batch, seconds_per_item, args.skip),
               **first_epoch_detail(storage, run_id, steps_per_epoch)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"model": args.model, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "clips": len(items), "mean_clip_s": round(seconds_per_item, 2), "batch": args.batch,
              "steps_per_epoch": steps_per_epoch, "audio_set_made_s": round(made_s, 1),
              "cpu_count": os.cpu_count(), "settings": extra, "workers": args.workers,
              "gpu_features_vs_cpu": check, "variants": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(format_table(result))
    return 0


def format_table(result: dict) -> str:
    lines = [f"{result['model']} QLoRA, batch {result['batch']}, 30 s windows, {result['clips']} clips "
             f"(mean {result['mean_clip_s']} s), {result['device']}",
             "| variant | epoch 1 samples/s (audio h/h) | epoch 2 samples/s (audio h/h) | run wall s |",
             "|---|---|---|---|"]
    for row in result["variants"]:
        cells = [f"{e['samples_per_s']} ({e['audio_hours_per_hour']})" for e in row["epochs"]]
        cells += ["-"] * (2 - len(cells))
        lines.append(f"| {row['variant']} | {cells[0]} | {cells[1]} | {row['process_wall_s']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
