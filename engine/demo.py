"""The embedded demo: datasets shipped in assets/demo and model presets built from configs.

``Workbench.install_demo`` adds them (idempotent: what is already there is left alone, what is
missing is added); demo items are shared read-only with every user. This module holds what
the demo is: the datasets, the presenter's run and its measured result.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.names import LONGEST


DEMO_ASSETS = Path(__file__).resolve().parents[1] / "assets" / "demo"
# The time-to-quality benchmark's committed result (benchmarks/time_to_quality.py) that Home
# and the README quote; measured, never typed in.
DEMO_MEASUREMENT = (Path(__file__).resolve().parents[1] / "benchmarks" / "results"
                    / "time-to-quality-cpu.json")

DEMO_DATASETS = {
    "demo-speech": ("asr", "Short spoken sentences with transcripts (synthetic, espeak-ng)."),
    "demo-commands": ("audio-classification", "Ten spoken command words (synthetic, espeak-ng)."),
    "demo-text": ("text-classification", "Short sentences labelled positive or negative."),
    "demo-voices": ("asr", "Open sentences in accented synthetic voices over noise, with a "
                           "held-out test split (espeak-ng): the real whisper-base gets about "
                           "half the words wrong before fine-tuning."),
}


def packaged_description(found: dict) -> str:
    if found.get("format") == "ctranslate2":
        return (f"OpenAI's pretrained {found['name']}, shipped as a CTranslate2 model "
                f"({found['dtype']}, {found['parts']} parts) by the Python package "
                f"{found['package']} and converted to transformers when registered.")
    return f"Pretrained {found['model_type']} shipped by the Python package {found['package']}."


# The presenter's run: real whisper-base on demo-voices, QLoRA on the clips' own seconds.
# Home and the README show what it measured (benchmarks/time_to_quality.py); Home starts it.
DEMO_RUN = {
    "dataset": "demo-voices", "model": "whisper-base", "method": "qlora",
    "method_settings": {"r": 32, "lora_alpha": 64},
    # The engine side of benchmarks/time_to_quality.py (docs/benchmarks.md): 96 short-window
    # steps with every 16th batch on the whole 30 s window reach the recipe's final WER in
    # about a seventh of its time and end far below it under standard 30 s inference.
    "training": {"max_steps": 96, "learning_rate": 1e-3, "warmup_steps": 5,
                 "per_device_train_batch_size": 8, "audio_padding": LONGEST,
                 "full_window_every": 16, "language": "en", "task": "transcribe",
                 "eval_steps": 32, "save_steps": 32,
                 "eval_on_start": True},  # the validation curve starts at the zero-shot score
}


def demo_story(ready: bool, here: dict | None = None) -> dict:
    """What Home shows: can the demo run start (``ready``: its dataset and real model are
    there), and the measured zero-shot and fine-tuned WER with the training minutes and the
    machine they were measured on, when the benchmark's result is there; ``here``: what to
    expect on this machine (``Workbench.demo_story``)."""
    story = {"ready": ready, "run": DEMO_RUN, "measured": None, "here": here}
    try:
        result = json.loads(DEMO_MEASUREMENT.read_text())
    except (OSError, ValueError):
        return story
    engine = result.get("sides", {}).get("engine-qlora")
    if engine:
        story["measured"] = {
            "zero_shot_wer": result["zero_shot"]["wer"], "wer": engine[-1]["wer"],
            "minutes": engine[-1]["wall_s"] / 60, "steps": engine[-1]["step"],
            "threads": result["machine"]["threads"], "test_clips": result["test_clips"],
            "machine": result["machine"],  # cores, threads, cpu, torch of the measuring machine
            "recipe_wer": result.get("recipe_final_wer"),
            "recipe_minutes": (result["sides"]["recipe-qlora"][-1]["wall_s"] / 60
                               if "recipe-qlora" in result.get("sides", {}) else None),
            "examples": engine[-1].get("examples", []),
            "zero_shot_examples": result["zero_shot"].get("examples", []),
        }
    return story
