"""The queue as users see it: position, and how long each queued run will take and wait.

The rows come in the order workers take runs (turns by owner, storage/runs.py ``FAIR_ORDER``).
Estimates come from the speed of this machine (engine/training/clock.py): a running run from its
own steps and evaluations, a queued one from this machine's latest finished run of the same
model (short and whole-window steps, evaluation per example), else from earlier completed runs
of the same model and method per step. With none, the estimate is None (shown as "–"), never a
guess dressed as a number.
"""

from __future__ import annotations

from engine.training.clock import run_clock
from engine.training.settings import planned_steps
from storage import Storage


def queue_rows(storage: Storage, owner_id: int, *, see_all: bool = False) -> list[dict]:
    """Every queued run (one device: everybody's queue), in the order a worker takes them.
    Another user's run shows only its place (issue 27): no id, method, model, dataset, step or
    estimate, so neither its settings nor its length can be read off the queue (unless shared,
    or ``see_all``: an admin's view). Your own runs' start estimates still count the runs ahead."""
    history: dict = {}  # earlier runs' timings, read once per model for the whole queue
    wait = sum(seconds_left(storage, run, history) or 0.0 for run in storage.runs_with_status("running"))
    rows = []
    for position, run in enumerate(storage.queued_runs(), start=1):
        duration = seconds_left(storage, run, history)
        visible = run["owner_id"] == owner_id or run.get("shared") or see_all
        hidden = "(another user's)"
        rows.append({"position": position, "id": run["id"] if visible else None,
                     "method": run["method"] if visible else hidden,
                     "model": run["model_name"] if visible else hidden,
                     "dataset": run["dataset_name"] if visible else hidden,
                     "mine": run["owner_id"] == owner_id, "step": run["step"] if visible else None,
                     "estimated_duration_s": duration if visible else None,
                     "estimated_start_in_s": wait if visible else None})
        wait = None if wait is None or duration is None else wait + duration
    return rows


def seconds_left(storage: Storage, run: dict, history: dict | None = None) -> float | None:
    """Seconds a running or queued run has left: its clock's ETA when every part of it is
    timed (steps of each kind, evaluations), else the mean time per step (its own, or earlier
    completed runs' of the same model and method) times the steps left; None without either."""
    clock = run_clock(storage, run, history_cache=history)
    if clock["eta_s"] is not None and not clock["unknown"]:
        return clock["eta_s"]
    total = planned_steps(run)
    if total is None:
        return None  # an epoch-based run that has not started: its step count is not known yet
    if run["step"] and run["wall_time_s"]:
        per_step = run["wall_time_s"] / run["step"]
    else:
        per_step = storage.seconds_per_step(run["model_id"], run["method"])
        if per_step is None:
            return None
    return per_step * max(0, total - (run["step"] or 0))
