"""A run's clock (issue 27): elapsed time that keeps moving, and an ETA from the run's own mix
of steps and evaluations.

Steps are not alike. With ``audio_padding=longest`` every ``full_window_every``-th micro-batch
is padded to Whisper's whole 30 s window and costs many short ones; evaluations (every
``eval_steps``, then the final validation and the test scoring) cost what they measured. So

    ETA = short micro-batches left × t_short + whole-window micro-batches left × t_whole
          + evaluations left × t_eval + test examples × t_eval per example

with ``t_short`` and ``t_whole`` fitted to the run's own steps (each step's wall time less the
evaluation that ran just before it) and ``t_eval`` to its own evaluations (``measure``, pure: a
history of walls in, timings out). What the run has not timed yet (its first whole window comes
at micro-batch ``full_window_every``) comes from this machine's latest finished run of the same
model and window; without one it is left out of the number and named in ``unknown``, never
guessed. A run's ``wall_time_s`` is written at each step, so while it scores or runs one long
step, elapsed is that plus the time since it was written (``elapsed_seconds``).

    clock = run_clock(storage, run)   # {"elapsed_s", "eta_s", "parts", "unknown", "basis"}
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from engine.names import EVAL_PREFIX, LONGEST, LOSS
from engine.training.settings import planned_steps, stored_training
from storage import Storage

RECENT_STEPS = 2_000  # steps read for a running run's timings: bounded, and the recent speed counts


@dataclass(frozen=True)
class Plan:
    """What a run does, as far as time goes (from its settings and dataset)."""

    total_steps: int
    accumulation: int = 1
    full_window_every: int = 0  # 0: every micro-batch alike (whole windows only with audio_padding=longest)
    eval_steps: int = 0
    validation_items: int = 0
    test_items: int = 0
    eval_on_start: bool = False  # the untouched model is scored before step 1

    def whole_windows(self, first_step: int, last_step: int) -> int:
        """Whole-window micro-batches in optimizer steps ``first_step``..``last_step`` (1-based):
        micro-batch m (from 0) is one when m % n == n - 1, as the recipe pads them."""
        n = self.full_window_every
        if not n or last_step < first_step:
            return 0
        return (last_step * self.accumulation) // n - ((first_step - 1) * self.accumulation) // n

    def evaluations_between(self, after_step: int, total: int) -> int:
        """Evaluations every ``eval_steps`` after ``after_step``, before the final one at ``total``."""
        if not self.eval_steps:
            return 0
        return max(0, (total - 1) // self.eval_steps - after_step // self.eval_steps)


@dataclass(frozen=True)
class Timings:
    short_s: float | None = None  # one short micro-batch
    whole_s: float | None = None  # one whole-window micro-batch
    eval_per_item_s: float | None = None  # scoring one validation example


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def measure(step_walls: dict[int, float], eval_walls: dict[int, float], plan: Plan) -> Timings:
    """Timings fitted to a run's own history: ``step_walls`` {step: wall seconds when the step
    ended}, ``eval_walls`` {step: wall seconds when the evaluation after it ended} (step 0: the
    untouched model's, before the first step, from wall 0)."""
    accumulation = plan.accumulation
    durations = {}  # step -> (its seconds, its whole-window micro-batches)
    for step, wall in step_walls.items():
        before = eval_walls.get(step - 1, step_walls.get(step - 1, 0.0 if step == 1 else None))
        if before is not None and wall > before:
            durations[step] = (wall - before, plan.whole_windows(step, step))
    if len(durations) > 2:
        durations.pop(1, None)  # the first step warms up (allocations, first reads)
    short = _mean([seconds / accumulation for seconds, whole in durations.values() if not whole])
    whole_parts = [(seconds - (accumulation - whole) * (short or 0.0)) / whole
                   for seconds, whole in durations.values()
                   if whole and (short is not None or whole == accumulation)]
    whole = _mean([max(part, 0.0) for part in whole_parts])
    evals = [wall - step_walls[step] for step, wall in eval_walls.items() if step in step_walls]
    if not evals and 0 in eval_walls:  # only the untouched model's (on 30 s windows: slower)
        evals = [eval_walls[0]]
    per_item = _mean(evals) / plan.validation_items if evals and plan.validation_items else None
    return Timings(short, whole, per_item)


def fill_in(own: Timings, history: Timings | None) -> Timings:
    """``own`` with what it has not timed taken from an earlier run on this machine: the whole
    window as that run's ratio to its short micro-batch, evaluation per example as it was."""
    if history is None:
        return own
    whole = own.whole_s
    if whole is None and history.whole_s is not None:
        if own.short_s is not None and history.short_s:
            whole = own.short_s * history.whole_s / history.short_s
        elif own.short_s is None:
            whole = history.whole_s
    return Timings(own.short_s if own.short_s is not None else history.short_s, whole,
                   own.eval_per_item_s if own.eval_per_item_s is not None else history.eval_per_item_s)


def estimate(step: int, plan: Plan, timings: Timings, phase: str | None = None,
             phase_done: int = 0, phase_total: int = 0) -> dict:
    """Seconds left after ``step`` (``eta_s``: the sum of the parts that are known), the
    ``parts`` and what is ``unknown``. ``phase`` is the evaluation running now (the run's
    ``phase``: its remaining examples count too)."""
    parts: dict[str, float] = {}
    unknown: list[str] = []
    total = plan.total_steps
    micro = max(0, total - step) * plan.accumulation
    whole = plan.whole_windows(step + 1, total)
    for name, count, seconds in (("short steps", micro - whole, timings.short_s),
                                 ("whole-window steps", whole, timings.whole_s)):
        if count and seconds is None:
            unknown.append(name)
        elif count:
            parts[name] = count * seconds
    scoring = plan.evaluations_between(step, total) * plan.validation_items
    if phase is None or not phase.startswith("final"):
        scoring += plan.validation_items + plan.test_items  # the final validation and test scoring
    elif "validation" in phase:
        scoring += plan.test_items
    if phase:
        scoring += max(0, phase_total - phase_done)
    elif plan.eval_on_start and step == 0:
        scoring += plan.validation_items  # the untouched model's score, before the first step
    if scoring and timings.eval_per_item_s is None:
        unknown.append("evaluations")
    elif scoring:
        parts["evaluations"] = scoring * timings.eval_per_item_s
    return {"eta_s": sum(parts.values()) if parts or not unknown else None, "parts": parts,
            "unknown": unknown}


def elapsed_seconds(run: dict, now: float | None = None) -> float:
    """The run's wall time, moving: while it runs, plus the time since ``wall_time_s`` was
    written (a step, or a checkpoint), so it does not freeze during scoring or a long step."""
    elapsed = run.get("wall_time_s") or 0.0
    written = run.get("wall_time_at")
    if run.get("status") == "running" and written:
        elapsed += max(0.0, (time.time() if now is None else now) - written)
    return elapsed


# ------------------------------------------------------------------------------- from storage
def plan_of(storage: Storage, run: dict) -> Plan | None:
    """A stored run's ``Plan`` (None while its step count is unknown: epochs, not started)."""
    total = planned_steps(run)
    if total is None:
        return None
    training = stored_training(run)
    counts = storage.count_items(run["dataset_id"])
    return Plan(total_steps=total, accumulation=training.gradient_accumulation_steps,
                full_window_every=training.full_window_every if training.audio_padding == LONGEST else 0,
                eval_steps=training.eval_steps, eval_on_start=training.eval_on_start,
                validation_items=counts.get("validation", 0), test_items=counts.get("test", 0))


def timings_of(storage: Storage, run: dict, plan: Plan) -> Timings:
    """``measure`` on a stored run's walls (its latest ``RECENT_STEPS`` steps)."""
    since = max(0, (run.get("step") or 0) - RECENT_STEPS)
    steps = storage.metric_series(run["id"], LOSS, from_step=since)
    step_walls = dict(zip(steps["step"], steps["wall_time"]))
    evaluated = next((name for name in storage.metric_names(run["id"]) if name.startswith(EVAL_PREFIX)), None)
    eval_walls = {}
    if evaluated:
        evals = storage.metric_series(run["id"], evaluated)
        eval_walls = {s: w for s, w in zip(evals["step"], evals["wall_time"]) if s >= since}
    return measure(step_walls, eval_walls, plan)


def history_timings(storage: Storage, run: dict, cache: dict | None = None) -> Timings | None:
    """Timings of this machine's latest completed run of the same model with the same window
    (``audio_padding``), or None; ``cache`` keeps them across the runs of one queue."""
    padding = stored_training(run).audio_padding
    key = (run["model_id"], padding)
    if cache is not None and key in cache:
        return cache[key]
    found = None
    for earlier in storage.finished_runs_of_model(run["model_id"], exclude=run["id"]):
        earlier_plan = plan_of(storage, earlier) if stored_training(earlier).audio_padding == padding else None
        if earlier_plan is not None:
            found = timings_of(storage, earlier, earlier_plan)
            break
    if cache is not None:
        cache[key] = found
    return found


def run_clock(storage: Storage, run: dict, now: float | None = None,
              history_cache: dict | None = None) -> dict:
    """A running or queued run's ``elapsed_s`` (moving while it runs), ``eta_s`` (the known
    parts' sum; None when nothing is timed), its ``parts``, what is ``unknown`` (not timed, left
    out of ``eta_s``) and the ``basis`` of the timings (this run, an earlier run here, both)."""
    clock = {"elapsed_s": elapsed_seconds(run, now), "eta_s": None, "parts": {}, "unknown": [],
             "basis": None}
    history = None
    plan = plan_of(storage, run) if run["status"] in ("running", "queued") else None
    if plan is None:
        return clock
    own = timings_of(storage, run, plan) if run.get("step") else Timings()
    scored = plan.validation_items or plan.test_items
    if None in (own.short_s, own.whole_s if plan.full_window_every else 0, own.eval_per_item_s if scored else 0):
        history = history_timings(storage, run, history_cache)
    timings = fill_in(own, history)
    phase = run.get("phase") if run.get("phase_total") else None
    clock.update(estimate(run.get("step") or 0, plan, timings, phase, run.get("phase_done") or 0,
                          run.get("phase_total") or 0))
    mine = own != Timings()
    clock["basis"] = ("this run" if mine and history is None else
                      "this run and an earlier run of this model here" if mine else
                      "an earlier run of this model here" if history is not None else None)
    return clock
