"""Downsampling keeps what a reader looks for: first and last points, extremes, order."""

from __future__ import annotations

import numpy as np
import pytest

from engine.series import minmax_downsample


def random_series(rng: np.random.Generator, length: int) -> tuple[np.ndarray, np.ndarray]:
    kind = rng.integers(4)
    steps = np.cumsum(rng.integers(1, 5, size=length)).astype(float)
    if kind == 0:
        values = rng.normal(size=length)
    elif kind == 1:
        values = np.cumsum(rng.normal(size=length))  # a random walk
    elif kind == 2:
        values = np.exp(-steps / steps[-1] * 5) + rng.normal(scale=0.01, size=length)  # a loss
    else:
        values = np.full(length, 3.0)
        values[rng.integers(length)] = 50.0  # one spike in a flat line
    return steps, values


@pytest.mark.parametrize("seed", range(40))
def test_downsampled_series_keeps_ends_extremes_and_order(seed):
    rng = np.random.default_rng(seed)
    length = int(rng.integers(1, 30_000))
    buckets = int(rng.integers(1, 400))
    x, y = random_series(rng, length)

    dx, dy = minmax_downsample(x, y, buckets)

    assert len(dx) == len(dy) <= max(length, 2 * buckets + 2)
    assert (dx[0], dy[0]) == (x[0], y[0])
    assert (dx[-1], dy[-1]) == (x[-1], y[-1])
    assert dy.max() == y.max() and dy.min() == y.min()
    assert np.all(np.diff(dx) > 0)  # still in order, no point twice
    originals = dict(zip(x.tolist(), y.tolist()))
    assert all(originals[a] == b for a, b in zip(dx.tolist(), dy.tolist()))  # real points only


def test_short_series_come_back_unchanged():
    x, y = np.arange(10.0), np.arange(10.0) ** 2
    dx, dy = minmax_downsample(x, y, buckets=10)
    assert dx.tolist() == x.tolist() and dy.tolist() == y.tolist()


def test_a_long_series_shrinks_to_the_bucket_budget():
    x = np.arange(100_000.0)
    dx, _ = minmax_downsample(x, np.sin(x / 1000), buckets=500)
    assert 500 <= len(dx) <= 1002


def test_nan_values_do_not_hide_the_extremes():
    y = np.linspace(0, 1, 5000)
    y[100:200] = np.nan
    y[150] = -7.0
    _, dy = minmax_downsample(np.arange(5000.0), y, buckets=20)
    assert -7.0 in dy.tolist() and 1.0 in dy.tolist()


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError):
        minmax_downsample([1, 2, 3], [1, 2])


def test_an_ended_run_stores_its_display_series_and_the_page_reads_them(workbench):
    from conftest import FAST

    from engine.series import kept_indices

    run_id = workbench.submit_run("demo-commands", "tiny-whisper", "lora", {}, {**FAST, "max_steps": 6})
    summary = workbench.wait_for_run(run_id)
    assert summary["status"] == "completed"
    names = workbench.storage.metric_names(run_id)
    assert workbench.storage.stored_series_names(run_id, 6) == names  # stored when it ended
    assert workbench.run_metric_names(run_id) == names
    stored = workbench.storage.stored_series(run_id, "train/loss")
    raw = workbench.storage.metric_series(run_id, "train/loss")
    keep = kept_indices(np.asarray(raw["value"]), 500)
    assert stored["last_step"] == 6
    assert stored["columns"]["value"] == np.asarray(raw["value"])[keep].tolist()
    assert workbench.display_series(run_id, "train/loss") == stored["columns"]


def test_a_run_that_moved_on_is_downsampled_again(workbench):
    run_id = workbench.submit_run("demo-commands", "tiny-whisper", "lora", {}, {"max_steps": 5000})
    storage = workbench.storage
    for step in range(1, 3001):
        storage.add_metrics(run_id, step, step * 0.1, {"train/loss": 1.0 / step})
    storage.update_run(run_id, step=3000)
    first = workbench.display_series(run_id, "train/loss")
    assert first["step"][0] == 1 and first["step"][-1] == 3000 and len(first["step"]) <= 1002
    storage.add_metrics(run_id, 3001, 300.1, {"train/loss": 9.0})  # a resumed run's new spike
    storage.update_run(run_id, step=3001)
    again = workbench.display_series(run_id, "train/loss")
    assert again["step"][-1] == 3001 and 9.0 in again["value"]
    assert storage.stored_series(run_id, "train/loss")["last_step"] == 3001


def test_the_live_monitor_reads_a_long_run_as_bounded_series_and_latest_values(workbench):
    from engine.series import LiveSeries

    storage = workbench.storage
    run_id = workbench.submit_run("demo-commands", "tiny-whisper", "lora", {}, {"max_steps": 100_000})
    storage.claim_next_run("elsewhere:1:1", run_id=run_id)  # running, as the monitor sees it
    steps = 60_000
    with storage.atomic() as db:  # one transaction: fast to write, the same rows to read
        db["run_metrics"].insert_all(
            {"run_id": run_id, "step": step, "wall_time": step * 0.1, "name": name,
             "value": (50.0 if step == 12_345 else 1.0 / step) if name == "train/loss" else 40.0}
            for step in range(1, steps + 1) for name in ("train/loss", "train/samples_per_s"))
    storage.update_run(run_id, step=steps)
    LiveSeries().store(storage, run_id, steps)  # what the worker does every minute

    def more_steps(first: int, count: int = 10) -> None:
        for step in range(first, first + count):
            storage.add_metrics(run_id, step, step * 0.1, {"train/loss": 0.5, "train/samples_per_s": 41.0})
        storage.update_run(run_id, step=first + count - 1)

    read = []
    real_series = storage.metric_series
    storage.metric_series = lambda *args, **kw: read.append(real_series(*args, **kw)) or read[-1]
    more_steps(steps + 1)
    for refresh in range(2):  # the page opens, then refreshes after ten more steps
        live = workbench.live_metrics(run_id)
        assert max(len(columns["step"]) for columns in read) <= 11  # never the 60,000 rows
        loss, last = live["series"]["train/loss"], steps + 10 * (refresh + 1)
        assert len(loss["step"]) <= 1002 and loss["step"][0] == 1 and loss["step"][-1] == last
        assert 50.0 in loss["value"]  # the spike survives downsampling
        assert live["latest"] == {"train/loss": 0.5, "train/samples_per_s": 41.0}
        read.clear()
        more_steps(last + 1)
    storage.metric_series = real_series

    # A resume from an earlier checkpoint replaces the points after it.
    storage.delete_metrics_after(run_id, 40_000)
    storage.update_run(run_id, step=40_000)
    storage.add_metrics(run_id, 40_001, 1.0, {"train/loss": 7.0})
    live = workbench.live_metrics(run_id)
    assert live["series"]["train/loss"]["step"][-1] == 40_001 and live["latest"]["train/loss"] == 7.0

    storage.update_run(run_id, status="stopped", step=40_001)  # ended: the stored display series
    live = workbench.live_metrics(run_id)
    assert len(live["series"]["train/loss"]["step"]) <= 1002 and live["latest"]["train/loss"] == 7.0
