"""Scoring a model on a split, and the per-example table of the final evaluation.

After training the recipe scores the test split (the validation split when the dataset has
no test split, and says so) and stores, in ``runs/<id>/``:
  evaluation.json     split, whether it fell back, metrics, labels, confusion matrix
  predictions.jsonl   one row per example (reference vs prediction), worst first

``item_scores`` reads those rows back as one score per item in item order (word errors and
reference words for speech, correct answers for labels), what a study's paired per-item
bootstrap compares (engine/studies.py, engine/significance.py).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from engine.metrics import confusion_counts, item_speech_errors, speech_item_counts
from engine.models.base import GENERATION_BATCH_LIMIT_S, GenerationLimit
from engine.training.settings import RunSettings

EVALUATION_FILE = "evaluation.json"
PREDICTIONS_FILE = "predictions.jsonl"


class ItemDataset(Dataset):
    """Dataset items encoded on the fly by the task model (audio decoded per access).

    ``cache_mb`` > 0 keeps encoded items (log-mel features, token ids) in memory up to that
    many MiB, so later epochs skip decoding and feature extraction for them. Encoding is
    deterministic and augmentation happens after collation, so a cached item is exactly what
    encoding again would give; callers get a shallow copy (collation never writes to arrays).
    """

    def __init__(self, items: list[dict], task_model, dataset_dir: Path, cache_mb: float = 0):
        self.items, self.task_model, self.dataset_dir = items, task_model, dataset_dir
        self.cache_budget = int(cache_mb * 2**20)
        self.cache: dict[int, dict] = {}
        self.cached_bytes = 0
        self.lock = threading.Lock()  # the prefetcher fetches items on several threads

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        hit = self.cache.get(index)
        if hit is not None:
            return dict(hit)
        encoded = self.task_model.encode(self.items[index], self.dataset_dir)
        size = _encoded_bytes(encoded) if self.cache_budget else 0
        with self.lock:
            if size and self.cached_bytes + size <= self.cache_budget:
                self.cache[index] = encoded
                self.cached_bytes += size
                return dict(encoded)
        return encoded

    def holds(self, batches: list[list[int]]) -> bool:
        """Whether every item of ``batches`` is in the cache (nothing left to decode)."""
        return all(index in self.cache for batch in batches for index in batch)

    def remember(self, indices: list[int], encoded: list[dict]) -> list[dict]:
        """Cache items encoded elsewhere (a dataloader worker's copy of this dataset caches in
        that process only); returns ``encoded``."""
        for index, item in zip(indices, encoded):
            size = _encoded_bytes(item) if self.cache_budget else 0
            if size and index not in self.cache and self.cached_bytes + size <= self.cache_budget:
                self.cache[index] = item
                self.cached_bytes += size
        return [dict(item) for item in encoded]  # as ``__getitem__``: the cache's dicts stay its own


def _encoded_bytes(encoded: dict) -> int:
    size = 0
    for value in encoded.values():
        if hasattr(value, "nbytes"):
            size += int(value.nbytes)
        elif isinstance(value, (list, tuple)):
            size += 8 * len(value)
        else:
            size += 8
    return size


class EvaluationStopped(Exception):
    """A stop request arrived during an evaluation: the run stops, the evaluation is dropped."""


def evaluate(model: nn.Module, task_model, items: list[dict], dataset_dir: Path,
             batch_size: int, autocast: AbstractContextManager,
             on_progress: Callable[[int, int], None] | None = None,
             should_stop: Callable[[], bool] | None = None,
             on_slow_batch: Callable[[int, float], None] | None = None,
             batch_limit_s: float = GENERATION_BATCH_LIMIT_S) -> tuple[dict, list]:
    """Metrics and predictions of ``model`` on ``items`` (the model's mode is restored);
    ``on_progress(done, total)`` after each batch, in examples.

    Never hangs (issue 27): ``should_stop`` is read between batches and, while a batch
    generates, every half second (``EvaluationStopped`` is raised either way); a batch that
    generates for ``batch_limit_s`` is cut where it is and ``on_slow_batch(batch, seconds)``
    says so (its transcripts end there; the rest go on)."""
    was_training = model.training
    model.eval()
    # Its own generator: a loader draws a seed when iterated, which must not move the global
    # RNG that dropout and masking use (evaluation happens at different points of a resume).
    loader = DataLoader(ItemDataset(items, task_model, dataset_dir), batch_size=batch_size,
                        collate_fn=task_model.collate, generator=torch.Generator())
    limit = GenerationLimit(should_stop, seconds=batch_limit_s)
    predictions = []
    try:
        with autocast:
            for number, batch in enumerate(loader, start=1):
                if should_stop is not None and should_stop():
                    raise EvaluationStopped
                started = time.monotonic()
                predictions += task_model.predict(model, batch, limit.start())
                if limit.stopped:
                    raise EvaluationStopped
                if limit.timed_out:
                    limit.timed_out = False
                    if on_slow_batch is not None:
                        on_slow_batch(number, time.monotonic() - started)
                if on_progress is not None:
                    on_progress(len(predictions), len(items))
    finally:
        model.train(was_training)
    references = [task_model.reference(item) for item in items]
    return task_model.score(predictions, references), predictions


def per_example_rows(task_model, items: list[dict], predictions: list) -> list[dict]:
    """Reference vs prediction per example, sorted worst first.

    Speech: per-item WER then CER, highest first. Labels: wrong predictions first, the most
    confident mistakes at the top (those are the ones worth listening to).
    """
    rows = []
    for item, prediction in zip(items, predictions):
        row = {"split": item["split"], "position": item["position"], "file": item.get("file")}
        if task_model.task == "asr":
            row.update(reference=task_model.reference(item), prediction=prediction,
                       **item_speech_errors(task_model.reference(item), prediction))
        else:
            best = max(range(len(prediction)), key=prediction.__getitem__)
            row.update(reference=item["label"] if item.get("label") is not None else item.get("text"),
                       prediction=task_model.labels[best], confidence=float(prediction[best]))
            row["correct"] = row["reference"] == row["prediction"]
        rows.append(row)
    if task_model.task == "asr":
        rows.sort(key=lambda r: (-r["wer"], -r["cer"], r["position"]))
    else:
        rows.sort(key=lambda r: (r["correct"], -r["confidence"], r["position"]))
    return rows


def write_evaluation(run_dir: Path, task_model, split: str, fell_back: bool, metrics: dict,
                     rows: list[dict], validation_before: dict | None = None,
                     test_before: dict | None = None) -> dict:
    """``validation_before`` / ``test_before``: that split's scores before the first step and
    at the end (``{"split", "before", "after", "steps", ...}``), when the run scored the
    untouched model (``eval_on_start``); the test split's ``after`` is ``metrics``."""
    summary = {"split": split, "fell_back_to_validation": fell_back, "metrics": metrics,
               "task": task_model.task, "labels": task_model.labels, "num_examples": len(rows),
               "confusion": confusion_counts(task_model.labels, rows) if task_model.task != "asr" else None,
               "validation_before": validation_before, "test_before": test_before}
    with (run_dir / PREDICTIONS_FILE).open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    (run_dir / EVALUATION_FILE).write_text(json.dumps(summary, indent=2))
    return summary


def read_evaluation(run_dir: Path) -> dict | None:
    """The stored final evaluation with its rows, or None before a run has finished."""
    path = run_dir / EVALUATION_FILE
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    predictions = run_dir / PREDICTIONS_FILE
    summary["rows"] = ([json.loads(line) for line in predictions.read_text().splitlines() if line]
                       if predictions.is_file() else [])
    return summary


def item_scores(summary: dict | None) -> dict | None:
    """A stored evaluation (``read_evaluation``) as one score per item, in item order:
    ``{"split", "metric", "positions", "scores", "weights"}``. Speech: word errors and
    reference words (Σ scores / Σ weights is the corpus WER); labels: 1 for a correct answer
    and a weight of 1 (the accuracy). None without an evaluation or rows."""
    if not summary or not summary.get("rows"):
        return None
    rows = sorted(summary["rows"], key=lambda row: row["position"])
    if summary.get("task") == "asr":
        counts = [speech_item_counts(row) for row in rows]
        scores, weights, metric = [c[0] for c in counts], [c[1] for c in counts], "wer"
    else:
        scores, weights, metric = [int(bool(row["correct"])) for row in rows], [1] * len(rows), "accuracy"
    return {"split": summary["split"], "metric": metric, "positions": [row["position"] for row in rows],
            "scores": scores, "weights": weights}


# ---------------------------------------------------------------- the untouched model's scores
# Scoring the untouched model before the first step (``eval_on_start``) is the same work for
# every run that differs only in how it trains: a study's learning rates, a student's second try
# with more steps. On 2 CPU cores whisper-base on whole 30 s windows costs 2.4-2.9 s a clip, ~5
# minutes for the demo's 40 + 80 clips. The scores are kept in the data home under a key of
# everything that decides them, and a later run with the same key records them at step 0
# instead of generating again (its log says from which run).
UNTOUCHED_DIR = "untouched-scores"
# Training settings that change how a run trains, not what its model scores before step 1.
TRAINING_ONLY = frozenset({
    "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
    "learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm", "eval_steps",
    "eval_on_start", "early_stopping_patience", "save_steps", "save_total_limit", "max_time_minutes",
    "spec_augment", "freq_mask_param", "time_mask_param", "tracking", "prefetch_batches",
    "dataloader_num_workers", "feature_cache_mb"})


def untouched_key(settings: RunSettings, inputs: dict) -> str:
    """The key of a run's untouched scores: its method, task, method settings and every training
    setting outside ``TRAINING_ONLY`` (the seed stays: a new head's weights come from it), plus
    ``inputs`` (model, dataset version, items per split, code, libraries, device)."""
    import hashlib

    record = settings.to_record()
    decided = {"method": record["method"], "task": record["task"],
               "method_settings": record["settings"]["method"],
               "training": {k: v for k, v in record["settings"]["training"].items() if k not in TRAINING_ONLY},
               **inputs}
    return hashlib.sha256(json.dumps(decided, sort_keys=True, default=str).encode()).hexdigest()


def read_untouched(home: Path, key: str) -> dict | None:
    """``{"run_id", "validation": metrics, "test": metrics}`` stored under ``key``, or None."""
    path = Path(home) / UNTOUCHED_DIR / f"{key}.json"
    try:
        scores = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return scores if isinstance(scores, dict) and "validation" in scores else None


def write_untouched(home: Path, key: str, scores: dict) -> None:
    """Store ``scores`` under ``key`` whole or not at all (a reader never sees half a file)."""
    import os
    import tempfile

    folder = Path(home) / UNTOUCHED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(dir=folder, suffix=".tmp")
    with os.fdopen(handle, "w") as out:
        json.dump(scores, out)
    os.replace(staging, folder / f"{key}.json")
