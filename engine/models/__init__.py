"""Model families and tasks: which TaskModel serves a (family, task) pair, and presets."""

from __future__ import annotations

from pathlib import Path

from engine.errors import ModelError
from engine.models.base import TaskModel, count_parameters, linear_module_names
from engine.models.encoders import (DistilBertTextClassification, HubertClassification,
                                    RobertaTextClassification, SpeechEncoderClassification,
                                    TextClassification)
from engine.models.whisper import WhisperAudioClassification, WhisperSpeechRecognition

# (family = the config's model_type, task) -> what serves it. The family decides the default
# target modules, the head, the collator and the metric.
TASK_MODELS: dict[tuple[str, str], type[TaskModel]] = {
    ("whisper", "asr"): WhisperSpeechRecognition,
    ("whisper", "audio-classification"): WhisperAudioClassification,
    ("bert", "text-classification"): TextClassification,
    ("roberta", "text-classification"): RobertaTextClassification,
    ("xlm-roberta", "text-classification"): RobertaTextClassification,
    ("distilbert", "text-classification"): DistilBertTextClassification,
    ("wav2vec2", "audio-classification"): SpeechEncoderClassification,
    ("hubert", "audio-classification"): HubertClassification,
}
SUPPORTED_FAMILIES = sorted({family for family, _ in TASK_MODELS})

TASK_NAMES = {
    "asr": "speech recognition",
    "audio-classification": "audio classification",
    "text-classification": "text classification",
}


def tasks_of_family(family: str) -> list[str]:
    return [task for fam, task in TASK_MODELS if fam == family]


def task_model_for(family: str, task: str, model_dir: Path, labels: list[str] | None = None,
                   **options) -> TaskModel:
    try:
        cls = TASK_MODELS[(family, task)]
    except KeyError:
        supported = ", ".join(TASK_NAMES.get(t, t) for t in tasks_of_family(family)) or "nothing yet"
        raise ModelError(f"a {family} model cannot do {TASK_NAMES.get(task, task)}; "
                         f"it supports: {supported}") from None
    return cls(model_dir, labels, **options)


__all__ = ["SUPPORTED_FAMILIES", "TASK_MODELS", "TASK_NAMES", "TaskModel", "count_parameters", "linear_module_names",
           "task_model_for", "tasks_of_family"]
