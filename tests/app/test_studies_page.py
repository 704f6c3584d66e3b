"""The Studies page through AppTest: empty, launching from the form (learning rates and grid
axes, tune per method), a finished study's table, paired comparisons with intervals, tuning,
provenance, exports, and delete with confirmation."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest
from page_fixtures import downloads  # noqa: F401  (a fixture)
from seeded_runs import hold_worker
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "app.py")
# cell -> final accuracy of seeds 1, 2, 3 (made up, written straight into the runs)
ACCURACY = {"lora · r=2": [0.60, 0.62, 0.61], "lora · r=8": [0.80, 0.82, 0.81], "ia3": [0.61, 0.60, 0.62]}
PARAMS = {"lora · r=2": 1000, "lora · r=8": 4000, "ia3": 500}


@pytest.fixture
def app(demo_home):
    from ui.state import shutdown_workbenches

    yield AppTest.from_file(APP, default_timeout=60)
    shutdown_workbenches()


def open_studies(app: AppTest) -> AppTest:
    app.run()
    app.switch_page("pages/studies.py").run()
    assert not app.exception, app.exception
    return app


def frame_with(app: AppTest, column: str) -> pd.DataFrame:
    """The first table on the page with ``column`` (AppTest does not expose dataframe keys)."""
    return next(frame.value for frame in app.dataframe if column in frame.value.columns)


def seed_study(home, seeds: tuple[int, ...] = (1, 2, 3)) -> int:
    """A finished 3-cell study (3 seeds unless told) whose runs carry known results and the
    provenance a start records (no training)."""
    from engine import Workbench
    from engine.studies import Grid, cell_label
    from engine.training.provenance import collect, record_start

    workbench = Workbench(home)
    study_id = workbench.submit_study("demo-text", "tiny-bert", Grid(["lora", "ia3"], ranks=[2, 8],
                                                                    seeds=list(seeds)), {"max_steps": 10})
    dataset, model = workbench.get_dataset("demo-text"), workbench.get_model("tiny-bert")
    for run in workbench.study_runs(study_id):
        label = cell_label(run["study_cell"])
        accuracy = ACCURACY[label][run["study_cell"]["seed"] - 1]
        workbench.storage.add_metrics(run["id"], 10, 5.0, {"train/loss": 1.0, "train/samples_per_s": 8.0})
        workbench.storage.update_run(
            run["id"], status="completed", step=10, total_steps=10, wall_time_s=5.0,
            trainable_params=PARAMS[label], total_params=100_000,
            peak_memory_mb=300.0 + run["study_cell"]["seed"], metrics={"accuracy": accuracy})
        record_start(workbench.storage.files.run_dir(run["id"]),
                     collect(run, dataset, model, {"train": 200, "validation": 50}, "cpu"))
    workbench.storage.close()
    return study_id


def test_empty_page_explains_and_estimates_the_grid(app):
    open_studies(app)
    assert any("No studies yet" in info.value for info in app.info)
    estimate = next(info.value for info in app.info if "runs (" in info.value)
    # qlora and lora (the defaults) x ranks 4, 8 x seeds 1, 2, 3
    assert estimate.startswith("12 runs (4 cells × 3 seeds), 600 steps in all")
    assert "time unknown" in estimate  # nothing has trained on this machine yet
    app.text_input(key="studies.seeds").set_value("1, x").run()
    assert any("seeds: 'x' is not a whole number" in error.value for error in app.error)


def test_launching_a_study_from_the_form_queues_its_runs(app, demo_home):
    from engine import Workbench

    workbench = Workbench(demo_home)
    blocker = hold_worker(workbench)  # keep the app's worker from training them during the test
    open_studies(app)
    app.selectbox(key="studies.dataset").set_value("demo-text").run()
    app.multiselect(key="studies.methods").set_value(["lora", "ia3"]).run()
    app.text_input(key="studies.ranks").set_value("2").run()
    app.text_input(key="studies.seeds").set_value("1, 2").run()
    app.button(key="studies.launch").click().run()
    assert not app.exception, app.exception
    study = workbench.list_studies()[0]
    assert study["runs_total"] == 4 and study["status"] == "queued"
    assert {r["method"] for r in workbench.study_runs(study["id"])} == {"lora", "ia3"}
    assert not any(r["id"] == blocker for r in workbench.study_runs(study["id"]))
    assert app.get("progress")[0].proto.text.startswith("0 of 4 runs ended (4 queued)")
    app.button(key="studies.stop").click().run()
    assert {r["status"] for r in workbench.study_runs(study["id"])} == {"cancelled"}


def test_a_study_training_several_cells_at_once_shows_each_of_them_moving(app, demo_home):
    """Slots (issue 29): two of a study's runs train at once; the page counts both as running
    and lists each with its own step."""
    import os
    import socket
    import time

    from engine import Workbench
    from engine.studies import Grid

    workbench = Workbench(demo_home)
    study_id = workbench.submit_study("demo-text", "tiny-bert", Grid(["lora"], ranks=[2, 8], seeds=[1, 2]),
                                      {"max_steps": 10})
    first, second = (r["id"] for r in workbench.study_runs(study_id)[:2])
    for thread, (run_id, step) in enumerate(((first, 3), (second, 7))):  # two threads of one worker
        workbench.storage.claim_next_run(f"{socket.gethostname()}:{os.getpid()}:{thread}", run_id=run_id, slots=None)
        workbench.storage.update_run(run_id, heartbeat_at=time.time() + 3600, step=step, total_steps=10)
    open_studies(app)
    assert app.get("progress")[0].proto.text.startswith("0 of 4 runs ended (2 running, 2 queued) · 10 of 40 steps")
    runs = frame_with(app, "status").set_index("run")
    assert runs.loc[f"#{first}", ["status", "step"]].tolist() == ["running", "3/10"]
    assert runs.loc[f"#{second}", ["status", "step"]].tolist() == ["running", "7/10"]
    assert (runs["status"] == "queued").sum() == 2
    workbench.stop_study(study_id)


def test_a_finished_study_shows_its_cells_comparisons_provenance_and_exports(app, demo_home, downloads):
    import json

    from engine.training.provenance import code_version

    study_id = seed_study(demo_home)
    open_studies(app)
    table = frame_with(app, "seeds done")
    assert list(table["cell"]) == list(ACCURACY)
    assert list(table["seeds done"]) == ["3/3"] * 3
    assert table.loc[table["cell"] == "lora · r=8", "accuracy"].item() == "0.81 ± 0.01"
    assert table.loc[table["cell"] == "ia3", "trainable parameters"].item() == "500 ± 0"
    comparisons = frame_with(app, "p (Holm)").set_index("method")
    # lora r=8 is 0.2 better on every seed: the paired test has no doubt; ia3 goes both ways
    assert comparisons.loc["lora · r=8", "verdict"].startswith("better (Holm-adjusted p = ")
    assert comparisons.loc["lora · r=8", "difference"] == "+20.00 points"  # accuracy, in percent
    assert comparisons.loc["lora · r=8", "95 % interval"] == "[+20.00, +20.00 points]"
    assert comparisons.loc["ia3", "verdict"].startswith("not shown to differ")
    assert comparisons.loc["ia3", "seeds"] == "1, 2, 3"
    # the test is named (these runs kept no per-item scores: the paired t-test over seeds)
    assert any(c.value.startswith("Test: paired t-test over seeds (seeds 1, 2, 3") for c in app.caption)
    assert any("Holm's correction" in c.value for c in app.caption)
    # against another reference the verdicts follow
    app.selectbox(key=f"studies.reference.{study_id}").set_value("lora · r=8").run()
    comparisons = frame_with(app, "p (Holm)").set_index("method")
    assert comparisons.loc["lora · r=2", "verdict"].startswith("worse")
    # provenance, as the runs recorded it
    provenance = frame_with(app, "recorded").set_index("what")["recorded"]
    code = code_version()
    assert provenance["code"].startswith(code["commit"][:12] if code.get("commit") else f"version {code['version']}")
    assert provenance["data"].startswith("demo-text version ") and "torch " in provenance["packages"]

    csv = pd.read_csv(io.BytesIO(downloads[f"study-{study_id}.csv"]))
    assert list(csv["cell"]) == list(ACCURACY)
    assert csv.set_index("cell").loc["lora · r=8", "final_metric_mean"] == pytest.approx(0.81)
    assert csv.set_index("cell").loc["lora · r=8", "final_metric_std"] == pytest.approx(0.01)
    assert set(csv["code"]) == {provenance["code"]} and set(csv["data"]) == {provenance["data"]}
    shown = pd.read_csv(io.BytesIO(downloads[f"study-{study_id}-comparisons.csv"])).set_index("method")
    assert shown.loc["lora · r=2", "reference"] == "lora · r=8"  # what the page shows
    assert shown.loc["lora · r=2", "ci95_low"] == pytest.approx(-0.2)
    summary = json.loads(downloads[f"study-{study_id}.json"])
    assert summary["reference"] == "lora · r=8" and summary["provenance"]["recorded"] == 9
    assert {"commit", "version"} & set(summary["provenance"]) and summary["provenance"]["packages"]["torch"]
    assert len(app.get("plotly_chart")) == 4  # the differences with their intervals, three Pareto charts

    # The HTML report (made when clicked) is Compare's report of the study's runs with the
    # study's table, comparisons and provenance on top.
    from engine import Workbench
    from ui.study_results import report

    page = report(Workbench(demo_home), Workbench(demo_home).study_summary(study_id))
    assert "<script src=" not in page and page.count("Plotly.newPlot") == 4  # offline, every chart
    assert "Against lora · r=2 (per cell)" in page and "not shown to differ" in page
    assert "0.81 ± 0.01" in page and "paired t-test over seeds" in page and "Holm" in page
    assert "<h2>Provenance</h2>" in page or ">Provenance<" in page
    assert provenance["code"] in page and "demo-text version" in page
    assert "comparison of 9 runs" in page  # Compare's results table of every run


def test_tune_per_method_shows_each_methods_chosen_settings(app, demo_home):
    """A learning-rate grid launched from the form, its runs given made-up validation and test
    scores: the tuned reading compares each method's validation-best cell, and says so."""
    from engine import Workbench

    workbench = Workbench(demo_home)
    hold_worker(workbench)
    open_studies(app)
    app.selectbox(key="studies.dataset").set_value("demo-text").run()
    app.multiselect(key="studies.methods").set_value(["lora", "ia3"]).run()
    app.text_input(key="studies.ranks").set_value("2").run()
    app.text_input(key="studies.seeds").set_value("1, 2").run()
    app.text_input(key="studies.lr").set_value("1e-4, 1e-3").run()
    app.text_area(key="studies.axes").set_value("warmup_steps=0").run()
    app.checkbox(key="studies.tune").check().run()
    assert any(i.value.startswith("8 runs (4 cells × 2 seeds)") for i in app.info)
    app.button(key="studies.launch").click().run()
    assert not app.exception, app.exception
    study = workbench.list_studies()[0]
    assert study["grid"]["axes"] == {"learning_rate": [1e-4, 1e-3], "warmup_steps": [0]}
    assert study["grid"]["tune_per_method"] is True
    # validation: lora is best at 1e-3, ia3 at 1e-4; test scores favour the other rate
    scores = {("lora", 1e-4): (0.6, 0.9), ("lora", 1e-3): (0.8, 0.7), ("ia3", 1e-4): (0.75, 0.6),
              ("ia3", 1e-3): (0.7, 0.95)}
    for run in workbench.study_runs(study["id"]):
        cell = run["study_cell"]
        validation, test = scores[(cell["method"], cell["axes"]["learning_rate"])]
        workbench.storage.add_metrics(run["id"], 10, 5.0, {"eval/accuracy": validation + cell["seed"] / 100})
        workbench.storage.update_run(run["id"], status="completed", step=10, total_steps=10, wall_time_s=5.0,
                                     trainable_params=100, total_params=1000, peak_memory_mb=300.0,
                                     metrics={"accuracy": test + cell["seed"] / 100})
    app.run()
    assert not app.exception, app.exception
    tuning = frame_with(app, "chosen settings").set_index("method")
    assert tuning.loc["lora · r=2", "chosen settings"] == "learning_rate=0.001, warmup_steps=0"
    assert tuning.loc["ia3", "chosen settings"] == "learning_rate=0.0001, warmup_steps=0"
    comparisons = frame_with(app, "p (Holm)").set_index("method")
    assert comparisons.loc["ia3", "cell"] == "ia3 · learning_rate=0.0001 · warmup_steps=0"
    assert comparisons.loc["ia3", "difference"] == "-10.00 points"  # 0.6 against lora's chosen 0.7, on test
    app.toggle(key=f"studies.tuned.{study['id']}").set_value(False).run()  # per cell: every cell
    assert len(frame_with(app, "p (Holm)")) == 3


def test_deleting_a_study_asks_first_then_removes_its_runs(app, demo_home):
    from engine import Workbench

    study_id = seed_study(demo_home)
    open_studies(app)
    app.button(key="studies.delete").click().run()
    assert any("cannot be undone" in warning.value for warning in app.warning)
    app.button(key="studies.delete.no").click().run()
    workbench = Workbench(demo_home)
    assert len(workbench.study_runs(study_id)) == 9
    app.button(key="studies.delete").click().run()
    app.button(key="studies.delete.yes").click().run()
    assert not app.exception, app.exception
    assert workbench.list_studies() == [] and workbench.list_runs() == []
    assert any("No studies yet" in info.value for info in app.info)


def part_json(home, seeds: tuple[int, ...]) -> bytes:
    """One machine's part of the grid: what `study show ID --json` writes for it."""
    import json

    from engine import Workbench

    return json.dumps(Workbench(home).study_summary(seed_study(home, seeds)), default=str).encode()


def upload(app: AppTest, *files: tuple[str, bytes]) -> None:
    uploader = next(u for u in app.get("file_uploader") if u.proto.id.endswith("studies.merge.files"))
    uploader.set_value([(name, data, "application/json") for name, data in files]).run()
    assert not app.exception, app.exception


def test_merging_parts_shows_one_study_and_refuses_bad_files_with_their_reason(app, demo_home, downloads):
    """Seeds 1-2 on one machine and seed 3 on another, uploaded: the single study's table and
    verdicts (test above), the merged JSON to download, nothing stored; bad files say why."""
    import json

    from engine import Workbench

    open_studies(app)
    assert any(e.proto.label == "Merge parts run elsewhere" for e in app.expander)
    assert any(info.value.startswith("Upload two or more study summaries") for info in app.info)
    from engine.settings import load_config

    uploader = next(u for u in app.get("file_uploader") if u.proto.id.endswith("studies.merge.files"))
    assert uploader.proto.max_upload_size_mb == load_config().max_upload_mb and uploader.proto.multiple_files
    first, second = part_json(demo_home, (1, 2)), part_json(demo_home, (3,))
    stored = (Workbench(demo_home).list_studies(), Workbench(demo_home).list_runs())
    open_studies(app)
    upload(app, ("study.json", first))  # one part is not a merge yet
    assert any(info.value.startswith("Upload two or more study summaries") for info in app.info)

    upload(app, ("study.json", first), ("study.json", second))  # two machines' same file name
    assert not app.error
    # the merge section comes before the stored study's results: its tables are the first ones
    table = frame_with(app, "seeds done")
    assert list(table["cell"]) == list(ACCURACY) and list(table["seeds done"]) == ["3/3"] * 3
    assert table.loc[table["cell"] == "lora · r=8", "accuracy"].item() == "0.81 ± 0.01"
    assert table.loc[table["cell"] == "ia3", "runs"].item().count("study-2#") == 1
    verdicts = frame_with(app, "p (Holm)").set_index("method")["verdict"]
    assert verdicts["lora · r=8"].startswith("better") and verdicts["ia3"].startswith("not shown to differ")
    app.selectbox(key="studies.merge.reference.merged").set_value("lora · r=8").run()
    verdicts = frame_with(app, "p (Holm)").set_index("method")["verdict"]
    assert verdicts["lora · r=2"].startswith("worse")
    assert any("completed · 9 of 9 runs ended" in m.value for m in app.markdown)
    merged = json.loads(downloads["study-merged.json"])
    assert merged["status"] == "completed" and merged["merged_from"] == ["study", "study-2"]
    assert len(merged["runs"]) == 9 and merged["missing"] == []
    assert merged["reference"] == "lora · r=8" and merged["comparisons"][0]["method"] == "lora · r=2"
    assert merged["provenance"]["recorded"] == 9
    assert len(app.get("plotly_chart")) == 8  # the merge's four charts and the stored study's four
    assert (Workbench(demo_home).list_studies(), Workbench(demo_home).list_runs()) == stored  # a view

    other = json.loads(second)
    other["settings"]["max_steps"] = 20
    for files, reason in (
            ([("notes.json", b"not json"), ("b.json", second)], "notes.json: not a study's JSON"),
            ([("a.json", first), ("list.json", b"[1, 2]")], "list: not a study summary"),
            ([("a.json", first), ("a2.json", first)], "merge each seed of a cell once"),
            ([("a.json", first), ("other.json", json.dumps(other).encode())], "only the parts of one grid merge")):
        upload(app, *files)
        assert any(reason in error.value for error in app.error), (reason, [e.value for e in app.error])
