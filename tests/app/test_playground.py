"""The Playground page: base and fine-tuned answers side by side, from a demo item or a recording."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from conftest import FAST
from page_fixtures import downloads  # noqa: F401  (a fixture)
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "app.py")


@pytest.fixture
def app(demo_home):
    from ui.playground import get_model_cache
    from ui.state import shutdown_workbenches

    yield AppTest.from_file(APP, default_timeout=120)
    shutdown_workbenches()
    get_model_cache.clear()


def finished_run(demo_home, dataset: str, method: str) -> int:
    from engine import Workbench

    workbench = Workbench(demo_home)
    run_id = workbench.submit_run(dataset, "tiny-whisper", method, {}, FAST)
    assert workbench.wait_for_run(run_id)["status"] == "completed"
    return run_id


def open_playground(app: AppTest) -> AppTest:
    app.run()
    app.switch_page("pages/playground.py").run()
    assert not app.exception, app.exception
    return app


def test_demo_item_shows_base_and_fine_tuned_answers(app, demo_home):
    from engine import Workbench
    from engine.inference import ModelCache

    run_id = finished_run(demo_home, "demo-commands", "lora")
    open_playground(app)
    assert any("Pick a demo item" in i.value for i in app.info)
    app.selectbox(key="play.run").select(run_id).run()
    item_buttons = [b for b in app.button if b.key and b.key.startswith("play.item.")]
    assert len(item_buttons) == 12
    item_buttons[0].click().run()
    assert not app.exception, app.exception

    titles = [h.value for h in app.subheader]
    assert titles == ["Base model", f"Fine-tuned: run #{run_id} (lora)"]
    assert len(app.get("plotly_chart")) == 2  # class probabilities, one chart per model
    latencies = [c.value for c in app.caption if c.value.startswith("latency")]
    assert len(latencies) == 2

    # The fine-tuned answer is the engine's prediction for the same item.
    workbench = Workbench(demo_home)
    dataset = workbench.get_dataset("demo-commands")
    item = workbench.dataset_items("demo-commands", "validation", limit=1)[0]
    path = workbench.item_file(dataset, item)
    expected = workbench.predict({"file": path.name}, path.parent, model="tiny-whisper",
                                 task="audio-classification", run_id=run_id, cache=ModelCache())
    best = max(range(len(expected["output"])), key=expected["output"].__getitem__)
    shown = [m.value for m in app.markdown if m.value.startswith("**")]
    assert f"**{expected['labels'][best]}**" in shown[-1]

    app.run()  # a rerun answers from the loaded models
    assert sum("already loaded" in c.value for c in app.caption) == 2


def test_a_recording_is_transcribed_by_the_base_model(app, demo_home):
    import soundfile

    open_playground(app)
    app.selectbox(key="play.task").select("asr").run()
    clip = next((demo_home / "datasets" / "demo-speech").rglob("*.flac"))
    samples, rate = soundfile.read(clip)
    wav = io.BytesIO()
    soundfile.write(wav, samples, rate, format="WAV")
    app.audio_input(key="play.record").upload("me.wav", wav.getvalue()).run()
    assert not app.exception, app.exception
    assert [h.value for h in app.subheader] == ["Base model"]
    assert any(m.value.startswith("> ") for m in app.markdown)
    assert any(c.value.startswith("latency") for c in app.caption)


def test_a_run_can_be_taken_home_as_a_merged_model(app, demo_home, downloads, tmp_path):
    import zipfile

    from transformers import WhisperForAudioClassification

    run_id = finished_run(demo_home, "demo-commands", "lora")
    open_playground(app)
    app.selectbox(key="play.run").select(run_id).run()
    app.button(key="play.export.merged").click().run()
    assert not app.exception, app.exception
    with zipfile.ZipFile(io.BytesIO(downloads[f"run-{run_id}-merged.zip"])) as archive:
        archive.extractall(tmp_path)
    merged = WhisperForAudioClassification.from_pretrained(tmp_path / f"run-{run_id}-merged")
    assert merged.config.num_labels == 10


def test_a_typed_sentence_goes_through_a_text_model(app, demo_home):
    from engine import Workbench

    workbench = Workbench(demo_home)
    run_id = workbench.submit_run("demo-text", "tiny-bert", "lora", {}, FAST)
    assert workbench.wait_for_run(run_id)["status"] == "completed"
    open_playground(app)
    app.selectbox(key="play.model").select("tiny-bert").run()
    app.selectbox(key="play.run").select(run_id).run()
    app.text_input(key="play.text").input("the lecture was great").run()
    assert not app.exception, app.exception
    titles = [h.value for h in app.subheader]
    assert titles == ["Base model", f"Fine-tuned: run #{run_id} (lora)"]
    assert len(app.get("plotly_chart")) == 2  # positive / negative probabilities per model


def test_clip_buttons_show_their_whole_transcript(app, demo_home):
    """Clip buttons were cut at 28 characters: "oliver will visit tokyo next" for a longer
    sentence, so clips that begin alike looked the same."""
    from engine import Workbench
    from ui.state import md_text

    open_playground(app)
    app.selectbox(key="play.model").select("tiny-whisper").run()
    app.selectbox(key="play.task").select("asr").run()
    app.selectbox(key="play.dataset.asr").select("demo-voices").run()
    assert not app.exception, app.exception
    workbench = Workbench(demo_home)
    dataset = workbench.get_dataset("demo-voices")
    items = workbench.dataset_items("demo-voices", "validation", limit=12)
    buttons = [b for b in app.button if b.key and b.key.startswith("play.item.")]
    # The buttons sit in four columns, so they are read column by column: match them by key.
    assert {b.key: b.label for b in buttons} == {
        f"play.item.{dataset['id']}.{item['id']}": md_text(item["text"]) for item in items}
    assert max(len(item["text"]) for item in items) > 28
    assert all(b.proto.wrap for b in buttons)  # long ones wrap onto a second line
