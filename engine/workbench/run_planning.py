"""Planning a run: every check ``submit_run`` makes before queueing (settings, splits, memory,
GPUs, expected duration), the command line of a configuration, and clones of a run."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from engine import memory
from engine import settings as settings_lib
from engine.errors import ModelError, RunError, SettingsError
from engine.methods import get_method
from engine.progress import format_duration
from engine.training.profiles import active_profile
from engine.training.settings import RunSettings, TrainingSettings
from engine.training.tracking import missing_packages

LONG_RUN_S = 86_400  # a run estimated past a day gets a warning before it is queued


class RunPlanningMixin:
    # ------------------------------------------------------------------ planning a run
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

    @staticmethod
    def gpu_count() -> int:
        """CUDA GPUs this process sees (the Training page offers a GPUs choice above 1)."""
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
