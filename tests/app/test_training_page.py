"""The Training page: clone, queue controls, the final evaluation, throughput and utilisation,
many tabs watching a run."""

from __future__ import annotations

import io
import os
import socket
import time
import zipfile

from conftest import FAST
from page_fixtures import assert_built_before_offered, downloads  # noqa: F401  (a fixture)
from seeded_runs import hold_worker, seed_runs
from streamlit.testing.v1 import AppTest
from test_pages import APP, app, finished_run, open_page  # noqa: F401  (fixture)


def test_clone_opens_the_form_filled_with_the_runs_settings(app, demo_home):  # noqa: F811
    from engine import Workbench

    source = finished_run(demo_home, "qlora")
    workbench = Workbench(demo_home)
    settings = workbench.get_run(source)["settings"]
    open_page(app, "pages/training.py")
    app.button(key=f"train.clone.{source}").click().run()
    assert not app.exception
    prefix = f"train.clone{source}"
    assert app.selectbox(key=f"{prefix}.method").value == "qlora"
    assert app.number_input(key=f"{prefix}.training.max_steps").value == settings["training"]["max_steps"]
    assert app.number_input(key=f"{prefix}.qlora.r").value == settings["method"]["r"]
    app.number_input(key=f"{prefix}.qlora.r").set_value(16)
    app.button(key="train.start").click().run()
    assert not app.exception and "queued" in app.toast[0].value
    clone = workbench.list_runs()[0]
    assert clone["id"] != source
    assert clone["settings"]["method"] == {**settings["method"], "r": 16}
    assert clone["settings"]["training"] == settings["training"]


def test_the_pages_clone_of_an_older_run_is_the_command_lines(app, demo_home, monkeypatch):  # noqa: F811
    """One clone path: a run stored before some settings existed gets, in the form's clone,
    the defaults its own resume and ``runs clone`` give it, not a new run's (LIM_TRACKING,
    the device profile): the page and the command line queue the same run."""
    from engine import Workbench

    source = finished_run(demo_home, "qlora")
    workbench = Workbench(demo_home)
    workbench.storage.update_run(source, settings={"method": {"r": 4}, "training": {"max_steps": 3, "seed": 11}})
    monkeypatch.setenv("LIM_TRACKING", "tensorboard")  # new runs would track; this older run did not
    open_page(app, "pages/training.py")
    app.button(key=f"train.clone.{source}").click().run()
    app.button(key="train.start").click().run()
    assert not app.exception and "queued" in app.toast[0].value
    from_page = workbench.list_runs()[0]
    from_command_line = workbench.get_run(workbench.clone_run(source))
    assert from_page["id"] != source and from_page["settings"] == from_command_line["settings"]
    assert from_page["settings"]["training"]["tracking"] == "none"
    assert (from_page["settings"]["method"]["r"], from_page["settings"]["training"]["seed"]) == (4, 11)


def test_queue_can_be_reordered_and_cancelled_with_a_confirmation(app, demo_home):  # noqa: F811
    from engine import Workbench

    workbench = Workbench(demo_home)
    blocker = workbench.submit_run("demo-commands", "tiny-whisper", "lora", {}, FAST)
    # A run "training" in this very process holds the device, so the queue stays put.
    workbench.storage.claim_next_run(f"{socket.gethostname()}:{os.getpid()}:0", run_id=blocker)
    # Its heartbeat stays fresh for the whole test, however slow the machine (stale: interrupted).
    workbench.storage.update_run(blocker, heartbeat_at=time.time() + 3600)
    a, b, c = (workbench.submit_run("demo-commands", "tiny-whisper", "lora", {}, FAST) for _ in range(3))
    open_page(app, "pages/training.py")
    assert app.dataframe[0].value["run"].tolist() == [a, b, c]
    app.selectbox(key="train.queue.run").select(c)
    app.number_input(key="train.queue.position").set_value(1)
    app.button(key="train.queue.move").click().run()
    assert [row["id"] for row in workbench.queue()] == [c, a, b]

    app.selectbox(key="train.queue.run").select(a)
    app.button(key="train.queue.cancel").click().run()
    assert workbench.get_run(a)["status"] == "queued"  # nothing happens before confirming
    assert any(f"Cancel run #{a}?" in w.value for w in app.warning)
    app.button(key="train.queue.cancel.yes").click().run()
    assert not app.exception
    assert workbench.get_run(a)["status"] == "cancelled"
    assert [row["id"] for row in workbench.queue()] == [c, b]
    workbench.storage.update_run(blocker, status="completed")


def test_classification_run_shows_its_evaluation_and_confusion_matrix(app, demo_home):  # noqa: F811
    finished_run(demo_home, "lora", dataset="demo-commands")
    open_page(app, "pages/training.py")
    assert any("no test split" in i.value for i in app.info)
    examples = app.dataframe[0].value  # the monitor comes first, the list of all runs last
    assert list(examples.columns[:4]) == ["reference", "prediction", "confidence", "correct"]
    wrong = examples[~examples["correct"]]
    assert examples["correct"].tolist() == sorted(examples["correct"].tolist())  # mistakes first
    assert wrong["confidence"].tolist() == sorted(wrong["confidence"].tolist(), reverse=True)
    assert len(examples) == 30  # the whole validation split (no test split in the demo)
    assert any("confusion matrix" in chart.proto.spec for chart in app.get("plotly_chart"))


def test_monitor_shows_throughput_and_utilisation(app, demo_home):  # noqa: F811
    import json

    qlora_on_cpu, _, full_on_gpu = seed_runs(demo_home)
    open_page(app, "pages/training.py")
    assert app.selectbox(key="train.watch_select").value == full_on_gpu  # the newest finished run
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["samples / s"] == "40.0" and metrics["audio-hours per hour"] == "100.0"
    assert metrics["MFU"] == "12.5 %" and metrics["achieved TFLOP/s"] == "0.4"
    [chart] = [json.loads(c.proto.spec) for c in app.get("plotly_chart")
               if "Utilisation" in c.proto.id]
    assert {trace["name"]: trace.get("yaxis") for trace in chart["data"]} == {
        "achieved TFLOP/s": "y", "MFU %": "y2"}

    app.selectbox(key="train.watch_select").select(qlora_on_cpu).run()
    assert not app.exception
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["MFU"] == "n/a on CPU" and metrics["achieved TFLOP/s"] == "n/a on CPU"
    assert any("MFU: n/a on CPU" in caption.value for caption in app.caption)
    [log] = app.code
    assert log.proto.wrap_lines  # long log lines wrap instead of running off the edge


def test_many_tabs_watch_a_training_run(demo_home):
    from engine import Workbench
    from ui.state import shutdown_workbenches

    workbench = Workbench(demo_home)
    run_id = workbench.submit_run("demo-speech", "tiny-whisper", "lora", {},
                                  {**FAST, "max_steps": 5000, "per_device_train_batch_size": 2})
    tabs = [AppTest.from_file(APP, default_timeout=60) for _ in range(3)]
    try:
        for tab in tabs:
            open_page(tab, "pages/training.py")  # the first one starts the app's worker
        deadline = time.monotonic() + 300
        while (workbench.get_run(run_id)["step"] or 0) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        for _ in range(3):  # three rounds of every tab rendering while the worker writes
            for tab in tabs:
                tab.run()
                assert not tab.exception, tab.exception
                assert tab.get("progress")[0].proto.value < 100
        assert workbench.get_run(run_id)["status"] == "running"
        workbench.stop_run(run_id)
        while workbench.get_run(run_id)["status"] != "stopped":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        step = workbench.get_run(run_id)["step"]
        for tab in tabs:
            tab.run()
            assert not tab.exception
            assert tab.button(key=f"train.resume.{run_id}")
            assert f"step {step} / 5000" in tab.get("progress")[0].proto.text
        steps = [m["step"] for m in workbench.run_metrics(run_id, ["train/loss"])]
        assert steps == list(range(1, step + 1))  # watching never wrote anything
        assert len(workbench.list_runs()) == 1
    finally:
        shutdown_workbenches()


def test_a_fresh_tab_watches_the_running_run_not_the_newest(app, demo_home):  # noqa: F811
    from engine import Workbench

    workbench = Workbench(demo_home)
    seed_runs(demo_home)  # three completed runs
    running = hold_worker(workbench)
    cancelled = workbench.submit_run("demo-speech", "tiny-whisper", "lora", {}, FAST)
    workbench.cancel_run(cancelled)  # the newest run of all
    open_page(app, "pages/training.py")
    assert app.selectbox(key="train.watch_select").value == running
    workbench.storage.update_run(running, status="completed")


def test_the_default_run_is_running_then_newest_queued_then_newest_finished():
    from ui.training_views import default_run

    def runs(*statuses):  # newest first, as list_runs gives them
        return [{"id": len(statuses) - i, "status": s} for i, s in enumerate(statuses)]

    assert default_run(runs("cancelled", "queued", "running", "completed")) == 2
    assert default_run(runs("cancelled", "queued", "queued", "completed")) == 3
    assert default_run(runs("cancelled", "failed", "completed")) == 2
    assert default_run(runs("cancelled", "cancelled")) == 2


def test_the_runs_table_and_the_queue_refresh_themselves(app, demo_home, monkeypatch):  # noqa: F811
    """The monitor, the queue and the list of all runs are each drawn inside a fragment that
    reruns on a timer: none of them shows a state older than the others (in a browser the page
    itself never reruns while a run trains). The "queued" message is a toast, which goes by itself."""
    import functools
    import importlib

    import streamlit

    from engine import Workbench
    from ui import training_monitor

    real_fragment, real_dataframe = streamlit.fragment, streamlit.dataframe
    inside, drawn = [], {}

    def fragment(func=None, *, run_every=None):
        def wrap(body):
            @functools.wraps(body)
            def timed(*args, **kwargs):
                inside.append(run_every)
                try:
                    return body(*args, **kwargs)
                finally:
                    inside.pop()
            return real_fragment(timed, run_every=run_every)
        return wrap(func) if func is not None else wrap

    def dataframe(data=None, *args, **kwargs):
        drawn[kwargs.get("key") or tuple(data.columns)] = bool(inside and inside[-1])
        return real_dataframe(data, *args, **kwargs)

    monkeypatch.setattr(streamlit, "fragment", fragment)
    monkeypatch.setattr(streamlit, "dataframe", dataframe)
    # The fragments are made when ui/training_monitor.py is imported: import it again under the spy.
    importlib.reload(training_monitor)
    workbench = Workbench(demo_home)
    hold_worker(workbench)
    workbench.submit_run("demo-speech", "tiny-whisper", "lora", {}, FAST)
    try:
        open_page(app, "pages/training.py")
        app.button(key="train.start").click().run()
    finally:  # the real fragments again for the tests that follow
        monkeypatch.setattr(streamlit, "fragment", real_fragment)
        importlib.reload(training_monitor)
    assert not app.exception, app.exception
    assert drawn["train.all_runs"], "the list of all runs is drawn outside a refreshing fragment"
    [queue_table] = [refreshed for key, refreshed in drawn.items() if isinstance(key, tuple) and "position" in key]
    assert queue_table, "the queue is drawn outside a refreshing fragment"
    assert any("queued" in toast.value for toast in app.toast) and not app.success


def test_the_monitor_shows_the_evaluation_with_its_own_progress(app, demo_home):  # noqa: F811
    from engine import Workbench

    workbench = Workbench(demo_home)
    run_id = hold_worker(workbench)
    workbench.storage.update_run(run_id, step=30, total_steps=30, wall_time_s=60.0,
                                 phase="final evaluation on the test split", phase_done=12, phase_total=30)
    open_page(app, "pages/training.py")
    bars = [bar.proto.text for bar in app.get("progress")]
    assert "step 30 / 30" in bars[0] and "evaluating" in bars[0] and "ETA" not in bars[0]
    assert bars[1] == "Final evaluation on the test split: 12 / 30 examples"
    assert "running (evaluating)" in app.dataframe[-1].value["status"].tolist()
    workbench.storage.update_run(run_id, status="completed", phase=None)


def test_the_monitor_says_when_a_run_compiles_for_a_new_batch_shape(app, demo_home):  # noqa: F811
    """On a GPU the first batch of each shape compiles the layers for tens of seconds: the bar
    says so (no ETA from those slow steps) and a line says why, instead of a bar that looks stuck."""
    from engine import Workbench
    from engine.progress import COMPILING

    workbench = Workbench(demo_home)
    run_id = hold_worker(workbench)
    workbench.storage.update_run(run_id, step=0, total_steps=40, wall_time_s=None, phase=COMPILING)
    open_page(app, "pages/training.py")
    [bar] = [bar.proto.text for bar in app.get("progress")]
    assert bar.startswith("step 0 / 40") and bar.endswith(COMPILING) and "ETA" not in bar
    assert any("later runs reuse what was compiled" in caption.value for caption in app.caption)
    assert f"running ({COMPILING})" in app.dataframe[-1].value["status"].tolist()
    workbench.storage.update_run(run_id, status="completed", phase=None)


def test_a_finished_run_can_be_exported_from_the_training_page(app, demo_home, downloads):  # noqa: F811
    run_id = finished_run(demo_home, "lora")
    open_page(app, "pages/training.py")
    assert any(e.label == f"Take run #{run_id} home" for e in app.expander)
    for fmt in ("adapter", "merged", "onnx", "ct2"):  # the Playground's formats, CTranslate2 included
        assert app.button(key=f"train.export.{fmt}")
    assert not app.get("download_button")  # nothing is offered before it is built
    app.button(key="train.export.adapter").click().run()
    app.button(key="train.export.merged").click().run()
    assert not app.exception, app.exception
    labels = [b.proto.label for b in assert_built_before_offered(app)]
    assert labels == ["Download the adapter (zip)", "Download the merged model (zip)"]
    with zipfile.ZipFile(io.BytesIO(downloads[f"run-{run_id}-adapter.zip"])) as archive:
        assert any(name.endswith("adapter_config.json") for name in archive.namelist())


def test_delete_asks_first_then_removes_the_run_with_its_files(app, demo_home):  # noqa: F811
    from engine import Workbench

    *_, newest = seed_runs(demo_home)
    workbench = Workbench(demo_home)
    folder = demo_home / "runs" / str(newest)
    assert (folder / "adapter").is_dir()
    open_page(app, "pages/training.py")
    app.button(key=f"train.delete.{newest}").click().run()
    assert any(f"Delete run #{newest}" in w.value for w in app.warning)
    assert workbench.get_run(newest)["status"] == "completed"  # nothing happens before confirming
    app.button(key="train.delete.yes").click().run()
    assert not app.exception, app.exception
    assert newest not in [r["id"] for r in workbench.list_runs()]
    assert not folder.exists() and not workbench.storage.metrics(newest)
    assert any("deleted" in toast.value for toast in app.toast)
    assert app.selectbox(key="train.watch_select").value != newest


def test_a_finished_cmra_run_shows_its_rank_allocation(app, demo_home):  # noqa: F811
    import json

    from engine import Workbench

    run_id = finished_run(demo_home, "cmra")
    report = Workbench(demo_home).run_method_report(run_id)
    open_page(app, "pages/training.py")
    assert any(f"{report['used']:,} of {report['budget']:,} adapter parameters" in caption.value
               for caption in app.caption)
    [chart] = [json.loads(c.proto.spec) for c in app.get("plotly_chart") if "ranks" in c.proto.id]
    drawn = {trace["name"]: len(trace["x"]) for trace in chart["data"]}
    assert drawn == {"audio encoder": 4, "cross-attention": 4, "text decoder": 4}
    # provenance and decisions (the method's report) under the run, as runs show --json has them
    provenance = Workbench(demo_home).run_provenance(run_id)
    assert any(c.value.startswith("Code: ") and provenance["data_fingerprint"]["version"] in c.value
               for c in app.caption)
    [decisions] = [json.loads(element.proto.body) for element in app.get("json")]
    assert decisions["method_report"]["used"] == report["used"]
