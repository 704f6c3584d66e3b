"""The workbench facade: the one API that pages, the command line and tests call.

    wb = Workbench()                       # data home from LIM_HOME (default ./data)
    wb.install_demo()                      # demo datasets + model presets (idempotent)
    run_id = wb.submit_run("demo-speech", "tiny-whisper", "qlora", {"r": 8}, {"max_steps": 20})
    wb.wait_for_run(run_id)                # or wb.start_worker() and poll wb.get_run(run_id)

Every method takes and returns plain Python values (dicts, lists, ids) so callers never touch
SQLite or torch. Errors are ``WorkbenchError`` subclasses with a message for the user.
"""

from __future__ import annotations

import os
import platform
import shutil
import uuid
from pathlib import Path
from typing import Any, BinaryIO

from engine import settings as settings_lib
from engine.data.archives import ImportLimits, save_upload
from engine.data.export import export_zip
from engine.data.importers import SPLITS
from engine.data.inspect import audio_view, dataset_stats
from engine.data.pipeline import (ImportOptions, ImportPlan, Progress, clean_stale_staging,
                                  content_version, discard, prepare_import, version_after_change,
                                  write_dataset)
from engine.errors import DatasetError, ModelError, NotFoundError, RunError, SettingsError
from engine.methods import all_methods, get_method
from engine.training.settings import TrainingSettings
from storage import LOCAL_USER_ID, Storage, safe_name, utc_now

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
                       skip_bad: bool = False, options: ImportOptions | None = None,
                       on_progress: Progress | None = None, shared: bool = False,
                       is_demo: bool = False, description: str = "") -> dict:
        """Check and import a folder, zip or table in one go (the command line and the demo).

        With problems that would skip items, nothing is imported unless ``skip_bad`` is set."""
        options = options or ImportOptions()
        if task is not None:
            options.task = task
        self._check_new_dataset_name(name)
        plan = self.check_import(path, options)
        try:
            if plan.report.blocking and not skip_bad:
                raise DatasetError("nothing was imported: " + "\n".join(plan.report.lines())
                                   + "\nfix these, or import again skipping the bad items (--skip-bad)")
            return self.commit_import(plan, name, on_progress=on_progress, shared=shared,
                                      is_demo=is_demo, description=description)
        finally:
            discard(plan)

    def save_upload(self, filename: str, stream: BinaryIO) -> Path:
        """Store an uploaded file under the staging folder (size-limited, safe name)."""
        return save_upload(self._staging() / f"upload-{uuid.uuid4().hex[:12]}", filename, stream,
                           ImportLimits())

    def check_import(self, path: str | Path, options: ImportOptions | None = None,
                     on_progress: Progress | None = None) -> ImportPlan:
        """Read and check a folder, zip or table: the plan holds the items and the report."""
        clean_stale_staging(self._staging())
        source = Path(path).expanduser()
        if not source.exists():
            raise DatasetError(f"{source} is not a folder or file on this machine; check the path")
        # only a file save_upload made (staging/upload-*/file) is ours to clean up afterwards
        uploaded = (source.is_file() and source.parent.name.startswith("upload-")
                    and source.resolve().parent.parent == self._staging().resolve())
        try:
            plan = prepare_import(source, self._staging(), options, ImportLimits(), on_progress)
        except BaseException:
            if uploaded:  # a failed check of an upload leaves nothing behind either
                shutil.rmtree(source.parent, ignore_errors=True)
            raise
        plan.upload = source.parent if uploaded else None
        return plan

    def commit_import(self, plan: ImportPlan, name: str, *, on_progress: Progress | None = None,
                      shared: bool = False, is_demo: bool = False, description: str = "") -> dict:
        """Write a checked plan (its good items) into the data home, all or nothing."""
        self._check_new_dataset_name(name)
        target = self.storage.files.new_dir("datasets", name)
        try:
            rows = write_dataset(plan, target, on_progress)
            dataset_id = self.storage.add_dataset({
                "name": name.strip(), "task": plan.columns.task,
                "path": self.storage.files.relative(target),
                "version": content_version(sorted(
                    (r["split"], r["file"], r["text"], r["label"], r["content_hash"]) for r in rows)),
                "splits": [s for s in SPLITS if any(r["split"] == s for r in rows)],
                "labels": sorted({r["label"] for r in rows if r["label"] is not None}),
                "shared": int(shared), "is_demo": int(is_demo), "description": description,
                "owner_id": self.owner_id, "report": plan.report.to_dict(),
            }, rows)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)  # nothing half-imported remains
            raise
        discard(plan)
        return self.storage.find_dataset(dataset_id, self.owner_id)

    def recheck_import(self, plan: ImportPlan, options: ImportOptions,
                       on_progress: Progress | None = None) -> ImportPlan:
        """Check the same source again with other choices (task, columns, splits)."""
        again = prepare_import(plan.source, self._staging(), options, ImportLimits(), on_progress)
        again.staging, again.upload = plan.staging, plan.upload  # the staged files carry over
        return again

    def discard_import(self, plan: ImportPlan) -> None:
        discard(plan)

    def dataset_stats(self, name_or_id: str | int) -> dict:
        return dataset_stats(self.storage, self.get_dataset(name_or_id)["id"])

    def find_items(self, name_or_id: str | int, split: str | None = None, query: str = "",
                   label: str | None = None, limit: int = 25, offset: int = 0) -> tuple[list[dict], int]:
        """A page of items matching a search, and how many match in all."""
        return self.storage.search_items(self.get_dataset(name_or_id)["id"], split, query, label,
                                         limit, offset)

    def item_view(self, name_or_id: str | int, item_id: int) -> dict:
        """Waveform and log-mel spectrogram of one audio item."""
        dataset = self.get_dataset(name_or_id)
        item = self._item(dataset, item_id)
        if not item["file"]:
            raise DatasetError("this item has no audio")
        return audio_view(self.item_file(dataset, item))

    def update_item(self, name_or_id: str | int, item_id: int, *, text: str | None = None,
                    label: str | None = None) -> dict:
        """Change a transcript or label; the change is recorded and the dataset gets a new version."""
        dataset = self._own_dataset(name_or_id)
        item = self._item(dataset, item_id)
        fields = {key: value.strip() for key, value in (("text", text), ("label", label))
                  if value is not None and value.strip() != (item[key] or "")}
        if label is not None and dataset["task"] == "asr" or text is not None and dataset["task"] == "audio-classification":
            raise DatasetError(f"a {dataset['task']} dataset has no {'label' if label is not None else 'text'} to edit")
        if any(not value for value in fields.values()):
            raise DatasetError("a transcript or label cannot be empty; remove the item instead")
        if fields:
            self._change_item(dataset, item_id, "edit", fields)
        return self.get_dataset(dataset["id"])

    def remove_item(self, name_or_id: str | int, item_id: int) -> dict:
        """Remove a bad item (its audio file too); recorded, and the dataset gets a new version."""
        dataset = self._own_dataset(name_or_id)
        item = self._item(dataset, item_id)
        self._change_item(dataset, item_id, "remove", {})
        if item["file"]:
            self.storage.files.remove(f"{dataset['path']}/{item['file']}")
        return self.get_dataset(dataset["id"])

    def dataset_report_lines(self, name_or_id: str | int) -> list[str]:
        """The import report kept with a dataset, as text."""
        from engine.data.validation import report_from_dict

        report = self.get_dataset(name_or_id)["report"]
        return report_from_dict(report).lines() if report else ["(imported before reports were kept)"]

    def dataset_history(self, name_or_id: str | int) -> list[dict]:
        return self.storage.dataset_changes(self.get_dataset(name_or_id)["id"])

    def export_dataset(self, name_or_id: str | int, out_dir: str | Path | None = None) -> Path:
        """A zip in the audiofolder layout (text sets: <split>.csv) with every edit applied."""
        dataset = self.get_dataset(name_or_id)
        folder = Path(out_dir) if out_dir is not None else self._staging() / "exports"
        folder.mkdir(parents=True, exist_ok=True)
        if out_dir is None:  # one export per dataset is kept for download; older ones go
            for old in folder.glob(f"{safe_name(dataset['name'])}-{'[0-9a-f]' * 12}.zip"):
                old.unlink()
        out = folder / f"{safe_name(dataset['name'])}-{dataset['version']}.zip"
        return export_zip(self.storage.files.resolve(dataset["path"]), dataset["task"],
                          self.storage.dataset_items(dataset["id"]), out)

    def delete_dataset(self, name_or_id: str | int) -> None:
        """Delete a dataset's rows and files; runs keep their record (name and version)."""
        dataset = self._own_dataset(name_or_id, doing="deleted")
        self.storage.delete_dataset(dataset["id"], self.owner_id)
        self.storage.files.remove(dataset["path"])

    def _own_dataset(self, name_or_id: str | int, doing: str = "changed") -> dict:
        dataset = self.get_dataset(name_or_id)
        if dataset["owner_id"] != self.owner_id:
            raise DatasetError(f"{dataset['name']} is shared with you read-only; it cannot be {doing}")
        if dataset["is_demo"] and doing == "changed":
            raise DatasetError(f"{dataset['name']} is a read-only demo set; export it and import the "
                               "zip under a new name to edit a copy")
        return dataset

    def _item(self, dataset: dict, item_id: int) -> dict:
        item = self.storage.get_item(dataset["id"], int(item_id))
        if item is None:
            raise NotFoundError(f"{dataset['name']} has no item {item_id} (it may have been removed)")
        return item

    def _change_item(self, dataset: dict, item_id: int, action: str, fields: dict) -> None:
        from engine.data.export import write_metadata

        version = version_after_change(self.storage.item_fingerprints(dataset["id"]), item_id, action, fields)
        self.storage.change_item(dataset["id"], item_id, action, fields, version)
        write_metadata(self.storage.files.resolve(dataset["path"]), dataset["task"],
                       self.storage.dataset_items(dataset["id"]))

    def _check_new_dataset_name(self, name: str) -> None:
        if not name or not name.strip():
            raise DatasetError("a dataset needs a name")
        if self.storage.find_dataset(name.strip(), self.owner_id) is not None:
            raise DatasetError(f"a dataset named {name.strip()!r} already exists; choose another name")

    def _staging(self) -> Path:
        return self.home / "staging"

    # ------------------------------------------------------------------ models
    def list_models(self) -> list[dict]:
        return self.storage.list_models(self.owner_id)

    def get_model(self, name_or_id: str | int) -> dict:
        model = self.storage.find_model(name_or_id, self.owner_id)
        if model is None:
            names = ", ".join(m["name"] for m in self.list_models()) or "none yet"
            raise NotFoundError(f"no model {name_or_id!r}; models: {names}")
        return model

    def register_model(self, source: str | Path, name: str, *, description: str = "",
                       shared: bool = False) -> dict:
        """Register a model from a local folder, an installed package or a hub id."""
        from engine.models import SUPPORTED_FAMILIES, tasks_of_family
        from engine.models.sources import fetch, read_model_type, resolve_source

        if not name.strip():
            raise ModelError("a model needs a name")
        if self.storage.find_model(name, self.owner_id) is not None:
            raise ModelError(f"a model named {name!r} already exists; choose another name")
        origin = resolve_source(str(source))
        if origin.kind != "hub":
            family = read_model_type(Path(origin.location))
            if not tasks_of_family(family):
                raise ModelError(f"model type {family!r} is not supported yet; supported: "
                                 f"{', '.join(SUPPORTED_FAMILIES)}")
        target = self.storage.files.new_dir("models", name)
        try:
            fetch(origin, target)
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
        return self.storage.find_model(model_id, self.owner_id)

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
            raise ModelError(f"{model['name']} is shared with you read-only; it cannot be deleted")
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
        from engine.models.inspect import architecture

        return architecture(self.task_model(model, task))

    def estimate_memory(self, model: str | int, methods: list[str], *, task: str | None = None,
                        method_settings: dict[str, dict] | None = None, batch_size: int = 8,
                        seconds: float = 5.0, sequence_length: int = 64, labels: int = 2,
                        precision: str = "fp32") -> dict[str, dict | str]:
        """Memory (MiB, by part) one training step needs with each method, from a dry run on
        fake tensors in a child process; a method without an estimate maps to the reason."""
        from engine.models.memory import estimate_in_subprocess

        record = self.get_model(model)
        for name in methods:
            get_method(name)  # unknown names fail here, with the list of methods
        return estimate_in_subprocess({
            "family": record["family"], "task": task or record["tasks"][0],
            "model_dir": str(self.storage.files.resolve(record["path"])),
            "labels": [f"class-{i}" for i in range(max(2, labels))],
            "methods": [{"name": m, "settings": (method_settings or {}).get(m, {})} for m in methods],
            "batch_size": batch_size, "seconds": seconds, "sequence_length": sequence_length,
            "precision": precision,
        })

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

    # ------------------------------------------------------------------ export, compare, tags
    def export_run(self, run_id: int, format: str, out: str | Path, on_progress=None) -> Path:
        """Write run ``run_id`` as ``adapter`` (zip + model card), ``merged`` (a transformers
        folder) or ``onnx`` (graphs checked with onnxruntime) to ``out``; returns the path."""
        from engine.export import export_run

        return export_run(self, run_id, format, out, on_progress)

    def export_zip(self, run_id: int, format: str, on_progress=None) -> bytes:
        """``export_run`` as one zip in memory, for a download button (the folder formats
        are exported to a temporary folder and zipped)."""
        from engine.export import export_zip_bytes

        return export_zip_bytes(self, run_id, format, on_progress)

    def compare_runs(self, run_ids: list[int]) -> list[dict]:
        """One row per run: results, costs (memory, parameters, adapter bytes, throughput)
        and settings, for the Compare page and its CSV."""
        from engine.compare import comparison_row

        return [comparison_row(self, self.get_run(run_id)) for run_id in run_ids]

    def metric_series(self, run_id: int, name: str) -> dict:
        """One metric of one run as columns: ``{"step": [...], "wall_time": [...], "value": [...]}``."""
        return self.storage.metric_series(self.get_run(run_id)["id"], name)

    def run_metric_names(self, run_id: int) -> list[str]:
        return self.storage.metric_names(self.get_run(run_id)["id"])

    def tag_run(self, run_id: int, tags: list[str] | str) -> list[str]:
        """Replace a run's tags (comma-separated text or a list); returns the clean tags."""
        from engine.compare import clean_tags

        run = self.get_run(run_id)
        cleaned = clean_tags(tags)
        self.storage.update_run(run["id"], tags=cleaned)
        return cleaned

    # ------------------------------------------------------------------ playground
    def playground_runs(self, model: str | int) -> list[dict]:
        """Completed runs of ``model`` whose adapter (or full model) is on disk, newest first."""
        name = self.get_model(model)["name"]
        return [run for run in self.list_runs()
                if run["model_name"] == name and run["status"] == "completed" and run["adapter_dir"]
                and self.storage.files.resolve(run["adapter_dir"]).is_dir()]

    def playground_labels(self, run_id: int) -> list[str]:
        """The class names a run was trained with (empty for speech recognition)."""
        from engine.inference import run_labels

        run = self.get_run(run_id)
        if not run["adapter_dir"]:
            return []
        return run_labels(self, run, self.storage.files.resolve(run["adapter_dir"]))

    def predict(self, item: dict, folder: str | Path | None = None, *, model: str | int,
                task: str, run_id: int | None = None, labels: list[str] | None = None,
                cache=None) -> dict:
        """One prediction for the playground: ``item`` is ``{"file": ...}`` under ``folder``
        or ``{"text": ...}``. ``run_id=None`` asks the base model. Models stay loaded in
        ``cache`` (an ``engine.inference.ModelCache``) between calls."""
        from engine.inference import ModelCache, predict_item

        if cache is None:
            cache = self.__dict__.setdefault("_model_cache", ModelCache())
        loads_before = cache.loads
        loaded = cache.get(self, model, run_id, task=task, labels=labels)
        result = predict_item(loaded, item, Path(folder or self.home))
        result.update(labels=loaded.task_model.labels, task=loaded.task_model.task,
                      loaded_now=cache.loads > loads_before, load_s=loaded.load_s)
        return result

    def predict_audio(self, audio: bytes, filename: str, **options) -> dict:
        """``predict`` for uploaded or recorded audio bytes (written to a temporary folder)."""
        import tempfile

        from storage import safe_name

        with tempfile.TemporaryDirectory(prefix="lim-playground-") as folder:
            name = safe_name(Path(filename).name) or "audio.wav"
            (Path(folder) / name).write_bytes(audio)
            return self.predict({"file": name}, folder, **options)

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


def count_parameters_on_disk(folder: Path) -> int:
    """Parameters in a folder's safetensors files, read from their headers (nothing loaded)."""
    from math import prod

    from safetensors import safe_open

    total = 0
    for weights in folder.glob("*.safetensors"):
        with safe_open(str(weights), "pt") as handle:
            total += sum(prod(handle.get_slice(key).get_shape()) for key in handle.keys())
    return total
