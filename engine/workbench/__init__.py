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
from pathlib import Path

from engine.data.pipeline import clean_stale_staging
from engine.series import LiveSeries
from engine.workbench.datasets import DatasetsMixin
from engine.workbench.models import ModelsMixin
from engine.workbench.runs import RunsMixin
from storage import LOCAL_USER_ID, Storage, safe_name

DEFAULT_HOME = "data"


def data_home() -> Path:
    return Path(os.environ.get("LIM_HOME") or DEFAULT_HOME)


class Workbench(DatasetsMixin, ModelsMixin, RunsMixin):
    """One data home's datasets, models, methods and runs (sections in the mixin modules)."""

    def __init__(self, home: str | Path | None = None, owner_id: int = LOCAL_USER_ID):
        self.storage = Storage(home if home is not None else data_home())
        self.home = self.storage.home
        self.owner_id = owner_id
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
        from engine.demo import install_demo

        return install_demo(self)

    def demo_story(self) -> dict:
        """The presenter's run (engine/demo.py DEMO_RUN), whether it can start here, and what the
        time-to-quality benchmark measured for it (zero-shot and fine-tuned WER, minutes)."""
        from engine.demo import demo_story

        return demo_story(self)

    def start_demo_run(self) -> int:
        """Queue the presenter's run: real whisper-base, QLoRA on demo-voices."""
        from engine.demo import DEMO_RUN

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
