"""What a run left and shows: its evaluation, method report, provenance, clock, tracking,
metrics and live series; Compare's rows; exports."""

from __future__ import annotations

from pathlib import Path

from engine.errors import ExportError
from engine.methods import get_method
from engine.names import (AUDIO_HOURS_PER_HOUR, AUDIO_SECONDS_PER_S, METHOD_REPORT, MFU_PERCENT,
                          RECIPE_METRIC_PREFIXES, SAMPLES_PER_S, TFLOPS)
from engine.training.settings import stored_training
from engine.training.tracking import tracking_places

# The live monitor's headline figures: means over the run's steps (one GROUP BY on the index).
MEAN_THROUGHPUT = [SAMPLES_PER_S, AUDIO_HOURS_PER_HOUR, AUDIO_SECONDS_PER_S, TFLOPS, MFU_PERCENT]


class RunResultsMixin:
    # ------------------------------------------------------------------ read-outs
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

    # ------------------------------------------------------------------ metrics and series
    def run_metrics(self, run_id: int, names: list[str] | None = None) -> list[dict]:
        return self.storage.metrics(self.get_run(run_id)["id"], names)

    def latest_metrics(self, run_id: int, names: list[str]) -> dict[str, float]:
        """Each named metric's value at its last logged step (absent when never logged)."""
        return self.storage.latest_metrics(self.get_run(run_id)["id"], names)

    def run_events(self, run_id: int, limit: int = 200) -> list[dict]:
        return self.storage.events(self.get_run(run_id)["id"], limit)

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

    # ------------------------------------------------------------------ compare, export
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
