"""The Datasets page through AppTest: inspect, upload and import, report and cancel, edit, delete."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from audio_files import speech_folder
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "app.py")


@pytest.fixture
def app(demo_home):
    from ui.state import shutdown_workbenches

    yield AppTest.from_file(APP, default_timeout=60)
    shutdown_workbenches()


def open_datasets(app: AppTest) -> AppTest:
    app.run()
    app.switch_page("pages/datasets.py").run()
    assert not app.exception, app.exception
    return app


def workbench(demo_home):
    from engine import Workbench

    return Workbench(demo_home)


def zipped(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for path in sorted(folder.rglob("*")):
            bundle.write(path, path.relative_to(folder.parent).as_posix())
    return buffer.getvalue()


def test_overview_charts_and_one_item_with_player_waveform_and_spectrogram(app):
    open_datasets(app)
    listing = app.dataframe[0].value.set_index("name")
    assert listing.loc["demo-commands", "classes"] != "–" and listing.loc["demo-speech", "classes"] == "–"
    assert "None" not in listing["classes"].astype(str).tolist() and not listing["classes"].isna().any()
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["train"] == "120" and metrics["validation"] == "40"
    assert len(app.get("audio")) == 1  # one player: the item being looked at
    assert len(app.get("plotly_chart")) == 4  # durations, text lengths, waveform, spectrogram
    app.text_input(key="datasets.search.demo-speech").input("fan").run()
    assert not app.exception
    items = next(df.value for df in app.dataframe if "#" in df.value.columns)
    assert len(items) == 8 and all("fan" in text for text in items["text"])
    app.selectbox(key="datasets.selected").select("demo-text").run()
    assert not app.exception and len(app.get("audio")) == 0


def test_upload_a_zip_check_and_import(app, demo_home, tmp_path):
    archive = zipped(speech_folder(tmp_path / "lecture-clips", per_split=3))
    open_datasets(app)
    app.get("file_uploader")[0].upload("lecture clips.zip", archive, "application/zip")
    app.button(key="datasets.check").click().run()
    assert not app.exception, app.exception
    assert "6 rows read as asr (audiofolder): 6 items usable" in [m.value for m in app.success]
    read = next(m.value for m in app.markdown if m.value.startswith("Read "))
    assert read.startswith("Read **lecture clips.zip** as") and "unzip-" not in read  # not a temp folder
    assert app.text_input(key="datasets.import.name").value == "lecture-clips"
    app.button(key="datasets.import.go").click().run()
    assert not app.exception, app.exception
    assert "Imported lecture-clips: 6 items (asr)." in [m.value for m in app.success]
    assert workbench(demo_home).dataset_split_counts("lecture-clips") == {"train": 3, "validation": 3}
    assert not list((demo_home / "staging").iterdir()), "the upload and its unpacked copy are gone"


def test_a_folder_with_bad_items_shows_the_report_and_cancel_imports_nothing(app, demo_home, tmp_path):
    folder = speech_folder(tmp_path / "mixed", splits=("train",), per_split=4)
    (folder / "train" / "clip1.wav").write_bytes(b"not audio")
    open_datasets(app)
    app.radio(key="datasets.import.from").set_value("A folder or file on this machine").run()
    app.text_input(key="datasets.import.path").input(str(folder))
    app.button(key="datasets.check").click().run()
    assert not app.exception, app.exception
    assert any("1 left out" in m.value for m in app.warning)
    assert app.button(key="datasets.import.go").label == "Import 3 items, skipping 1"
    app.button(key="datasets.import.cancel").click().run()
    assert not app.exception
    assert [d["name"] for d in workbench(demo_home).list_datasets()] == ["demo-speech", "demo-commands", "demo-text", "demo-voices"]
    assert app.button(key="datasets.check")  # back at the start


def test_a_path_that_is_not_there_gets_a_clear_error(app, tmp_path):
    open_datasets(app)
    app.radio(key="datasets.import.from").set_value("A folder or file on this machine").run()
    app.text_input(key="datasets.import.path").input(str(tmp_path / "nowhere"))
    app.button(key="datasets.check").click().run()
    assert not app.exception
    assert "is not a folder or file on this machine" in app.error[0].value


def test_edit_a_transcript_and_remove_an_item(app, demo_home, tmp_path):
    wb = workbench(demo_home)
    wb.import_dataset(speech_folder(tmp_path / "mine", per_split=3), "mine")
    version = wb.get_dataset("mine")["version"]
    open_datasets(app)
    app.selectbox(key="datasets.selected").select("mine").run()
    item = wb.find_items("mine", limit=1)[0][0]
    app.text_area(key=f"datasets.edit.{item['id']}.text").input("fixed words")
    app.button[[b.label for b in app.button].index("Save the change")].click().run()
    assert not app.exception, app.exception
    assert any("is now version" in m.value for m in app.success)
    assert wb.storage.get_item(wb.get_dataset("mine")["id"], item["id"])["text"] == "fixed words"
    assert app.button(key=f"datasets.edit.{item['id']}.remove").disabled
    app.checkbox(key=f"datasets.edit.{item['id']}.sure").check().run()
    app.button(key=f"datasets.edit.{item['id']}.remove").click().run()
    assert not app.exception
    dataset = wb.get_dataset("mine")
    assert dataset["num_items"] == 5 and dataset["version"] != version
    assert [h["action"] for h in wb.dataset_history("mine")] == ["remove", "edit"]


def test_delete_needs_the_name_typed(app, demo_home, tmp_path):
    wb = workbench(demo_home)
    wb.import_dataset(speech_folder(tmp_path / "gone", per_split=2), "gone")
    open_datasets(app)
    app.selectbox(key="datasets.selected").select("gone").run()
    assert app.button(key="datasets.delete").disabled
    app.text_input(key="datasets.delete.typed.gone").input("gone").run()
    app.button(key="datasets.delete").click().run()
    assert not app.exception, app.exception
    assert wb.storage.find_dataset("gone") is None
    assert "gone" not in app.dataframe[0].value["name"].tolist()


def test_export_offers_a_zip_download(app):
    open_datasets(app)
    app.button(key="datasets.export").click().run()
    assert not app.exception, app.exception
    assert app.get("download_button")


def test_columns_can_be_changed_and_checked_again(app, demo_home):
    rows = "sentence,label,notes\n" + "".join(f"s{i},{'a' if i % 2 else 'b'},note {i}\n" for i in range(10))
    open_datasets(app)
    app.get("file_uploader")[0].upload("table.csv", rows.encode(), "text/csv")
    app.button(key="datasets.check").click().run()
    assert not app.exception, app.exception
    assert app.selectbox(key="datasets.recheck.text").value == "sentence"
    assert any("notes not used" in str(df.value) for df in app.dataframe)
    app.selectbox(key="datasets.recheck.text").select("notes")
    app.button(key="datasets.recheck").click().run()
    assert not app.exception, app.exception
    assert app.selectbox(key="datasets.recheck.text").value == "notes"
    app.button(key="datasets.import.go").click().run()
    assert not app.exception, app.exception
    texts = [i["text"] for i in workbench(demo_home).dataset_items("table", limit=None)]
    assert sorted(texts)[:2] == ["note 0", "note 1"]
    assert not list((demo_home / "staging").iterdir())
