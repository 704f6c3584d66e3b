"""The import report on a corpus of broken inputs: each problem named, nothing half-imported."""

from __future__ import annotations


import numpy as np
import pytest
import soundfile
from audio_files import write_audio, write_csv, workbench_empty  # noqa: F401 (fixture)

from engine.errors import DatasetError

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def forty_minute_recording(path):
    """40 minutes of silence, written in chunks (8 kHz, 8-bit: about 19 MB)."""
    chunk = np.zeros(8_000 * 60, dtype=np.float32)
    with soundfile.SoundFile(str(path), "w", samplerate=8_000, channels=1, subtype="PCM_U8") as out:
        for _ in range(40):
            out.write(chunk)
    return path


@pytest.fixture
def broken_corpus(tmp_path):
    root = tmp_path / "broken"
    for i in range(3):
        write_audio(root / f"good{i}.wav", freq=300 + 100 * i)
    (root / "fake.wav").write_text("I am a text file pretending to be audio")
    soundfile.write(str(root / "empty.wav"), np.zeros(0, dtype=np.float32), 16_000)
    write_audio(root / "short.wav", seconds=0.05)
    forty_minute_recording(root / "long.wav")
    write_audio(root / "copy.wav", freq=300)  # the same samples as good0.wav
    write_audio(tmp_path / "secret.wav", freq=900)  # outside the dataset folder
    write_audio(root / "silent-text.wav", freq=1200)
    write_audio(root / "latin.wav", freq=1500)
    rows = [["file_name", "transcription", "speaker"],
            ["good0.wav", "one", "a"], ["good1.wav", "two", "a"], ["good2.wav", "three", "b"],
            ["fake.wav", "fake", "a"], ["missing.wav", "gone", "a"], ["empty.wav", "nothing", "a"],
            ["short.wav", "blip", "a"], ["long.wav", "a lecture", "a"], ["copy.wav", "one again", "a"],
            ["../secret.wav", "outside", "a"], ["silent-text.wav", "  ", "a"]]
    write_csv(root / "metadata.csv", rows)
    with (root / "metadata.csv").open("ab") as handle:
        handle.write("latin.wav,caf\xe9 au lait,a\n".encode("latin-1"))  # one row not in UTF-8
    return root


def test_every_problem_is_reported_and_nothing_is_imported_without_consent(workbench_empty, broken_corpus):
    plan = workbench_empty.check_import(broken_corpus)
    kinds = {p.where.split(" row ")[-1].split(" (")[0]: p.kind for p in plan.report.blocking}
    assert kinds == {"5": "unreadable_audio", "6": "missing_file", "7": "empty_audio", "8": "too_short",
                     "9": "too_long", "10": "duplicate", "11": "missing_file", "12": "empty_transcript",
                     "13": "non_utf8"}
    messages = {p.kind: p.message for p in plan.report.problems}
    assert "40.0 minutes long" in messages["too_long"] and "30 s" in messages["too_long"]
    assert "outside the dataset folder" in [p.message for p in plan.report.blocking if " row 11 (" in p.where][0]
    assert "same content as metadata.csv row 2" in messages["duplicate"]
    assert "speaker" in messages["unknown_columns"]
    assert "UTF-8" in messages["non_utf8"]
    assert [i["source_name"] for i in plan.items] == ["good0.wav", "good1.wav", "good2.wav"]
    workbench_empty.discard_import(plan)

    with pytest.raises(DatasetError, match="nothing was imported") as refused:
        workbench_empty.import_dataset(broken_corpus, "broken")
    assert "Clips longer than the model window (1)" in str(refused.value)
    assert workbench_empty.list_datasets() == []
    assert not (workbench_empty.home / "datasets").exists() or not any((workbench_empty.home / "datasets").iterdir())


def test_skipping_bad_items_imports_only_the_good_ones(workbench_empty, broken_corpus):
    dataset = workbench_empty.import_dataset(broken_corpus, "cleaned", skip_bad=True)
    assert dataset["num_items"] == 3
    assert len([p for p in dataset["report"]["problems"] if p["skipped"]]) == 9
    stored = workbench_empty.storage.files.resolve(dataset["path"])
    assert sorted(p.name for p in stored.rglob("*.flac")) == ["good0.flac", "good1.flac", "good2.flac"]


def test_the_command_line_prints_the_report_and_refuses_or_skips(home, broken_corpus):
    from command_line import engine_command

    def cli(*args):
        return engine_command("datasets", "import", str(broken_corpus), "--name", "cli-set", *args)

    refused = cli()
    assert refused.returncode == 1 and "error: nothing was imported" in refused.stderr
    assert "Files that are not readable audio (1)" in refused.stderr
    imported = cli("--skip-bad")
    assert imported.returncode == 0, imported.stderr
    assert "imported cli-set: 3 items (asr)" in imported.stdout and "Missing audio files (2)" in imported.stdout


def test_a_csv_with_semicolons_is_read_and_the_report_says_so(workbench_empty, tmp_path):
    rows = [["text", "label"]] + [[f"item {i}", "a" if i % 2 else "b"] for i in range(10)]
    dataset = workbench_empty.import_dataset(write_csv(tmp_path / "semi.csv", rows, delimiter=";"), "semi")
    assert dataset["num_items"] == 10
    assert any("semicolons" in p["message"] for p in dataset["report"]["problems"])


def test_a_csv_that_cannot_be_understood_names_its_columns(workbench_empty, tmp_path):
    table = write_csv(tmp_path / "odd.csv", [["words and labels"], ["hello world positive"]])
    with pytest.raises(DatasetError, match="cannot tell what to learn from columns words and labels"):
        workbench_empty.check_import(table)


def test_a_csv_in_latin_1_gets_a_save_as_utf8_message(workbench_empty, tmp_path):
    rows = [["text", "label"], ["très bien", "pos"], ["pas génial", "neg"]]
    table = write_csv(tmp_path / "latin.csv", rows, encoding="latin-1")
    with pytest.raises(DatasetError, match="none of the items can be imported") as error:
        workbench_empty.check_import(table)
    assert "Text that is not UTF-8 (2)" in str(error.value) and "save the file as UTF-8" in str(error.value)
    header = write_csv(tmp_path / "latin-header.csv", [["catégorie", "text"], ["a", "b"]], encoding="latin-1")
    with pytest.raises(DatasetError, match="save it as 'CSV UTF-8'"):
        workbench_empty.check_import(header)


def test_a_label_column_with_one_class_is_refused(workbench_empty, tmp_path):
    table = write_csv(tmp_path / "one.csv", [["text", "label"]] + [[f"t{i}", "spam"] for i in range(8)])
    with pytest.raises(DatasetError, match="has 1 class \\('spam'\\); classification needs at least two"):
        workbench_empty.import_dataset(table, "one")
    assert workbench_empty.list_datasets() == []


def test_classes_with_too_few_items_are_a_warning(workbench_empty, tmp_path):
    rows = [["text", "label"]] + [[f"t{i}", "common"] for i in range(10)] + [["rare one", "rare"]]
    plan = workbench_empty.check_import(write_csv(tmp_path / "rare.csv", rows))
    [warning] = [p for p in plan.report.problems if p.kind == "few_items"]
    assert warning.where == "class 'rare'" and not warning.skipped and "only 1 item" in warning.message
    assert len(plan.items) == 11  # warned about, not skipped
    workbench_empty.discard_import(plan)
