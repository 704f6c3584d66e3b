"""Experiment tracking (issue 27): a run's metrics, settings and adapter also go to TensorBoard
event files and to a local MLflow tracking store, written with those libraries, when the run's
``tracking`` setting asks (none, tensorboard, mlflow, both; new runs default to ``LIM_TRACKING``).

    tracking = Tracking.open("both", home=home, run_dir=run_dir, run=run, params=params,
                             resumed_at=step, log=log)
    tracking.scalars(step, {"train/loss": 0.3, ...})   # every optimizer step, every evaluation
    tracking.artifact(adapter_dir)                     # MLflow: the adapter as an artifact
    tracking.close("completed")

Where it goes (``tracking_places``, which the run page shows as commands):
- TensorBoard: ``<data home>/runs/<id>/tensorboard``; ``tensorboard --logdir`` that folder (or
  ``<data home>/runs`` to see every run). A resumed run purges the steps it replays.
- MLflow: ``sqlite:///<data home>/mlflow/mlflow.db`` (SQLite: MLflow's file store is in
  maintenance mode and refuses to open without ``MLFLOW_ALLOW_FILE_STORE``), artifacts under
  ``<data home>/mlflow/artifacts``, experiment ``lessismore``; one MLflow run per workbench run,
  tagged ``lim.run_id`` (a resumed run continues it). Its parameters are the run's settings
  under their ``--set`` names, plus method, task, model and dataset.

Tracking never fails a run: a package that is missing, or a write that fails, is one warning
in the run's log and that destination is switched off. The libraries are imported here only,
when a run asks for them. MLflow's anonymous usage telemetry is off unless the user turned it on.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.training.settings import RunSettings

EXPERIMENT = "lessismore"
RUN_TAG = "lim.run_id"
# What to install for each destination: requirements.txt pins them. Writing and reading a local
# MLflow store needs mlflow-skinny with SQLAlchemy and Alembic; the MLflow UI needs full mlflow.
INSTALL = {"tensorboard": "pip install tensorboard==2.21.0",
           "mlflow": "pip install mlflow-skinny==3.17.2 sqlalchemy==2.1.9 alembic==1.20.1"}
MLFLOW_STATUS = {"completed": "FINISHED", "failed": "FAILED"}  # stopped, interrupted: KILLED


class TrackingUnavailable(RuntimeError):
    """A destination's package is missing (the message says what to install)."""


def destinations(choice: str) -> list[str]:
    """``tensorboard`` and/or ``mlflow`` for a ``tracking`` setting."""
    return {"none": [], "tensorboard": ["tensorboard"], "mlflow": ["mlflow"],
            "both": ["tensorboard", "mlflow"]}[choice]


def missing_packages(choice: str) -> list[str]:
    """What a run with this ``tracking`` setting would miss here, as warnings said at submit
    (the run trains all the same, without that destination)."""
    needs = {"tensorboard": ["tensorboard"], "mlflow": ["mlflow", "sqlalchemy", "alembic"]}
    return [f"tracking={choice}: {name} is not installed, so the run will not write to it; "
            f"{INSTALL[name]}" for name in destinations(choice)
            if any(importlib.util.find_spec(module) is None for module in needs[name])]


def tensorboard_dir(home: Path, run_id: int) -> Path:
    return Path(home).resolve() / "runs" / str(run_id) / "tensorboard"


def mlflow_store_uri(home: Path) -> str:
    return f"sqlite:///{Path(home).resolve() / 'mlflow' / 'mlflow.db'}"


def tracking_places(choice: str, home: Path, run_id: int) -> dict[str, dict]:
    """Where a run's tracking writes and the command that opens each (the run page shows them)."""
    places = {}
    if "tensorboard" in destinations(choice):
        folder = tensorboard_dir(home, run_id)
        places["tensorboard"] = {"where": str(folder), "exists": folder.is_dir(),
                                 "command": f"tensorboard --logdir {folder}"}
    if "mlflow" in destinations(choice):
        uri = mlflow_store_uri(home)
        places["mlflow"] = {
            "where": uri, "exists": (Path(home).resolve() / "mlflow" / "mlflow.db").is_file(),
            "command": f"mlflow ui --backend-store-uri {uri}",
            # The UI is in full mlflow, which needs pyarrow < 26 (the workbench pins 26): its own
            # environment, e.g. python -m venv ~/mlflow-ui && ~/mlflow-ui/bin/pip install mlflow==3.17.2
            "install": "pip install mlflow==3.17.2 (in an environment of its own)"}
    return places


def flat_params(run: dict, settings: RunSettings) -> dict[str, str]:
    """The run's settings under their ``--set`` names (method and training settings never
    share one), plus what it trains: MLflow's parameters and TensorBoard's settings text."""
    stored = settings.to_record()["settings"]
    params = {"method": run["method"], "task": run["task"], "model": run.get("model_name"),
              "dataset": run.get("dataset_name"), "dataset_version": run.get("dataset_version"),
              **stored["method"], **stored["training"]}
    return {key: value if isinstance(value, str) else json.dumps(value)
            for key, value in params.items() if value is not None}


class TensorBoardWriter:
    """Event files in the run folder through ``torch.utils.tensorboard.SummaryWriter``."""

    name = "TensorBoard"

    def __init__(self, folder: Path, params: dict[str, str], resumed_at: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TrackingUnavailable(f"TensorBoard needs the tensorboard package: {INSTALL['tensorboard']}") from None
        # A resumed run replays the steps after its checkpoint: purge_step hides the old ones.
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=resumed_at + 1 if resumed_at else None,
                                    flush_secs=10)
        table = "\n".join(["| setting | value |", "|---|---|",
                           *(f"| {key} | {value} |" for key, value in params.items())])
        self.writer.add_text("settings", table, resumed_at)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def artifact(self, folder: Path) -> None:
        pass  # TensorBoard keeps no files; the adapter is beside the event files, in the run folder

    def close(self, status: str) -> None:
        self.writer.close()


class MlflowWriter:
    """One MLflow run in the data home's SQLite tracking store, through ``MlflowClient``."""

    name = "MLflow"

    def __init__(self, home: Path, run: dict, params: dict[str, str]):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # nothing leaves the machine
        try:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient
            import sqlalchemy  # noqa: F401 (MLflow's SQLite store; a clear message if it is missing)
            import alembic  # noqa: F401
        except ImportError as error:
            raise TrackingUnavailable(f"MLflow tracking needs {error.name}: {INSTALL['mlflow']}") from None
        folder = Path(home).resolve() / "mlflow"
        folder.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=mlflow_store_uri(home))
        experiment_id = self._experiment(folder / "artifacts")
        found = self.client.search_runs([experiment_id], f"tags.`{RUN_TAG}` = '{run['id']}'", max_results=1)
        if found:  # a resumed run continues its MLflow run (its parameters are already there)
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            return
        self.run_id = self.client.create_run(
            experiment_id, run_name=f"run {run['id']}: {run['method']} on {run.get('dataset_name')}",
            tags={RUN_TAG: str(run["id"]), "lim.method": run["method"],
                  "lim.model": str(run.get("model_name")), "lim.dataset": str(run.get("dataset_name"))},
        ).info.run_id
        items = [Param(key, value[:6000]) for key, value in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 parameters a batch
            self.client.log_batch(self.run_id, params=items[start: start + 100])

    def _experiment(self, artifacts: Path) -> str:
        found = self.client.get_experiment_by_name(EXPERIMENT)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(EXPERIMENT, artifact_location=artifacts.as_uri())
        except Exception:  # another process created it meanwhile
            return self.client.get_experiment_by_name(EXPERIMENT).experiment_id

    def scalars(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(name, value, now, step)
                                                    for name, value in values.items()])

    def artifact(self, folder: Path) -> None:
        self.client.log_artifacts(self.run_id, str(folder), Path(folder).name)

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, MLFLOW_STATUS.get(status, "KILLED"))


class Tracking:
    """The run's open destinations; each call goes to every one, and a destination whose call
    fails is logged once as a warning and switched off (tracking never fails a run)."""

    def __init__(self, writers: list, log: Callable[[str, str], None]):
        self.writers, self.log = writers, log

    @classmethod
    def open(cls, choice: str, *, home: Path, run_dir: Path, run: dict, settings: RunSettings,
             resumed_at: int, log: Callable[[str, str], None]) -> Tracking:
        params = flat_params(run, settings)
        openers = {"tensorboard": lambda: TensorBoardWriter(run_dir / "tensorboard", params, resumed_at),
                   "mlflow": lambda: MlflowWriter(home, run, params)}
        writers = []
        for name in destinations(choice):
            try:
                writers.append(openers[name]())
            except Exception as error:  # noqa: BLE001 (the run trains without this destination)
                log(f"tracking: {name} is off for this run: {error}", "warning")
        opened = [writer.name for writer in writers]
        if opened:
            log(f"tracking to {' and '.join(opened)}", "info")
        return cls(writers, log)

    def _each(self, action: str, *args) -> None:
        for writer in list(self.writers):
            try:
                getattr(writer, action)(*args)
            except Exception as error:  # noqa: BLE001
                self.writers.remove(writer)
                self.log(f"tracking: writing to {writer.name} failed ({type(error).__name__}: {error}); "
                         "it is off for the rest of this run, which goes on", "warning")

    def scalars(self, step: int, values: dict[str, float | None]) -> None:
        if not self.writers:
            return
        numbers = {name: float(value) for name, value in values.items()
                   if isinstance(value, (int, float)) and not isinstance(value, bool)}
        if numbers:
            self._each("scalars", step, numbers)

    def artifact(self, folder: Path) -> None:
        self._each("artifact", folder)

    def close(self, status: str) -> None:
        self._each("close", status)
        self.writers = []
