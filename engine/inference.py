"""Predictions from a base model or a finished run, loaded the way anyone outside the app would.

The base model is loaded with the run method's own loading options (4-bit for qlora), then
``peft.PeftModel.from_pretrained`` attaches the adapter folder; a full fine-tune is a plain
transformers folder. The playground and the tests use this.

    cache = ModelCache(budget_bytes=2 * 2**30)
    loaded = cache.get(workbench, model="tiny-whisper", run_id=3)   # loads once, then reuses
    result = predict_item(loaded, {"file": "clip.wav"}, folder)      # {"output": ..., "latency_s": ...}

``predict_item`` goes through the same ``TaskModel.encode -> collate -> predict`` path as the
recipe's evaluation, so the playground shows what the validation metrics measured.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from engine import settings as settings_lib
from engine.errors import RunError
from engine.methods import MethodContext, get_method
from engine.models import TaskModel, task_model_for

DEFAULT_CACHE_BUDGET = 2 * 2**30  # bytes of weights kept loaded (playground)


def load_trained(workbench, run_id: int, device: str = "cpu") -> tuple[TaskModel, torch.nn.Module]:
    run = workbench.get_run(run_id)
    if not run["adapter_dir"]:
        raise RunError(f"run {run_id} has no saved adapter (status {run['status']})")
    adapter_dir = workbench.storage.files.resolve(run["adapter_dir"])
    model_record = workbench.get_model(run["model_id"])
    labels = run_labels(workbench, run, adapter_dir)
    method = get_method(run["method"])
    base_dir = workbench.storage.files.resolve(model_record["path"])
    options = task_options(run["settings"]["training"])
    if not method.is_adapter:
        task_model = task_model_for(model_record["family"], run["task"], adapter_dir, labels, **options)
        return task_model, task_model.load().to(device).eval()
    task_model = task_model_for(model_record["family"], run["task"], base_dir, labels, **options)
    load_kwargs = method_load_kwargs(method, run["settings"]["method"], task_model, device)
    base = task_model.load(**load_kwargs)
    if "device_map" not in load_kwargs:
        base = base.to(device)
    return task_model, load_adapter(base, adapter_dir).eval()


def task_options(training: dict) -> dict:
    """The task options a run trained with (runs older than a setting get its default)."""
    return {"generation_max_length": training.get("generation_max_length", 48),
            "audio_padding": training.get("audio_padding", "30s"),
            "language": training.get("language", "en"),
            "speech_task": training.get("task", "transcribe")}


def method_load_kwargs(method, method_settings: dict, task_model: TaskModel, device: str = "cpu") -> dict:
    """How the run's method loads its base model (4-bit options for qlora, nothing for lora)."""
    settings = settings_lib.build(method.settings_cls, method_settings)
    context = MethodContext.for_task_model(task_model, device=device)
    return method.load_kwargs(settings, context)


def run_labels(workbench, run: dict, adapter_dir: Path) -> list[str]:
    """The labels the run trained with: from its adapter folder, else its dataset."""
    import json

    meta = adapter_dir / "workbench.json"
    if meta.is_file():
        return json.loads(meta.read_text()).get("labels") or []
    dataset = workbench.storage.find_dataset(run["dataset_id"], workbench.owner_id)
    return dataset["labels"] if dataset else []


def load_base(workbench, model: str | int, task: str, labels: list[str] | None = None,
              generation_max_length: int = 48, device: str = "cpu") -> tuple[TaskModel, torch.nn.Module]:
    """The registered model as it is, in full precision (the playground's "before")."""
    record = workbench.get_model(model)
    task_model = task_model_for(record["family"], task, workbench.storage.files.resolve(record["path"]),
                                labels, generation_max_length=generation_max_length)
    torch.manual_seed(0)  # a classifier head the base never trained starts the same every time
    return task_model, task_model.load().to(device).eval()


def load_adapter(base: torch.nn.Module, adapter_dir: Path) -> torch.nn.Module:
    from peft import PeftModel

    return PeftModel.from_pretrained(base, adapter_dir)


# ---------------------------------------------------------------------- predictions
@dataclass
class LoadedModel:
    task_model: TaskModel
    model: torch.nn.Module
    run_id: int | None
    size_bytes: int
    load_s: float


def predict_item(loaded: LoadedModel, item: dict, folder: Path) -> dict:
    """One item (``{"file": ...}`` under ``folder``, or ``{"text": ...}``) through the same
    encode -> collate -> predict path as evaluation; returns the output and the latency."""
    started = time.perf_counter()
    example = loaded.task_model.encode({"text": "", "label": None, **item}, folder)
    with torch.inference_mode():
        [output] = loaded.task_model.predict(loaded.model, loaded.task_model.collate([example]))
    return {"output": output, "latency_s": time.perf_counter() - started}


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes held by parameters and buffers (a 4-bit weight counts its packed storage)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


# ---------------------------------------------------------------------- cache
class ModelCache:
    """Loaded models kept between requests, least recently used evicted past a byte budget.

    Keyed by ``(model name, run id or None)``. Thread-safe: every browser session shares one
    cache (the app holds it with ``st.cache_resource``). The newest entry always stays, even
    when it alone is over the budget, so a large model still works (it is simply not shared).
    """

    def __init__(self, budget_bytes: int = DEFAULT_CACHE_BUDGET):
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[tuple, LoadedModel] = OrderedDict()
        self._lock = threading.RLock()
        self.loads = 0  # how many times a model was actually loaded (tests, status line)

    def get(self, workbench, model: str | int, run_id: int | None = None, *,
            task: str | None = None, labels: list[str] | None = None) -> LoadedModel:
        """The base model (``run_id=None``, needs ``task``) or a run's trained model."""
        key = (str(workbench.home), str(model), run_id, task if run_id is None else None,
               tuple(labels or ()) if run_id is None else ())
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            entry = self._load(lambda: (load_trained(workbench, run_id) if run_id is not None
                                        else load_base(workbench, model, task, labels)), run_id)
            self._entries[key] = entry
            self._evict()
            return entry

    def _load(self, loader: Callable, run_id: int | None) -> LoadedModel:
        started = time.perf_counter()
        task_model, model = loader()
        self.loads += 1
        return LoadedModel(task_model, model, run_id, model_bytes(model), time.perf_counter() - started)

    def _evict(self) -> None:
        while len(self._entries) > 1 and self.used_bytes() > self.budget_bytes:
            self._entries.popitem(last=False)

    def used_bytes(self) -> int:
        return sum(entry.size_bytes for entry in self._entries.values())

    def keys(self) -> list[tuple]:
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
