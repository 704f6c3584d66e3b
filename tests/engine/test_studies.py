"""Studies: the grid, the statistics, a real study through the queue, stop and delete."""

from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import FAST

from engine.errors import NotFoundError, RunError, SettingsError, WorkbenchError
from engine.methods import get_method
from engine.studies import Grid, differences, grid_cells, pareto_front, study_table, welch

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


def table_of(cells: dict[str, list[float]], metric: str = "accuracy") -> list[dict]:
    """A study table from final metrics per cell (one completed run per value)."""
    runs, rows, run_id = [], {}, 0
    for label, values in cells.items():
        for seed, value in enumerate(values):
            run_id += 1
            runs.append({"id": run_id, "status": "completed",
                         "study_cell": {"method": label, "size_setting": None, "size": None,
                                        "targets": "", "seed": seed}})
            rows[run_id] = {"status": "completed", "metric": metric, "final_metric": value,
                            "peak_memory_mb": 100.0, "trainable_params": 10, "wall_time_s": 1.0,
                            "samples_per_second": 5.0}
    return study_table(runs, rows)


def test_welch_flags_a_real_difference_and_not_seed_noise():
    base = [0.50, 0.52, 0.51, 0.49, 0.53]
    table = table_of({"base": base, "better": [v + 0.10 for v in base],
                      "noise": [0.51, 0.49, 0.52, 0.50, 0.52], "one-seed": [0.9]})
    found = {row["cell"]: row for row in differences(table, "base")}
    assert found["better"]["significant"] is True and found["better"]["better"] is True
    assert found["better"]["p_value"] < 0.001
    assert found["better"]["verdict"] == "better, larger than seed noise"
    assert found["noise"]["significant"] is False and found["noise"]["p_value"] > 0.5
    assert found["noise"]["verdict"] == "within seed noise"
    assert found["one-seed"]["significant"] is None and "two or more" in found["one-seed"]["verdict"]
    # The direction follows the metric: a higher WER is worse.
    wer = {row["cell"]: row for row in differences(table_of({"a": base, "b": [v + 0.1 for v in base]},
                                                             "wer"), "a")}
    assert wer["b"]["better"] is False and wer["b"]["verdict"] == "worse, larger than seed noise"
    assert welch([1.0], [2.0, 3.0]) is None
    with pytest.raises(SettingsError, match="no cell"):
        differences(table, "missing")


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
    assert [d["cell"] for d in summary["differences"]] == [row["cell"] for row in summary["table"][1:]]


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
    assert merged["differences"][0]["cell"] == "qlora · r=2"
    assert merged["differences"][0]["verdict"] == [d for d in whole["differences"]
                                                   if d["cell"] == "qlora · r=2"][0]["verdict"]
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
    from engine.studies import merge_summaries

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
