"""Predictions from a base model or a finished run, loaded the way anyone outside the app would.

The base model is loaded with the run method's own loading options (4-bit for qlora), then
``peft.PeftModel.from_pretrained`` attaches the adapter folder; a full fine-tune is a plain
transformers folder. The playground and the tests use this.

    cache = ModelCache(budget_bytes=2 * 2**30)
    loaded = cache.get(key, lambda: load_trained(run, family, base_dir, adapter_dir, labels), run_id)
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

from engine.methods import MethodContext, get_method
from engine.models import TaskModel, task_model_for
from engine.models.base import MODEL_BUILD_LOCK
from engine.training.run_meta import RunMeta, read_method_report
from engine.training.settings import RunSettings

DEFAULT_CACHE_BUDGET = 2 * 2**30  # bytes of weights kept loaded (playground)


def load_trained(run: dict, family: str, base_dir: Path, adapter_dir: Path, labels: list[str],
                 device: str = "cpu") -> tuple[TaskModel, torch.nn.Module]:
    """A finished run's model: the base (``family``, in ``base_dir``) loaded with the run
    method's options, then its adapter from ``adapter_dir``; a full fine-tune is loaded from
    ``adapter_dir`` alone. ``run`` is the run's record (method, task, settings)."""
    settings = RunSettings.from_record(run)
    method = get_method(settings.method)
    options = settings.task_options()
    if not method.is_adapter:
        task_model = task_model_for(family, settings.task, adapter_dir, labels, **options)
        return task_model, task_model.load().to(device).eval()
    task_model = task_model_for(family, settings.task, base_dir, labels, **options)
    report = read_method_report(adapter_dir)  # what the method decided from data, saved beside it
    load_kwargs = method_load_kwargs(settings, task_model, device, report)
    base = task_model.load(**load_kwargs)
    if "device_map" not in load_kwargs:
        base = base.to(device)
    if method.load_adapter is not None:  # an adapter with modules of its own (ta-qlora, mma)
        context = MethodContext.for_task_model(task_model, device=device, report=report)
        return task_model, method.load_adapter(base, adapter_dir, settings.method_settings, context).eval()
    return task_model, load_adapter(base, adapter_dir).eval()


def method_load_kwargs(settings: RunSettings, task_model: TaskModel, device: str = "cpu",
                       report: dict | None = None) -> dict:
    """How the run's method loads its base model (4-bit options for qlora, nothing for lora;
    qass reads the layers it kept in 16-bit from the run's ``report``)."""
    context = MethodContext.for_task_model(task_model, device=device, report=dict(report or {}))
    return get_method(settings.method).load_kwargs(settings.method_settings, context)


def adapter_labels(adapter_dir: Path) -> list[str] | None:
    """The labels a run saved beside its adapter (None when it saved no ``workbench.json``)."""
    meta = RunMeta.read(adapter_dir)
    return None if meta is None else meta.labels or []


def load_base(family: str, task: str, model_dir: Path, labels: list[str] | None = None,
              generation_max_length: int = 48, device: str = "cpu") -> tuple[TaskModel, torch.nn.Module]:
    """A registered model as it is, in full precision (the playground's "before")."""
    task_model = task_model_for(family, task, model_dir, labels, generation_max_length=generation_max_length)
    torch.manual_seed(0)  # a classifier head the base never trained starts the same every time
    return task_model, task_model.load().to(device).eval()


def load_adapter(base: torch.nn.Module, adapter_dir: Path) -> torch.nn.Module:
    from peft import PeftModel

    with MODEL_BUILD_LOCK:  # see engine/models/base.py
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

    def get(self, key: tuple, load: Callable[[], tuple[TaskModel, torch.nn.Module]],
            run_id: int | None = None) -> LoadedModel:
        """The model cached under ``key`` (the caller's: data home, model, run id, ...), made
        with ``load()`` when it is not there yet."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            entry = self._load(load, run_id)
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
