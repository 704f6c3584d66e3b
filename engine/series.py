"""Downsampling of long metric series for display (min/max buckets, numpy only).

A chart cannot show more points than it has pixels, and shipping 100,000 points per run to the
browser makes a page with many runs slow. ``minmax_downsample`` splits a series into buckets of
consecutive points and keeps, from each bucket, the point with the smallest and the one with
the largest value, plus the very first and last points. Spikes and dips therefore survive
(a loss spike is exactly what a reader looks for), which plain striding would drop.

Pure functions of arrays: no streamlit, easy to test.
"""

from __future__ import annotations

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
