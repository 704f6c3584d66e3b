"""Every page through Streamlit's AppTest, on a real data home with the demo installed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import FAST
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "app.py")


@pytest.fixture
def app(demo_home):
    from ui.state import shutdown_workbenches

    yield AppTest.from_file(APP, default_timeout=60)
    shutdown_workbenches()


def open_page(app: AppTest, page: str) -> AppTest:
    app.run()
    app.switch_page(page).run()
    assert not app.exception, app.exception
    return app


def finished_run(demo_home, method="qlora", dataset="demo-speech") -> int:
    from engine import Workbench

    workbench = Workbench(demo_home)
    run_id = workbench.submit_run(dataset, "tiny-whisper", method, {}, FAST)
    assert workbench.wait_for_run(run_id)["status"] == "completed"
    return run_id


def test_home_shows_what_is_there(app):
    app.run()
    assert not app.exception
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Datasets"] == "4" and metrics["Models"] == "5" and metrics["Runs"] == "0"
    assert metrics["GPU"] == "none" or "GiB" in metrics["GPU"]
    assert any("No runs yet" in i.value for i in app.info)


def test_home_leads_with_the_real_whisper_demo_run(app, demo_home):
    """Home tells the presenter's story with measured numbers and starts that run in one click
    (a run held by this process keeps the app's worker from training it during the test)."""
    import os
    import socket

    from engine import Workbench
    from engine.demo import DEMO_RUN

    workbench = Workbench(demo_home)
    blocker = workbench.submit_run("demo-commands", "tiny-whisper", "lora", {}, FAST)
    workbench.storage.claim_next_run(f"{socket.gethostname()}:{os.getpid()}:0", run_id=blocker)
    workbench.storage.update_run(blocker, heartbeat_at=time.time() + 3600)
    app.run()
    assert not app.exception
    story = " ".join(m.value for m in app.markdown)
    measured = workbench.demo_story()["measured"]
    assert measured and f"{measured['zero_shot_wer']:.0%}" in story and f"{measured['wer']:.1%}" in story
    assert any("plumbing checks" in c.value for c in app.caption)
    app.button[0].click().run()
    assert not app.exception and "queued" in app.success[0].value
    # The counters are read after the button (they said "Runs 0" next to a queued demo run)
    # in a fragment that reads them again every few seconds (a run starts training later).
    assert {m.label: m.value for m in app.metric}["Runs"] == "2"  # the blocker and the demo run
    run = workbench.list_runs()[0]
    assert (run["model_name"], run["dataset_name"], run["method"]) == ("whisper-base", "demo-voices", "qlora")
    assert {k: run["settings"]["training"][k] for k in DEMO_RUN["training"]} == DEMO_RUN["training"]
    workbench.cancel_run(run["id"])


def test_models_page_says_presets_are_untrained(app):
    open_page(app, "pages/models.py")
    assert "tiny-whisper" in app.dataframe[0].value["name"].tolist()
    assert any("untrained" in w.value for w in app.warning)


def test_training_page_starts_a_run_and_shows_its_progress(app, demo_home):
    from engine import Workbench

    open_page(app, "pages/training.py")
    assert app.selectbox(key="train.method").value == "qlora"
    app.selectbox(key="train.dataset").select("demo-speech")
    app.radio(key="train.training.train_for").set_value("steps").run()
    app.number_input(key="train.training.max_steps").set_value(3)
    app.number_input(key="train.training.eval_steps").set_value(0)
    app.number_input(key="train.training.generation_max_length").set_value(8)
    app.number_input(key="train.qlora.r").set_value(4)
    app.button(key="train.start").click().run()
    assert not app.exception
    assert "queued" in app.toast[0].value

    workbench = Workbench(demo_home)
    [run] = workbench.list_runs()
    assert run["settings"]["method"]["r"] == 4 and run["settings"]["training"]["max_steps"] == 3
    deadline = time.monotonic() + 120
    while workbench.get_run(run["id"])["status"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    app.run()
    assert not app.exception
    assert app.get("progress")[0].proto.value == 100  # step 3 of 3
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["WER (validation split)"].endswith("%") and float(metrics["samples / s"]) > 0
    assert float(metrics["audio-hours per hour"]) > 0
    assert metrics["MFU"] == "n/a on CPU" and metrics["achieved TFLOP/s"] == "n/a on CPU"
    # loss, learning rate, gradient norm, throughput, utilisation, machine (one chart per tab)
    assert len(app.get("plotly_chart")) >= 6


def test_training_page_stop_button_stops_a_running_run(app, demo_home):
    from engine import Workbench

    workbench = Workbench(demo_home)
    run_id = workbench.submit_run("demo-speech", "tiny-whisper", "lora", {},
                                  {**FAST, "max_steps": 500, "per_device_train_batch_size": 2})
    open_page(app, "pages/training.py")  # the app's worker picks the run up
    deadline = time.monotonic() + 120
    while (workbench.get_run(run_id)["step"] or 0) < 1:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    app.run()
    app.button(key=f"train.stop.{run_id}").click().run()
    while workbench.get_run(run_id)["status"] != "stopped":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    app.run()
    assert app.button(key=f"train.resume.{run_id}")


def test_compare_page_plots_runs_side_by_side(app, demo_home):
    first = finished_run(demo_home, "qlora")
    second = finished_run(demo_home, "lora")
    open_page(app, "pages/compare.py")
    assert app.multiselect(key="compare.runs").value == [second, first]
    # two curves, four cost bars, a throughput curve and two of its bars (no MFU on a CPU),
    # quality vs memory
    assert len(app.get("plotly_chart")) == 10
    table = app.dataframe[1].value  # results (the settings table comes first)
    assert table["method"].tolist() == ["lora", "qlora"] and "final_wer" in table.columns
    assert (table["adapter_bytes"] > 0).all() and (table["samples_per_second"] > 0).all()
    assert (table["achieved_tflops"] > 0).all() and table["mfu"].tolist() == ["n/a on CPU"] * 2


def test_compare_page_is_friendly_when_empty(app):
    open_page(app, "pages/compare.py")
    assert "Nothing to compare yet" in app.info[0].value


def test_models_page_shows_architecture_and_estimates_memory(app):
    open_page(app, "pages/models.py")
    app.selectbox(key="models.selected").select("tiny-whisper").run()
    assert not app.exception
    layers = app.dataframe[2].value
    assert "q_proj" in layers["layer name"].tolist()
    assert "default LoRA target" in layers["role"].tolist()
    app.button(key="models.estimate").click().run()
    assert not app.exception
    estimates = app.dataframe[-1].value.set_index("method")
    assert {"full", "lora", "qlora"} <= set(estimates.index)
    assert estimates.loc["qlora", "peak MiB"] < estimates.loc["full", "peak MiB"]
    assert len(app.get("plotly_chart")) == 2  # components and memory
    # Whisper with audio_padding=longest runs the encoder on the clip only: 1 s of its 5 s window
    app.number_input(key="models.length.tiny-whisper.asr").set_value(1)
    app.selectbox(key="models.padding").select("longest")
    app.button(key="models.estimate").click().run()
    assert not app.exception
    short = app.dataframe[-1].value.set_index("method")
    assert short.loc["lora", "peak MiB"] < estimates.loc["lora", "peak MiB"]


def test_models_page_registers_a_local_folder_and_deletes_it_after_asking(app, demo_home):
    from engine import Workbench

    open_page(app, "pages/models.py")
    app.text_input[0].input(str(demo_home / "models" / "tiny-bert"))
    app.text_input[1].input("my-bert")
    app.button[-1].click().run()
    assert not app.exception and "Registered my-bert" in app.success[0].value

    app.run()  # the list above the form was drawn before the model was registered
    app.selectbox(key="models.selected").select("my-bert").run()
    app.button(key="models.delete").click().run()
    assert any("Delete **my\\-bert** and its files?" in w.value for w in app.warning)
    workbench = Workbench(demo_home)
    assert "my-bert" in [m["name"] for m in workbench.list_models()]  # nothing goes before Yes
    app.button(key="models.delete.yes").click().run()
    assert not app.exception, app.exception
    assert "my-bert" not in [m["name"] for m in workbench.list_models()]
    assert any("Model my-bert deleted." in toast.value for toast in app.toast)


def test_methods_page_lists_every_method_with_its_cost(app):
    open_page(app, "pages/methods.py")
    assert not app.get("plotly_chart")  # no dry run on a first visit (it was 19 s of the load)
    assert set(app.dataframe[0].value["method"]) >= {"lora", "qlora"}
    app.button(key="methods.estimate").click().run()
    assert not app.exception, app.exception
    table = app.dataframe[0].value.set_index("method")
    assert {"full", "frozen-encoder", "lora", "qlora", "qlora-8bit", "adalora", "ia3"} <= set(table.index)
    assert table.loc["ia3", "trainable params"] < table.loc["lora", "trainable params"] < table.loc["full", "trainable params"]
    assert len(app.expander) >= 7 and len(app.get("plotly_chart")) == 1


def test_models_page_does_not_carry_a_length_from_one_model_to_the_next(app):
    open_page(app, "pages/models.py")
    app.selectbox(key="models.selected").select("tiny-whisper").run()
    app.number_input(key="models.length.tiny-whisper.asr").set_value(3).run()
    app.selectbox(key="models.selected").select("tiny-bert").run()
    assert not app.exception
    tokens = app.number_input(key="models.length.tiny-bert.text-classification")
    assert (tokens.label, tokens.value) == ("Tokens", 64)  # its own default, not 3 seconds


def test_streamlit_hides_its_toolbar_and_make_run_watches_no_files():
    import tomllib

    from streamlit import config

    root = Path(APP).parent
    settings = tomllib.loads((root / ".streamlit" / "config.toml").read_text())
    # "minimal": no Deploy button, no developer menu beside the run's Stop button
    assert settings["client"]["toolbarMode"] in ("viewer", "minimal")
    assert "minimal" in config.get_config_options()["client.toolbarMode"].description  # this Streamlit knows it
    assert {".venv", "data"} <= set(settings["server"]["folderWatchBlacklist"])
    makefile = (root / "Makefile").read_text()
    run_line = makefile.split("\nrun:", 1)[1].split("\n\n", 1)[0]
    streamlit_line = makefile.split("\nSTREAMLIT = ", 1)[1].split("\n\n", 1)[0].split("\nTLS_DIR", 1)[0]
    assert "$(STREAMLIT)" in run_line and "--server.fileWatcherType none" in streamlit_line
    assert "--server.fileWatcherType=none" in (root / "docker" / "entrypoint.sh").read_text()
