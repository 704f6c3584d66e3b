"""Models (register, inspect, estimate memory) and PEFT methods with their settings."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

from engine import memory
from engine import settings as settings_lib
from engine.errors import ModelError, NotFoundError
from engine.methods import all_methods, get_method, plugin_problems
from engine.names import WHOLE_WINDOW
from engine.text import check_name
from engine.settings import load_config
from engine.training.profiles import PROFILES, active_profile, gpu_memory_fraction
from engine.training.settings import TrainingSettings, split_settings



class ModelsMixin:
    # ------------------------------------------------------------------ models
    def list_models(self) -> list[dict]:
        return self.storage.list_models(self.owner_id, see_all=self.see_all)

    def get_model(self, name_or_id: str | int) -> dict:
        model = self.storage.find_model(name_or_id, self.owner_id, see_all=self.see_all)
        if model is None:
            names = ", ".join(m["name"] for m in self.list_models()) or "none yet"
            raise NotFoundError(f"no model {name_or_id!r}; models: {names}")
        return model

    def register_model(self, source: str | Path, name: str, *, description: str = "",
                       shared: bool = False) -> dict:
        """Register a model from a local folder, an installed package, a hub id, or a CTranslate2
        Whisper model (folder, installed part packages or .whl files), which is converted to a
        transformers folder once; then the result's ``note`` says so."""
        from engine.models import SUPPORTED_FAMILIES, tasks_of_family
        from engine.models.sources import fetch, read_model_type, resolve_source

        check_name(name, "model", ModelError)
        if self.storage.find_model(name, self.owner_id) is not None:
            raise ModelError(f"a model named {name!r} already exists; choose another name")
        origin = resolve_source(str(source))
        if origin.kind in ("local", "package"):
            family = read_model_type(Path(origin.location))
            if not tasks_of_family(family):
                raise ModelError(f"model type {family!r} is not supported yet; supported: "
                                 f"{', '.join(SUPPORTED_FAMILIES)}")
        target = self.storage.files.new_dir("models", name)
        try:
            note = fetch(origin, target)
            family = read_model_type(target)
            if not tasks_of_family(family):
                raise ModelError(f"model type {family!r} is not supported yet; supported: "
                                 f"{', '.join(SUPPORTED_FAMILIES)}")
            model_id = self.storage.add_model({
                "name": name, "family": family, "tasks": tasks_of_family(family),
                "source": origin.describe(), "path": self.storage.files.relative(target),
                "description": description, "owner_id": self.owner_id, "shared": int(shared),
                "num_parameters": count_parameters_on_disk(target),
            })
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)  # nothing half-registered remains
            raise
        record = self.storage.find_model(model_id, self.owner_id)
        return {**record, "note": note} if note else record

    def packaged_models(self) -> list[dict]:
        """Installed packages that ship a supported model folder, and whether it is registered."""
        from engine.models import tasks_of_family
        from engine.models.sources import packaged_models

        registered = {m["source"] for m in self.list_models()}
        return [{**found, "registered": f"package:{found['package']}" in registered}
                for found in packaged_models() if tasks_of_family(found["model_type"])]

    def delete_model(self, name_or_id: str | int) -> None:
        model = self.get_model(name_or_id)
        if model["owner_id"] != self.owner_id:
            whose = "is shared with you read-only" if model["shared"] else "is another user's"
            raise ModelError(f"{model['name']} {whose}; it cannot be deleted")
        self.storage.delete_model(model["id"], self.owner_id)
        self.storage.files.remove(model["path"])

    def task_model(self, model: str | int, task: str | None = None, labels: list[str] | None = None):
        """The engine's view of a registered model for one of its tasks (no weights loaded)."""
        from engine.models import task_model_for

        record = self.get_model(model)
        task = task or record["tasks"][0]
        return task_model_for(record["family"], task, self.storage.files.resolve(record["path"]),
                              labels or ["a", "b"])

    def model_architecture(self, model: str | int, task: str | None = None) -> dict:
        from engine.models.inspect import cached_architecture

        record = self.get_model(model)
        folder = self.storage.files.resolve(record["path"])
        return cached_architecture(record["family"], task or record["tasks"][0], str(folder),
                                   (folder / "config.json").stat().st_mtime)

    def estimate_memory(self, model: str | int, methods: list[str], *, task: str | None = None,
                        method_settings: dict[str, dict] | None = None, batch_size: int = 8,
                        seconds: float = 5.0, sequence_length: int | None = 64, labels: int = 2,
                        precision: str = "fp32", audio_padding: str = WHOLE_WINDOW,
                        gradient_checkpointing: bool = False) -> dict[str, dict | str]:
        """The one memory estimate (engine.memory.estimate): per method, MiB by part and
        ``total_mb``, the number a run's ``peak_memory_mb`` is measured against; a method
        without an estimate maps to the reason. A dry run of one training step on fake tensors
        in an estimator process (seconds the first time, cached per configuration).
        ``audio_padding="longest"``: Whisper runs on ``seconds`` of audio, not its whole window;
        ``sequence_length=None``: the text model's longest input."""
        record = self.get_model(model)
        for name in methods:
            get_method(name)  # unknown names fail here, with the list of methods
        folder = self.storage.files.resolve(record["path"])
        return memory.estimate({
            "family": record["family"], "task": task or record["tasks"][0],
            # the cache key is the configuration's content, not the folder: two data homes (or
            # two registrations) of one model share their dry runs
            "model_dir": str(folder), "model_config": hashlib.sha256((folder / "config.json").read_bytes()).hexdigest(),
            "labels": [f"class-{i}" for i in range(max(2, labels))],
            "methods": [{"name": m, "settings": (method_settings or {}).get(m, {})} for m in methods],
            "batch_size": batch_size, "seconds": seconds, "sequence_length": sequence_length,
            "precision": precision, "audio_padding": audio_padding,
            "gradient_checkpointing": gradient_checkpointing,
        })

    def start_memory_estimator(self) -> None:
        """Start the estimator process ahead of the first ``estimate_memory`` (the app does), so
        the New run form's first estimate does not wait for torch, transformers and peft."""
        memory.start_estimator()

    # ------------------------------------------------------------------ methods and settings
    def list_methods(self) -> list[dict]:
        return [{"name": m.name, "help": m.help, "source": m.source, "is_adapter": m.is_adapter,
                 "settings": settings_lib.describe(m.settings_cls), **m.extra}
                for m in all_methods()]

    def method_problems(self) -> list[str]:
        """Method plugins that did not load, and why (broken, or a name already taken)."""
        return plugin_problems()

    def training_settings_schema(self) -> list[dict]:
        """``TrainingSettings``' fields; defaults are new runs' (``new_run_defaults``)."""
        chosen = self.new_run_defaults()
        return [{**field, "default": chosen.get(field["name"], field["default"])}
                for field in settings_lib.describe(TrainingSettings)]

    # ------------------------------------------------------------------ device profiles
    def new_run_defaults(self) -> dict[str, Any]:
        """Training settings whose default for new runs is not ``TrainingSettings``': the
        workbench's tracking default (``LIM_TRACKING``), then the device profile's choices."""
        tracking = load_config().tracking
        return ({"tracking": tracking} if tracking != "none" else {}) | self.profile_defaults()

    def profile_defaults(self) -> dict[str, Any]:
        """The training settings the active device profile chooses for new runs ({}: none)."""
        profile = active_profile()
        return profile.training_defaults() if profile else {}

    def device_profiles(self) -> list[dict]:
        return [profile.as_dict() for profile in PROFILES.values()]

    def device_profile(self) -> dict | None:
        """The active device profile (``LIM_PROFILE``, or ``--profile``), the defaults it
        chooses and what it does to this machine's GPU (``gpu``: total_gib, capped_gib, or
        None without CUDA); None without a profile."""
        profile = active_profile()
        if profile is None:
            return None
        import torch

        gpu = None
        if torch.cuda.is_available():
            total = torch.cuda.get_device_properties(0).total_memory
            fraction = gpu_memory_fraction(profile, total)
            gpu = {"name": torch.cuda.get_device_name(0), "total_gib": total / 2**30,
                   "capped_gib": None if fraction is None else fraction * total / 2**30}
        return {**profile.as_dict(), "gpu": gpu}

    @staticmethod
    def split_settings(method: str, values: dict[str, Any]) -> tuple[dict, dict]:
        """Route flat ``key=value`` settings to the method or the training settings
        (``engine.training.settings.split_settings``)."""
        return split_settings(method, values)


def count_parameters_on_disk(folder: Path) -> int:
    """Parameters in a folder's safetensors files, read from their headers (nothing loaded)."""
    from math import prod

    from safetensors import safe_open

    total = 0
    for weights in folder.glob("*.safetensors"):
        with safe_open(str(weights), "pt") as handle:
            total += sum(prod(handle.get_slice(key).get_shape()) for key in handle.keys())
    return total
