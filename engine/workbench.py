"""The workbench facade: the one API that pages, the command line and tests call.

    wb = Workbench()                       # data home from LIM_HOME (default ./data)
    wb.install_demo()                      # demo datasets + model presets (idempotent)
    run_id = wb.submit_run("demo-speech", "tiny-whisper", "qlora", {"r": 8}, {"max_steps": 20})
    wb.wait_for_run(run_id)                # or wb.start_worker() and poll wb.get_run(run_id)

Every method takes and returns plain Python values (dicts, lists, ids) so callers never touch
SQLite or torch. Errors are ``WorkbenchError`` subclasses with a message for the user.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
from pathlib import Path
from typing import Any

from engine import settings as settings_lib
from engine.errors import DatasetError, ModelError, NotFoundError, RunError, SettingsError
from engine.methods import all_methods, get_method
from engine.training.settings import TrainingSettings
from storage import LOCAL_USER_ID, Storage, utc_now

DEFAULT_HOME = "data"


def data_home() -> Path:
    return Path(os.environ.get("LIM_HOME") or DEFAULT_HOME)


class Workbench:
    def __init__(self, home: str | Path | None = None, owner_id: int = LOCAL_USER_ID):
        self.storage = Storage(home if home is not None else data_home())
        self.home = self.storage.home
        self.owner_id = owner_id
        self.worker = None
        self.recover_interrupted()

    # ------------------------------------------------------------------ lifecycle
    def start_worker(self) -> None:
        """Start the background training thread (the app does; the CLI trains in-process)."""
        from engine.training.worker import Worker

        if self.worker is None:
            self.worker = Worker(self.storage)
        self.worker.start()

    def shutdown(self) -> None:
        if self.worker is not None:
            self.worker.shutdown()

    def recover_interrupted(self) -> list[int]:
        """Mark runs left ``running`` by a process that no longer exists as ``interrupted``."""
        from engine.training.worker import recover_interrupted

        return recover_interrupted(self.storage)

    def install_demo(self) -> dict:
        from engine.demo import install_demo

        return install_demo(self)

    # ------------------------------------------------------------------ datasets
    def list_datasets(self) -> list[dict]:
        return self.storage.list_datasets(self.owner_id)

    def get_dataset(self, name_or_id: str | int) -> dict:
        dataset = self.storage.find_dataset(name_or_id, self.owner_id)
        if dataset is None:
            names = ", ".join(d["name"] for d in self.list_datasets()) or "none yet"
            raise NotFoundError(f"no dataset {name_or_id!r}; datasets: {names}")
        return dataset

    def dataset_items(self, name_or_id: str | int, split: str | None = None,
                      limit: int | None = 50, offset: int = 0) -> list[dict]:
        dataset = self.get_dataset(name_or_id)
        return self.storage.dataset_items(dataset["id"], split, limit, offset)

    def dataset_split_counts(self, name_or_id: str | int) -> dict[str, int]:
        return self.storage.count_items(self.get_dataset(name_or_id)["id"])

    def item_file(self, dataset: dict, item: dict) -> Path:
        """The audio file of an item (absolute path inside the data home)."""
        return self.storage.files.resolve(f"{dataset['path']}/{item['file']}")

    def import_dataset(self, path: str | Path, name: str, task: str | None = None, *,
                       shared: bool = False, is_demo: bool = False, description: str = "") -> dict:
        """Copy a dataset folder into the data home and register it, all or nothing."""
        from engine.data.importers import TASKS, read_dataset_folder

        source = Path(path)
        if not source.is_dir():
            raise DatasetError(f"{source} is not a folder")
        if not name.strip():
            raise DatasetError("a dataset needs a name")
        if self.storage.find_dataset(name, self.owner_id) is not None:
            raise DatasetError(f"a dataset named {name!r} already exists; choose another name")
        detected, items, labels = read_dataset_folder(source)
        if task is not None and task not in TASKS:
            raise DatasetError(f"task must be one of {', '.join(TASKS)}")
        if task is not None and task != detected:
            raise DatasetError(f"this folder holds a {detected} dataset, not {task}")
        if detected != "asr" and len(labels) < 2:
            raise DatasetError(f"the label column has only {len(labels)} class; classification "
                               "needs at least two")
        target = self.storage.files.new_dir("datasets", name)
        try:
            for item in items:
                if item["file"]:
                    (target / item["file"]).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source / item["file"], target / item["file"])
            for table in source.glob("*.csv"):
                shutil.copy2(table, target / table.name)
            for split_dir in {Path(item["file"]).parent for item in items if item["file"]}:
                shutil.copy2(source / split_dir / "metadata.csv", target / split_dir / "metadata.csv")
            splits = sorted({item["split"] for item in items})
            dataset_id = self.storage.add_dataset({
                "name": name, "task": detected, "path": self.storage.files.relative(target),
                "version": content_version(target, items), "splits": splits, "labels": labels,
                "shared": int(shared), "is_demo": int(is_demo), "description": description,
                "owner_id": self.owner_id,
            }, items)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)  # nothing half-imported remains
            raise
        return self.storage.find_dataset(dataset_id, self.owner_id)

    def delete_dataset(self, name_or_id: str | int) -> None:
        dataset = self.get_dataset(name_or_id)
        if dataset["owner_id"] != self.owner_id:
            raise DatasetError(f"{dataset['name']} is shared with you read-only; it cannot be deleted")
        self.storage.delete_dataset(dataset["id"], self.owner_id)
        self.storage.files.remove(dataset["path"])

    # ------------------------------------------------------------------ models
    def list_models(self) -> list[dict]:
        return self.storage.list_models(self.owner_id)

    def get_model(self, name_or_id: str | int) -> dict:
        model = self.storage.find_model(name_or_id, self.owner_id)
        if model is None:
            names = ", ".join(m["name"] for m in self.list_models()) or "none yet"
            raise NotFoundError(f"no model {name_or_id!r}; models: {names}")
        return model

    def register_model(self, source: str | Path, name: str, *, description: str = "") -> dict:
        """Register a local transformers folder (copied into the data home)."""
        import json

        from engine.models import tasks_of_family

        folder = Path(source)
        if not (folder / "config.json").is_file():
            raise ModelError(f"{source} is not a transformers model folder (no config.json); "
                             "registering from the hub comes with the Models page")
        if self.storage.find_model(name, self.owner_id) is not None:
            raise ModelError(f"a model named {name!r} already exists; choose another name")
        family = json.loads((folder / "config.json").read_text()).get("model_type", "")
        if not tasks_of_family(family):
            raise ModelError(f"model type {family!r} is not supported yet; supported: whisper")
        target = self.storage.files.new_dir("models", name)
        try:
            shutil.copytree(folder, target, dirs_exist_ok=True)
            model_id = self.storage.add_model({
                "name": name, "family": family, "tasks": tasks_of_family(family),
                "source": str(source), "path": self.storage.files.relative(target),
                "description": description, "owner_id": self.owner_id,
            })
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        return self.storage.find_model(model_id, self.owner_id)

    def delete_model(self, name_or_id: str | int) -> None:
        model = self.get_model(name_or_id)
        if model["owner_id"] != self.owner_id:
            raise ModelError(f"{model['name']} is shared with you read-only; it cannot be deleted")
        self.storage.delete_model(model["id"], self.owner_id)
        self.storage.files.remove(model["path"])

    # ------------------------------------------------------------------ methods and settings
    def list_methods(self) -> list[dict]:
        return [{"name": m.name, "help": m.help, "source": m.source, "is_adapter": m.is_adapter,
                 "settings": settings_lib.describe(m.settings_cls), **m.extra}
                for m in all_methods()]

    def training_settings_schema(self) -> list[dict]:
        return settings_lib.describe(TrainingSettings)

    def split_settings(self, method: str, values: dict[str, Any]) -> tuple[dict, dict]:
        """Route flat ``key=value`` settings to the method or the training settings."""
        method_fields = {f["name"] for f in settings_lib.describe(get_method(method).settings_cls)}
        training_fields = {f["name"] for f in self.training_settings_schema()}
        unknown = sorted(set(values) - method_fields - training_fields)
        if unknown:
            raise SettingsError(
                f"unknown setting {', '.join(unknown)}; {method} settings: "
                f"{', '.join(sorted(method_fields)) or 'none'}; training settings: "
                f"{', '.join(sorted(training_fields))}")
        return ({k: v for k, v in values.items() if k in method_fields},
                {k: v for k, v in values.items() if k in training_fields})

    # ------------------------------------------------------------------ runs
    def submit_run(self, dataset: str | int, model: str | int, method: str,
                   method_settings: dict | None = None, training_settings: dict | None = None) -> int:
        """Validate everything that can be checked before training, then queue the run."""
        plan = self.check_run(dataset, model, method, method_settings, training_settings)
        dataset_record, model_record = plan["dataset"], plan["model"]
        run_id = self.storage.create_run({
            "owner_id": self.owner_id, "method": method, "task": dataset_record["task"],
            "dataset_id": dataset_record["id"], "dataset_name": dataset_record["name"],
            "dataset_version": dataset_record["version"], "model_id": model_record["id"],
            "model_name": model_record["name"],
            "settings": {"method": plan["method_settings"], "training": plan["training_settings"]},
        })
        self.storage.add_event(run_id, "queued")
        if not plan["memory"]["fits"]:
            self.storage.add_event(run_id, plan["memory"]["message"], "warning")
        if self.worker is not None:
            self.worker.wake()
        return run_id

    def check_run(self, dataset: str | int, model: str | int, method: str,
                  method_settings: dict | None = None, training_settings: dict | None = None) -> dict:
        """Every check ``submit_run`` makes, without queueing: the validated settings and the
        memory estimate (``memory``: estimate_mb, free_mb, fits, message). Raises a
        ``WorkbenchError`` naming the field for a configuration that cannot train."""
        from engine.models import TASK_MODELS, TASK_NAMES
        from engine.training.preflight import check_target_modules, memory_check, outline_for

        dataset_record = self.get_dataset(dataset)
        model_record = self.get_model(model)
        method_obj = get_method(method)
        if dataset_record["task"] not in (model_record["tasks"] or []):
            raise RunError(
                f"{model_record['name']} cannot do {TASK_NAMES.get(dataset_record['task'])}; "
                f"it supports {', '.join(TASK_NAMES.get(t, t) for t in model_record['tasks'])}")
        method_obj_settings = settings_lib.build(method_obj.settings_cls, method_settings, section=method)
        training_values = settings_lib.as_dict(settings_lib.build(
            TrainingSettings, training_settings, section="training"))
        self._check_splits(dataset_record, training_values)
        task_model_cls = TASK_MODELS[(model_record["family"], dataset_record["task"])]
        try:
            outline = outline_for(self.storage.files.resolve(model_record["path"]),
                                  dataset_record["task"], dataset_record["labels"])
        except Exception as error:  # any failure here is the model folder's, said as such
            raise ModelError(f"{model_record['name']}: its config cannot be read ({error}); "
                             "register the model folder again") from error
        check_target_modules(method_obj_settings, outline, task_model_cls)
        return {"dataset": dataset_record, "model": model_record,
                "method_settings": settings_lib.as_dict(method_obj_settings),
                "training_settings": training_values,
                "memory": memory_check(method, method_obj_settings, training_values,
                                       outline, task_model_cls)}

    def _check_splits(self, dataset_record: dict, training: dict) -> None:
        counts = self.storage.count_items(dataset_record["id"])
        if not counts.get("train"):
            raise SettingsError(f"{dataset_record['name']} has no items in its train split; "
                                "add training examples or choose another dataset")
        if training["per_device_train_batch_size"] > counts["train"]:
            raise SettingsError(f"per_device_train_batch_size ({training['per_device_train_batch_size']}) "
                                f"is larger than the train split ({counts['train']} items)")
        if training["early_stopping_patience"] and not counts.get("validation"):
            raise SettingsError(f"early_stopping_patience needs a validation split, and "
                                f"{dataset_record['name']}'s validation split has no items")

    def estimate_run(self, dataset: str | int, model: str | int, method: str,
                     method_settings: dict | None = None, training_settings: dict | None = None) -> dict:
        """The memory estimate for a configuration (see ``check_run``)."""
        return self.check_run(dataset, model, method, method_settings, training_settings)["memory"]

    def clone_run(self, run_id: int, changes: dict[str, Any] | None = None) -> int:
        """Queue a new run with this run's dataset, model, method and settings, plus ``changes``
        (flat ``key=value`` settings, e.g. ``{"r": 16}``)."""
        run = self.get_run(run_id)
        method_changes, training_changes = self.split_settings(run["method"], dict(changes or {}))
        return self.submit_run(run["dataset_id"], run["model_id"], run["method"],
                               {**run["settings"]["method"], **method_changes},
                               {**run["settings"]["training"], **training_changes})

    def queue(self) -> list[dict]:
        """Queued runs in the order they will train, with position and time estimates
        (``engine.training.queue.queue_rows``)."""
        from engine.training.queue import queue_rows

        return queue_rows(self.storage, self.owner_id)

    def move_run(self, run_id: int, position: int) -> list[int]:
        """Move a queued run to ``position`` (1 = next to train); returns the queue's ids."""
        run = self.get_run(run_id)
        if run["status"] != "queued":
            raise RunError(f"run {run['id']} is {run['status']}; only queued runs can be moved")
        if position < 1:
            raise SettingsError(f"position must be 1 or more, got {position}")
        order = self.storage.move_in_queue(run["id"], position)
        self.storage.add_event(run["id"], f"moved to position {order.index(run['id']) + 1} in the queue")
        return order

    def cancel_run(self, run_id: int) -> None:
        """Take a queued run out of the queue (it ends ``cancelled``)."""
        run = self.get_run(run_id)
        if run["status"] != "queued":
            raise RunError(f"run {run['id']} is {run['status']}; only queued runs can be "
                           "cancelled (stop a running one)")
        self.storage.update_run(run["id"], status="cancelled", finished_at=utc_now())
        self.storage.add_event(run["id"], "cancelled before it started")

    def run_evaluation(self, run_id: int) -> dict | None:
        """The final evaluation of a finished run: split, metrics, per-example rows (worst
        first), confusion matrix for classification; None before it has one."""
        from engine.training.evaluation import read_evaluation

        run = self.get_run(run_id)
        return read_evaluation(self.storage.files.home / "runs" / str(run["id"]))

    def list_runs(self, limit: int | None = None) -> list[dict]:
        return self.storage.list_runs(self.owner_id, limit)

    def get_run(self, run_id: int) -> dict:
        run = self.storage.get_run(int(run_id), self.owner_id)
        if run is None:
            raise NotFoundError(f"no run {run_id}")
        return run

    def run_metrics(self, run_id: int, names: list[str] | None = None) -> list[dict]:
        return self.storage.metrics(self.get_run(run_id)["id"], names)

    def run_events(self, run_id: int, limit: int = 200) -> list[dict]:
        return self.storage.events(self.get_run(run_id)["id"], limit)

    def run_summary(self, run_id: int) -> dict:
        """What ``runs show --json`` prints: the contract's fields plus progress."""
        run = self.get_run(run_id)
        adapter = self.storage.files.resolve(run["adapter_dir"]) if run["adapter_dir"] else None
        return {
            "id": run["id"], "status": run["status"], "method": run["method"], "task": run["task"],
            "dataset": run["dataset_name"], "dataset_version": run["dataset_version"],
            "dataset_exists": self.storage.find_dataset(run["dataset_id"], self.owner_id) is not None,
            "model": run["model_name"], "settings": run["settings"], "metrics": run["metrics"] or {},
            "trainable_params": run["trainable_params"], "total_params": run["total_params"],
            "peak_memory_mb": run["peak_memory_mb"], "wall_time_s": run["wall_time_s"],
            "step": run["step"], "total_steps": run["total_steps"],
            "adapter_dir": str(adapter) if adapter else None, "error": run["error"],
            "created_at": run["created_at"], "started_at": run["started_at"],
            "finished_at": run["finished_at"], "queue_position": self._queue_position(run),
        }

    def _queue_position(self, run: dict) -> int | None:
        if run["status"] != "queued":
            return None
        return [r["id"] for r in self.storage.queued_runs()].index(run["id"]) + 1

    def stop_run(self, run_id: int) -> str:
        """Queued: cancelled at once. Running: stops at the next step with a checkpoint."""
        run = self.get_run(run_id)
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
        run = self.get_run(run_id)
        if run["status"] not in ("stopped", "interrupted", "failed"):
            raise RunError(f"run {run['id']} is {run['status']}; only stopped, interrupted or "
                           "failed runs can be resumed")
        self.storage.requeue_run(run["id"], stop_requested=0, error=None, finished_at=None)
        self.storage.add_event(run["id"], "queued to resume")
        if self.worker is not None:
            self.worker.wake()

    def wait_for_run(self, run_id: int, on_progress=None) -> dict:
        """Train in this process until the run ends (the CLI's ``--wait``)."""
        from engine.training.worker import run_until_done

        self.get_run(run_id)
        run_until_done(self.storage, int(run_id), on_progress=on_progress)
        return self.run_summary(run_id)

    # ------------------------------------------------------------------ system
    def system_info(self) -> dict:
        import psutil
        import torch

        memory = psutil.virtual_memory()
        info = {
            "cpu_percent": psutil.cpu_percent(interval=None), "cpu_count": psutil.cpu_count(),
            "ram_used_gb": round((memory.total - memory.available) / 2**30, 2),
            "ram_total_gb": round(memory.total / 2**30, 2), "python": platform.python_version(),
            "torch": torch.__version__, "gpu": None, "data_home": str(self.home),
        }
        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            info["gpu"] = {"name": torch.cuda.get_device_name(0),
                           "memory_used_gb": round((total - free) / 2**30, 2),
                           "memory_total_gb": round(total / 2**30, 2)}
        return info


def content_version(folder: Path, items: list[dict]) -> str:
    """A short content hash of a dataset: its items and the bytes of its files."""
    digest = hashlib.sha256()
    for item in sorted(items, key=lambda i: (i["split"], i["position"])):
        digest.update(repr((item["split"], item["file"], item["text"], item["label"])).encode())
        if item["file"]:
            digest.update(hashlib.sha256((folder / item["file"]).read_bytes()).digest())
    return digest.hexdigest()[:12]
