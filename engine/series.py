"""Downsampling of long metric series for display (min/max buckets, numpy only).

A chart cannot show more points than it has pixels, and shipping 100,000 points per run to the
browser makes a page with many runs slow. ``minmax_downsample`` splits a series into buckets of
consecutive points and keeps, from each bucket, the point with the smallest and the one with
the largest value, plus the very first and last points. Spikes and dips therefore survive
(a loss spike is exactly what a reader looks for), which plain striding would drop.

Pure functions of arrays (no streamlit, easy to test), the display series stored when a run
ends, and ``LiveSeries``, which keeps a running run's series downsampled as it grows.
"""

from __future__ import annotations

import threading

import numpy as np

DEFAULT_BUCKETS = 500  # up to 2 points per bucket: ~1,000 points per line


def minmax_downsample(x, y, buckets: int = DEFAULT_BUCKETS) -> tuple[np.ndarray, np.ndarray]:
    """At most ``2 * buckets + 2`` points of (x, y), in their original order.

    Keeps the first and last points and, per bucket of consecutive points, the minimum and the
    maximum of ``y``; so the global extremes are always kept. Short series come back unchanged.
    """
    xs, ys = np.asarray(x), np.asarray(y, dtype=np.float64)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ValueError("x and y must be 1-D arrays of the same length")
    if buckets < 1:
        raise ValueError("buckets must be at least 1")
    keep = kept_indices(ys, buckets)
    return xs[keep], ys[keep]


def kept_indices(values: np.ndarray, buckets: int) -> np.ndarray:
    """Sorted indices of the points ``minmax_downsample`` keeps."""
    count = len(values)
    if count <= 2 * buckets + 2:
        return np.arange(count)
    size = -(-count // buckets)  # ceil: every bucket has `size` points, the last may be padded
    # Pad with the last value so the array reshapes; a pad index maps back to the last point,
    # which is kept anyway.
    padded = np.concatenate([values, np.full(size * buckets - count, values[-1])])
    grid = padded.reshape(buckets, size)
    starts = np.arange(buckets) * size
    # fmin/fmax semantics: NaN (a diverged loss) never hides the real extremes of a bucket.
    cleaned_low = np.where(np.isnan(grid), np.inf, grid)
    cleaned_high = np.where(np.isnan(grid), -np.inf, grid)
    lows = starts + np.argmin(cleaned_low, axis=1)
    highs = starts + np.argmax(cleaned_high, axis=1)
    chosen = np.concatenate([[0, count - 1], np.minimum(lows, count - 1),
                             np.minimum(highs, count - 1)])
    return np.unique(chosen)  # sorted, without duplicates


# ---------------------------------------------------------------------- stored display series
# A finished run's series never change, so the worker downsamples each of them once, when the
# run ends, and stores the result (table run_series). The Compare page then reads ~1,000 points
# per metric instead of every step; a run that has moved on since (resumed, still running) is
# recomputed on read and stored again.

def display_series(storage, run_id: int, name: str, last_step: int,
                   buckets: int = DEFAULT_BUCKETS) -> dict[str, list]:
    """``{"step", "wall_time", "value"}`` of one metric, downsampled, stored for ``last_step``."""
    stored = storage.stored_series(run_id, name)
    if stored is not None and stored["last_step"] == last_step:
        return stored["columns"]
    columns = storage.metric_series(run_id, name)
    if columns["value"]:
        keep = kept_indices(np.asarray(columns["value"], dtype=np.float64), buckets)
        columns = {key: np.asarray(values)[keep].tolist() for key, values in columns.items()}
    storage.store_series(run_id, name, last_step, columns)
    return columns


def store_run_series(storage, run_id: int) -> list[str]:
    """Downsample and store every metric of a run (the worker calls this when a run ends)."""
    last_step = storage.get_run(run_id, owner_id=None)["step"] or 0
    names = storage.metric_names(run_id)
    for name in names:
        display_series(storage, run_id, name, last_step)
    return names


# ---------------------------------------------------------------------- live series
# The live monitor redraws a running run every 1.5 s. Reading every row each time would make a
# 100,000-step run's page 1,000 times slower than a 100-step run's, so ``LiveSeries`` keeps each
# metric downsampled in memory and reads only the rows logged since its last read (index seeks
# on the metrics table's primary key). A first read starts from the display series stored for
# the run (the worker stores them every minute while it trains, and when the run ends), so it
# reads at most a minute of rows too.

COLUMNS = ("step", "wall_time", "value")


class LiveSeries:
    """Downsampled series of running runs, each brought up to date from its newest rows.

    Thread-safe (the app's pages share one workbench). A finished run is read from its stored
    display series instead and leaves the cache.
    """

    def __init__(self, buckets: int = DEFAULT_BUCKETS):
        self.buckets = buckets
        self._runs: dict[int, dict[str, dict[str, np.ndarray]]] = {}
        self._lock = threading.Lock()

    def read(self, storage, run_id: int, run_step: int) -> dict[str, dict[str, list]]:
        """``{name: {"step", "wall_time", "value"}}``, each at most ``2 * buckets + 2`` points
        and always ending with the metric's latest point."""
        with self._lock:
            cached = self._runs.get(run_id, {})
            newest = max((int(columns["step"][-1]) for columns in cached.values()), default=0)
            if newest > run_step + 1:
                # A resume deleted the points after its checkpoint and logs them again (the run's
                # step lags its newest points by at most the step being written).
                cached = {}
            for name in storage.metric_names(run_id):
                start = cached.get(name) or self._stored(storage, run_id, name, run_step)
                cached[name] = self._extend(start, storage, run_id, name)
            self._runs[run_id] = cached
            return {name: self._shown(columns) for name, columns in cached.items()}

    def store(self, storage, run_id: int, run_step: int) -> None:
        """Bring the run's series up to date and store them (the worker, while it trains), so
        a monitor opened later starts from them."""
        for name, columns in self.read(storage, run_id, run_step).items():
            storage.store_series(run_id, name, run_step, columns)

    @staticmethod
    def _stored(storage, run_id: int, name: str, run_step: int) -> dict[str, np.ndarray] | None:
        stored = storage.stored_series(run_id, name)
        if stored is None or not stored["columns"]["step"]:
            return None
        if stored["columns"]["step"][-1] > run_step + 1:
            return None  # stored before a resume replaced its later points
        return {key: np.asarray(stored["columns"][key], dtype=np.float64) for key in COLUMNS}

    def forget(self, run_id: int) -> None:
        with self._lock:
            self._runs.pop(run_id, None)

    def _extend(self, columns: dict[str, np.ndarray] | None, storage, run_id: int,
                name: str) -> dict[str, np.ndarray]:
        # Re-read from the newest cached step: validation and test points of that step are
        # written after its training points, and a replayed step replaces its values.
        since = int(columns["step"][-1]) if columns else 0
        new = storage.metric_series(run_id, name, from_step=since)
        if columns is None:
            merged = {key: np.asarray(new[key], dtype=np.float64) for key in COLUMNS}
        else:
            older = columns["step"] < since
            merged = {key: np.concatenate([columns[key][older], np.asarray(new[key], dtype=np.float64)])
                      for key in COLUMNS}
        if len(merged["value"]) > 2 * (2 * self.buckets + 2):  # compact; extremes and ends stay
            keep = kept_indices(merged["value"], self.buckets)
            merged = {key: values[keep] for key, values in merged.items()}
        return merged

    def _shown(self, columns: dict[str, np.ndarray]) -> dict[str, list]:
        keep = kept_indices(columns["value"], self.buckets)
        shown = {key: columns[key][keep].tolist() for key in COLUMNS}
        shown["step"] = [int(step) for step in shown["step"]]
        return shown
