"""Datasets out of the workbench, in the layout the Hugging Face ecosystem reads.

    write_metadata(folder, "asr", rows)           # <split>/metadata.csv beside the audio
    export_zip(folder, "asr", rows, out_zip)      # a zip that load_dataset("audiofolder") opens

Audio sets: ``<split>/<file>.flac`` + ``<split>/metadata.csv`` with ``file_name`` and
``transcription`` (speech recognition) or ``label`` (audio classification). Text sets:
``<split>.csv`` with ``text`` and ``label``, which ``load_dataset("csv", data_files=...)`` reads.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

TARGET_COLUMN = {"asr": "transcription", "audio-classification": "label"}


def metadata_tables(task: str, rows: Iterable[dict]) -> dict[str, str]:
    """``{relative path: CSV text}`` of the metadata files describing ``rows``."""
    writers: dict[str, tuple[io.StringIO, csv.writer]] = {}
    for row in rows:
        if task == "text-classification":
            path, header, values = f"{row['split']}.csv", ["text", "label"], [row["text"], row["label"]]
        else:
            file = PurePosixPath(row["file"])
            path = f"{file.parent.as_posix()}/metadata.csv"
            column = TARGET_COLUMN[task]
            header, values = ["file_name", column], [file.name, row[column if column == "label" else "text"]]
        if path not in writers:
            buffer = io.StringIO()
            writers[path] = (buffer, csv.writer(buffer, lineterminator="\n"))
            writers[path][1].writerow(header)
        writers[path][1].writerow(values)
    return {path: buffer.getvalue() for path, (buffer, _) in writers.items()}


def write_metadata(folder: Path, task: str, rows: Iterable[dict]) -> None:
    """(Re)write the metadata files of a stored dataset; stale ones of emptied splits go."""
    for stale in [*folder.glob("*/metadata.csv"), *folder.glob("*.csv")]:
        stale.unlink()
    for relative, text in metadata_tables(task, rows).items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(text, encoding="utf-8")


def export_zip(folder: Path, task: str, rows: list[dict], out: Path) -> Path:
    """Zip the dataset's files and fresh metadata (edits included) into ``out``."""
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as bundle:  # FLAC is compressed
        for row in rows:
            if row["file"]:
                bundle.write(folder / row["file"], row["file"])
        for relative, text in metadata_tables(task, rows).items():
            bundle.writestr(relative, text)
    return out
