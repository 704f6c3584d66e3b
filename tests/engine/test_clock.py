"""The presenter's clock (issue 27 item 4): the ETA from a run's own mix of short and whole-window
steps and its evaluations, elapsed that moves, the machine's load. Seeded histories, no
wall-clock asserts."""

from __future__ import annotations

import pytest
from conftest import FAST

from engine.training.clock import Plan, Timings, elapsed_seconds, estimate, fill_in, measure, run_clock
from engine.training.monitoring import MachineLoad
from engine.training.queue import seconds_left

# The presenter's run (engine/demo.py): 96 steps, every 16th batch on the whole window,
# validation every 32 steps and before the first, then the test split.
DEMO = Plan(total_steps=96, full_window_every=16, eval_steps=32, validation_items=10, test_items=20,
            eval_on_start=True)
SHORT, WHOLE, PER_ITEM, UNTOUCHED = 2.0, 60.0, 3.0, 100.0


def demo_history(until: int, plan: Plan = DEMO) -> tuple[dict, dict]:
    """Walls as the recipe logs them: the untouched model's score first, every step, and each
    evaluation's end (after the step it follows)."""
    wall, steps, evals = UNTOUCHED, {}, {0: UNTOUCHED}
    for step in range(1, until + 1):
        whole = plan.whole_windows(step, step)
        wall += (plan.accumulation - whole) * SHORT + whole * WHOLE
        steps[step] = wall
        if plan.eval_steps and step % plan.eval_steps == 0:
            wall += plan.validation_items * PER_ITEM
            evals[step] = wall
    return steps, evals


def test_whole_window_micro_batches_are_counted_as_the_recipe_pads_them():
    assert [DEMO.whole_windows(s, s) for s in (15, 16, 17, 32)] == [0, 1, 0, 1]
    assert DEMO.whole_windows(1, 96) == 6 and DEMO.whole_windows(96, 95) == 0
    accumulated = Plan(total_steps=10, accumulation=4, full_window_every=8)  # micro-batch 7, 15, ...
    assert [accumulated.whole_windows(s, s) for s in (1, 2, 3, 4)] == [0, 1, 0, 1]
    assert DEMO.evaluations_between(0, 96) == 2 and DEMO.evaluations_between(32, 96) == 1
    assert DEMO.evaluations_between(64, 96) == 0  # the one at 96 is the final evaluation


def test_the_eta_counts_the_whole_window_step_and_the_scoring_left():
    steps, evals = demo_history(95)
    timings = measure(steps, evals, DEMO)
    assert timings == Timings(pytest.approx(SHORT), pytest.approx(WHOLE), pytest.approx(PER_ITEM))
    clock = estimate(95, DEMO, timings)
    # step 96 is a whole window, then the final validation and the test split: not "0m 14s"
    assert clock["parts"] == {"whole-window steps": pytest.approx(60.0), "evaluations": pytest.approx(90.0)}
    assert clock["eta_s"] == pytest.approx(150.0) and clock["unknown"] == []
    mean_per_step = steps[95] / 95  # what the old ETA said: elapsed / step × steps left
    assert mean_per_step < 10 < clock["eta_s"]


def test_the_first_eta_leaves_out_the_untouched_models_score():
    steps, evals = demo_history(3)
    timings = measure(steps, evals, DEMO)
    assert timings.short_s == pytest.approx(SHORT)  # step 1 did not absorb the 100 s before it
    clock = estimate(3, DEMO, timings)
    # no whole window timed yet (the first is step 16): said, not guessed
    assert clock["unknown"] == ["whole-window steps"]
    assert clock["parts"]["short steps"] == pytest.approx((93 - 6) * SHORT)
    # evaluations: only the untouched model's (30 s windows) timed so far, 100 s for 10 items
    assert clock["parts"]["evaluations"] == pytest.approx((2 + 1) * 10 * 10.0 + 20 * 10.0)


def test_what_the_run_has_not_timed_comes_from_an_earlier_run_here():
    earlier = Timings(short_s=1.0, whole_s=40.0, eval_per_item_s=2.0)
    own = Timings(short_s=2.0)
    assert fill_in(own, earlier) == Timings(2.0, 80.0, 2.0)  # the whole window at the earlier ratio
    assert fill_in(Timings(), earlier) == earlier and fill_in(own, None) == own
    clock = estimate(0, DEMO, earlier)  # a queued demo run, from history alone
    assert clock["eta_s"] == pytest.approx(90 * 1.0 + 6 * 40.0 + (3 * 10 + 10 + 20) * 2.0)


def test_during_an_evaluation_its_remaining_examples_count():
    timings = Timings(SHORT, WHOLE, PER_ITEM)
    test_phase = estimate(96, DEMO, timings, "final evaluation on the test split", 5, 20)
    assert test_phase["eta_s"] == pytest.approx(15 * PER_ITEM)
    validation = estimate(96, DEMO, timings, "final evaluation on the validation split", 4, 10)
    assert validation["eta_s"] == pytest.approx((6 + 20) * PER_ITEM)
    periodic = estimate(32, DEMO, timings, "evaluation on the validation split", 0, 10)
    assert periodic["eta_s"] == pytest.approx(
        (64 - 4) * SHORT + 4 * WHOLE + (10 + 10 + 10 + 20) * PER_ITEM)


def test_elapsed_keeps_moving_while_a_run_scores():
    run = {"status": "running", "wall_time_s": 120.0, "wall_time_at": 1_000.0}
    assert elapsed_seconds(run, now=1_090.0) == 210.0
    assert elapsed_seconds({**run, "status": "completed"}, now=1_090.0) == 120.0
    assert elapsed_seconds({**run, "wall_time_at": None}, now=1_090.0) == 120.0  # claimed, not started


def test_a_stored_run_is_timed_from_its_own_rows(workbench):
    storage = workbench.storage
    training = {**FAST, "max_steps": 12, "audio_padding": "longest", "full_window_every": 4,
                "eval_steps": 6, "per_device_train_batch_size": 2}
    run_id = workbench.submit_run("demo-speech", "tiny-whisper", "lora", {}, training)
    counts = storage.count_items(workbench.get_run(run_id)["dataset_id"])
    plan = Plan(total_steps=12, full_window_every=4, eval_steps=6, validation_items=counts["validation"],
                test_items=counts.get("test", 0))
    steps, evals = demo_history(8, plan)
    for step, wall in steps.items():
        storage.add_metrics(run_id, step, wall, {"train/loss": 1.0})
    for step, wall in evals.items():
        storage.add_metrics(run_id, step, wall, {"eval/wer": 0.5})
    storage.claim_next_run("elsewhere:1:1", run_id=run_id)
    storage.update_run(run_id, step=8, total_steps=12, wall_time_s=steps[8], wall_time_at=5_000.0)
    clock = run_clock(storage, workbench.get_run(run_id), now=5_010.0)
    assert clock["elapsed_s"] == pytest.approx(steps[8] + 10.0)
    # steps 9-12: 9, 10, 11 short and 12 whole; the final validation and test scoring
    assert clock["eta_s"] == pytest.approx(3 * SHORT + WHOLE + plan.validation_items * PER_ITEM
                                           + plan.test_items * PER_ITEM)
    assert clock["basis"] == "this run" and clock["unknown"] == []
    assert workbench.run_clock(run_id)["eta_s"] == pytest.approx(clock["eta_s"])
    assert seconds_left(storage, workbench.get_run(run_id)) == pytest.approx(clock["eta_s"])


def test_the_machine_load_counts_only_other_processes(monkeypatch):
    import psutil

    class Times:
        def __init__(self, busy):
            self.user, self.system, self.idle, self.iowait = busy, 0.0, 1000.0, 0.0

        def __iter__(self):
            return iter([self.user, self.system, self.idle, self.iowait])

    samples = iter([Times(100.0), Times(160.0)])  # 60 CPU seconds used in 20 s on 2 cores
    own = iter([10.0, 30.0])  # the workbench's own process used 20 of them
    monkeypatch.setattr(psutil, "cpu_times", lambda: next(samples))
    monkeypatch.setattr(psutil, "cpu_count", lambda *a, **k: 2)
    monkeypatch.setattr(psutil, "getloadavg", lambda: (3.5, 3.0, 2.0))
    monkeypatch.setattr(MachineLoad, "_cpu_seconds", staticmethod(lambda pid: next(own)))
    load = MachineLoad()
    first = load.sample({1}, now=0.0)
    assert first["others_percent"] is None and first["busy"]  # load 3.5 on 2 cores already says so
    second = load.sample({1}, now=20.0)
    assert second["others_percent"] == pytest.approx(100.0 * 40.0 / (20.0 * 2))
    assert second == {"cores": 2, "load_average": 3.5, "others_percent": pytest.approx(100.0), "busy": True}


def test_train_wait_lines_take_their_eta_from_the_clock():
    import io

    from engine.progress import ProgressReport

    clock = {"eta_s": 150.0, "unknown": []}
    stream = io.StringIO()
    report = ProgressReport(3, lambda: {"train/loss": 0.5}, stream, line_every_s=0, clock=lambda: clock)
    run = {"status": "running", "step": 95, "total_steps": 96, "wall_time_s": 190.0, "phase": None}
    report.update(run)
    clock.update(eta_s=120.0, unknown=["whole-window steps"])
    report.update({**run, "step": 96, "phase": "final evaluation on the test split", "phase_total": 20})
    assert stream.getvalue().splitlines() == [
        "run 3: step 95/96 (99%) · loss 0.5000 · ETA 2m 30s",
        "run 3: step 96/96 (100%) · loss 0.5000 · ETA at least 2m 00s · evaluating"]
