"""Rules that end a run early: early stopping on the validation metric, and a time limit.

Each keeps the little state it needs in ``state_dict()`` so a checkpoint carries it and a
resumed run stops exactly where an uninterrupted one would.
"""

from __future__ import annotations

import time

from engine.metrics import METRIC_DIRECTION


class EarlyStopping:
    """Stop after ``patience`` evaluations in a row without a better ``metric``."""

    def __init__(self, metric: str, patience: int):
        self.metric, self.patience = metric, patience
        self.greater_is_better = METRIC_DIRECTION.get(metric, True)
        self.best: float | None = None
        self.evaluations_without_improvement = 0

    def update(self, metrics: dict) -> bool:
        """Record one evaluation; True when training should stop now."""
        value = metrics.get(self.metric)
        if not self.patience or value is None:
            return False
        better = self.best is None or (value > self.best if self.greater_is_better else value < self.best)
        if better:
            self.best, self.evaluations_without_improvement = value, 0
        else:
            self.evaluations_without_improvement += 1
        return self.evaluations_without_improvement >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "evaluations_without_improvement": self.evaluations_without_improvement}

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best")
        self.evaluations_without_improvement = state.get("evaluations_without_improvement", 0)


class TimeLimit:
    """Minutes of training in this session (a resumed run gets the full limit again)."""

    def __init__(self, minutes: float):
        self.seconds = minutes * 60 if minutes > 0 else None
        self.started = time.monotonic()

    def reached(self) -> bool:
        return self.seconds is not None and time.monotonic() - self.started >= self.seconds
