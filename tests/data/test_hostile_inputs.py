"""The project's own bad-input corpus: hostile archives, poisoned audio, broken tables.

Every case is built in ``tmp_path`` by code (nothing binary is checked in) and goes through the
same path a student's upload takes (``Workbench.import_dataset``) in a fresh data home. Each
case says what must happen:

- ``refused(pattern)``: a ``DatasetError`` whose message matches, and nothing stays behind:
  no dataset row, no dataset folder, an empty staging folder;
- ``reported(kind, pattern)``: the import goes ahead without the bad items (``skip_bad``) and
  the stored report names the problem (``kind``) with a message that matches;
- ``imported(check)``: a legal oddity that must import cleanly (``check`` inspects the items).

For every case, nothing is written outside the data home (a snapshot of ``tmp_path`` before
and after). Add a case by adding one ``Case`` to ``CASES``.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile
from audio_files import tone, write_audio, write_csv

from engine import Workbench
from engine.errors import DatasetError


@dataclass
class Case:
    name: str
    build: Callable[[Path], Path]          # makes the input under the given folder, returns its path
    outcome: str                           # "refused", "reported" or "imported"
    pattern: str = ""                      # regex the message must match
    kind: str | None = None                # the report's problem kind ("reported")
    check: Callable[[list[dict]], None] | None = None  # on the imported items ("imported")
    env: dict | None = None                # LIM_* limits made small for the case


def refused(name, build, pattern, env=None):
    return Case(name, build, "refused", pattern, env=env)


def reported(name, build, kind, pattern=""):
    return Case(name, build, "reported", pattern, kind)


def imported(name, build, check=None):
    return Case(name, build, "imported", check=check)


# ----------------------------------------------------------------------------- builders
def wav_bytes(seconds=0.5, rate=16_000, freq=440.0, **kwargs) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, tone(seconds, rate, freq=freq), rate, format=kwargs.pop("format", "WAV"), **kwargs)
    return buffer.getvalue()


def speech(root: Path, n=4, extra_rows=(), extra_files=None, name="metadata.csv") -> Path:
    """An audiofolder of ``n`` good clips plus ``extra_rows`` and files ({name: bytes})."""
    rows = [["file_name", "transcription"]]
    for i in range(n):
        write_audio(root / f"clip{i}.wav", freq=300 + 70 * i)
        rows.append([f"clip{i}.wav", f"sentence number {i}"])
    for file, data in (extra_files or {}).items():
        (root / file).parent.mkdir(parents=True, exist_ok=True)
        (root / file).write_bytes(data)
    write_csv(root / name, rows + [list(row) for row in extra_rows])
    return root


def with_audio(data: bytes, text="the bad one"):
    return lambda tmp: speech(tmp / "set", extra_rows=[["bad.wav", text]], extra_files={"bad.wav": data})


def with_text(text):
    return lambda tmp: speech(tmp / "set", n=4, extra_rows=[["odd.wav", text]],
                              extra_files={"odd.wav": wav_bytes(freq=1_234)})


def zipped(entries: list[tuple], compression=zipfile.ZIP_DEFLATED):
    """A zip of a good speech set plus ``entries`` ((name or ZipInfo, bytes))."""
    def build(tmp: Path) -> Path:
        root = speech(tmp / "set")
        archive = tmp / "upload.zip"
        with zipfile.ZipFile(archive, "w", compression=compression) as bundle, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zipfile warns about the duplicate-name case, which is the point
            for file in sorted(root.rglob("*")):
                bundle.write(file, "set/" + file.relative_to(root).as_posix())
            for name, data in entries:
                bundle.writestr(name, data)
        return archive
    return build


def patched_zip(patch: Callable[[bytearray], None], entries=()):
    def build(tmp: Path) -> Path:
        archive = zipped(list(entries))(tmp)
        data = bytearray(archive.read_bytes())
        patch(data)
        archive.write_bytes(bytes(data))
        return archive
    return build


def set_encrypted(data: bytearray) -> None:
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(signature)
        while at != -1:
            data[at + offset] |= 0x01
            at = data.find(signature, at + 4)


def lie_about_size(data: bytearray) -> None:
    """The last entry (4 MB of zeros) says it unpacks to 10 bytes, in both headers."""
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.rfind(signature)
        data[at + offset:at + offset + 4] = (10).to_bytes(4, "little")


def link_entry(target: bytes = b"/etc/passwd"):
    info = zipfile.ZipInfo("set/link.wav")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target


def inner_zip(tmp: Path) -> Path:
    inner = zipped([])(tmp)
    archive = tmp / "outer.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.write(inner, "inner.zip")
    inner.unlink()
    return archive


def truncated(data: bytes, size: int) -> bytes:
    return data[:size]


def wav_header(rate: int | None = None, channels: int | None = None) -> bytes:
    data = bytearray(wav_bytes())
    if rate is not None:
        data[24:28] = rate.to_bytes(4, "little")
    if channels is not None:
        data[22:24] = channels.to_bytes(2, "little")
        data[32:34] = min(2 * channels, 65_535).to_bytes(2, "little")
    return bytes(data)


def float_wav(value: float) -> bytes:
    samples = np.full(8_000, 0.1, dtype=np.float32)
    samples[::500] = value
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, 16_000, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def silence() -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(8_000, dtype=np.float32), 16_000, format="WAV")
    return buffer.getvalue()


def clipped() -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.sign(np.sin(np.linspace(0, 300, 8_000))).astype(np.float32), 16_000, format="WAV")
    return buffer.getvalue()


def long_clip() -> bytes:
    return wav_bytes(seconds=40, rate=8_000, subtype="PCM_U8")


def raw_metadata(text: str, encoding="utf-8", n=4):
    def build(tmp: Path) -> Path:
        root = speech(tmp / "set", n=n)
        (root / "metadata.csv").write_bytes(text.encode(encoding, errors="surrogateescape"))
        return root
    return build


def lines(*rows: str, newline="\n") -> str:
    good = [f"clip{i}.wav,sentence number {i}" for i in range(4)]
    return newline.join(["file_name,transcription", *good, *rows]) + newline


def jsonl(text: str):
    def build(tmp: Path) -> Path:
        root = speech(tmp / "set")
        (root / "metadata.csv").unlink()
        good = "".join(json.dumps({"file_name": f"clip{i}.wav", "transcription": f"t {i}"}) + "\n" for i in range(4))
        (root / "metadata.jsonl").write_text(good + text)
        return root
    return build


def parquet(frame: dict):
    def build(tmp: Path) -> Path:
        pd = pytest.importorskip("pandas")
        path = tmp / "table.parquet"
        pd.DataFrame(frame).to_parquet(path)
        return path
    return build


def outside_link(tmp: Path) -> Path:
    secret = tmp / "secret.wav"
    secret.write_bytes(wav_bytes(freq=999))
    root = speech(tmp / "set", extra_rows=[["link.wav", "through a link"]])
    (root / "link.wav").symlink_to(secret)
    return root


def case_twins(tmp: Path) -> Path:
    return speech(tmp / "set", extra_rows=[["Twin.wav", "upper"], ["twin.wav", "lower"]],
                  extra_files={"Twin.wav": wav_bytes(freq=1_500), "twin.wav": wav_bytes(freq=1_700)})


def control_named_file(tmp: Path) -> Path:
    name = "bell\x07esc\x1b[31m.wav"
    return speech(tmp / "set", extra_rows=[[name, "a file with a hostile name"]],
                  extra_files={name: wav_bytes(freq=1_900)})


def saved_dataset_escaping(tmp: Path) -> Path:
    datasets = pytest.importorskip("datasets")
    folder = tmp / "saved"
    datasets.Dataset.from_dict({"text": ["a b", "c d"], "label": ["x", "y"]}).save_to_disk(str(folder))
    (tmp / "secret.arrow").write_bytes(b"SECRET")
    state = json.loads((folder / "state.json").read_text())
    state["_data_files"] = [{"filename": "../secret.arrow"}]
    (folder / "state.json").write_text(json.dumps(state))
    return folder


def saved_dict_escaping(tmp: Path) -> Path:
    folder = tmp / "saved-dict"
    folder.mkdir()
    (folder / "dataset_dict.json").write_text(json.dumps({"splits": ["../../elsewhere"]}))
    return folder


def non_utf8_file_name(tmp: Path) -> Path:
    name = os.fsdecode(b"caf\xe9.wav")  # a Latin-1 file name, as an old zip tool writes it
    root = speech(tmp / "set", extra_files={name: wav_bytes(freq=1_300)})
    with (root / "metadata.csv").open("ab") as handle:
        handle.write(b"caf\xe9.wav,a file name that is not UTF-8\n")
    return root


def non_utf8_class_folder(tmp: Path) -> Path:
    for c, label in enumerate(("yes", "no", os.fsdecode(b"s\xed"))):
        (tmp / "classes" / label).mkdir(parents=True)
        for i in range(5):
            (tmp / "classes" / label / f"{i}.wav").write_bytes(wav_bytes(freq=300 + 40 * i + 700 * c))
    return tmp / "classes"


def class_folder_linked_outside(tmp: Path) -> Path:
    for c, label in enumerate(("yes", "no")):
        (tmp / "classes" / label).mkdir(parents=True)
        for i in range(5):
            (tmp / "classes" / label / f"{i}.wav").write_bytes(wav_bytes(freq=300 + 40 * i + 700 * c))
    (tmp / "elsewhere").mkdir()
    (tmp / "elsewhere" / "private.wav").write_bytes(wav_bytes(freq=2_900))
    (tmp / "classes" / "maybe").symlink_to(tmp / "elsewhere", target_is_directory=True)
    return tmp / "classes"


def formula_cells():
    cells = ["=HYPERLINK(\"http://x\",\"click\")", "+cmd|' /C calc'!A0", "-2 degrees outside", "@SUM(A1)"]
    return lambda tmp: speech(tmp / "set", extra_rows=[[f"f{i}.wav", cell] for i, cell in enumerate(cells)],
                              extra_files={f"f{i}.wav": wav_bytes(freq=2_000 + 100 * i) for i in range(4)})


def file_with(name: str, data: bytes):
    def build(tmp: Path) -> Path:
        (tmp / name).write_bytes(data)
        return tmp / name
    return build


def dot_dot_row(tmp: Path) -> Path:
    (tmp / "outside.wav").write_bytes(wav_bytes(freq=990))
    return speech(tmp / "set", extra_rows=[["../outside.wav", "escape"]])


def expect_texts(*wanted):
    def check(items):
        stored = {item["text"] for item in items}
        assert set(wanted) <= stored, stored
    return check


def expect_count(n):
    def check(items):
        assert len(items) == n
    return check


def expect_unique_files(items):
    names = [item["file"].lower() for item in items if item["file"]]
    assert len(names) == len(set(names)) == 6


def expect_safe_file_names(items):
    assert all(item["file"].isascii() and "\x1b" not in item["file"] for item in items)


FOUR_MB_ZEROS = bytes(4 * 1024 * 1024)

CASES = [
    # ---- archives
    refused("zip-slip", zipped([("set/../../escaped.wav", b"x")]), "unsafe path"),
    refused("zip-absolute-path", zipped([("/tmp/escaped.wav", b"x")]), "unsafe path"),
    refused("zip-windows-drive", zipped([("C:/escaped.wav", b"x")]), "unsafe path"),
    refused("zip-backslash-slip", zipped([("..\\escaped.wav", b"x")]), "unsafe path"),
    refused("zip-symlink", zipped([link_entry()]), "link"),
    refused("zip-encrypted", patched_zip(set_encrypted), "password"),
    refused("zip-ratio-bomb", zipped([("set/zeros.wav", FOUR_MB_ZEROS)]), "compression ratio"),
    refused("zip-total-ratio-bomb", zipped([(f"set/z{i}.bin", bytes(900 * 1024)) for i in range(4)]),
            "in total"),
    refused("zip-lying-size-header", patched_zip(lie_about_size, [("set/zeros.bin", FOUR_MB_ZEROS)]),
            "zip bomb|cannot be unpacked|damaged", env={"LIM_MAX_COMPRESSION_RATIO": "100000"}),
    refused("zip-over-size-limit", zipped([("set/zeros.bin", FOUR_MB_ZEROS)]), "more than the limit of 1 MB",
            env={"LIM_MAX_UNPACKED_MB": "1", "LIM_MAX_COMPRESSION_RATIO": "100000"}),
    refused("zip-too-many-files", zipped([(f"set/n{i}.txt", b"") for i in range(20)]), "more than the limit",
            env={"LIM_MAX_FILES": "10"}),
    refused("zip-duplicate-entry", zipped([("set/clip0.wav", b"replaced after the check")]), "two entries"),
    refused("zip-truncated", patched_zip(lambda d: d.__delitem__(slice(len(d) // 2, None))), "not a zip"),
    refused("zip-zero-bytes", file_with("empty.zip", b""), "not a zip"),
    refused("zip-text-named-zip", file_with("notes.zip", b"hello"), "not a zip"),
    refused("zip-nested-zip-only", inner_zip, "found no metadata"),
    refused("zip-name-too-long", zipped([("set/" + "a" * 300 + ".wav", b"x")]), "cannot be unpacked"),
    refused("zip-file-and-folder-same-name", zipped([("set/clash", b"a file"), ("set/clash/inner.wav", b"x")]),
            "cannot be unpacked"),
    imported("zip-macos-debris", zipped([("__MACOSX/set/._clip0.wav", b"junk"), ("set/.DS_Store", b"junk")]),
             expect_count(4)),
    reported("zip-junk-beside-data", zipped([(f"set/junk/n{i}.txt", b"") for i in range(50)]), "unused_files",
             "50 files"),
    # ---- audio
    reported("audio-zero-bytes", with_audio(b""), "unreadable_audio", "WAV, FLAC"),
    reported("audio-text-as-wav", with_audio(b"just some text, not audio"), "unreadable_audio"),
    reported("audio-truncated-flac-header", with_audio(truncated(wav_bytes(format="FLAC"), 20)), "unreadable_audio"),
    reported("audio-truncated-flac-data", with_audio(truncated(wav_bytes(format="FLAC"), 100)), "unreadable_audio",
             "damaged"),
    reported("audio-truncated-mp3", with_audio(truncated(wav_bytes(format="MP3"), 10)), "unreadable_audio"),
    reported("audio-header-only-wav", with_audio(truncated(wav_bytes(), 44)), "empty_audio"),
    reported("audio-huge-sample-rate", with_audio(wav_header(rate=1_000_000)), "odd_format", "1,000,000 Hz"),
    reported("audio-impossible-sample-rate", with_audio(wav_header(rate=4_000_000_000)), "unreadable_audio"),
    reported("audio-64-channels", with_audio(wav_header(channels=64)), "odd_format", "64 channel"),
    reported("audio-65535-channels", with_audio(wav_header(channels=65_535)), "unreadable_audio"),
    reported("audio-nan-samples", with_audio(float_wav(np.nan)), "bad_samples", "NaN or infinite"),
    reported("audio-inf-samples", with_audio(float_wav(np.inf)), "bad_samples", "NaN or infinite"),
    reported("audio-digital-silence", with_audio(silence()), "silence", "digital silence"),
    reported("audio-clipping", with_audio(clipped()), "clipping", "full scale"),
    reported("audio-40-minutes", with_audio(long_clip()), "too_long", "minutes|s long"),
    imported("audio-wav-named-ogg", lambda tmp: speech(tmp / "set", extra_rows=[["real.ogg", "a wav inside"]],
                                                      extra_files={"real.ogg": wav_bytes(freq=1_100)}),
             expect_count(5)),
    # ---- paths named by metadata
    reported("path-dot-dot", dot_dot_row, "missing_file", "outside"),
    reported("path-absolute", lambda tmp: speech(tmp / "set", extra_rows=[["/etc/hostname", "absolute"]]),
             "missing_file", "outside"),
    reported("path-symlink-outside", outside_link, "missing_file", "outside"),
    reported("path-class-folder-linked-outside", class_folder_linked_outside, "missing_file", "outside"),
    reported("path-missing", lambda tmp: speech(tmp / "set", extra_rows=[["ghost.wav", "boo"]]), "missing_file"),
    imported("path-case-twins", case_twins, expect_unique_files),
    imported("path-control-chars-in-file-name", control_named_file, expect_safe_file_names),
    imported("path-non-utf8-file-name", non_utf8_file_name, expect_count(5)),
    reported("class-folder-non-utf8-name", non_utf8_class_folder, "non_utf8", "UTF-8"),
    reported("audio-without-row", lambda tmp: speech(tmp / "set", extra_files={"stray.wav": wav_bytes(freq=800)}),
             "unlisted_audio", "stray.wav"),
    # ---- metadata text
    imported("csv-bom", raw_metadata("\ufeff" + lines()), expect_count(4)),
    imported("csv-crlf", raw_metadata(lines(newline="\r\n")), expect_texts("sentence number 3")),
    imported("csv-semicolons", raw_metadata(lines().replace(",", ";")), expect_count(4)),
    reported("csv-unclosed-quote", raw_metadata(lines('clip3.wav,"never closed', "clip2.wav,swallowed")),
             "broken_row", "quote"),
    reported("csv-extra-values", raw_metadata(lines("clip3.wav,hello, world")), "broken_row", "values"),
    reported("csv-nul-in-transcript", with_text("nul\x00byte"), "control_chars"),
    reported("csv-terminal-escape", with_text("\x1b]0;owned\x07title \x1b[2J"), "control_chars"),
    reported("csv-rtl-override", with_text("invoice\u202efdp.exe"), "control_chars"),
    reported("csv-empty-transcript", with_text("   "), "empty_transcript"),
    reported("csv-10000-chars-for-1s", with_text("word " * 2_000), "long_transcript", "448"),
    imported("csv-formula-looking-cells", formula_cells(),
             expect_texts("=HYPERLINK(\"http://x\",\"click\")", "-2 degrees outside", "@SUM(A1)")),
    imported("csv-unicode-transcript", with_text("שלום — 你好 — é"), expect_texts("שלום — 你好 — é")),
    reported("csv-latin1-row", raw_metadata(lines() + "clip3.wav,caf\udce9\n"), "non_utf8", "UTF-8"),
    refused("csv-latin1-header", raw_metadata("fil\udce9,transcription\nclip0.wav,x\n"), "not UTF-8"),
    refused("csv-zero-bytes", raw_metadata(""), "is empty"),
    refused("csv-header-only", raw_metadata("file_name,transcription\n"), "holds no rows"),
    refused("csv-no-usable-columns", raw_metadata("a,b\n1,2\n"), "cannot tell what to learn"),
    reported("csv-path-column", raw_metadata(lines().replace("file_name", "path", 1)), "guessed_column", "'path'"),
    refused("jsonl-not-json", jsonl("{not json\n"), "not valid JSON"),
    refused("jsonl-not-an-object", jsonl("[1, 2]\n"), "not a JSON object"),
    # a key that is a lone surrogate (a JSON \\ud800 escape): reported written out, and storable
    reported("jsonl-key-not-utf8", jsonl('{"file_name": "clip0.wav", "transcription": "t", "\\ud800odd": 1}\n'),
             "unknown_columns", r"\\ud800odd"),
    reported("jsonl-text-lone-surrogate", jsonl('{"file_name": "clip0.wav", "transcription": "t\\ud800"}\n'),
             "non_utf8", "UTF-8"),
    refused("parquet-int-text", parquet({"text": list(range(6)), "label": ["a", "b"] * 3}), "integers"),
    refused("parquet-float-labels", parquet({"text": [f"t{i}" for i in range(6)], "label": [0.5, 1.5] * 3}),
            "floats"),
    refused("parquet-not-parquet", file_with("t.parquet", b"PAR1 no"), "not a readable Parquet"),
    refused("table-wrong-extension", file_with("t.txt", b"text,label\n"), "expected a folder"),
    refused("save-to-disk-escaping-file", saved_dataset_escaping, "outside the dataset folder"),
    refused("save-to-disk-escaping-split", saved_dict_escaping, "outside the dataset folder"),
]


def files_under(root: Path, skip: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_relative_to(skip)}


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_input(case: Case, tmp_path, monkeypatch):
    for key, value in (case.env or {}).items():
        monkeypatch.setenv(key, value)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    source = case.build(inputs)
    home = tmp_path / "home"
    workbench = Workbench(home)
    before = files_under(tmp_path, home)
    try:
        if case.outcome == "refused":
            with pytest.raises(DatasetError, match=case.pattern) as error:
                workbench.import_dataset(source, "hostile", skip_bad=True)
            assert "\x1b" not in str(error.value)
            assert workbench.list_datasets() == []
            assert not (home / "datasets").exists() or not any((home / "datasets").iterdir())
        else:
            dataset = workbench.import_dataset(source, "hostile", skip_bad=True)
            report = workbench.get_dataset("hostile")["report"]["problems"]
            lines = "\n".join(workbench.dataset_report_lines("hostile"))
            assert "\x1b" not in lines and "\x00" not in lines
            items = workbench.dataset_items("hostile", limit=None)
            assert len(items) == dataset["num_items"] > 0
            stored = {p.relative_to(home / dataset["path"]).as_posix()
                      for p in (home / dataset["path"]).rglob("*") if p.is_file()}
            assert stored == {i["file"] for i in items if i["file"]} | {f"{s}/metadata.csv" for s in dataset["splits"]}
            if case.outcome == "reported":
                found = [p for p in report if p["kind"] == case.kind]
                assert found, f"no {case.kind} in {lines}"
                assert any(re.search(case.pattern, p["message"]) for p in found), found
            elif case.check is not None:
                case.check(items)
        staging = home / "staging"
        assert not staging.exists() or not any(staging.iterdir()), "staging was not cleaned"
        assert files_under(tmp_path, home) == before, "something was written outside the data home"
    finally:
        workbench.storage.close()
