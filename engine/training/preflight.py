"""Checks made at submit, before anything trains: target modules against the model's layers
(the memory estimate is engine/memory's); and when a run starts, that its dataset and model
are still there (``run_inputs``).

The model is built on the meta device from its config (``with torch.device("meta")``): no
weights are read or allocated, so listing its linear layers and counting parameters takes well
under a second even for large models.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import DatasetError, ModelError, NotFoundError
from engine.methods.registry import MethodContext
from engine.models.base import MODEL_BUILD_LOCK

if TYPE_CHECKING:
    from storage.files import FileStore



def auto_class(task: str):
    """The transformers auto class that builds a model for ``task`` from its config."""
    from transformers import (AutoModelForAudioClassification, AutoModelForSequenceClassification,
                              AutoModelForSpeechSeq2Seq)

    return {"asr": AutoModelForSpeechSeq2Seq, "audio-classification": AutoModelForAudioClassification,
            "text-classification": AutoModelForSequenceClassification}[task]


@dataclass(frozen=True)
class ModelOutline:
    """What the checks need to know about a model, without its weights."""

    linear_shapes: dict[str, tuple[int, int]]  # qualified name -> (in_features, out_features)

    @property
    def linear_module_names(self) -> list[str]:
        return list(self.linear_shapes)


@functools.lru_cache(maxsize=16)
def model_outline(model_dir: str, task: str, num_labels: int = 2) -> ModelOutline:
    # Imported by name, not as attributes of the lazy ``transformers`` module: in the app
    # that attribute lookup failed (AttributeError: no attribute 'AutoConfig').
    import torch
    from torch import nn
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    if task != "asr":
        config.num_labels = max(2, num_labels)
    # Not accelerate.init_empty_weights(): it patches nn.Module for the whole process, so a
    # model the worker thread loads meanwhile gets meta weights and its run fails. The
    # torch.device context is a torch-function mode, which is per thread.
    with torch.device("meta"), MODEL_BUILD_LOCK:  # the lock: engine/models/base.py
        model = auto_class(task).from_config(config)
    linear = {name: (m.in_features, m.out_features) for name, m in model.named_modules()
              if isinstance(m, nn.Linear)}
    return ModelOutline(linear_shapes=linear)


def check_target_modules(method_settings, outline: ModelOutline, task_model_cls) -> None:
    """Raise (naming ``target_modules``) when a method targets layers the model lacks."""
    if not isinstance(getattr(method_settings, "target_modules", None), str):
        return
    from engine.methods.lora import resolve_targets

    context = MethodContext.for_task_model(task_model_cls,
                                           linear_module_names=outline.linear_module_names)
    resolve_targets(method_settings, context)


def outline_for(model_dir: Path, task: str, labels: list[str] | None) -> ModelOutline:
    return model_outline(str(model_dir), task, len(labels or []))


def run_inputs(files: FileStore, run: dict, dataset: dict | None, model_record: dict | None) -> tuple[Path, Path]:
    """The dataset's and the model's folders, or a typed error naming what went missing
    since the run was submitted (the run keeps the names it was made with)."""
    if dataset is None:
        raise NotFoundError(f"dataset {run['dataset_name']!r} of this run was deleted; "
                            "import it again and start a new run")
    if model_record is None:
        raise NotFoundError(f"model {run['model_name']!r} of this run was deleted; "
                            "register it again and start a new run")
    dataset_dir = files.resolve(dataset["path"])
    model_dir = files.resolve(model_record["path"])
    if not dataset_dir.is_dir():
        raise DatasetError(f"the files of dataset {dataset['name']!r} are gone ({dataset_dir}); "
                           "delete it and import it again")
    if not model_dir.is_dir():
        raise ModelError(f"the files of model {model_record['name']!r} are gone ({model_dir}); "
                         "delete it and register it again")
    return dataset_dir, model_dir
