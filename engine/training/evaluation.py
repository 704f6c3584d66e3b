"""Scoring a model on a split, and the per-example table of the final evaluation.

After training the recipe scores the test split (the validation split when the dataset has
no test split, and says so) and stores, in ``runs/<id>/``:
  evaluation.json     split, whether it fell back, metrics, labels, confusion matrix
  predictions.jsonl   one row per example (reference vs prediction), worst first

``item_scores`` reads those rows back as one score per item in item order (word errors and
reference words for speech, correct answers for labels), what a study's paired per-item
bootstrap compares (engine/studies.py, engine/significance.py).

``RunScoring`` is a run's scoring as the recipe calls it: the validation points while it
trains, the untouched model's scores at step 0, and the final score that writes those files.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from engine.metrics import confusion_counts, item_speech_errors, speech_item_counts
from engine.models.base import GENERATION_BATCH_LIMIT_S, GenerationLimit
from engine.names import (EVAL_PREFIX, EVALUATION_FILE, LONGEST, PREDICTIONS_FILE, SPLIT_PREFIXES, TEST_PREFIX,
                          WHOLE_WINDOW)
from engine.training.provenance import code_version, device_description, package_versions
from engine.training.settings import RunSettings

if TYPE_CHECKING:
    from engine.training.monitoring import RunRecorder
    from storage import Storage


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
    # Longest first (issue 31): a batch of similar lengths pads less (audio_padding=longest) and
    # its transcripts end together, so greedy decoding stops sooner; the longest batch comes first,
    # so a batch too large for the device fails at once, not at the end. Predictions come back
    # in the items' order.
    order = length_order(items)
    ordered = [items[i] for i in order]
    # Its own generator: a loader draws a seed when iterated, which must not move the global
    # RNG that dropout and masking use (evaluation happens at different points of a resume).
    loader = DataLoader(ItemDataset(ordered, task_model, dataset_dir), batch_size=batch_size,
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
    in_place = [None] * len(items)
    for position, prediction in zip(order, predictions):
        in_place[position] = prediction
    references = [task_model.reference(item) for item in items]
    return task_model.score(in_place, references), in_place


def length_order(items: list[dict]) -> list[int]:
    """Positions of ``items``, longest first: by the clip's seconds (``duration_s``), else the
    text's length; ties keep their order (a stable sort)."""
    def length(position: int) -> float:
        item = items[position]
        return float(item.get("duration_s") or len(item.get("text") or ""))

    return sorted(range(len(items)), key=lambda position: -length(position))


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


# ---------------------------------------------------------------- a run's scoring
class RunScoring:
    """A run's evaluations, as its recipe calls them on rank 0: validation points while it
    trains, the untouched model's scores at step 0, the final score and its files. Each scores
    the model as it is now (``evaluate``), shows its progress in the run's ``phase`` and
    records its scores at the run's step through the ``RunRecorder`` (engine/training/
    monitoring.py). The recipe passes the split's items, its step and when training started
    (``started``, for the run's wall time) with each call: they move while it trains."""

    def __init__(self, storage: Storage, run: dict, settings: RunSettings, *, model_record: dict,
                 task_model, model: nn.Module, dataset_dir: Path, run_dir: Path, device: str,
                 autocast: Callable[[], AbstractContextManager], should_stop: Callable[[], bool],
                 recorder: RunRecorder, log: Callable[..., None], wall_offset: float = 0.0):
        self.storage, self.run, self.run_id, self.settings = storage, run, run["id"], settings
        self.model_record, self.task_model, self.model = model_record, task_model, model
        self.dataset_dir, self.run_dir, self.device = dataset_dir, run_dir, device
        self.autocast, self.should_stop, self.recorder, self.log = autocast, should_stop, recorder, log
        self.wall_offset = wall_offset  # the run's wall time before this process (a resume)
        self.last_validation: tuple[dict, list] | None = None  # (metrics, predictions)

    def wall(self, started: float) -> float:
        return self.wall_offset + time.perf_counter() - started

    def evaluate(self, items: list[dict], phase: str = "evaluation") -> tuple[dict, list]:
        """Metrics and predictions of the current model on ``items``; the run's ``phase``
        (e.g. "evaluating on the validation split") and examples done / total go to storage
        as it goes, at most twice a second, so the page shows the evaluation moving."""
        last_write = [float("-inf")]

        def report(done: int, total: int) -> None:
            if done < total and time.monotonic() - last_write[0] < 0.5:
                return
            last_write[0] = time.monotonic()
            self.storage.update_run(self.run_id, phase_done=done, phase_total=total)

        def slow(batch: int, seconds: float) -> None:
            self.log(f"{phase}: batch {batch} generated for {seconds:.0f} s and was cut there (the "
                     f"limit is {GENERATION_BATCH_LIMIT_S:.0f} s a batch); its transcripts may be "
                     "incomplete. A model that never ends its transcripts does this", "warning")

        self.storage.update_run(self.run_id, phase=phase, phase_done=0, phase_total=len(items))
        try:
            return evaluate(self.model, self.task_model, items, self.dataset_dir,
                            self.settings.training.per_device_eval_batch_size, self.autocast(),
                            on_progress=report, should_stop=self.should_stop, on_slow_batch=slow)
        finally:
            self.storage.update_run(self.run_id, phase=None, phase_done=None, phase_total=None)

    def evaluate_and_record(self, items: list[dict], step: int, wall_start: float, final: bool = False,
                            label: str = "") -> dict:
        """A validation point: the validation split's ``items`` scored, stored as ``eval/*`` at
        ``step`` and logged; {} without a validation split."""
        if not items:
            return {}
        metrics, predictions = self.evaluate(
            items, f"{'final ' if final else ''}evaluation{' of ' + label if label else ''} "
                   "on the validation split")
        self.last_validation = (metrics, predictions)
        self.recorder.metrics(step, self.wall(wall_start),
                              {f"{EVAL_PREFIX}{name}": value for name, value in metrics.items()})
        shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if v is not None)
        self.log(f"step {step}: validation {shown}")
        return metrics

    def evaluate_untouched(self, started: float, eval_items: list[dict], test_items: list[dict],
                           step: int = 0) -> None:
        """Step 0 of the validation curve: the model as it ships, before any step. Pretrained
        Whisper only knows its whole 30 s window (on short ones it repeats itself: whisper-base
        on demo-voices, 136 % WER against 78 % on 30 s), so a run on short windows
        (``audio_padding=longest``) scores the untouched model the standard way; its later
        points use the run's own window, as its Playground and final score do."""
        home, key = self.storage.files.home, self.untouched_key(eval_items, test_items)
        kept = read_untouched(home, key)
        if kept is not None and (kept.get("test") is not None) == bool(test_items):
            self.record_untouched(started, step, kept)
            return
        padding = getattr(self.task_model, "audio_padding", None)
        if padding == LONGEST:
            self.task_model.audio_padding = WHOLE_WINDOW
        try:
            validation = self.evaluate_and_record(eval_items, step, started, label="the untouched model")
            test = None
            if test_items:  # the final score's split too, so its before and after are one split's
                test, _ = self.score_test(test_items, step, started,
                                          "evaluation of the untouched model on the test split")
        finally:
            if padding is not None:
                self.task_model.audio_padding = padding
        write_untouched(home, key, {"run_id": self.run_id, "owner_id": self.run["owner_id"],
                                    "validation": validation, "test": test})

    def untouched_key(self, eval_items: list[dict], test_items: list[dict]) -> str:
        """What decides the untouched model's scores besides the run's settings (``untouched_key``)."""
        model = self.model_record
        return untouched_key(self.settings, {
            "model": {k: model.get(k) for k in ("id", "name", "source", "path", "created_at")},
            "dataset": {"id": self.run["dataset_id"], "version": self.run["dataset_version"]},
            "items": [len(eval_items), len(test_items)],
            "code": code_version(), "packages": package_versions(),
            "device": device_description(self.device)})

    def record_untouched(self, started: float, step: int, kept: dict) -> None:
        """Step 0 from an earlier run's identical scoring (``evaluate_untouched``)."""
        wall = self.wall(started)
        for prefix, metrics in ((EVAL_PREFIX, kept["validation"]), (TEST_PREFIX, kept.get("test"))):
            if metrics:
                self.recorder.metrics(step, wall, {f"{prefix}{name}": value for name, value in metrics.items()})
        shown = ", ".join(f"{k} {v:.3f}" for k, v in (kept["validation"] or {}).items() if v is not None)
        # another user's run is not named to this one (a shared model and dataset: same key)
        source = (f"run {kept.get('run_id')}" if kept.get("owner_id") == self.run["owner_id"]
                  else "an earlier run")
        self.log(f"step 0: validation {shown} (the untouched model's scores from {source}: "
                 "same model, data and settings that decide them, so not generated again)")

    def score_test(self, items: list[dict], step: int, started: float, phase: str) -> tuple[dict, list]:
        """Metrics and predictions on the test split, stored as ``test/*`` at this step."""
        metrics, predictions = self.evaluate(items, phase)
        self.recorder.metrics(step, self.wall(started),
                              {f"{TEST_PREFIX}{name}": value for name, value in metrics.items()})
        return metrics, predictions

    def scores_before(self, split: str, after: dict, step: int) -> dict | None:
        """``split``'s scores at step 0 (``eval_on_start``), beside the final ones: what
        training changed, on one split. None when the run did not score the untouched model."""
        if not after or step == 0:
            return None
        prefix = SPLIT_PREFIXES[split]
        names = [f"{prefix}{name}" for name in after]
        before = {row["name"].split("/", 1)[1]: row["value"]
                  for row in self.storage.metrics(self.run_id, names) if row["step"] == 0}
        if not before:
            return None
        padding = getattr(self.task_model, "audio_padding", None)
        # Windows are a Whisper matter: None for other models.
        return {"split": split, "before": before, "after": after, "steps": step,
                "before_window": WHOLE_WINDOW if padding else None, "after_window": padding}

    def final(self, started: float, step: int, eval_items: list[dict], test_items: list[dict]) -> dict:
        """The last validation point and the final score on the test split, written to the run's
        folder (``write_evaluation``); returns the final metrics ({} without either split)."""
        validation = self.evaluate_and_record(eval_items, step, started, final=True)
        if test_items:
            split, items, fell_back = "test", test_items, False
            final, predictions = self.score_test(test_items, step, started, "final evaluation on the test split")
        elif eval_items:
            split, items, fell_back = "validation", eval_items, True
            final, predictions = validation, self.last_validation[1]
            self.log("this dataset has no test split: the final scores are on the validation "
                     "split, which also guided training (early stopping); treat them as optimistic")
        else:
            split, items, fell_back, final, predictions = None, [], True, {}, []
            self.log("no test or validation split: the run has no final score", "warning")
        if split:
            rows = per_example_rows(self.task_model, items, predictions)
            write_evaluation(self.run_dir, self.task_model, split, fell_back, final, rows,
                             validation_before=self.scores_before("validation", validation, step),
                             test_before=self.scores_before("test", final, step) if split == "test" else None)
        return final
