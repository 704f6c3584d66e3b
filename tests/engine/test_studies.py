"""Studies: the grid (any setting as an axis), the statistics (paired bootstrap, paired seed
test, Holm, tuning per method), a real study through the queue, provenance, stop and delete."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST

from engine.errors import NotFoundError, RunError, SettingsError, WorkbenchError
from engine.methods import get_method
from engine.comparisons import read_study
from engine.significance import (detectable_difference, holm, paired_bootstrap, paired_seed_test,
                                 pooled_difference)
from engine.studies import Grid, grid_cells, parse_axes, pareto_front, run_results, study_table

TINY = {"max_steps": 2}


def test_grid_puts_seeds_outermost_and_collapses_axes_a_method_lacks():
    grid = Grid(methods=["lora", "ia3"], ranks=[2, 4], target_sets=["query,value", "query"],
                seeds=[1, 2])
    cells = grid_cells(grid, {name: get_method(name) for name in grid.methods})
    # lora: 2 ranks x 2 target sets; ia3 has no rank: 1 x 2 target sets; all twice (seeds)
    assert len(cells) == 2 * (4 + 2)
    assert [c["seed"] for c in cells] == [1] * 6 + [2] * 6
    assert {(c["size_setting"], c["size"]) for c in cells if c["method"] == "ia3"} == {(None, None)}
    assert {c["size"] for c in cells if c["method"] == "lora"} == {2, 4}
    with pytest.raises(SettingsError, match="ranks: a value appears twice"):
        grid_cells(Grid(methods=["lora"], ranks=[4, 4]), {"lora": get_method("lora")})
    with pytest.raises(SettingsError, match="at least one seed"):
        grid_cells(Grid(methods=["lora"], seeds=[]), {"lora": get_method("lora")})


def table_of(cells: dict[str, list[float]], metric: str = "accuracy",
             validation: dict[str, list[float]] | None = None) -> tuple[list[dict], dict]:
    """A study table from final metrics per cell (one completed run per value, seeds 1, 2, ...)
    and its runs' results; ``validation``: the runs' validation scores per cell. A label
    "method · key=value" is a method's cell at that axis value."""
    runs, results, run_id = [], {}, 0
    for label, values in cells.items():
        method, *axes = label.split(" · ")
        for seed, value in enumerate(values, 1):
            run_id += 1
            runs.append({"id": run_id, "status": "completed",
                         "study_cell": {"method": method, "size_setting": None, "size": None, "targets": "",
                                        "axes": dict(a.split("=") for a in axes), "seed": seed}})
            row = {"status": "completed", "metric": metric, "final_metric": value, "peak_memory_mb": 100.0,
                   "trainable_params": 10, "wall_time_s": 1.0, "samples_per_second": 5.0}
            results[run_id] = run_results(row, (validation or {}).get(label, [None] * len(values))[seed - 1])
    return study_table(runs, results), results


def test_a_paired_seed_test_finds_a_shift_that_seed_noise_hides_from_an_unpaired_one():
    """A seeded toy study: each seed moves both cells alike (same data order and initialisation),
    the method is better by 0.02 on every seed give or take 0.002. Welch's unpaired test drowns
    the shift in the seed spread; the paired test over seeds finds it, and so does read_study."""
    from scipy.stats import ttest_ind

    rng = np.random.default_rng(3)
    seed_effect = rng.normal(0, 0.05, size=5)
    reference = 0.70 + seed_effect
    method = reference + 0.02 + rng.normal(0, 0.002, size=5)
    assert ttest_ind(method, reference, equal_var=False).pvalue > 0.3  # unpaired: nothing
    paired = paired_seed_test(list(method), list(reference))
    assert paired["p"] < 0.001 and paired["difference"] == pytest.approx(np.mean(method - reference))
    assert paired["ci95"][0] < paired["difference"] < paired["ci95"][1] and paired["ci95"][0] > 0

    table, results = table_of({"base": list(reference), "better": list(method), "noise": list(reference + rng.normal(
        0, 0.01, size=5)), "one-seed": [0.9]})
    found = {c["method"]: c for c in read_study(table, results, "base")["comparisons"]}
    assert found["better"]["test"].startswith("paired t-test over seeds (seeds 1, 2, 3, 4, 5")
    assert found["better"]["p"] == pytest.approx(paired["p"]) and found["better"]["better"] is True
    assert found["better"]["significant"] is True and found["better"]["verdict"].startswith("better")
    assert found["noise"]["significant"] is False and found["noise"]["verdict"].startswith("not shown to differ")
    assert found["one-seed"]["p"] is None and found["one-seed"]["verdict"].startswith("undecided")
    # Holm over the two tested comparisons: the smaller p doubled
    assert found["better"]["p_holm"] == pytest.approx(min(1, 2 * paired["p"]))
    # the direction follows the metric: a higher WER is worse
    wer_table, wer_results = table_of({"a": list(reference), "b": list(method)}, "wer")
    assert read_study(wer_table, wer_results)["comparisons"][0]["better"] is False
    assert paired_seed_test([1.0], [2.0]) is None
    assert paired_seed_test([1.0, 2.0], [1.0, 2.0])["p"] == 1.0  # no difference at all
    with pytest.raises(SettingsError, match="no cell 'missing'"):
        read_study(table, results, "missing")


def test_the_bootstrap_interval_and_p_match_brute_force_over_every_resample():
    """Four items: all 4**4 resamples are equally likely, so the bootstrap distribution is
    known exactly; the seeded bootstrap's percentile interval and p agree with it."""
    import itertools

    method, reference, words = [1, 0, 3, 2], [2, 2, 3, 1], [4, 5, 6, 3]
    exact = sorted(pooled_difference(*zip(*[(method[i], reference[i], words[i]) for i in pick]))
                   for pick in itertools.product(range(4), repeat=4))
    share = lambda test: sum(map(test, exact)) / len(exact)  # noqa: E731
    found = paired_bootstrap(method, reference, words, resamples=20_000)
    # corpus-level: (6 - 8) / 18 words, not the mean of per-item WER differences
    assert found["difference"] == pytest.approx(-2 / 18)
    assert found["difference"] != pytest.approx(np.mean(np.subtract(method, reference) / np.array(words)))
    low, high = found["ci95"]
    assert share(lambda d: d < low - 1e-12) <= 0.025 + 0.01 and share(lambda d: d <= low + 1e-12) >= 0.025 - 0.01
    assert share(lambda d: d > high + 1e-12) <= 0.025 + 0.01 and share(lambda d: d >= high - 1e-12) >= 0.025 - 0.01
    exact_p = min(1, 2 * min(share(lambda d: d <= 0), share(lambda d: d >= 0)))
    assert found["p"] == pytest.approx(exact_p, abs=0.01)
    assert found["standard_error"] == pytest.approx(np.std(exact), rel=0.03)
    assert found["detectable"] == pytest.approx(2.8016 * found["standard_error"], rel=1e-3)
    assert paired_bootstrap(method, reference, words, resamples=20_000) == found  # seeded: reproducible
    # Better on every item: every resample is below 0, the interval too, p as small as it gets.
    better = paired_bootstrap([0, 1, 0, 2], [3, 2, 2, 4], words, resamples=999)
    assert better["ci95"][1] < 0 and better["p"] == pytest.approx(2 / 1000)
    # The same predictions: no difference, no spread.
    same = paired_bootstrap(method, method, words)
    assert same["difference"] == 0 and same["ci95"] == [0, 0] and same["p"] == 1

    # The library's paired bootstrap resamples alike: the same interval within resampling noise.
    from scipy.stats import bootstrap

    rng = np.random.default_rng(11)
    words = rng.integers(2, 12, size=80)
    method, reference = rng.binomial(words, 0.15), rng.binomial(words, 0.2)
    library = bootstrap((method, reference, words), lambda m, r, w, axis=-1: (m.sum(axis) - r.sum(axis)) / w.sum(axis),
                        paired=True, vectorized=True, method="percentile", rng=np.random.default_rng(0))
    ours = paired_bootstrap(method, reference, words)
    assert ours["ci95"] == pytest.approx(list(library.confidence_interval), abs=0.004)
    assert ours["standard_error"] == pytest.approx(library.standard_error, rel=0.05)


def test_holm_against_a_hand_worked_example():
    # sorted 0.005 0.01 0.03 0.04 -> x4 x3 x2 x1 = 0.02 0.03 0.06 0.04 -> running max 0.02 0.03 0.06 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, None, 0.01]) == [pytest.approx(0.5), None, pytest.approx(0.02)]  # None is no test
    assert holm([0.6, 0.7]) == [1.0, 1.0]  # capped at 1
    assert detectable_difference(0.01) == pytest.approx((1.959964 + 0.841621) * 0.01)


def test_read_study_bootstraps_per_item_scores_paired_by_seed_and_gives_a_power_line():
    """Per-item word errors of two cells over two seeds: the difference is the corpus WER
    difference pooled over the seeds, the bootstrap is over items, and the power line is
    2.8 bootstrap standard errors."""
    rng = np.random.default_rng(7)
    words = rng.integers(3, 12, size=60)
    table, results = table_of({"qlora": [0.2, 0.21], "ta-qlora": [0.18, 0.19]}, "wer")
    errors = {}
    for run_id, result in results.items():
        errors[run_id] = rng.binomial(words, 0.2 if run_id <= 2 else 0.15)
        result["items"] = {"split": "test", "metric": "wer", "positions": list(range(60)),
                           "scores": errors[run_id].tolist(), "weights": words.tolist()}
    found = read_study(table, results)
    comparison = found["comparisons"][0]
    expected = (errors[3] + errors[4] - errors[1] - errors[2]).sum() / (2 * words.sum())
    assert comparison["difference"] == pytest.approx(expected)
    assert comparison["test"].startswith("paired bootstrap over test items (60 items; seeds 1, 2 paired")
    direct = paired_bootstrap(errors[3] + errors[4], errors[1] + errors[2], 2 * words)
    assert comparison["ci95"] == pytest.approx(direct["ci95"]) and comparison["p"] == pytest.approx(direct["p"])
    assert comparison["p_holm"] == comparison["p"]  # one comparison: Holm changes nothing
    assert comparison["p_seeds"] is not None  # the seed test beside it
    assert found["power"]["detectable"] == pytest.approx(2.8016 * direct["standard_error"], rel=1e-3)
    assert found["power"]["items"] == 60 and "60 test items" in found["power"]["text"]
    assert comparison["split"] == "test" and read_study(table, results, tune=True)["notes"] == []
    for result in results.values():  # no test split: tuning chose on what it reports
        result["items"] = dict(result["items"], split="validation")
    assert "optimistic" in read_study(table, results, tune=True)["notes"][0]
    # runs scored on different items cannot be paired: the seed test stands in
    results[4]["items"] = dict(results[4]["items"], positions=list(range(1, 61)))
    assert read_study(table, results)["comparisons"][0]["test"].startswith("paired t-test over seeds")


def test_tune_per_method_picks_each_methods_validation_best_cell_and_reports_its_test_score():
    """lr 1e-3 is lora's best on validation (0.80) though 1e-4 scores higher on test: the tuned
    reading takes the validation choice; ia3's best is 1e-2. Lower-is-better metrics pick the
    minimum."""
    test = {"lora · learning_rate=1e-4": [0.90, 0.91], "lora · learning_rate=1e-3": [0.70, 0.71],
            "ia3 · learning_rate=1e-3": [0.60, 0.62], "ia3 · learning_rate=1e-2": [0.75, 0.76]}
    validation = {"lora · learning_rate=1e-4": [0.60, 0.62], "lora · learning_rate=1e-3": [0.80, 0.80],
                  "ia3 · learning_rate=1e-3": [0.70, 0.72], "ia3 · learning_rate=1e-2": [0.71, 0.73]}
    table, results = table_of(test, validation=validation)
    assert [row["group"] for row in table] == ["lora", "lora", "ia3", "ia3"]
    found = read_study(table, results, tune=True)
    assert found["reading"] == "tuned" and found["reference"] == "lora"
    chosen = {t["method"]: t for t in found["tuning"]}
    assert chosen["lora"]["cell"] == "lora · learning_rate=1e-3" and chosen["lora"]["chosen"] == {"learning_rate": "1e-3"}
    assert chosen["ia3"]["cell"] == "ia3 · learning_rate=1e-2"
    assert chosen["lora"]["chosen_by"] == "best validation mean over seeds"
    [comparison] = found["comparisons"]
    assert (comparison["method"], comparison["cell"], comparison["reference_cell"]) == (
        "ia3", "ia3 · learning_rate=1e-2", "lora · learning_rate=1e-3")
    assert comparison["difference"] == pytest.approx(np.mean([0.75 - 0.70, 0.76 - 0.71]))
    # per cell, every cell is compared with the first cell
    assert len(read_study(table, results)["comparisons"]) == 3
    # with WER (lower is better) the lowest validation mean wins
    wer_table, wer_results = table_of(test, "wer", validation)
    chosen = {t["method"]: t["cell"] for t in read_study(wer_table, wer_results, tune=True)["tuning"]}
    assert chosen == {"lora": "lora · learning_rate=1e-4", "ia3": "ia3 · learning_rate=1e-3"}
    assert found["notes"] == []  # these runs kept no items: no split to warn about
    # without validation scores nothing can be chosen between several cells
    blind_table, blind_results = table_of(test)
    assert read_study(blind_table, blind_results, tune=True)["tuning"][0]["cell"] is None


def test_grid_axes_vary_any_setting_and_collapse_for_methods_without_it():
    training = {"learning_rate", "warmup_steps"}
    grid = Grid(methods=["lora", "ia3"], ranks=[2], seeds=[1],
                axes={"learning_rate": [1e-4, 1e-3], "lora_dropout": [0.0, 0.1]})
    cells = grid_cells(grid, {name: get_method(name) for name in grid.methods}, training)
    # lora: 2 learning rates x 2 dropouts; ia3 has no lora_dropout: 2 learning rates
    assert [c["axes"] for c in cells if c["method"] == "lora"] == [
        {"learning_rate": 1e-4, "lora_dropout": 0.0}, {"learning_rate": 1e-4, "lora_dropout": 0.1},
        {"learning_rate": 1e-3, "lora_dropout": 0.0}, {"learning_rate": 1e-3, "lora_dropout": 0.1}]
    assert [c["axes"] for c in cells if c["method"] == "ia3"] == [{"learning_rate": 1e-4}, {"learning_rate": 1e-3}]
    assert parse_axes(["learning_rate=1e-4, 3e-4", "warmup_steps=0,5"]) == {
        "learning_rate": ["1e-4", "3e-4"], "warmup_steps": ["0", "5"]}
    for bad, reason in ((["learning_rate"], "--grid expects KEY=V1,V2"), (["r="], "--grid r: no values"),
                        (["r=1", "r=2"], "--grid r is given twice")):
        with pytest.raises(SettingsError, match=reason):
            parse_axes(bad)
    with pytest.raises(SettingsError, match="seed comes from the study's seeds"):
        grid_cells(Grid(["lora"], axes={"seed": [1, 2]}), {"lora": get_method("lora")})
    with pytest.raises(SettingsError, match="--grid warmup_steps: a value appears twice"):
        grid_cells(Grid(["lora"], axes={"warmup_steps": [1, 1]}), {"lora": get_method("lora")}, training)


def test_a_grid_axis_over_any_setting_makes_and_trains_its_cells(demo_home, monkeypatch, capsys):
    """`study --grid` over a training setting and a method setting: each cell is a run with
    those values (read back from the runs' own stored settings); bad keys and values are
    refused naming them, before anything is queued."""
    import json

    from engine import Workbench
    from engine.cli import main

    code = main(["study", "--dataset", "demo-text", "--model", "tiny-bert", "--methods", "lora",
                 "--ranks", "2", "--seeds", "1", "--grid", "warmup_steps=0,1", "--grid", "lora_dropout=0,0.2",
                 "--set", "max_steps=2", "--set", "eval_steps=0", "--set", "save_steps=0", "--wait", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["status"] == "completed"
    assert summary["grid"]["axes"] == {"warmup_steps": [0, 1], "lora_dropout": [0.0, 0.2]}
    assert [row["cell"] for row in summary["table"]] == [
        "lora · r=2 · warmup_steps=0 · lora_dropout=0", "lora · r=2 · warmup_steps=0 · lora_dropout=0.2",
        "lora · r=2 · warmup_steps=1 · lora_dropout=0", "lora · r=2 · warmup_steps=1 · lora_dropout=0.2"]
    workbench = Workbench(demo_home)
    stored = {(run["method"], run["settings"]["training"]["warmup_steps"],
               run["settings"]["method"].get("lora_dropout")) for run in workbench.list_runs()}
    assert stored == {("lora", 0, 0.0), ("lora", 0, 0.2), ("lora", 1, 0.0), ("lora", 1, 0.2)}
    assert all(run["status"] == "completed" for run in workbench.list_runs())
    for grid, settings, reason in (
            (Grid(["lora"], axes={"nope": ["1"]}), {}, "--grid nope: not a training setting nor a setting of lora"),
            (Grid(["lora"], axes={"learning_rate": ["fast"]}), {}, "--grid learning_rate: learning_rate must be a float"),
            (Grid(["lora"], axes={"warmup_steps": ["-1"]}), {}, "--grid warmup_steps: warmup_steps must be at least 0"),
            (Grid(["lora"], axes={"learning_rate": ["1e-3"]}), {"learning_rate": 1e-4},
             "learning_rate comes from the study's --grid axes"),
            (Grid(["lora"], ranks=[2], axes={"r": ["4"]}), {}, "--grid r: r comes from the study's ranks")):
        with pytest.raises(SettingsError, match=reason):
            workbench.submit_study("demo-text", "tiny-bert", grid, settings)
    assert len(workbench.list_studies()) == 1
    workbench.storage.close()


def test_pareto_front_keeps_only_undominated_points():
    points = [(10, 0.5), (20, 0.7), (15, 0.4), (30, 0.7), (5, 0.3)]
    assert pareto_front(points, higher_is_better=True) == [0, 1, 4]
    assert pareto_front(points, higher_is_better=False) == [4]


def wait_until(predicate, seconds: float = 240):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_a_2x2x2_study_completes_through_the_queue_and_its_table_matches_its_runs(workbench):
    grid = Grid(methods=["lora", "qlora"], ranks=[2, 4], seeds=[1, 2])
    plan = workbench.plan_study("demo-text", "tiny-bert", grid, TINY)
    assert (plan["runs"], plan["cells_without_seeds"]) == (8, 4)
    study_id = workbench.submit_study("demo-text", "tiny-bert", grid, TINY)
    workbench.start_worker()  # the app's worker takes the runs from the queue
    wait_until(lambda: workbench.study_summary(study_id)["status"] not in ("queued", "running"))
    summary = workbench.study_summary(study_id)
    assert summary["status"] == "completed" and summary["runs_total"] == summary["runs_ended"] == 8

    # Recompute every cell from the runs themselves (their own settings, not the study's cells).
    groups: dict[tuple, list[dict]] = {}
    for run in workbench.list_runs():
        assert run["study_id"] == study_id
        settings = run["settings"]
        groups.setdefault((run["method"], settings["method"]["r"]), []).append(run)
    assert sorted(groups) == [("lora", 2), ("lora", 4), ("qlora", 2), ("qlora", 4)]
    table = {(row["method"], row["size"]): row for row in summary["table"]}
    assert set(table) == set(groups)
    for key, runs in groups.items():
        row = table[key]
        assert sorted(r["settings"]["training"]["seed"] for r in runs) == [1, 2]
        assert sorted(row["runs"]) == sorted(r["id"] for r in runs) and row["completed"] == 2
        for measure, values in {
            "final_metric": [r["metrics"]["accuracy"] for r in runs],
            "peak_memory_mb": [r["peak_memory_mb"] for r in runs],
            "trainable_params": [r["trainable_params"] for r in runs],
            "wall_time_s": [r["wall_time_s"] for r in runs],
        }.items():
            assert row[f"{measure}_mean"] == pytest.approx(np.mean(values)), (key, measure)
            assert row[f"{measure}_std"] == pytest.approx(np.std(values, ddof=1), abs=1e-9), (key, measure)
    # a larger rank trains more parameters
    assert table[("lora", 4)]["trainable_params_mean"] > table[("lora", 2)]["trainable_params_mean"]
    assert [c["method"] for c in summary["comparisons"]] == [row["cell"] for row in summary["table"][1:]]
    assert summary["reference"] == summary["table"][0]["cell"] and summary["reading"] == "cells"
    # every run kept its per-item scores (demo-text has no test split: its validation split)
    for comparison in summary["comparisons"]:
        assert set(comparison) >= {"method", "reference", "difference", "ci95", "p", "p_holm", "test"}
        assert comparison["test"].startswith("paired bootstrap over validation items (50 items; seeds 1, 2")
        assert len(comparison["ci95"]) == 2 and comparison["ci95"][0] <= comparison["difference"] <= comparison["ci95"][1]
    for run in summary["runs"]:
        assert run["results"]["items"]["split"] == "validation" and len(run["results"]["items"]["scores"]) == 50
        accuracy = workbench.get_run(run["id"])["metrics"]["accuracy"]
        assert sum(run["results"]["items"]["scores"]) / 50 == pytest.approx(accuracy)
    provenance = summary["provenance"]
    assert provenance["recorded"] == 8 and provenance["differs"] == []
    assert provenance.get("commit") or provenance.get("version")
    assert {"torch", "transformers", "peft"} <= set(provenance["packages"])
    assert provenance["device"]["type"] == "cpu"
    assert provenance["data_fingerprint"]["dataset"] == "demo-text"
    assert provenance["data_fingerprint"]["version"] == workbench.get_dataset("demo-text")["version"]


def test_stopping_and_deleting_a_study_act_on_its_runs(workbench):
    other = workbench.submit_run("demo-text", "tiny-bert", "lora", {}, TINY)  # not in the study
    study_id = workbench.submit_study("demo-text", "tiny-bert", Grid(["lora", "ia3"], seeds=[1, 2]), TINY)
    runs = workbench.study_runs(study_id)
    assert len(runs) == 4 and all(r["status"] == "queued" for r in runs)
    # One of its runs is training (claimed by a worker): stop asks it to stop, cancels the rest.
    workbench.storage.claim_next_run("elsewhere:1:1", run_id=runs[0]["id"])
    with pytest.raises(RunError, match="stop it first"):
        workbench.delete_study(study_id)
    assert len(workbench.study_runs(study_id)) == 4  # nothing removed
    assert workbench.stop_study(study_id) == {"cancelled": 3, "stopping": 1}
    statuses = {r["id"]: r["status"] for r in workbench.study_runs(study_id)}
    assert list(statuses.values()) == ["running", "cancelled", "cancelled", "cancelled"]
    assert workbench.storage.stop_requested(runs[0]["id"])
    assert workbench.get_run(other)["status"] == "queued"  # other runs are left alone
    # The running one ends (as its worker would on the stop request); then delete takes all.
    workbench.storage.update_run(runs[0]["id"], status="stopped")
    folder = workbench.storage.files.run_dir(runs[0]["id"])
    (folder / "adapter").mkdir(parents=True, exist_ok=True)
    assert sorted(workbench.delete_study(study_id)) == [r["id"] for r in runs]
    assert not folder.exists()
    assert [r["id"] for r in workbench.list_runs()] == [other]
    with pytest.raises(NotFoundError):
        workbench.get_study(study_id)


def test_a_grid_with_one_impossible_cell_queues_nothing(workbench):
    grid = Grid(["lora"], ranks=[2], target_sets=["query", "no_such_layer"], seeds=[1])
    with pytest.raises(WorkbenchError, match="no_such_layer") as error:
        workbench.submit_study("demo-text", "tiny-bert", grid, TINY)
    assert "lora · r=2 · no_such_layer (seed 1)" in str(error.value)
    with pytest.raises(SettingsError, match="unknown setting nope"):
        workbench.submit_study("demo-text", "tiny-bert", Grid(["lora"]), {"nope": 1})
    with pytest.raises(SettingsError, match="seed comes from the study's seeds"):
        workbench.submit_study("demo-text", "tiny-bert", Grid(["lora"]), {"seed": 3})
    with pytest.raises(SettingsError, match="target_modules comes from the study's target sets"):
        workbench.plan_study("demo-text", "tiny-bert", Grid(["lora"], target_sets=["query"]),
                             {"target_modules": "value"})
    assert workbench.list_studies() == [] and workbench.list_runs() == []
    # Without target sets (or ranks), target_modules (or r) may be set for every run.
    plan = workbench.plan_study("demo-text", "tiny-bert", Grid(["lora", "ia3"]),
                                {"target_modules": "query", "r": 3, "lora_alpha": 6})
    assert plan["plans"][0]["method_settings"] | {"target_modules": "query", "r": 3, "lora_alpha": 6} \
        == plan["plans"][0]["method_settings"]
    assert plan["plans"][1]["method_settings"]["target_modules"] == "query"  # ia3 has it too
    assert "r" not in plan["plans"][1]["method_settings"]  # ia3 has no rank


def test_studies_are_scoped_to_their_owner(workbench):
    from engine import Workbench

    study_id = workbench.submit_study("demo-text", "tiny-bert", Grid(["lora"]), FAST)
    stranger = Workbench(workbench.home, owner_id=2)
    assert stranger.list_studies() == []
    with pytest.raises(NotFoundError):
        stranger.study_summary(study_id)
    with pytest.raises(NotFoundError):
        stranger.delete_study(study_id)
    assert workbench.get_study(study_id)["id"] == study_id


def test_a_grid_split_over_two_data_homes_merges_into_the_single_study(demo_template, tmp_path,
                                                                       monkeypatch, capsys):
    """One seed per data home (as one per GPU machine), merged with `study merge`, gives the
    table and verdicts of the same grid run as one study: the same final metrics per seed."""
    import json

    from conftest import copy_home

    from engine.cli import main

    def study(home_name: str, seeds: str) -> dict:
        home = tmp_path / home_name
        copy_home(demo_template, home)
        monkeypatch.setenv("LIM_HOME", str(home))
        code = main(["study", "--dataset", "demo-text", "--model", "tiny-bert", "--methods", "lora,qlora",
                     "--ranks", "2", "--seeds", seeds, "--set", "max_steps=2", "--wait", "--json"])
        out = capsys.readouterr().out
        assert code == 0
        return json.loads(out)

    parts = [study("seed1", "1"), study("seed2", "2")]
    whole = study("both", "1,2")
    files = []
    for index, part in enumerate(parts, 1):
        files.append(tmp_path / f"seed{index}.json")
        files[-1].write_text(json.dumps(part))
    assert main(["study", "merge", *map(str, files), "--reference", "lora · r=2", "--json"]) == 0
    merged = json.loads(capsys.readouterr().out)

    assert merged["status"] == "completed" and merged["runs_total"] == 4 and merged["grid"]["seeds"] == [1, 2]
    mine = {row["cell"]: row for row in merged["table"]}
    theirs = {row["cell"]: row for row in whole["table"]}
    assert set(mine) == set(theirs) == {"lora · r=2", "qlora · r=2"}
    for cell, row in theirs.items():
        assert mine[cell]["completed"] == 2 and sorted(mine[cell]["runs"]) == [f"seed1#{'12'[cell.startswith('q')]}",
                                                                               f"seed2#{'12'[cell.startswith('q')]}"]
        assert sorted(mine[cell]["values"]) == pytest.approx(sorted(row["values"]))
        for measure in ("final_metric", "trainable_params"):
            assert mine[cell][f"{measure}_mean"] == pytest.approx(row[f"{measure}_mean"])
    assert merged["comparisons"][0]["method"] == "qlora · r=2"
    mine, theirs = merged["comparisons"][0], [c for c in whole["comparisons"] if c["method"] == "qlora · r=2"][0]
    assert mine["verdict"] == theirs["verdict"] and mine["ci95"] == pytest.approx(theirs["ci95"])
    assert mine["test"] == theirs["test"] and mine["test"].startswith("paired bootstrap")  # items travel in the files
    assert merged["provenance"]["recorded"] == 4
    # the text table names both parts' cells
    assert main(["study", "merge", *map(str, files)]) == 0
    assert "qlora · r=2" in capsys.readouterr().out

    # one seed of a cell twice, a part of another grid, and a file that is no study: refused
    assert main(["study", "merge", str(files[0]), str(files[0])]) == 1
    assert "merge each seed of a cell once" in capsys.readouterr().err
    # a part cut short (its run failed or never ran) and run again elsewhere: the completed run counts
    cut = dict(parts[0], runs=[dict(run, status="failed", results={**run["results"], "status": "failed"})
                               for run in parts[0]["runs"]])
    (tmp_path / "cut.json").write_text(json.dumps(cut))
    assert main(["study", "merge", str(tmp_path / "cut.json"), *map(str, files), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert [row["completed"] for row in again["table"]] == [2, 2] and len(again["replaced"]) == 2
    assert {r["by"] for r in again["replaced"]} == {"seed1#1", "seed1#2"}
    other = dict(parts[1], settings={**parts[1]["settings"], "max_steps": "3"})
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert main(["study", "merge", str(files[0]), str(tmp_path / "other.json")]) == 1
    assert "only the parts of one grid merge" in capsys.readouterr().err
    (tmp_path / "runs.json").write_text("[1, 2]")
    assert main(["study", "merge", str(files[0]), str(tmp_path / "runs.json")]) == 1
    assert "not a study summary" in capsys.readouterr().err
    assert main(["study", "merge", str(files[0]), str(tmp_path / "missing.json")]) == 1
    assert "no such file" in capsys.readouterr().err


def cli_study(template, home, methods: str, seeds: str, monkeypatch, capsys, wait: bool = True) -> dict:
    """`study ... --json` in a fresh copy of the demo home: a part of a grid as one machine
    writes it (without ``wait`` its runs stay queued there)."""
    import json

    from conftest import copy_home

    from engine.cli import main

    copy_home(template, home)
    monkeypatch.setenv("LIM_HOME", str(home))
    code = main(["study", "--dataset", "demo-text", "--model", "tiny-bert", "--methods", methods,
                 "--ranks", "2", "--seeds", seeds, "--set", "max_steps=2", "--json",
                 *(["--wait"] if wait else [])])
    out = capsys.readouterr().out
    assert code == 0
    return json.loads(out)


def test_a_merged_status_says_what_the_merged_grid_holds(demo_template, tmp_path, monkeypatch, capsys):
    """A seed queued in one part and completed in another is done; a seed only queued (or
    running) somewhere keeps the merge queued, whichever order the files come in; a cell's
    seed that no part holds makes the merge partial, and its row counts that seed as planned."""
    from engine.study_merge import merge_summaries

    def part(name: str, methods: str, seeds: str, wait: bool = True) -> dict:
        return cli_study(demo_template, tmp_path / name, methods, seeds, monkeypatch, capsys, wait)

    waiting = part("waiting", "lora", "1,2", wait=False)  # the whole grid, queued on a busy machine
    assert [run["status"] for run in waiting["runs"]] == ["queued", "queued"]
    first, second, ia3 = part("first", "lora", "1"), part("second", "lora", "2"), part("ia3", "ia3", "2")

    merged = merge_summaries([waiting, first, second], ["waiting", "first", "second"])
    assert merged["status"] == "completed" and merged["missing"] == []
    assert merged["runs_total"] == merged["runs_ended"] == 2 and len(merged["replaced"]) == 2
    assert [(row["completed"], row["seeds"]) for row in merged["table"]] == [(2, 2)]

    for order in ([waiting, first], [first, waiting]):  # seed 2 is still queued on its machine
        names = ["waiting" if summary is waiting else "first" for summary in order]
        merged = merge_summaries(order, names)
        assert merged["status"] == "queued" and merged["status_counts"] == {"completed": 1, "queued": 1}
        assert [(row["completed"], row["seeds"]) for row in merged["table"]] == [(1, 2)]

    # seed 2 failed on one machine and waits on another: it is still coming, in either order
    failed = dict(second, runs=[dict(run, status="failed", results={**run["results"], "status": "failed"})
                                for run in second["runs"]])
    for order, names in (([failed, waiting], ["failed", "waiting"]), ([waiting, failed], ["waiting", "failed"])):
        merged = merge_summaries([first, *order], ["first", *names])
        assert merged["status"] == "queued", names
        assert sorted(r["status"] for r in merged["replaced"]) == ["failed", "queued"]

    # ia3 ran seed 2 only: its seed 1 is in no part, so the merged grid is not complete
    merged = merge_summaries([first, second, ia3], ["first", "second", "ia3"])
    assert merged["status"] == "partial"
    assert merged["missing"] == [{"cell": "ia3", "seed": 1}]
    rows = {row["cell"]: (row["completed"], row["seeds"]) for row in merged["table"]}
    assert rows == {"lora · r=2": (2, 2), "ia3": (1, 2)}

    # a part whose runs are not what `study show --json` writes is refused, not half-read
    broken = dict(ia3, runs=[dict(run, study_cell="ia3") for run in ia3["runs"]])
    with pytest.raises(SettingsError, match="broken: not a study summary"):
        merge_summaries([first, broken], ["first", "broken"])


def test_the_research_report_renders_a_stored_study(tmp_path):
    """benchmarks.research_study --report: docs/results.md's tables from a study's two readings
    (here the stored GPU study of 2026-12-07): one row per cell, the tuned cells marked, what each
    method decided, and every comparison with its interval and Holm's p."""
    import gzip

    from benchmarks.research_study import report

    stored = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "2026-12-07-research"
    for reading in ("cells", "tuned"):
        (tmp_path / f"study-{reading}.json").write_bytes(gzip.decompress((stored / f"study-{reading}.json.gz").read_bytes()))
    lines = report(tmp_path).splitlines()
    cells = [line for line in lines if line.startswith("| ") and "r=8 · learning_rate=" in line]
    assert len(cells) == 21 and sum("(chosen)" in line for line in cells) == 7
    assert any("kernel drift" in line for line in cells if line.startswith("| ta-qlora"))
    assert any("router" in line for line in cells if line.startswith("| mma"))
    comparisons = [line for line in lines if " vs qlora · r=8 |" in line]
    assert len(comparisons) == 6 and all("Holm-adjusted p" in line and "[" in line for line in comparisons)
    assert any(line.startswith("Test: paired bootstrap over test items") for line in lines)
