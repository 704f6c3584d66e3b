"""Runs: submit, queue, watch, stop, resume, clone, evaluate, export, compare and tag."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path
from typing import Any

from engine import memory
from engine import settings as settings_lib
from engine.errors import ExportError, ModelError, NotFoundError, RunError, SettingsError
from engine.methods import get_method
from engine.names import (AUDIO_HOURS_PER_HOUR, AUDIO_SECONDS_PER_S, METHOD_REPORT, MFU_PERCENT,
                          RECIPE_METRIC_PREFIXES, SAMPLES_PER_S, TFLOPS)
from engine.progress import format_duration
from engine.training.profiles import active_profile
from engine.training.settings import RunSettings, TrainingSettings, stored_training
from engine.training.tracking import missing_packages, tracking_places
from storage import utc_now

LONG_RUN_S = 86_400  # a run estimated past a day gets a warning before it is queued
# The live monitor's headline figures: means over the run's steps (one GROUP BY on the index).
MEAN_THROUGHPUT = [SAMPLES_PER_S, AUDIO_HOURS_PER_HOUR, AUDIO_SECONDS_PER_S, TFLOPS, MFU_PERCENT]


class RunsMixin:
    # ------------------------------------------------------------------ runs
    def submit_run(self, dataset: str | int, model: str | int, method: str,
                   method_settings: dict | None = None, training_settings: dict | None = None) -> int:
        """Validate everything that can be checked before training, then queue the run."""
        plan = self.check_run(dataset, model, method, method_settings, training_settings)
        record = self._run_record(plan)
        warnings = record.pop("warnings")
        run_id = self.storage.create_run(record)
        self.storage.add_event(run_id, "queued")
        for warning in warnings:
            self.storage.add_event(run_id, warning, "warning")
        if self.worker is not None:
            self.worker.wake()
        return run_id

    def _run_record(self, plan: dict) -> dict:
        """The runs row a checked plan (``check_run``) queues, with the ``warnings`` its log
        gets; ``method``, ``task`` and ``settings`` are its ``RunSettings``' record."""
        dataset_record, model_record = plan["dataset"], plan["model"]
        return {
            "owner_id": self.owner_id, **plan["run_settings"].to_record(),
            "dataset_id": dataset_record["id"], "dataset_name": dataset_record["name"],
            "dataset_version": dataset_record["version"], "model_id": model_record["id"],
            "model_name": model_record["name"], "estimate_mb": plan["memory"].get("estimate_mb"),
            "warnings": ([] if plan["memory"]["fits"] else [plan["memory"]["message"]]) + plan["warnings"],
        }

    def check_run(self, dataset: str | int, model: str | int, method: str,
                  method_settings: dict | None = None, training_settings: dict | None = None) -> dict:
        """Every check ``submit_run`` makes, without queueing: the validated settings and the
        memory estimate (``memory``: estimate_mb, free_mb, fits, message) and ``warnings`` on
        absurd but legal settings. Raises a
        ``WorkbenchError`` naming the field for a configuration that cannot train."""
        from engine.models import TASK_MODELS, TASK_NAMES
        from engine.training.preflight import check_target_modules, outline_for

        dataset_record = self.get_dataset(dataset)
        model_record = self.get_model(model)
        get_method(method)  # an unknown method is named before anything else
        if dataset_record["task"] not in (model_record["tasks"] or []):
            raise RunError(
                f"{model_record['name']} cannot do {TASK_NAMES.get(dataset_record['task'])}; "
                f"it supports {', '.join(TASK_NAMES.get(t, t) for t in model_record['tasks'])}")
        training_settings = self.new_run_defaults() | (training_settings or {})  # given values win
        run_settings = RunSettings.build(method, dataset_record["task"], method_settings, training_settings)
        training_obj = run_settings.training
        self._check_splits(dataset_record, training_obj)
        task_model_cls = TASK_MODELS[(model_record["family"], dataset_record["task"])]
        try:
            outline = outline_for(self.storage.files.resolve(model_record["path"]),
                                  dataset_record["task"], dataset_record["labels"])
        except Exception as error:  # any failure here is the model folder's, said as such
            raise ModelError(f"{model_record['name']}: its config cannot be read ({error}); "
                             "register the model folder again") from error
        check_target_modules(run_settings.method_settings, outline, task_model_cls)
        steps = training_obj.optimizer_steps(self.storage.count_items(dataset_record["id"])["train"])
        duration = self._estimated_seconds(model_record["id"], method, steps)
        warnings = (training_obj.warnings(memory.training_device())  # absurd but legal values
                    + self._check_gpus(training_obj) + missing_packages(training_obj.tracking))
        if duration is not None and duration > LONG_RUN_S:
            warnings.append(f"{steps:,} steps will take {format_duration(duration)} on this machine "
                            "(at the speed of its earlier runs of this model and method); set "
                            "max_time_minutes or fewer steps")
        record = run_settings.to_record()["settings"]
        return {"dataset": dataset_record, "model": model_record, "run_settings": run_settings,
                "method_settings": record["method"], "training_settings": record["training"],
                "steps": steps, "estimated_seconds": duration, "warnings": warnings,
                "memory": self._check_memory(dataset_record, model_record, method, record["method"],
                                            training_obj)}

    def _check_memory(self, dataset_record: dict, model_record: dict, method: str,
                      method_settings: dict, training: TrainingSettings) -> dict:
        """The memory check of ``check_run``: ``estimate_memory`` (the number the Models and
        Methods pages show) for this run's batch of its longest item (``shape``), precision and
        checkpointing, against the memory free now (``engine.memory.check_memory``)."""
        device = memory.training_device()
        precision = training.precision
        if precision == "auto":
            precision = "bf16" if device == "cuda" else "fp32"
        shape = {"batch_size": training.per_device_train_batch_size,
                 **self._longest_item(dataset_record, model_record)}
        estimate = self.estimate_memory(
            model_record["id"], [method], task=dataset_record["task"],
            method_settings={method: method_settings}, **shape,
            labels=len(dataset_record["labels"] or []), precision=precision,
            audio_padding=training.audio_padding,
            gradient_checkpointing=training.gradient_checkpointing)[method]
        check = memory.check_memory(estimate, device=device, free_mb=memory.free_memory_mb(device),
                                    batch_size=shape["batch_size"],
                                    memory_budget_gb=training.memory_budget_gb)
        return {**check, "shape": shape}

    def _longest_item(self, dataset_record: dict, model_record: dict) -> dict:
        """``seconds`` of the longest clip, or ``sequence_length``: the tokens of the longest
        text as the model reads it (truncated where the model truncates)."""
        if dataset_record["task"] != "text-classification":
            longest = self.storage.item_stats(dataset_record["id"], 1.0)["totals"]["longest"]
            return {"seconds": float(longest or 1.0)}
        items = self.storage.dataset_items(dataset_record["id"], "train")
        text = max(items, key=lambda item: len(item["text"] or ""))
        task_model = self.task_model(model_record["id"], dataset_record["task"], dataset_record["labels"])
        return {"sequence_length": len(task_model.encode(text, Path())["input_ids"])}

    def _estimated_seconds(self, model_id: int, method: str, steps: int) -> float | None:
        """A whole run on this machine: ``steps`` at the speed of its earlier completed runs of
        this model and method, plus what such a run spent outside its steps (loading, final
        scoring, saving): a 50-step study run of a tiny model took 7 s, its steps 1 s."""
        per_step = self.storage.seconds_per_step(model_id, method)
        if per_step is None:
            return None
        return per_step * steps + (self.storage.seconds_outside_steps(model_id, method) or 0.0)

    def _check_gpus(self, training: TrainingSettings) -> list[str]:
        """Refuse more GPUs than this machine has; warnings for a multi-process run on CPUs."""
        visible = self.gpu_count()
        if training.gpus > 1 and visible and training.gpus > visible:
            raise SettingsError(f"gpus={training.gpus}, but this machine has {visible} GPU"
                                f"{'s' if visible > 1 else ''}; choose at most {visible}",
                                fix={"gpus": visible})
        if training.world_size > 1 and not visible:
            return [f"no GPU here: the run trains in {training.world_size} CPU processes (gloo "
                    "backend), which only makes sense on a machine with many cores or to try "
                    "the multi-GPU path"]
        return []

    def _check_splits(self, dataset_record: dict, training: TrainingSettings) -> None:
        counts = self.storage.count_items(dataset_record["id"])
        if not counts.get("train"):
            raise SettingsError(f"{dataset_record['name']} has no items in its train split; "
                                "add training examples or choose another dataset")
        batch, processes = training.per_device_train_batch_size, training.world_size
        if batch > counts["train"]:
            raise SettingsError(f"per_device_train_batch_size ({batch}) "
                                f"is larger than the train split ({counts['train']} items)",
                                fix={"per_device_train_batch_size": counts["train"]})
        if batch * processes > counts["train"]:
            fits = counts["train"] // processes  # the largest batch that gives every GPU one
            raise SettingsError(f"per_device_train_batch_size ({batch}) "
                                f"× {processes} GPUs is larger than the train split ({counts['train']} "
                                "items): some GPUs would have nothing to train on",
                                fix={"per_device_train_batch_size": fits} if fits else {"gpus": counts["train"]})
        if training.early_stopping_patience and not counts.get("validation"):
            raise SettingsError(f"early_stopping_patience needs a validation split, and "
                                f"{dataset_record['name']}'s validation split has no items",
                                fix={"early_stopping_patience": 0})

    def train_command(self, dataset: str, model: str, method: str, method_settings: dict | None = None,
                      training_settings: dict | None = None) -> str:
        """The ``python -m engine train ...`` line that queues this same configuration: each
        setting that differs from its default as ``--set name=value`` (the defaults of the
        active device profile, which the line names with ``--profile``)."""
        pairs = []
        for fields, values in ((settings_lib.describe(get_method(method).settings_cls), method_settings),
                               (self.training_settings_schema(), training_settings)):
            defaults = {field["name"]: field["default"] for field in fields}
            pairs += settings_lib.assignments(values or {}, defaults)
        profile = active_profile()
        words = ["python", "-m", "engine", "train", "--dataset", dataset, "--model", model,
                 "--method", method, *(["--profile", profile.name] if profile else []),
                 *(part for pair in pairs for part in ("--set", pair))]
        return " ".join(shlex.quote(str(word)) for word in words)

    def clone_settings(self, run_id: int, changes: dict[str, Any] | None = None) -> RunSettings:
        """What a copy of run ``run_id`` starts from: its own settings plus ``changes`` (flat
        ``key=value`` settings, e.g. ``{"r": 16}``); a setting the run did not store (an older
        run) gets its default, as when the run itself resumes, not a new run's default (the
        device profile's, ``LIM_TRACKING``). The one clone path: ``clone_run`` (the command
        line) and the New run form's Clone both start here, so both give the same run."""
        return RunSettings.from_record(self.get_run(run_id)).with_changes(changes)

    def clone_run(self, run_id: int, changes: dict[str, Any] | None = None) -> int:
        """Queue a new run with this run's dataset, model, method and settings, plus ``changes``
        (``clone_settings``)."""
        run = self.get_run(run_id)
        settings = self.clone_settings(run_id, changes).to_record()["settings"]
        return self.submit_run(run["dataset_id"], run["model_id"], run["method"],
                               settings["method"], settings["training"])

    def queue(self) -> list[dict]:
        """Queued runs in the order they will train, with position and time estimates
        (``engine.training.queue.queue_rows``)."""
        from engine.training.queue import queue_rows

        return queue_rows(self.storage, self.owner_id, see_all=self.see_all)

    def move_run(self, run_id: int, position: int) -> list[int]:
        """Move a queued run to ``position`` (1 = next to train); returns the queue's ids.

        The queue is fair between users (runs take turns by owner, storage/runs.py
        ``FAIR_ORDER``): an admin's move pins the run exactly there (with the runs ahead of
        it); anybody else's run changes places with their own runs only, so it lands on the
        turn of theirs nearest ``position`` (without accounts, exactly there)."""
        run = self._own_run(run_id, "moved", admin_may=True)
        if run["status"] != "queued":
            raise RunError(f"run {run['id']} is {run['status']}; only queued runs can be moved")
        if position < 1:
            raise SettingsError(f"position must be 1 or more, got {position}")
        order = self.storage.move_in_queue(run["id"], position, pin=self.see_all)
        now = order.index(run["id"]) + 1
        self.storage.add_event(run["id"], f"moved to position {now} in the queue" + (
            "" if now == min(position, len(order)) else
            f" (asked for {position}: runs take turns by owner, so a run changes places with "
            "its owner's own runs only; an admin can pin it anywhere)"))
        return order

    def cancel_run(self, run_id: int) -> None:
        """Take a queued run out of the queue (it ends ``cancelled``)."""
        run = self._own_run(run_id, "cancelled", admin_may=True)
        if run["status"] != "queued":
            raise RunError(f"run {run['id']} is {run['status']}; only queued runs can be "
                           "cancelled (stop a running one)")
        self.storage.update_run(run["id"], status="cancelled", finished_at=utc_now())
        self.storage.add_event(run["id"], "cancelled before it started")

    def delete_run(self, run_id: int) -> None:
        """Delete a run that is not queued or running: its record, metrics and log, its
        checkpoints and its adapter (exports already downloaded are not touched)."""
        run = self._own_run(run_id, "deleted")
        if run["status"] in ("queued", "running") or not self.storage.delete_run(run["id"], run["owner_id"]):
            raise RunError(f"run {run['id']} is {self.get_run(run['id'])['status']}; stop it (or "
                           "cancel it while queued) first, then delete it")
        shutil.rmtree(self.storage.files.home / "runs" / str(run["id"]), ignore_errors=True)

    def run_evaluation(self, run_id: int) -> dict | None:
        """The final evaluation of a finished run: split, metrics, per-example rows (worst
        first), confusion matrix for classification; None before it has one."""
        from engine.training.evaluation import read_evaluation

        run = self.get_run(run_id)
        return read_evaluation(self.storage.files.home / "runs" / str(run["id"]))

    def run_method_report(self, run_id: int) -> dict | None:
        """What the run's method decided from data (cmra's ranks per layer, qass's 16-bit
        layers, mma's routed layers), as it recorded it at start-up; None when it recorded
        nothing (every other method)."""
        import json

        run = self.get_run(run_id)
        path = self.storage.files.home / "runs" / str(run["id"]) / METHOD_REPORT
        return json.loads(path.read_text()) if path.is_file() else None

    def run_provenance(self, run_id: int) -> dict | None:
        """Where the run's numbers came from, as it recorded them when it started: commit (or
        package version), package versions, device, data fingerprint
        (engine/training/provenance.py); None for a run that never started, or started before
        runs recorded it."""
        from engine.training.provenance import read_provenance

        return read_provenance(self.storage.files.home / "runs" / str(self.get_run(run_id)["id"]))

    def run_decisions(self, run_id: int) -> dict:
        """What the run's method decided: ``method_report`` (``run_method_report``: cmra's ranks
        per layer, qass's 16-bit layers, ...; None when it recorded nothing) and
        ``step_metrics``, a summary (first, last, min, max, mean) of each metric the method
        logged itself at every step (mma's router/* weights; empty for most methods)."""
        run = self.get_run(run_id)
        own = [name for name in self.storage.metric_names(run["id"])
               if not name.startswith(RECIPE_METRIC_PREFIXES)]
        return {"method_report": self.run_method_report(run["id"]),
                "step_metrics": self.storage.metric_summaries(run["id"], own) if own else {}}

    def run_clock(self, run_id: int) -> dict:
        """A running or queued run's elapsed time (moving between steps) and ETA from its own
        short and whole-window steps and evaluations (engine/training/clock.py): ``elapsed_s``,
        ``eta_s`` (None: nothing timed yet), ``parts``, ``unknown``, ``basis``."""
        from engine.training.clock import run_clock

        return run_clock(self.storage, self.get_run(run_id))

    def machine_load(self, run_id: int | None = None) -> dict:
        """How busy other processes keep this machine (``engine.training.monitoring.MachineLoad``):
        the CPU of this process and of the process training ``run_id`` here is the workbench's."""
        import os
        import socket

        from engine.training.monitoring import MachineLoad

        own = {os.getpid()}
        if run_id is not None:
            host, _, rest = (self.get_run(run_id).get("worker") or "").partition(":")
            pid = rest.split(":")[0]
            if host == socket.gethostname() and pid.isdigit():
                own.add(int(pid))
        return self.__dict__.setdefault("_machine_load", MachineLoad()).sample(own)

    def run_tracking(self, run_id: int) -> dict[str, dict]:
        """Where the run's experiment tracking writes (TensorBoard, MLflow) and the command that
        opens each: ``{"tensorboard": {"where", "exists", "command"}, "mlflow": {..., "install"}}``;
        empty when the run tracks nothing."""
        run = self.get_run(run_id)
        return tracking_places(stored_training(run).tracking, self.storage.files.home, run["id"])

    def list_runs(self, limit: int | None = None) -> list[dict]:
        """The user's runs and runs shared with everybody (an admin's view: all), newest first."""
        return self.storage.list_runs(self.owner_id, limit, see_all=self.see_all)

    def get_run(self, run_id: int) -> dict:
        """A run this user may read; another user's unshared run is "not found", like a
        missing one, so ids cannot be probed."""
        run = self.storage.get_run(int(run_id), self.owner_id, see_all=self.see_all)
        if run is None:
            raise NotFoundError(f"no run {run_id}")
        return run

    def _own_run(self, run_id: int, doing: str, *, admin_may: bool = False) -> dict:
        """A run this user may change: their own (an admin may also stop, cancel or move any
        run: the device is shared). A shared run of another user is read-only."""
        run = self.get_run(run_id)
        if run["owner_id"] != self.owner_id and not (admin_may and self.see_all):
            raise RunError(f"run {run['id']} is another user's, shared with you read-only; it "
                           f"cannot be {doing} (clone it to make your own)")
        return run

    def _run_model(self, run: dict) -> dict:
        """The base model of a run this user may read (a shared run's, even if the model is not)."""
        model = self.storage.find_model(run["model_id"], run["owner_id"])
        if model is None:
            raise NotFoundError(f"the base model {run['model_name']!r} of run {run['id']} was deleted")
        return model

    def run_metrics(self, run_id: int, names: list[str] | None = None) -> list[dict]:
        return self.storage.metrics(self.get_run(run_id)["id"], names)

    def latest_metrics(self, run_id: int, names: list[str]) -> dict[str, float]:
        """Each named metric's value at its last logged step (absent when never logged)."""
        return self.storage.latest_metrics(self.get_run(run_id)["id"], names)

    def run_events(self, run_id: int, limit: int = 200) -> list[dict]:
        return self.storage.events(self.get_run(run_id)["id"], limit)

    def run_summary(self, run_id: int) -> dict:
        """What ``runs show --json`` prints: the contract's fields plus progress, the run's
        ``provenance`` and what its method decided (``decisions``)."""
        run = self.get_run(run_id)
        adapter = self.storage.files.resolve(run["adapter_dir"]) if run["adapter_dir"] else None
        return {
            "id": run["id"], "status": run["status"], "method": run["method"], "task": run["task"],
            "dataset": run["dataset_name"], "dataset_version": run["dataset_version"],
            "dataset_exists": self.storage.find_dataset(run["dataset_id"], run["owner_id"]) is not None,
            "owner": self._owner_name(run), "shared": bool(run.get("shared")),
            "model": run["model_name"], "settings": run["settings"], "metrics": run["metrics"] or {},
            "trainable_params": run["trainable_params"], "total_params": run["total_params"],
            "peak_memory_mb": run["peak_memory_mb"], "wall_time_s": run["wall_time_s"],
            "step": run["step"], "total_steps": run["total_steps"],
            "adapter_dir": str(adapter) if adapter else None, "error": run["error"],
            "created_at": run["created_at"], "started_at": run["started_at"],
            "finished_at": run["finished_at"], "queue_position": self._queue_position(run),
            "provenance": self.run_provenance(run["id"]), "decisions": self.run_decisions(run["id"]),
        }

    def _queue_position(self, run: dict) -> int | None:
        if run["status"] != "queued":
            return None
        queued = [r["id"] for r in self.storage.queued_runs()]
        # A worker may claim the run between the two reads: then it is no longer queued.
        return queued.index(run["id"]) + 1 if run["id"] in queued else None

    def stop_run(self, run_id: int) -> str:
        """Queued: cancelled at once. Running: stops at the next step with a checkpoint."""
        run = self._own_run(run_id, "stopped", admin_may=True)
        if run["status"] == "queued":
            self.cancel_run(run["id"])
            return "cancelled"
        if run["status"] != "running":
            raise RunError(f"run {run['id']} is {run['status']}; only queued or running runs can be stopped")
        self.storage.request_stop(run["id"])
        if self.worker is not None:
            self.worker.request_stop(run["id"])
        self.storage.add_event(run["id"], "stop requested")
        return "stopping"

    def resume_run(self, run_id: int) -> None:
        """Queue a stopped, interrupted or failed run again; it continues from its checkpoint."""
        run = self._own_run(run_id, "resumed")
        if run["status"] not in ("stopped", "interrupted", "failed"):
            raise RunError(f"run {run['id']} is {run['status']}; only stopped, interrupted or "
                           "failed runs can be resumed")
        self.storage.requeue_run(run["id"], stop_requested=0, error=None, finished_at=None)
        self.storage.add_event(run["id"], "queued to resume")
        if self.worker is not None:
            self.worker.wake()

    def other_node_command(self, run_id: int) -> str:
        """What each other machine of a multi-machine run starts (docs/multi-gpu.md)."""
        from engine.training.distributed import other_node_command, spec_path

        run = self.get_run(run_id)
        return other_node_command(spec_path(self.storage.files.home, run["id"]), stored_training(run))

    @staticmethod
    def gpu_count() -> int:
        """CUDA GPUs this process sees (the Training page offers a GPUs choice above 1)."""
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0

    def wait_for_run(self, run_id: int, on_progress=None) -> dict:
        """Train in this process until the run ends (the CLI's ``--wait``)."""
        from engine.training.worker import run_until_done

        self.get_run(run_id)
        run_until_done(self.storage, int(run_id), on_progress=on_progress)
        return self.run_summary(run_id)

    # ------------------------------------------------------------------ export, compare, tags
    def export_run(self, run_id: int, format: str, out: str | Path, on_progress=None,
                   quantization: str | None = None) -> Path:
        """Write run ``run_id`` as ``adapter`` (zip + model card), ``merged`` (a transformers
        folder), ``onnx`` (graphs checked with onnxruntime) or ``ct2`` (a CTranslate2 folder for
        faster-whisper, Whisper speech recognition only, weights in ``quantization``, checked
        against the merged model) to ``out``; returns the path."""
        from engine import export  # torch, transformers: loaded when first needed

        export.check_request(format, quantization)
        return export.export_run(self.export_artifacts(run_id, format), format, out, on_progress,
                                 quantization)

    def export_zip(self, run_id: int, format: str, on_progress=None) -> bytes:
        """``export_run`` as one zip in memory, for a download button (the folder formats
        are exported to a temporary folder and zipped)."""
        from engine import export

        export.check_request(format)
        return export.export_zip_bytes(self.export_artifacts(run_id, format), format, on_progress)

    def export_artifacts(self, run_id: int, format: str = "adapter"):
        """What an export of a completed run needs (``engine.export.RunArtifacts``): its
        summary, folders, base model, labels (and, for ``ct2``, the clips its parity check
        transcribes)."""
        from engine.export import RunArtifacts
        from engine.export.ct2 import parity_clips
        from engine.inference import adapter_labels

        summary = self.run_summary(run_id)
        if summary["status"] != "completed" or not summary["adapter_dir"]:
            raise ExportError(f"run {run_id} is {summary['status']}; only a completed run has an "
                              "adapter to export")
        adapter_dir = Path(summary["adapter_dir"])
        if not adapter_dir.is_dir():
            raise ExportError(f"the adapter folder of run {run_id} ({adapter_dir}) is missing")
        run = self.get_run(run_id)
        model = self.storage.find_model(run["model_id"], run["owner_id"])
        if model is None:
            raise ExportError(f"the base model {run['model_name']!r} of run {run_id} was deleted; "
                              "register it again to merge or export this run")
        artifacts = RunArtifacts(
            summary=summary, adapter_dir=adapter_dir, base_dir=self.storage.files.resolve(model["path"]),
            family=model["family"], labels=adapter_labels(adapter_dir) or [],
            is_adapter=get_method(run["method"]).is_adapter, base_source=model.get("source") or "")
        if format == "ct2":
            dataset = self.storage.find_dataset(run["dataset_id"], run["owner_id"])
            artifacts.parity_clips = parity_clips(self.storage, dataset)
        return artifacts

    def compare_runs(self, run_ids: list[int]) -> list[dict]:
        """One row per run: results, costs (memory, parameters, adapter bytes, throughput)
        and settings, for the Compare page and its CSV."""
        from engine.compare import MEANS_READ, comparison_row

        rows = []
        for run_id in run_ids:
            run = self.get_run(run_id)
            adapter_dir = self.storage.files.resolve(run["adapter_dir"]) if run["adapter_dir"] else None
            rows.append(comparison_row(run, adapter_dir, self.storage.metric_means(run["id"], MEANS_READ)))
        return rows

    def metric_series(self, run_id: int, name: str) -> dict:
        """One metric of one run as columns: ``{"step": [...], "wall_time": [...], "value": [...]}``."""
        return self.storage.metric_series(self.get_run(run_id)["id"], name)

    def run_metric_names(self, run_id: int) -> list[str]:
        run = self.get_run(run_id)
        stored = self.storage.stored_series_names(run["id"], run["step"] or 0)
        return stored if stored is not None else self.storage.metric_names(run["id"])

    def live_metrics(self, run_id: int) -> dict:
        """What the live monitor draws: ``{"series": {name: {"step", "wall_time", "value"}},
        "latest": {name: value}}``, each series downsampled to about 1,000 points.

        A running run is brought up to date from the rows logged since the last call, a
        finished one comes from its stored display series, so the cost does not grow with the
        number of steps (engine/series.py)."""
        from engine.series import display_series

        run = self.get_run(run_id)
        step = run["step"] or 0
        if run["status"] in ("running", "queued"):
            series = self.live_series.read(self.storage, run["id"], step)
        else:
            self.live_series.forget(run["id"])
            series = {name: display_series(self.storage, run["id"], name, step)
                      for name in self.run_metric_names(run["id"])}
        # Downsampling always keeps a series' last point: its latest value. The headline
        # throughput is the run's mean over its steps (as Compare's), not the last step's.
        return {"series": series,
                "latest": {name: columns["value"][-1] for name, columns in series.items() if columns["value"]},
                "means": self.storage.metric_means(run["id"], MEAN_THROUGHPUT)}

    def display_series(self, run_id: int, name: str) -> dict[str, list]:
        """One metric downsampled for charts; stored when the run ended (engine/series.py)."""
        from engine.series import display_series

        run = self.get_run(run_id)
        return display_series(self.storage, run["id"], name, run["step"] or 0)

    def tag_run(self, run_id: int, tags: list[str] | str) -> list[str]:
        """Replace a run's tags (comma-separated text or a list); returns the clean tags."""
        from engine.compare import clean_tags

        run = self._own_run(run_id, "tagged")
        cleaned = clean_tags(tags)
        self.storage.update_run(run["id"], tags=cleaned)
        return cleaned
