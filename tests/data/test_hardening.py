"""Issue 15, data side: each input that crashed, hung or slipped through, answered as described."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from command_line import engine_command
import soundfile
from audio_files import speech_folder, write_audio, write_csv, workbench_empty  # noqa: F401 (fixture)

from engine.data.archives import ImportLimits, extract_zip
from engine.data.pipeline import ImportOptions, clean_stale_staging, prepare_import
from engine.errors import DatasetError

ROOT = Path(__file__).resolve().parents[2]


def left_in_home(home: Path) -> list[str]:
    """Files the data home holds outside the database (nothing may be half-imported)."""
    return sorted(p.relative_to(home).as_posix() for p in home.rglob("*")
                  if p.is_file() and not p.name.startswith("workbench.db"))


def encrypt_flag(archive: Path) -> Path:
    """Mark every entry as encrypted (bit 0 of the flags), as a password-protected zip does."""
    data = bytearray(archive.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(signature)
        while at != -1:
            data[at + offset] |= 0x01
            at = data.find(signature, at + 4)
    archive.write_bytes(bytes(data))
    return archive


def test_float_wav_with_nan_and_inf_is_named_and_never_stored(workbench_empty, tmp_path):
    root = speech_folder(tmp_path / "poisoned", splits=("train",), per_split=3)
    samples = np.full(8_000, 0.1, dtype=np.float32)
    samples[100], samples[200], samples[300] = np.nan, np.inf, -np.inf
    soundfile.write(str(root / "train" / "nan.wav"), samples, 16_000, subtype="FLOAT")
    with (root / "train" / "metadata.csv").open("a") as handle:
        handle.write("nan.wav,not a number\n")
    dataset = workbench_empty.import_dataset(root, "poisoned", skip_bad=True)
    report = "\n".join(workbench_empty.dataset_report_lines("poisoned"))
    assert "nan.wav" in report and "NaN or infinite" in report
    assert dataset["num_items"] == 3
    assert not any("nan" in p for p in left_in_home(workbench_empty.home))


def test_password_protected_zip_is_refused_with_a_message(tmp_path):
    archive = tmp_path / "locked.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("data/metadata.csv", "file_name,transcription\n")
    encrypt_flag(archive)
    with pytest.raises(DatasetError, match="password"):
        extract_zip(archive, tmp_path / "out", ImportLimits())
    assert not (tmp_path / "out").exists()


def test_highly_compressed_member_is_refused_by_its_ratio(tmp_path):
    archive = tmp_path / "ratio.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("zeros.bin", bytes(4 * 1024 * 1024))  # 4 MB of zeros: a few KB packed
    with pytest.raises(DatasetError, match="compression ratio"):
        extract_zip(archive, tmp_path / "out", ImportLimits())  # far under the size limit
    assert not (tmp_path / "out").exists()


def test_ratio_limit_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LIM_MAX_COMPRESSION_RATIO", "5000")
    assert ImportLimits().max_compression_ratio == 5000


def test_long_extraction_reports_progress(tmp_path):
    archive = tmp_path / "big.zip"
    payload = np.random.default_rng(0).bytes(3 * 1024 * 1024)  # incompressible
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("a.bin", payload)
        bundle.writestr("b.bin", payload)
    calls = []
    extract_zip(archive, tmp_path / "out", ImportLimits(), on_progress=lambda *a: calls.append(a))
    assert calls and calls[-1][0] == calls[-1][1] and "MB unpacked" in calls[-1][2]


def test_staging_of_a_killed_process_is_cleaned_at_start_up(home, tmp_path):
    from engine import Workbench

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    staging = home / "staging"
    from engine.data.pipeline import staging_name

    stale = staging / staging_name("unzip").replace(str(os.getpid()), dead, 1)
    (stale / "data").mkdir(parents=True)
    (stale / "data" / "half.wav").write_bytes(b"x" * 1000)
    mine = staging / staging_name("upload")
    mine.mkdir()
    Workbench(home).storage.close()
    assert not stale.exists() and mine.exists()
    clean_stale_staging(staging, max_age_s=0)  # age still clears anything, ours included
    assert not mine.exists()


KILLED_MID_IMPORT = """
import sys, time
from engine import Workbench

def stall(done, total, what):
    if "MB unpacked" in what:  # the archive is unpacked under staging: die here
        print("unpacked", flush=True)
        time.sleep(600)

Workbench(sys.argv[1]).check_import(sys.argv[2], on_progress=stall)
"""


def test_kill_9_during_an_import_leaves_staging_that_the_next_start_cleans(home, tmp_path):
    from engine import Workbench

    root = speech_folder(tmp_path / "speech", splits=("train",), per_split=3)
    archive = tmp_path / "speech.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for file in root.rglob("*"):
            bundle.write(file, file.relative_to(root.parent).as_posix())
    child = subprocess.Popen([sys.executable, "-c", KILLED_MID_IMPORT, str(home), str(archive)], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "unpacked"
        assert any((home / "staging").iterdir())
    finally:
        child.kill()  # SIGKILL: no handler, no finally runs in the child
        child.wait(timeout=30)
    Workbench(home).storage.close()
    assert not any((home / "staging").iterdir())


def test_dataset_name_that_is_not_utf8_is_refused(workbench_empty, tmp_path):
    root = speech_folder(tmp_path / "speech", splits=("train",), per_split=2)
    with pytest.raises(DatasetError, match="name"):
        workbench_empty.import_dataset(root, "caf\udce9")
    with pytest.raises(DatasetError, match="control characters"):
        workbench_empty.import_dataset(root, "red\x1b[31mtext")
    assert left_in_home(workbench_empty.home) == []


def test_looking_up_a_name_that_is_not_utf8_finds_nothing(workbench_empty):
    from engine.errors import NotFoundError

    with pytest.raises(NotFoundError, match="no dataset"):
        workbench_empty.get_dataset("caf\udce9")
    with pytest.raises(NotFoundError, match="no model"):
        workbench_empty.get_model("caf\udce9")


def test_terminal_escapes_are_never_echoed_by_the_command_line(tmp_path):
    result = engine_command("datasets", "import", str(tmp_path / "nowhere\x1b]0;owned\x07"), "--name",
                            "x\x1b[2J", home=tmp_path / "home")
    assert result.returncode == 1
    assert "\x1b" not in result.stderr + result.stdout and "\\x1b" in result.stderr


def test_save_to_disk_data_file_outside_the_folder_is_refused(tmp_path):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": ["a b", "c d"], "label": ["x", "y"]}).save_to_disk(str(folder))
    secret = tmp_path / "secret.arrow"
    arrow = next(folder.glob("*.arrow"))
    secret.write_bytes(b"TOP SECRET " * 10)
    state = json.loads((folder / "state.json").read_text())
    state["_data_files"] = [{"filename": "../secret.arrow"}]
    (folder / "state.json").write_text(json.dumps(state))
    arrow.unlink()
    with pytest.raises(DatasetError, match="outside the dataset folder") as error:
        prepare_import(folder, tmp_path / "staging")
    assert "SECRET" not in str(error.value)


def test_audiofolder_path_column_is_named_as_the_one_taken(tmp_path):
    root = tmp_path / "audio"
    for i in range(3):
        write_audio(root / f"c{i}.wav", freq=300 + 100 * i)
    write_csv(root / "metadata.csv", [["path", "transcription"]] + [[f"c{i}.wav", f"t {i}"] for i in range(3)])
    plan = prepare_import(root, tmp_path / "staging")
    notes = [p.message for p in plan.report.warnings if p.kind == "guessed_column"]
    assert notes and "'path'" in notes[0] and "file_name" in notes[0]


def test_zip_with_thousands_of_unused_entries_says_so(tmp_path):
    root = speech_folder(tmp_path / "speech", splits=("train",), per_split=3)
    archive = tmp_path / "mostly-junk.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for file in root.rglob("*"):
            bundle.write(file, file.relative_to(root.parent).as_posix())
        for i in range(2_000):
            bundle.writestr(f"speech/junk/note{i}.txt", b"")
    plan = prepare_import(archive, tmp_path / "staging")
    unused = [p for p in plan.report.warnings if p.kind == "unused_files"]
    assert unused and "2000 files" in unused[0].message and "note" in unused[0].message


def test_unclosed_quote_row_is_named_and_refused(tmp_path):
    root = tmp_path / "texts"
    root.mkdir()
    lines = ["text,label"] + [f"sample {i} is fine,{'good' if i % 2 else 'bad'}" for i in range(10)]
    lines[4] = 'she said so,"funny and kind'  # the quote swallows every line after it
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    plan = prepare_import(root, tmp_path / "staging", ImportOptions(task="text-classification"))
    broken = [p for p in plan.report.blocking if p.kind == "broken_row"]
    assert broken and broken[0].where.startswith("train.csv row 5") and "quote" in broken[0].message
    assert all("\n" not in item["label"] for item in plan.items)


def test_parquet_columns_of_the_wrong_type_are_named(tmp_path):
    pd = pytest.importorskip("pandas")
    path = tmp_path / "numbers.parquet"
    pd.DataFrame({"text": list(range(12)), "label": [float(i % 3) + 0.5 for i in range(12)]}).to_parquet(path)
    with pytest.raises(DatasetError) as error:
        prepare_import(path, tmp_path / "staging")
    message = str(error.value)
    assert "'text'" in message and "integer" in message and "'label'" in message and "float" in message


def test_audio_without_a_metadata_row_is_said_to_be_left_out(tmp_path):
    root = speech_folder(tmp_path / "speech", splits=("train",), per_split=3)
    write_audio(root / "train" / "forgotten.wav", freq=900)
    plan = prepare_import(root, tmp_path / "staging")
    unlisted = [p for p in plan.report.warnings if p.kind == "unlisted_audio"]
    assert unlisted and "forgotten.wav" in unlisted[0].message and "left out" in unlisted[0].message


def test_transcript_far_too_long_for_its_clip_is_refused(tmp_path):
    root = speech_folder(tmp_path / "speech", splits=("train",), per_split=3)
    write_audio(root / "train" / "short.wav", seconds=1.0, freq=900)
    with (root / "train" / "metadata.csv").open("a") as handle:
        handle.write("short.wav," + "word " * 2_000 + "\n")
    plan = prepare_import(root, tmp_path / "staging")
    flagged = [p for p in plan.report.blocking if p.kind == "long_transcript"]
    assert flagged and "448" in flagged[0].message and "short.wav" in flagged[0].where


def test_control_characters_in_transcripts_are_stripped_and_flagged(tmp_path):
    root = speech_folder(tmp_path / "speech", splits=("train",), per_split=3)
    rows = [["file_name", "transcription"], ["clip0.wav", "nul\x00here"],
            ["clip1.wav", "\x1b[31mred\x1b[0m text"], ["clip2.wav", "abc\u202edcba"]]
    write_csv(root / "train" / "metadata.csv", rows)
    plan = prepare_import(root, tmp_path / "staging")
    assert sorted(item["text"] for item in plan.items) == ["abcdcba", "nulhere", "red text"]
    flagged = [p for p in plan.report.warnings if p.kind == "control_chars"]
    assert len(flagged) == 3


def test_digital_silence_and_clipping_are_flagged(tmp_path):
    root = speech_folder(tmp_path / "speech", splits=("train",), per_split=3)
    soundfile.write(str(root / "train" / "silence.wav"), np.zeros(8_000, dtype=np.float32), 16_000)
    clipped = np.sign(np.sin(np.linspace(0, 400, 8_000))).astype(np.float32)
    soundfile.write(str(root / "train" / "clipped.wav"), clipped, 16_000)
    with (root / "train" / "metadata.csv").open("a") as handle:
        handle.write("silence.wav,nothing at all\nclipped.wav,too loud\n")
    plan = prepare_import(root, tmp_path / "staging")
    kinds = {p.where: p.kind for p in plan.report.warnings}
    assert any(k == "silence" and "silence.wav" in w for w, k in kinds.items())
    assert any(k == "clipping" and "clipped.wav" in w for w, k in kinds.items())


def test_report_names_the_metadata_file_and_the_audio_file(tmp_path):
    root = speech_folder(tmp_path / "speech", splits=("train",), per_split=3)
    with (root / "train" / "metadata.csv").open("a") as handle:
        handle.write("gone.wav,missing\n")
    plan = prepare_import(root, tmp_path / "staging")
    assert plan.report.blocking[0].where == "train/metadata.csv row 5 (gone.wav)"
