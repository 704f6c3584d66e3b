"""Import each supported format from files made here, through the workbench facade."""

from __future__ import annotations

import json
import zipfile

import pandas as pd
import pytest
from command_line import engine_command
import soundfile
from audio_files import class_folder, speech_folder, write_audio, write_csv, workbench_empty  # noqa: F401 (fixture)

from engine.data.pipeline import ImportOptions
from engine.errors import DatasetError


def stored_audio(workbench, name):
    dataset = workbench.get_dataset(name)
    return [(item, soundfile.info(str(workbench.item_file(dataset, item))))
            for item in workbench.dataset_items(name, limit=None)]


def test_audiofolder_with_metadata_csv_keeps_its_splits(workbench_empty, tmp_path):
    dataset = workbench_empty.import_dataset(speech_folder(tmp_path / "speech"), "speech")
    assert dataset["task"] == "asr" and dataset["num_items"] == 8
    assert workbench_empty.dataset_split_counts("speech") == {"train": 4, "validation": 4}
    first = workbench_empty.dataset_items("speech", "train", limit=1)[0]
    assert first["text"] == "sentence number 0 of train" and first["source_name"] == "train/clip0.wav"
    # the stored copy is itself an audiofolder
    stored = workbench_empty.storage.files.resolve(dataset["path"])
    assert (stored / "train" / "metadata.csv").read_text().splitlines()[1] == "clip0.flac,sentence number 0 of train"


def test_audiofolder_with_metadata_jsonl_and_labels(workbench_empty, tmp_path):
    root = tmp_path / "cmds"
    lines = []
    for i in range(10):
        label = "up" if i % 2 else "down"
        write_audio(root / f"{i}.ogg", freq=300 + 60 * i, format="OGG", subtype="VORBIS")
        lines.append(json.dumps({"file_name": f"{i}.ogg", "label": label}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    dataset = workbench_empty.import_dataset(root, "cmds")
    assert dataset["task"] == "audio-classification" and dataset["labels"] == ["down", "up"]
    assert sum(workbench_empty.dataset_split_counts("cmds").values()) == 10



def test_zipped_audiofolder(workbench_empty, tmp_path):
    folder = speech_folder(tmp_path / "zipped" / "course-set")
    archive = tmp_path / "course-set.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in folder.rglob("*"):
            bundle.write(path, path.relative_to(tmp_path / "zipped").as_posix())
    dataset = workbench_empty.import_dataset(archive, "from-zip")
    assert dataset["num_items"] == 8
    assert not list((workbench_empty.home / "staging").glob("*")), "the unpacked archive is cleaned up"


def test_per_class_subfolders_give_labels_and_seeded_splits(workbench_empty, tmp_path):
    dataset = workbench_empty.import_dataset(class_folder(tmp_path / "words", per_class=10), "words")
    assert dataset["task"] == "audio-classification" and dataset["labels"] == ["no", "yes"]
    assert workbench_empty.dataset_split_counts("words") == {"train": 16, "validation": 2, "test": 2}
    validation_labels = sorted(i["label"] for i in workbench_empty.dataset_items("words", "validation"))
    assert validation_labels == ["no", "yes"]  # stratified: one of each


def test_mp3_and_44k_stereo_wav_are_resampled_to_16k_mono_and_originals_kept(workbench_empty, tmp_path):
    root = tmp_path / "mixed"
    write_audio(root / "stereo.wav", seconds=1.0, rate=44_100, channels=2)
    write_audio(root / "speech.mp3", seconds=1.0, rate=22_050, format="MP3")
    write_csv(root / "metadata.csv", [["file_name", "transcription"], ["stereo.wav", "two channels"],
                                      ["speech.mp3", "compressed"]])
    workbench_empty.import_dataset(root, "mixed", options=ImportOptions(keep_originals=True))
    found = {item["source_name"]: (item, info) for item, info in stored_audio(workbench_empty, "mixed")}
    for name, rate, channels in (("stereo.wav", 44_100, 2), ("speech.mp3", 22_050, 1)):
        item, info = found[name]
        assert (info.samplerate, info.channels, info.format) == (16_000, 1, "FLAC")
        assert (item["sample_rate"], item["channels"]) == (rate, channels)  # the original's report
        assert abs(info.duration - 1.0) < 0.1
        original = workbench_empty.storage.files.resolve(
            f"{workbench_empty.get_dataset('mixed')['path']}/{item['original_file']}")
        assert soundfile.info(str(original)).samplerate == rate
    formats = workbench_empty.dataset_stats("mixed")["formats"]
    assert {(f["sample_rate"], f["channels"]) for f in formats} == {(44_100, 2), (22_050, 1)}


def test_csv_of_text_and_labels(workbench_empty, tmp_path):
    rows = [["text", "label"]] + [[f"good thing {i}", "pos"] for i in range(6)] + \
           [[f"bad thing {i}", "neg"] for i in range(6)]
    dataset = workbench_empty.import_dataset(write_csv(tmp_path / "reviews.csv", rows), "reviews")
    assert dataset["task"] == "text-classification" and dataset["num_items"] == 12
    assert set(workbench_empty.dataset_split_counts("reviews")) == {"train", "validation", "test"}


def test_jsonl_and_parquet_of_text(workbench_empty, tmp_path):
    records = [{"sentence": f"s {i}", "intent": "a" if i % 2 else "b"} for i in range(10)]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    pd.DataFrame(records).to_parquet(tmp_path / "t.parquet")
    for name, source in (("from-jsonl", "t.jsonl"), ("from-parquet", "t.parquet")):
        dataset = workbench_empty.import_dataset(tmp_path / source, name)
        assert dataset["task"] == "text-classification" and dataset["labels"] == ["a", "b"]
        assert dataset["report"]["columns"] == {"audio": None, "text": "sentence", "label": "intent"}


def test_csv_of_audio_paths_and_transcripts_with_chosen_columns(workbench_empty, tmp_path):
    write_audio(tmp_path / "audio" / "a.flac", freq=300)
    write_audio(tmp_path / "audio" / "b.flac", freq=600)
    table = write_csv(tmp_path / "list.csv", [["wav", "words", "speaker"], ["audio/a.flac", "hello", "x"],
                                              ["audio/b.flac", "world", "y"]])
    with pytest.raises(DatasetError, match="cannot tell what to learn"):
        workbench_empty.check_import(table)
    options = ImportOptions(task="asr", audio_column="wav", text_column="words")
    dataset = workbench_empty.import_dataset(table, "listed", options=options)
    assert sorted(i["text"] for i in workbench_empty.dataset_items("listed", limit=None)) == ["hello", "world"]
    assert any(p["kind"] == "unknown_columns" and "speaker" in p["message"]
               for p in dataset["report"]["problems"])


@pytest.mark.parametrize("kind", ["audio", "text"])
def test_a_dataset_saved_with_save_to_disk(workbench_empty, tmp_path, kind):
    import datasets

    if kind == "audio":
        files = [str(write_audio(tmp_path / f"{i}.wav", freq=300 + 90 * i, rate=8_000)) for i in range(6)]
        part = datasets.Dataset.from_dict({"audio": files, "transcription": [f"t {i}" for i in range(6)]})
        part = part.cast_column("audio", datasets.Audio(decode=False))
    else:
        part = datasets.Dataset.from_dict({"text": [f"t {i}" for i in range(6)], "label": [i % 2 for i in range(6)]})
        part = part.cast_column("label", datasets.ClassLabel(names=["neg", "pos"]))
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": part.select(range(4)), "test": part.select(range(4, 6))}).save_to_disk(str(saved))
    for path in tmp_path.glob("*.wav"):
        path.unlink()  # the saved dataset must carry its audio bytes itself
    dataset = workbench_empty.import_dataset(saved, f"saved-{kind}")
    assert workbench_empty.dataset_split_counts(f"saved-{kind}") == {"train": 4, "test": 2}
    if kind == "audio":
        assert {info.samplerate for _, info in stored_audio(workbench_empty, "saved-audio")} == {16_000}
    else:
        assert dataset["labels"] == ["neg", "pos"]


def test_import_progress_is_reported(workbench_empty, tmp_path):
    seen = []
    workbench_empty.import_dataset(class_folder(tmp_path / "w", per_class=15), "w",
                                   on_progress=lambda done, total, what: seen.append((done, total)))
    assert seen[-1] == (30, 30) and len(seen) >= 2 and seen == sorted(seen)


def test_a_name_already_taken_is_refused_and_nothing_is_written(workbench_empty, tmp_path):
    folder = speech_folder(tmp_path / "s")
    workbench_empty.import_dataset(folder, "same")
    with pytest.raises(DatasetError, match="already exists"):
        workbench_empty.import_dataset(folder, "same")
    assert len(list((workbench_empty.home / "datasets").iterdir())) == 1


def test_a_failure_while_writing_leaves_nothing_behind(workbench_empty, tmp_path):
    folder = speech_folder(tmp_path / "s")
    plan = workbench_empty.check_import(folder)
    # the last file turns into garbage after the check, so writing fails near the end
    (folder / "validation" / "clip3.wav").write_bytes(b"not audio any more")
    with pytest.raises(DatasetError, match="clip3"):
        workbench_empty.commit_import(plan, "half")
    assert workbench_empty.storage.find_dataset("half") is None
    assert workbench_empty.storage.db["dataset_items"].count == 0
    assert not any((workbench_empty.home / "datasets").iterdir())


def test_staged_files_left_by_abandoned_checks_are_cleaned_after_a_day(workbench_empty, tmp_path):
    import io
    import os
    import time

    upload = workbench_empty.save_upload("old.csv", io.BytesIO(b"text,label\n"))
    fresh = workbench_empty.save_upload("new.csv", io.BytesIO(b"text,label\n"))
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(upload.parent, (two_days_ago, two_days_ago))
    rows = [["text", "label"]] + [[f"t{i}", "a" if i % 2 else "b"] for i in range(6)]
    workbench_empty.discard_import(workbench_empty.check_import(write_csv(tmp_path / "t.csv", rows)))
    assert not upload.parent.exists() and fresh.exists()


def test_the_command_line_imports_a_zip_with_new_seeded_splits(home, tmp_path):

    folder = class_folder(tmp_path / "zipped" / "words", per_class=10)
    archive = tmp_path / "words.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in folder.rglob("*"):
            bundle.write(path, path.relative_to(folder.parent).as_posix())
    done = engine_command("datasets", "import", str(archive), "--name", "words", "--splits", "new",
                          "--seed", "3", "--json")
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout[done.stdout.index("{"):])
    assert printed["task"] == "audio-classification" and printed["num_items"] == 20
    assert "importing 20/20" in done.stderr
    assert "made new splits stratified by label with seed 3" in str(printed["report"])
