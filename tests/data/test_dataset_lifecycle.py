"""After import: search, stats, edits with history and versions, delete, export round trip."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import soundfile
from audio_files import class_folder, speech_folder, write_audio, write_csv, workbench_empty  # noqa: F401 (fixture)

from engine.errors import DatasetError, NotFoundError


@pytest.fixture
def speech(workbench_empty, tmp_path):
    workbench_empty.import_dataset(speech_folder(tmp_path / "speech", per_split=6), "speech")
    return workbench_empty


def test_search_is_paginated_and_filtered_in_sql(speech):
    page, total = speech.find_items("speech", split="train", limit=4, offset=4)
    assert total == 6 and [i["position"] for i in page] == [4, 5]
    found, total = speech.find_items("speech", query="number 3 of valid")
    assert total == 1 and found[0]["text"] == "sentence number 3 of validation"
    assert speech.find_items("speech", query="100%")[1] == 0  # wildcards are literal


def test_stats_count_hours_histograms_and_formats(speech):
    stats = speech.dataset_stats("speech")
    assert stats["splits"] == {"train": 6, "validation": 6} and stats["items"] == 12
    assert stats["total_hours"] == pytest.approx(12 * 0.5 / 3600, rel=1e-3)
    assert stats["duration_histogram"] == [{"from_s": 0.5, "to_s": 1.0, "items": 12}]
    assert stats["transcript_words"] == [{"words": 5, "items": 12}]
    assert stats["formats"] == [{"sample_rate": 16_000, "channels": 1, "items": 12}]


def test_label_distribution_per_split(workbench_empty, tmp_path):
    workbench_empty.import_dataset(class_folder(tmp_path / "w", per_class=10), "w")
    labels = workbench_empty.dataset_stats("w")["labels"]
    assert labels == {"no": {"train": 8, "validation": 1, "test": 1},
                      "yes": {"train": 8, "validation": 1, "test": 1}}


def test_edits_and_removals_are_recorded_and_make_new_versions(speech):
    first = speech.get_dataset("speech")
    item = speech.find_items("speech", query="number 2 of train")[0][0]
    edited = speech.update_item("speech", item["id"], text="a corrected sentence")
    assert edited["version"] != first["version"]
    assert speech.storage.get_item(first["id"], item["id"])["text"] == "a corrected sentence"
    folder = speech.storage.files.resolve(first["path"])
    assert "clip2.flac,a corrected sentence" in (folder / "train" / "metadata.csv").read_text()

    removed = speech.remove_item("speech", item["id"])
    assert removed["num_items"] == 11 and removed["version"] not in (first["version"], edited["version"])
    assert not (folder / item["file"]).exists()
    history = speech.dataset_history("speech")
    assert [(h["action"], h["version_before"], h["version_after"]) for h in history] == [
        ("remove", edited["version"], removed["version"]), ("edit", first["version"], edited["version"])]
    assert history[1]["before"]["text"] == "sentence number 2 of train"
    assert history[1]["after"] == {"text": "a corrected sentence"}
    with pytest.raises(NotFoundError, match="no item"):
        speech.update_item("speech", item["id"], text="again")


def test_an_edit_back_to_the_original_gives_the_original_version(speech):
    original = speech.get_dataset("speech")["version"]
    item = speech.find_items("speech", limit=1)[0][0]
    speech.update_item("speech", item["id"], text="changed")
    assert speech.update_item("speech", item["id"], text=item["text"])["version"] == original


def test_edits_that_make_no_sense_are_refused(workbench, tmp_path):
    workbench.import_dataset(speech_folder(tmp_path / "speech"), "speech")
    item = workbench.find_items("speech", limit=1)[0][0]
    with pytest.raises(DatasetError, match="cannot be empty"):
        workbench.update_item("speech", item["id"], text="   ")
    with pytest.raises(DatasetError, match="has no label"):
        workbench.update_item("speech", item["id"], label="x")
    demo_item = workbench.find_items("demo-speech", limit=1)[0][0]
    with pytest.raises(DatasetError, match="read-only"):
        workbench.remove_item("demo-speech", demo_item["id"])
    assert workbench.get_dataset("demo-speech")["num_items"] == 160


def test_delete_leaves_runs_intact(workbench, tmp_path):
    workbench.import_dataset(speech_folder(tmp_path / "mine", per_split=6), "mine")
    version = workbench.get_dataset("mine")["version"]
    run_id = workbench.submit_run("mine", "tiny-whisper", "lora", {}, {"max_steps": 1,
                                  "per_device_train_batch_size": 2})
    path = workbench.storage.files.resolve(workbench.get_dataset("mine")["path"])
    workbench.delete_dataset("mine")
    assert not path.exists() and workbench.storage.find_dataset("mine") is None
    summary = workbench.run_summary(run_id)
    assert summary["dataset"] == "mine" and summary["dataset_version"] == version
    assert summary["dataset_exists"] is False and summary["status"] == "queued"
    assert workbench.list_runs()[0]["id"] == run_id


def test_a_run_records_the_version_it_used(workbench, tmp_path):
    workbench.import_dataset(speech_folder(tmp_path / "mine", per_split=6), "mine")
    before = workbench.submit_run("mine", "tiny-whisper", "lora", {}, {"per_device_train_batch_size": 2})
    item = workbench.find_items("mine", limit=1)[0][0]
    workbench.update_item("mine", item["id"], text="edited")
    after = workbench.submit_run("mine", "tiny-whisper", "lora", {}, {"per_device_train_batch_size": 2})
    assert workbench.get_run(before)["dataset_version"] != workbench.get_run(after)["dataset_version"]
    assert workbench.get_run(after)["dataset_version"] == workbench.get_dataset("mine")["version"]


def test_export_opens_with_load_dataset_audiofolder(speech, tmp_path):
    import datasets

    item = speech.find_items("speech", query="number 1 of train")[0][0]
    speech.update_item("speech", item["id"], text="edited before export")
    archive = speech.export_dataset("speech", tmp_path / "out")
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(archive).extractall(unpacked)
    loaded = datasets.load_dataset("audiofolder", data_dir=str(unpacked))
    assert set(loaded) == {"train", "validation"} and loaded["train"].num_rows == 6
    train = loaded["train"].cast_column("audio", datasets.Audio(decode=False))
    dataset = speech.get_dataset("speech")
    stored = {i["file"].split("/")[-1]: i for i in speech.dataset_items("speech", "train", limit=None)}
    assert "edited before export" in train["transcription"]
    for row in train:
        name = row["audio"]["path"].split("/")[-1]
        assert row["transcription"] == stored[name]["text"]
        exported, rate = soundfile.read(row["audio"]["path"])
        original, _ = soundfile.read(str(speech.item_file(dataset, stored[name])))
        assert rate == 16_000 and np.array_equal(exported, original)


def test_text_datasets_export_as_split_csvs(workbench_empty, tmp_path):
    rows = [["text", "label"]] + [[f"t{i}", "a" if i % 2 else "b"] for i in range(10)]
    workbench_empty.import_dataset(write_csv(tmp_path / "t.csv", rows), "t")
    archive = workbench_empty.export_dataset("t", tmp_path / "out")
    names = sorted(zipfile.ZipFile(archive).namelist())
    assert names == ["test.csv", "train.csv", "validation.csv"]


def test_item_view_gives_waveform_and_log_mel(workbench_empty, tmp_path):
    root = tmp_path / "one"
    write_audio(root / "a.wav", seconds=2.0, rate=16_000, freq=1000)
    write_audio(root / "b.wav", seconds=1.0, rate=16_000, freq=300)
    write_csv(root / "metadata.csv", [["file_name", "transcription"], ["a.wav", "tone"], ["b.wav", "low"]])
    workbench_empty.import_dataset(root, "tones", options=None)
    item = workbench_empty.find_items("tones", query="tone")[0][0]
    view = workbench_empty.item_view("tones", item["id"])
    assert view["seconds"] == pytest.approx(2.0, abs=0.01)
    assert max(view["high"]) == pytest.approx(0.3, abs=0.01) and min(view["low"]) == pytest.approx(-0.3, abs=0.01)
    mel = np.array(view["mel_db"])
    assert mel.shape == (80, 201)
    loudest = int(mel.mean(axis=1).argmax())  # the 1 kHz tone's mel band
    assert abs(view["mel_hz"][loudest] - 1000) < 150
