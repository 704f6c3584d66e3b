"""The Studies page's small promises (issue 27): the boxes show the numbers the plan uses, the
report download is built before it is offered, names of the same grid differ, the time
estimate counts whole runs, and the Pareto labels do not overprint."""

from __future__ import annotations

import json

import pytest

from page_fixtures import assert_built_before_offered, downloads, no_memory_estimate  # noqa: F401  (fixtures)
from seeded_runs import hold_worker
from test_studies_page import app, open_studies, seed_study  # noqa: F401  (a fixture)

pytestmark = pytest.mark.usefixtures("no_memory_estimate")  # not what these tests are about


def estimate(app) -> str:
    return next(info.value for info in app.info if "runs (" in info.value)


def test_a_step_count_below_one_is_shown_as_the_one_used(app):
    """Typing 0 left a red 0 in the box (the browser refused it) while the plan used 50."""
    open_studies(app)
    app.number_input(key="studies.steps").set_value(0).run()
    assert not app.exception, app.exception
    assert app.number_input(key="studies.steps").value == 1
    assert estimate(app).startswith("12 runs (4 cells × 3 seeds), 12 steps in all")
    assert any("Steps per run: 0 is outside 1 to 1,000,000, so 1 is used" in c.value for c in app.caption)
    app.number_input(key="studies.batch").set_value(5000).run()
    assert app.number_input(key="studies.batch").value == 1024
    assert not any("Steps per run" in c.value for c in app.caption)  # said once, where it happened


def test_the_learning_rate_box_shows_every_digit_used(app):
    """A text box (several rates make a grid axis): what is typed is what the plan uses, where a
    number box's "%.0e" once showed 1.5e-3 as 2e-03."""
    open_studies(app)
    app.text_input(key="studies.lr").set_value("1.5e-3").run()
    assert app.text_input(key="studies.lr").value == "1.5e-3" and not app.error


def test_a_finished_study_offers_built_files_and_labels_that_do_not_overprint(app, demo_home, downloads):
    study_id = seed_study(demo_home)
    open_studies(app)
    labels = [b.proto.label for b in assert_built_before_offered(app)]
    assert labels == ["Table as CSV", "Comparisons as CSV", "Study (JSON)", "Read-only report (HTML)"]
    page = downloads[f"study-{study_id}.html"].decode()
    assert page.startswith("<!doctype html>") and "Against lora · r=2 (per cell)" in page

    # Quality against trainable parameters: ia3 (500) and lora r=8 (4000) make the front; lora
    # r=2 (1000, no better than ia3) is named on hover only, and the front's labels alternate.
    [chart] = [c for c in app.get("plotly_chart") if "quality_vs_trainable_params" in c.proto.id]
    traces = [t for t in json.loads(chart.proto.spec)["data"] if t.get("hovertext")]
    shown = {cell: (text, place) for t in traces
             for cell, text, place in zip(t["hovertext"], t["text"], t["textposition"])}
    assert shown == {"ia3": ("ia3", "top center"), "lora · r=8": ("lora · r=8", "bottom center"),
                     "lora · r=2": ("", "top center")}


def test_the_time_estimate_counts_whole_runs_not_only_their_steps(app, demo_home):
    """A 50-step run of a tiny model took 7 s, its steps 1 s, and the estimate said 1 s."""
    from engine import Workbench

    workbench = Workbench(demo_home)
    hold_worker(workbench)
    earlier = workbench.submit_run("demo-text", "tiny-bert", "lora", {}, {"max_steps": 50})
    workbench.storage.update_run(earlier, status="completed", step=50, total_steps=50, wall_time_s=1.0,
                                 started_at="2025-01-01T00:00:00Z", finished_at="2025-01-01T00:00:07Z")
    open_studies(app)
    app.selectbox(key="studies.dataset").set_value("demo-text").run()
    app.selectbox(key="studies.model").set_value("tiny-bert").run()
    app.multiselect(key="studies.methods").set_value(["lora"]).run()
    app.text_input(key="studies.ranks").set_value("4").run()
    app.text_input(key="studies.seeds").set_value("1, 2").run()
    text = estimate(app)
    assert text.startswith("2 runs (1 cell × 2 seeds), 100 steps in all · about 0m 14s one after another")
    assert "plus the loading, scoring and saving around them" in text


def test_studies_of_the_same_grid_get_different_names(demo_home):
    from engine import Workbench
    from engine.studies import Grid

    workbench = Workbench(demo_home)
    hold_worker(workbench)
    grid = Grid(["lora"], ranks=[2], seeds=[1])
    first, second = (workbench.submit_study("demo-text", "tiny-bert", grid, {"max_steps": 2}) for _ in range(2))
    named = workbench.submit_study("demo-text", "tiny-bert", grid, {"max_steps": 2}, name="mine")
    names = [workbench.get_study(i)["name"] for i in (first, second, named)]
    assert names == ["lora · tiny-bert on demo-text", "lora · tiny-bert on demo-text (2)", "mine"]


def test_a_ray_address_is_checked_before_anything_is_queued(app, demo_home):
    """Run on: this machine (the queue) or a Ray cluster's address (with accounts on, admins
    only: test_accounts_pages.py)."""
    from engine import Workbench

    open_studies(app)  # accounts off: one person on their own machine may
    assert app.radio(key="studies.where").value == "this machine"
    assert not any(t.key == "studies.ray" for t in app.text_input)
    app.radio(key="studies.where").set_value("a Ray cluster").run()
    app.text_input(key="studies.ray").input("--help").run()
    [launch] = [b for b in app.button if b.key == "studies.launch"]
    launch.click().run()
    assert any("is not a Ray address" in e.value for e in app.error)
    assert Workbench(demo_home).list_studies() == []  # refused before anything was queued

