"""The command line's training progress: a bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

import io

from engine.progress import COMPILING, LOSS, SAMPLES_PER_S, ProgressReport


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_at(step: int, status: str = "running", phase: str | None = None) -> dict:
    return {"status": status, "step": step, "total_steps": 10, "wall_time_s": 2.0 * step, "phase": phase}


def latest() -> dict:
    return {LOSS: 1.25, SAMPLES_PER_S: 3.0}


def test_plain_lines_when_not_a_terminal_with_loss_speed_and_eta():
    stream = io.StringIO()
    report = ProgressReport(7, latest, stream, line_every_s=0)
    report.update(run_at(0, "queued"))  # nothing to count yet
    report.update(run_at(2))
    report.update(run_at(2))  # no new step, no new line
    report.update(run_at(10))  # the last step, while the test split is scored
    report.close(run_at(10, "completed"))
    assert stream.getvalue().splitlines() == [
        "run 7: step 2/10 (20%) · loss 1.2500 · 3.0 samples/s · ETA 0m 16s",
        "run 7: step 10/10 (100%) · loss 1.2500 · 3.0 samples/s · ETA 0m 00s",
        "run 7: step 10/10 (100%) · loss 1.2500 · 3.0 samples/s",  # the end says it ended
    ]


def test_a_compile_that_holds_a_step_back_is_said_once():
    """A GPU run's first batch of each shape compiles the layers (tens of seconds): the line
    says so instead of repeating the step, and gives no ETA from the slow first steps."""
    stream = io.StringIO()
    report = ProgressReport(7, latest, stream, line_every_s=0)
    report.update(run_at(0, phase=COMPILING))
    report.update(run_at(0, phase=COMPILING))  # still compiling: no new line
    report.update(run_at(4))
    report.update(run_at(4, phase=COMPILING))  # a new shape at the same step: said
    report.update(run_at(4, phase="final evaluation on the test split"))  # the same step: no line
    assert stream.getvalue().splitlines() == [
        f"run 7: step 0/10 (0%) · loss 1.2500 · 3.0 samples/s · {COMPILING}",
        "run 7: step 4/10 (40%) · loss 1.2500 · 3.0 samples/s · ETA 0m 12s",
        f"run 7: step 4/10 (40%) · loss 1.2500 · 3.0 samples/s · {COMPILING}",
    ]
    terminal = Terminal()
    ProgressReport(7, latest, terminal).update(run_at(2, phase=COMPILING))
    assert COMPILING in terminal.getvalue()


def test_plain_lines_are_rate_limited_for_long_runs():
    stream = io.StringIO()
    report = ProgressReport(7, latest, stream, line_every_s=3600)
    for step in range(1, 10):
        report.update(run_at(step))
    report.close(run_at(10, "completed"))
    assert [line.split(" · ")[0] for line in stream.getvalue().splitlines()] == [
        "run 7: step 1/10 (10%)", "run 7: step 10/10 (100%)"]


def test_a_bar_on_a_terminal():
    stream = Terminal()
    report = ProgressReport(7, latest, stream)
    report.update(run_at(3))
    report.close(run_at(10, "completed"))
    shown = stream.getvalue()
    assert "\r" in shown and "run 7" in shown and "3/10" in shown and "10/10" in shown
    assert "loss 1.2500 · 3.0 samples/s" in shown and "<" in shown  # tqdm's elapsed<remaining


def test_a_run_that_never_started_shows_no_progress():
    for stream in (io.StringIO(), Terminal()):
        report = ProgressReport(7, latest, stream, line_every_s=0)
        report.close({"status": "failed", "step": 0, "total_steps": None, "wall_time_s": None})
        assert stream.getvalue() == ""


def test_durations_read_like_a_person_would_say_them():
    from engine.progress import format_duration

    assert format_duration(None) == "–"
    assert format_duration(123) == "2m 03s" and format_duration(3723) == "1h 02m 03s"
    assert format_duration(30 * 3600) == "30h 00m 00s"
    assert format_duration(5e6) == "about 58 days"
    # the queue once said "3920937317h 19m" for a legal but absurd run
    assert format_duration(3920937317 * 3600 + 19 * 60) == "about 447,289 years"
