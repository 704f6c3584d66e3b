"""Studies: launch a grid of runs as one study, watch it, read its table, stop or delete it.

A study's cells are ordinary queued runs (``runs.study_id``, ``runs.study_cell``): the worker,
the queue, stop and resume treat them like any run. The grid and the table are pure functions
in ``engine/studies.py``, the comparisons (paired tests, tuning per method) in
``engine/comparisons.py``; this facade reads each run's results, per-item test scores,
provenance and decisions and hands them down.

Studies are scoped like runs: visible to their owner, to everybody when shared (sharing a study
shares its runs, in one transaction), to admins always; only the owner may delete one, and the
owner or an admin (the device is everybody's) may stop one.

A study's queued runs can also go to a Ray cluster (``run_study_on_ray``: each run a Ray task,
engine/training/cluster.py); with accounts on only an admin may send them (an address reaches
other machines).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine import settings as settings_lib
from engine.comparisons import read_study
from engine.errors import AuthError, ClusterError, NotFoundError, RunError, SettingsError, WorkbenchError
from engine.methods import get_method
from engine.names import EVAL_PREFIX
from engine.studies import (ENDED, Grid, cell_label, grid_cells, run_results, study_provenance,
                            study_status, study_table)
from engine.training import cluster
from engine.training.evaluation import item_scores, read_evaluation
from engine.training.settings import TrainingSettings, planned_steps, split_settings

NAME_LIMIT = 80
TRAINING_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainingSettings))


class StudiesMixin:
    # ------------------------------------------------------------------ launch
    def plan_study(self, dataset: str | int, model: str | int, grid: Grid,
                   settings: dict[str, Any] | None = None) -> dict:
        """Every check ``submit_study`` makes, without queueing: each cell's run checked as
        ``check_run`` does (an error names the cell), the number of runs, and the estimated
        seconds (``None`` when no cell's model and method has trained on this machine before;
        ``unestimated`` counts the cells left out of the sum).

        ``settings``: flat ``key=value`` settings for every run; a method setting goes to every
        method that has it, and a key that no chosen method nor the training settings know is
        refused. The grid's own axes (``r``, the budget, ``target_modules``, ``seed``, and
        every ``grid.axes`` key) come from the grid, not from ``settings``. ``grid.axes``
        values are converted to their setting's type and checked (``grid`` in the answer holds
        them so: what ``submit_study`` stores)."""
        methods = {name: get_method(name) for name in grid.methods}
        grid = dataclasses.replace(grid, axes=self._checked_axes(methods, grid.axes))
        cells = grid_cells(grid, methods, TRAINING_FIELDS)
        settings = dict(settings or {})
        self._check_study_settings(methods, settings, grid)
        plans, seconds, unestimated, warnings = [], 0.0, 0, []
        for cell in cells:
            method_values, training_values = self._cell_settings(methods[cell["method"]], cell, settings)
            try:
                plan = self.check_run(dataset, model, cell["method"], method_values, training_values)
            except WorkbenchError as error:  # the same kind of error, naming the cell
                raise type(error)(f"{cell_label(cell)} (seed {cell['seed']}): {error}", fix=error.fix) from None
            plans.append(plan)
            if plan["estimated_seconds"] is None:
                unestimated += 1
            else:
                seconds += plan["estimated_seconds"]
            for warning in ([] if plan["memory"]["fits"] else [plan["memory"]["message"]]) + plan["warnings"]:
                if warning not in warnings:
                    warnings.append(warning)
        return {"cells": cells, "plans": plans, "runs": len(cells),
                "cells_without_seeds": len({cell_label(c) for c in cells}), "grid": grid,
                "estimated_seconds": seconds if unestimated < len(cells) else None,
                "unestimated": unestimated, "warnings": warnings,
                "steps": sum(plan["steps"] for plan in plans)}

    def submit_study(self, dataset: str | int, model: str | int, grid: Grid,
                     settings: dict[str, Any] | None = None, name: str | None = None) -> int:
        """Check every cell, then queue the study and all its runs in one transaction (a grid
        with one impossible cell queues nothing). Returns the study's id."""
        plan = self.plan_study(dataset, model, grid, settings)
        first = plan["plans"][0]
        name = (name or "").strip() or self._unused_study_name(
            f"{', '.join(grid.methods)} · {first['model']['name']} on {first['dataset']['name']}")
        if len(name) > NAME_LIMIT:
            raise SettingsError(f"the study's name is longer than {NAME_LIMIT} characters")
        runs = [{**self._run_record(run_plan), "study_cell": cell}
                for cell, run_plan in zip(plan["cells"], plan["plans"])]
        study_id, _ = self.storage.create_study({
            "owner_id": self.owner_id, "name": name,
            "dataset_id": first["dataset"]["id"], "dataset_name": first["dataset"]["name"],
            "model_id": first["model"]["id"], "model_name": first["model"]["name"],
            "grid": plan["grid"].as_dict(), "settings": settings or {}}, runs)
        if self.worker is not None:
            self.worker.wake()
        return study_id

    def _unused_study_name(self, name: str) -> str:
        """``name``, or ``name (2)``, ``(3)``, … when a study you see has it: two studies of
        one grid must not look the same in the list."""
        taken = {study["name"] for study in self.storage.list_studies(self.owner_id, see_all=self.see_all)}
        number, candidate = 2, name
        while candidate in taken:
            candidate, number = f"{name} ({number})", number + 1
        return candidate

    def _check_study_settings(self, methods: dict, settings: dict, grid: Grid) -> None:
        training_fields = {f["name"] for f in self.training_settings_schema()}
        method_fields = {f["name"] for m in methods.values() for f in settings_lib.describe(m.settings_cls)}
        unknown = sorted(set(settings) - training_fields - method_fields)
        if unknown:
            raise SettingsError(f"unknown setting {', '.join(unknown)}: not a training setting "
                                f"nor a setting of {', '.join(methods)}")
        sized = {}  # settings the grid's own lists set
        if any(grid.target_sets):
            sized["target_modules"] = "target sets"
        if grid.ranks:
            sized["r"] = "ranks"
        for method in methods.values():
            if grid.budgets and (method.extra or {}).get("budget_setting"):
                sized[method.extra["budget_setting"]] = "budgets"
        for key in grid.axes:
            if key in sized:
                raise SettingsError(f"--grid {key}: {key} comes from the study's {sized[key]}; "
                                    "give its values there, or leave those out")
        axes = {"seed": "seeds", **sized, **{key: "--grid axes" for key in grid.axes}}
        clashes = sorted(set(settings) & set(axes))
        if clashes:
            raise SettingsError(f"{clashes[0]} comes from the study's {axes[clashes[0]]}; "
                                "leave it out of the settings")

    @staticmethod
    def _checked_axes(methods: dict, axes: dict[str, list]) -> dict[str, list]:
        """Each axis's values converted to its setting's type and checked against that
        setting's choices and bounds (``settings.convert_field``); a key that is neither a
        training setting nor a setting of a chosen method is refused, naming it."""
        checked = {}
        for key, values in axes.items():
            owner = TrainingSettings if key in TRAINING_FIELDS else next(
                (m.settings_cls for m in methods.values()
                 if key in {f.name for f in dataclasses.fields(m.settings_cls)}), None)
            if owner is None:
                raise SettingsError(f"--grid {key}: not a training setting nor a setting of "
                                    f"{', '.join(methods)}; `python -m engine methods list --json` "
                                    "lists each method's settings")
            try:
                checked[key] = [settings_lib.convert_field(owner, key, value) for value in values]
            except SettingsError as error:
                raise SettingsError(f"--grid {key}: {error}") from None
        return checked

    @staticmethod
    def _cell_settings(method: Any, cell: dict, settings: dict) -> tuple[dict, dict]:
        """The cell's method and training values: the study's settings this method or the
        training settings know (another chosen method's are left out), then the cell's axes."""
        known = {f.name for f in dataclasses.fields(method.settings_cls)} | {
            f.name for f in dataclasses.fields(TrainingSettings)}
        method_values, training_values = split_settings(
            method.name, {k: v for k, v in settings.items() if k in known})
        if cell["size_setting"]:
            method_values[cell["size_setting"]] = cell["size"]
        if cell["targets"]:
            method_values["target_modules"] = cell["targets"]
        for key, value in (cell.get("axes") or {}).items():
            (training_values if key in TRAINING_FIELDS else method_values)[key] = value
        training_values["seed"] = cell["seed"]
        return method_values, training_values

    # ------------------------------------------------------------------ read
    def list_studies(self) -> list[dict]:
        """The user's studies and studies shared with everybody (an admin's view: all), newest
        first, each with its status and run counts."""
        return [self._study_overview(study)
                for study in self.storage.list_studies(self.owner_id, see_all=self.see_all)]

    def get_study(self, study_id: int | str) -> dict:
        """A study this user may read; another user's unshared study is "not found", like a
        missing one."""
        try:
            study = self.storage.get_study(int(study_id), self.owner_id, see_all=self.see_all)
        except ValueError:
            study = None
        if study is None:
            raise NotFoundError(f"no study {study_id}")
        return study

    def _own_study(self, study_id: int | str, doing: str, *, admin_may: bool = False) -> dict:
        """A study this user may change: their own (an admin may also stop any study, as any
        run). A shared study of another user is read-only."""
        study = self.get_study(study_id)
        if study["owner_id"] != self.owner_id and not (admin_may and self.see_all):
            raise RunError(f"study {study['id']} is another user's, shared with you read-only; "
                           f"it cannot be {doing}")
        return study

    def study_runs(self, study_id: int) -> list[dict]:
        return self._study_runs(self.get_study(study_id))

    def _study_runs(self, study: dict) -> list[dict]:
        return self.storage.study_runs(study["id"], self.owner_id, see_all=self.see_all)

    def _study_overview(self, study: dict, runs: list[dict] | None = None) -> dict:
        runs = self._study_runs(study) if runs is None else runs
        statuses = [run["status"] for run in runs]
        counts = {status: statuses.count(status) for status in dict.fromkeys(statuses)}
        steps_done = sum(run["step"] or 0 for run in runs)
        steps_total = sum(planned_steps(run) or 0 for run in runs)
        return {"id": study["id"], "name": study["name"], "owner_id": study["owner_id"],
                "owner": self._owner_name(study), "shared": bool(study.get("shared")),
                "dataset": study["dataset_name"],
                "model": study["model_name"], "grid": study["grid"], "settings": study["settings"],
                "created_at": study["created_at"], "status": study_status(statuses),
                "runs_total": len(runs), "runs_ended": sum(counts.get(s, 0) for s in ENDED),
                "status_counts": counts, "steps_done": steps_done, "steps_total": steps_total}

    def study_table(self, study_id: int) -> list[dict]:
        """One row per cell: mean and standard deviation over seeds (``engine.studies.study_table``)."""
        runs = self.study_runs(study_id)
        return study_table(runs, self._study_results(runs))

    def _study_results(self, runs: list[dict]) -> dict[int, dict]:
        """Run id -> what the study reads from it (``engine.studies.run_results``): its
        comparison row's measures, its last validation score of its headline metric, and, for
        a completed run, its per-item test scores."""
        results = {}
        for row in self.compare_runs([run["id"] for run in runs]):
            validation, items = None, None
            if row["status"] == "completed" and row["metric"]:
                name = f"{EVAL_PREFIX}{row['metric']}"
                validation = self.storage.latest_metrics(row["run"], [name]).get(name)
                items = item_scores(read_evaluation(self.storage.files.home / "runs" / str(row["run"])))
            results[row["run"]] = run_results(row, validation, items)
        return results

    def study_progress(self, study_id: int) -> dict:
        """The study's status and counts with its runs (id, status, cell, seed, step, error):
        cheap enough to poll while it trains (no table)."""
        study = self.get_study(study_id)
        runs = self._study_runs(study)
        return {**self._study_overview(study, runs),
                "runs": [{"id": r["id"], "status": r["status"], "cell": cell_label(r["study_cell"]),
                          "seed": r["study_cell"]["seed"], "step": r["step"],
                          "total_steps": r["total_steps"], "error": r["error"]} for r in runs]}

    def study_summary(self, study_id: int, reference: str | None = None, tune: bool | None = None) -> dict:
        """What ``study show --json`` prints: ``study_progress`` plus the study's table, its
        comparisons against ``reference`` (a cell, or with the tuned reading a method's label;
        default: the first), read per cell or tuned per method (``tune``; default: as the
        study was launched), and the study's ``provenance``."""
        progress = self.study_progress(study_id)
        runs = self._study_runs(self.get_study(progress["id"]))
        results = self._study_results(runs)
        table = study_table(runs, results)
        tune = bool(progress["grid"].get("tune_per_method")) if tune is None else tune
        # Each run's own results, cell, provenance and decisions, so summaries of one grid
        # split over several machines (or data homes) merge afterwards (engine.study_merge).
        own = {run["id"]: run for run in runs}
        for entry in progress["runs"]:
            entry["study_cell"] = own[entry["id"]]["study_cell"]
            entry["results"] = results[entry["id"]]
            entry["provenance"] = self.run_provenance(entry["id"])
            entry["decisions"] = self.run_decisions(entry["id"]) if entry["status"] == "completed" else None
        return {**progress, "table": table, **read_study(table, results, reference, tune),
                "provenance": study_provenance(progress["runs"])}

    # ------------------------------------------------------------------ act
    def stop_study(self, study_id: int) -> dict[str, int]:
        """Cancel the study's queued runs and ask its running run to stop (it saves a
        checkpoint and can be resumed alone). Returns how many of each."""
        study = self._own_study(study_id, "stopped", admin_may=True)
        outcome = {"cancelled": 0, "stopping": 0}
        for run in self._study_runs(study):
            if run["status"] in ("queued", "running"):
                try:
                    outcome[self.stop_run(run["id"])] += 1
                except RunError:  # it ended between the read and the stop: nothing to do
                    pass
        return outcome

    def delete_study(self, study_id: int) -> list[int]:
        """Delete a study and every one of its runs (records, metrics, logs, checkpoints,
        adapters). Refused, with nothing removed, while one of its runs is queued or running:
        stop the study first. Returns the ids of the runs deleted."""
        study = self._own_study(study_id, "deleted")
        removed = self.storage.delete_study(study["id"], self.owner_id)
        if removed is None:
            raise RunError(f"study {study['id']} still has queued or running runs; stop it "
                           "first (a running run ends at its next step), then delete it")
        for run_id in removed:
            shutil.rmtree(self.storage.files.home / "runs" / str(run_id), ignore_errors=True)
        return removed

    def wait_for_study(self, study_id: int, on_run_end: Callable[[dict], None] | None = None) -> dict:
        """Be the worker in this process until every run of the study has ended (the CLI's
        ``study --wait``); runs queued before them train first. ``on_run_end(run)`` after each."""
        from engine.training.worker import run_until_done

        for run in self.study_runs(study_id):
            if run["status"] in ("queued", "running"):
                ended = run_until_done(self.storage, run["id"])
                if on_run_end is not None:
                    on_run_end(ended)
        return self.study_summary(study_id)

    # ------------------------------------------------------------------ Ray
    def ray_allowed(self) -> bool:
        """Whether this user may send runs to a Ray cluster: always with accounts off (one
        person on their own machine), else admins only: an address reaches other machines, and
        a user who could name one could send the workbench's jobs anywhere."""
        return not self._accounts_on(settings_lib.load_config()) or self.is_admin

    @staticmethod
    def ray_available() -> bool:
        """Whether Ray is installed here (``pip install ray``), without importing it."""
        return cluster.is_ray_available()

    @staticmethod
    def check_ray_address(address: str) -> str:
        """``address`` stripped, when it can be a Ray address (``ClusterError`` otherwise)."""
        return cluster.check_address(address)

    def _check_ray_allowed(self) -> None:
        if not self.ray_allowed():
            raise AuthError("with accounts on, only an admin may send runs to a Ray cluster; "
                            "launch the study on this machine")

    def run_study_on_ray(self, study_id: int, address: str,
                         on_progress: Callable[[], None] | None = None) -> dict:
        """Train the study's queued runs on the Ray cluster at ``address`` (``local``: a Ray of
        this machine), each run one Ray task, and wait until every task has ended
        (``on_progress()`` meanwhile); returns ``study_summary``. The data home must be mounted
        at the same path on every machine (docs/multi-gpu.md). A run another worker claims first
        is trained there, not twice. Ctrl-C stops the study (queued runs cancelled, running ones
        stopped at their next step with a checkpoint) and waits for its tasks to end.
        ``ClusterError`` when a task could not train its run (it stays queued)."""
        study = self._own_study(study_id, "sent to a Ray cluster", admin_may=True)
        self._check_ray_allowed()
        runs = [run for run in self._study_runs(study) if run["status"] == "queued"]
        with cluster.ray_cluster(address) as ray:
            jobs = cluster.submit_runs(ray, self.storage, runs)
            try:
                jobs.wait(on_progress)
            except (KeyboardInterrupt, SystemExit):
                self.stop_study(study["id"])
                jobs.wait(timeout=cluster.STOP_GRACE_S)
                raise
            finally:
                jobs.end(self.storage)
        if jobs.failures:
            first = jobs.failures[0]
            raise ClusterError(f"{len(jobs.failures)} of the study's runs could not train on Ray "
                               f"(they stay queued): run {first['run']}: {first['error']}")
        return self.study_summary(study["id"])

    def launch_study_on_ray(self, study_id: int, address: str) -> Path:
        """``run_study_on_ray`` in a process of its own (``python -m engine study run ID
        --ray ADDRESS`` as this user), for the app: the page returns at once, and the driver
        outlives a closed tab. Returns its log file (under the data home's ``logs/``)."""
        study = self._own_study(study_id, "sent to a Ray cluster", admin_may=True)
        self._check_ray_allowed()
        address = cluster.check_address(address)
        log = self.home / "logs" / f"study-{study['id']}-ray.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "LIM_HOME": str(self.home)}
        env.pop("LIM_USER", None)
        if self.user is not None:
            env["LIM_USER"] = self.user["name"]
        with open(log, "ab") as out:
            driver = subprocess.Popen([sys.executable, "-m", "engine", "study", "run", str(study["id"]),
                              f"--ray={address}"], env=env, stdin=subprocess.DEVNULL, stdout=out,
                             stderr=subprocess.STDOUT, start_new_session=True)
        threading.Thread(target=driver.wait, name=f"lim-ray-study-{study['id']}", daemon=True).start()
        return log
