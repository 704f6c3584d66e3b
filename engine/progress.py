"""Training progress on the command line (``train --wait``, ``runs resume --wait``).

On a terminal a tqdm bar (step / total, loss, samples/s, ETA) redraws in place; anywhere else
(a log file, CI) the same facts come as plain lines, at most one every ``line_every_s``, so a
100,000-step run does not write 100,000 lines. ``--json`` runs show neither. The report only
reads the run's row and latest metrics; whichever process trains the run, it looks the same.
The pages' monitor reads durations, the ETA and what a run is busy with from here too.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from tqdm import tqdm

from engine.names import LOSS, SAMPLES_PER_S

# The phase a run stores while its first batch of a new shape compiles the layers
# (engine/training/step.py); evaluation phases name their split and count examples.
COMPILING = "compiling the layers for a new batch shape"


def busy_with(run: dict) -> str | None:
    """What a running run does between steps: "evaluating" (a phase with examples to count) or
    the phase itself (``COMPILING``); None while it trains or when it is not running."""
    phase = run.get("phase") if run["status"] == "running" else None
    if not phase:
        return None
    return "evaluating" if run.get("phase_total") else phase


def format_duration(seconds: float | None) -> str:
    """``1h 02m 03s`` / ``2m 03s``, ``about 3 days`` / ``about 12 years`` past two days (a
    run that long is a mistake to catch, not a time to read to the second), or ``–`` when
    unknown. The pages show durations this way too."""
    if seconds is None:
        return "–"
    days = seconds / 86_400
    if days >= 2 * 365:
        return f"about {days / 365.25:,.0f} years"
    if days >= 2:
        return f"about {days:,.0f} days"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def eta_seconds(run: dict) -> float | None:
    """Time left of a running run at its mean time per step so far (None before its first
    step, or when it is not running)."""
    step, total, elapsed = run["step"] or 0, run["total_steps"], run["wall_time_s"] or 0.0
    if run["status"] != "running" or not step or not total:
        return None
    return elapsed / step * max(0, total - step)


class ProgressReport:
    """Shows a run's progress on ``stream``; ``update(run)`` as it goes, ``close(run)`` at the end.

    ``latest()`` returns the newest ``{metric name: value}`` (loss and samples/s); ``clock()``,
    when given, the run's clock (``Workbench.run_clock``: an ETA from its own short and
    whole-window steps and evaluations) for the plain lines' ETA, else the mean step time."""

    def __init__(self, run_id: int, latest: Callable[[], dict[str, float]], stream: TextIO | None = None,
                 line_every_s: float = 10.0, clock: Callable[[], dict] | None = None):
        self.run_id, self.latest, self.clock = run_id, latest, clock
        self.stream = stream if stream is not None else sys.stderr
        self.line_every_s = line_every_s
        self.on_terminal = self.stream.isatty()
        self.bar: tqdm | None = None
        self.last_line_at, self.last_line_step, self.last_line = float("-inf"), None, ""

    def update(self, run: dict) -> None:
        if run["status"] != "running" or not run["total_steps"]:
            return  # queued behind another run, or still loading: nothing to count yet
        if self.on_terminal:
            self._draw(run)
        elif (time.monotonic() - self.last_line_at >= self.line_every_s
              and (run["step"] != self.last_line_step or busy_with(run) == COMPILING)
              and self._text(run) != self.last_line):
            self._line(run)  # a new step, or a compile that holds the step back

    def close(self, run: dict) -> None:
        """The final state: the bar at its last step, or a last line unless one said it all."""
        if not run["total_steps"] or not (run["step"] or self.bar is not None):
            return  # it never started (it failed while loading, say): the error line says why
        if self.on_terminal:
            self._draw(run)
            self.bar.close()
        elif self._text(run) != self.last_line:  # the end (no ETA) differs from "step 3/3, ETA 0s"
            self._line(run)

    def _figures(self) -> tuple[float | None, float | None]:
        values = self.latest()
        return values.get(LOSS), values.get(SAMPLES_PER_S)

    def _draw(self, run: dict) -> None:
        if self.bar is None:  # a resumed run starts the bar at its checkpoint's step
            self.bar = tqdm(total=run["total_steps"], initial=run["step"] or 0, unit="step",
                            desc=f"run {self.run_id}", file=self.stream, dynamic_ncols=True)
        loss, speed = self._figures()
        self.bar.set_postfix_str(" · ".join(part for part in (
            None if loss is None else f"loss {loss:.4f}",
            None if speed is None else f"{speed:.1f} samples/s", busy_with(run)) if part), refresh=False)
        self.bar.update((run["step"] or 0) - self.bar.n)  # tqdm works out the rate and the ETA

    def _text(self, run: dict) -> str:
        step, total = run["step"] or 0, run["total_steps"]
        loss, speed = self._figures()
        busy = busy_with(run)
        parts = [f"run {self.run_id}: step {step}/{total} ({100 * step / total:.0f}%)",
                 None if loss is None else f"loss {loss:.4f}",
                 None if speed is None else f"{speed:.1f} samples/s", self._eta(run, busy), busy]
        return " · ".join(part for part in parts if part)

    def _eta(self, run: dict, busy: str | None) -> str | None:
        if self.clock is None:
            eta = None if busy else eta_seconds(run)  # the mean step time says nothing then
            return None if eta is None else f"ETA {format_duration(eta)}"
        clock = self.clock() if run["status"] == "running" else {"eta_s": None}
        if clock["eta_s"] is None:
            return None
        return f"ETA {'at least ' if clock['unknown'] else ''}{format_duration(clock['eta_s'])}"

    def _line(self, run: dict) -> None:
        self.last_line = self._text(run)
        print(self.last_line, file=self.stream, flush=True)
        self.last_line_at, self.last_line_step = time.monotonic(), run["step"]


class StudyProgressReport:
    """A study's progress on ``stream`` while other processes train its runs (``study --ray``):
    on a terminal a bar of its steps with the runs ended and running; anywhere else one line
    per run that ends. ``update(progress)`` / ``close(progress)`` take
    ``Workbench.study_progress``."""

    def __init__(self, study_id: int, stream: TextIO | None = None):
        self.study_id = study_id
        self.stream = stream if stream is not None else sys.stderr
        self.on_terminal = self.stream.isatty()
        self.bar: tqdm | None = None
        self.ended: set[int] = set()

    def update(self, progress: dict) -> None:
        if self.on_terminal:
            self._draw(progress)
            return
        for run in progress["runs"]:
            if run["status"] not in ("queued", "running") and run["id"] not in self.ended:
                self.ended.add(run["id"])
                print(f"study {self.study_id}: run {run['id']} ({run['cell']}, seed {run['seed']}) "
                      f"{run['status']} · {len(self.ended)}/{progress['runs_total']} runs ended",
                      file=self.stream, flush=True)

    def close(self, progress: dict) -> None:
        self.update(progress)
        if self.bar is not None:
            self.bar.close()

    def _draw(self, progress: dict) -> None:
        if self.bar is None:
            self.bar = tqdm(total=progress["steps_total"] or None, unit="step", desc=f"study {self.study_id}",
                            file=self.stream, dynamic_ncols=True)
        running = progress["status_counts"].get("running", 0)
        self.bar.set_postfix_str(f"{progress['runs_ended']}/{progress['runs_total']} runs ended · "
                                 f"{running} running", refresh=False)
        self.bar.update(progress["steps_done"] - self.bar.n)
