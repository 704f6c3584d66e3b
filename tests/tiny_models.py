"""A tiny Whisper folder and the QLoRA model a run builds on it (the fast path and the memory
planner tests share them)."""

from __future__ import annotations

import pytest
import torch

from benchmarks import train_speed


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory):
    return train_speed.prepare_model("tiny-whisper", tmp_path_factory.mktemp("bench"), "cpu")


def tiny_qlora_model(model_dir):
    from engine import settings as settings_lib
    from engine.methods import get_method
    from engine.methods.build import build_method_model
    from engine.models.whisper import WhisperSpeechRecognition

    task_model = WhisperSpeechRecognition(model_dir)
    method = get_method("qlora")
    settings = settings_lib.build(method.settings_cls, {"r": 8}, section="qlora")
    return build_method_model(task_model, method, settings, family="whisper", device="cpu",
                              seed=0, total_steps=10)


def whisper_batch(batch_size=8, frames=500, tokens=40):
    return {"input_features": torch.randn(batch_size, 80, frames),
            "labels": torch.randint(0, 400, (batch_size, tokens))}
