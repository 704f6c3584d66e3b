"""The Studies page's small promises (issue 27): the boxes show the numbers the plan uses, the
report download is built before it is offered, names of the same grid differ, the time
estimate counts whole runs, and the Pareto labels do not overprint."""

from __future__ import annotations

from page_fixtures import assert_built_before_offered, downloads  # noqa: F401  (a fixture)
from seeded_runs import hold_worker
from test_studies_page import app, open_studies, seed_study  # noqa: F401  (a fixture)


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
    open_studies(app)
    assert app.number_input(key="studies.lr").proto.format == "%g"  # not "%.0e": 1.5e-3 showed as 2e-03


def test_the_study_report_is_built_before_it_is_offered(app, demo_home, downloads):
    study_id = seed_study(demo_home)
    open_studies(app)
    labels = [b.proto.label for b in assert_built_before_offered(app)]
    assert labels == ["Table as CSV", "Read-only report (HTML)"]
    page = downloads[f"study-{study_id}.html"].decode()
    assert page.startswith("<!doctype html>") and "Differences against lora · r=2" in page
