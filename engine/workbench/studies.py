"""Studies: launch a grid of runs as one study, watch it, read its table, stop or delete it.

A study's cells are ordinary queued runs (``runs.study_id``, ``runs.study_cell``): the worker,
the queue, stop and resume treat them like any run. The grid and the statistics are pure
functions in ``engine/studies.py``.

Studies are scoped like runs: visible to their owner, to everybody when shared (sharing a study
shares its runs, in one transaction), to admins always; only the owner may delete one, and the
owner or an admin (the device is everybody's) may stop one.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from typing import Any

from engine import settings as settings_lib
from engine.errors import NotFoundError, RunError, SettingsError, WorkbenchError
from engine.methods import get_method
from engine.training.settings import TrainingSettings, planned_steps, split_settings
from engine.studies import (ENDED, Grid, cell_label, differences, grid_cells, run_results,
                            study_status, study_table)

NAME_LIMIT = 80


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
        refused. The grid's own axes (``r``, the budget, ``target_modules``, ``seed``) come
        from the grid, not from ``settings``."""
        methods = {name: get_method(name) for name in grid.methods}
        cells = grid_cells(grid, methods)
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
                "cells_without_seeds": len({cell_label(c) for c in cells}),
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
            "grid": grid.as_dict(), "settings": settings or {}}, runs)
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
        axes = {"seed": "seeds"}
        if any(grid.target_sets):
            axes["target_modules"] = "target sets"
        if grid.ranks:
            axes["r"] = "ranks"
        for method in methods.values():
            if grid.budgets and (method.extra or {}).get("budget_setting"):
                axes[method.extra["budget_setting"]] = "budgets"
        clashes = sorted(set(settings) & set(axes))
        if clashes:
            raise SettingsError(f"{clashes[0]} comes from the study's {axes[clashes[0]]}; "
                                "leave it out of the settings")

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
        return study_table(*self._study_rows(study_id))

    def _study_rows(self, study_id: int) -> tuple[list[dict], dict[int, dict]]:
        runs = self.study_runs(study_id)
        return runs, {row["run"]: row for row in self.compare_runs([run["id"] for run in runs])}

    def study_progress(self, study_id: int) -> dict:
        """The study's status and counts with its runs (id, status, cell, seed, step, error):
        cheap enough to poll while it trains (no table)."""
        study = self.get_study(study_id)
        runs = self._study_runs(study)
        return {**self._study_overview(study, runs),
                "runs": [{"id": r["id"], "status": r["status"], "cell": cell_label(r["study_cell"]),
                          "seed": r["study_cell"]["seed"], "step": r["step"],
                          "total_steps": r["total_steps"], "error": r["error"]} for r in runs]}

    def study_summary(self, study_id: int, reference: str | None = None) -> dict:
        """What ``study show --json`` prints: ``study_progress`` plus the study's table and
        every cell against ``reference`` (default: the first cell)."""
        progress = self.study_progress(study_id)
        runs, rows = self._study_rows(progress["id"])
        table = study_table(runs, rows)
        reference = reference or (table[0]["cell"] if table else None)
        # Each run's own results and cell, so summaries of one grid split over several
        # machines (or data homes) can be merged afterwards (engine.studies.merge_summaries).
        own = {run["id"]: run for run in runs}
        for entry in progress["runs"]:
            entry["study_cell"] = own[entry["id"]]["study_cell"]
            entry["results"] = run_results(rows[entry["id"]])
        return {**progress, "table": table, "reference": reference,
                "differences": differences(table, reference) if reference else []}

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
