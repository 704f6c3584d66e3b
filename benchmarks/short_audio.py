"""Benchmark: Whisper padded to 30 s (its whole window) against padded to the batch's longest clip.

    .venv/bin/python benchmarks/short_audio.py [--task audio-classification|asr] [--method full]
        [--steps 300] [--batch-size 8] [--learning-rate 3e-3] [--json out.json]

About 50 s for demo-commands at 300 steps, 40 s for demo-speech at 150, on 2 CPU cores
(figures and commands: docs/benchmarks.md, "Short audio").

Trains the tiny-whisper preset on a demo set (demo-commands: 10 spoken words, 0.4-0.9 s clips;
demo-speech: short sentences, 0.9-2.4 s) once per ``audio_padding``, same seed and settings,
through the engine's recipe (what the worker runs), in a fresh data home. Prints one row per
padding: training samples/s (optimizer steps after the first two, with everything a step
does: decoding, log-mel, collate, forward, backward, AdamW, logging), the model step alone
(forward, backward and AdamW on batches encoded beforehand), the final validation metric
(accuracy, or WER for speech), the run's wall time (setup, training, final evaluation) and
the speed-ups over 30 s padding.

tiny-whisper is UNTRAINED (random weights, 5 s window): the metrics show that both paddings
train, not how a pretrained Whisper would fare with a shorter context.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATASETS = {"audio-classification": "demo-commands", "asr": "demo-speech"}
WARMUP_STEPS = 2


def train_once(workbench, dataset: str, method: str, padding: str, args) -> dict:
    training = {"max_steps": args.steps, "per_device_train_batch_size": args.batch_size,
                "per_device_eval_batch_size": 32, "learning_rate": args.learning_rate,
                "eval_steps": 0, "save_steps": 0, "seed": args.seed,
                "generation_max_length": 16, "audio_padding": padding}
    from engine.training.recipe import FineTuneRecipe

    run_id = workbench.submit_run(dataset, "tiny-whisper", method, {}, training)
    run = workbench.storage.claim_next_run("benchmark", run_id=run_id)
    started = time.perf_counter()
    recipe = FineTuneRecipe(workbench.storage, run, should_stop=lambda: False)
    recipe.setup()
    status = recipe.train()
    wall = time.perf_counter() - started
    if status != "completed":
        raise SystemExit(f"{padding}: run ended {status}")
    rates = [m["value"] for m in workbench.run_metrics(run_id, ["train/samples_per_s"])]
    train_items = len(workbench.storage.dataset_items(workbench.get_dataset(dataset)["id"], "train"))
    sizes = batch_sizes(train_items, args.batch_size, len(rates))
    timed = list(zip(sizes, rates))[WARMUP_STEPS:]
    # Total samples over total time (a mean of per-step rates would overweight fast steps).
    samples_per_s = sum(size for size, _ in timed) / sum(size / rate for size, rate in timed)
    metrics = workbench.get_run(run_id)["metrics"] or {}
    metric = "wer" if args.task == "asr" else "accuracy"
    return {"padding": padding, "run_id": run_id, "steps": len(rates), "samples_per_s": samples_per_s,
            "model_samples_per_s": model_step_rate(recipe), "mean_frames": mean_frames(recipe),
            "metric": metric, "value": metrics.get(metric), "wall_s": wall,
            "final_loss": workbench.run_metrics(run_id, ["train/loss"])[-1]["value"]}


def model_step_rate(recipe, steps: int = 15) -> float:
    """Samples/s of forward, backward and AdamW alone, on the first ``steps`` batches of an
    epoch, decoded and collated beforehand (after one warm-up step)."""
    batches = [recipe.task_model.collate([recipe.train_data[i] for i in indices])
               for indices in recipe.epoch_batches(0)[:steps + 1]]
    recipe.model.train()
    for index, batch in enumerate(batches):
        if index == 1:
            started = time.perf_counter()
        with recipe.trainer.autocast():
            loss = recipe.model(**{k: v.to(recipe.device) for k, v in batch.items()}).loss
        loss.backward()
        recipe.optimizer.step()
        recipe.optimizer.zero_grad(set_to_none=True)
    return sum(len(batch["labels"]) for batch in batches[1:]) / (time.perf_counter() - started)


def mean_frames(recipe) -> float:
    """Log-mel frames the encoder saw per batch, averaged over an epoch."""
    frames = [recipe.task_model.collate([recipe.train_data[i] for i in indices])["input_features"].shape[-1]
              for indices in recipe.epoch_batches(0)]
    return sum(frames) / len(frames)


def batch_sizes(train_items: int, batch_size: int, steps: int) -> list[int]:
    """Examples in each optimizer step: full batches, and the smaller last one of each epoch."""
    per_epoch = [min(batch_size, train_items - start) for start in range(0, train_items, batch_size)]
    return [per_epoch[step % len(per_epoch)] for step in range(steps)]


def machine() -> dict:
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "load_average_1_5_15_min": os.getloadavg()}


def print_table(rows: list[dict]) -> None:
    base = next((r for r in rows if r["padding"] == "30s"), rows[0])
    print(f"{'padding':<9} {'frames':>6} {'steps':>5} {'samples/s':>10} {'speed-up':>8} "
          f"{'model step/s':>12} {'speed-up':>8} {rows[0]['metric']:>9} {'last loss':>9} {'wall s':>7}")
    for row in rows:
        value = "–" if row["value"] is None else f"{row['value']:.3f}"
        print(f"{row['padding']:<9} {row['mean_frames']:>6.0f} {row['steps']:>5} "
              f"{row['samples_per_s']:>10.1f} {row['samples_per_s'] / base['samples_per_s']:>7.2f}x "
              f"{row['model_samples_per_s']:>12.1f} "
              f"{row['model_samples_per_s'] / base['model_samples_per_s']:>7.2f}x "
              f"{value:>9} {row['final_loss']:>9.3f} {row['wall_s']:>7.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(DATASETS), default="audio-classification")
    parser.add_argument("--method", default="full")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--paddings", default="30s,longest")
    parser.add_argument("--json", type=Path, help="write the rows and the machine here")
    args = parser.parse_args()

    from engine import Workbench
    from engine.models.whisper import quiet_transformers

    quiet_transformers()
    load_before = os.getloadavg()  # other jobs on a shared machine move every figure here
    with tempfile.TemporaryDirectory() as home:
        workbench = Workbench(Path(home))
        workbench.install_demo()
        dataset = DATASETS[args.task]
        rows = [train_once(workbench, dataset, args.method, padding, args)
                for padding in args.paddings.split(",")]
        workbench.shutdown()
        workbench.storage.close()
    print(f"tiny-whisper (untrained), {args.method}, {dataset}, batch {args.batch_size}, "
          f"lr {args.learning_rate:g}, seed {args.seed}; load average before / after: "
          f"{load_before[0]:.2f} / {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "machine": machine(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
