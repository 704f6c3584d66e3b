"""Turn a folder on disk into dataset items: audiofolder layout and text tables.

An importer returns ``(task, items, labels)``; each item is a dict with ``split``,
``position``, ``file`` (relative to the dataset folder, audio only), ``text``, ``label`` and
``duration_s``. The caller copies files and writes the database rows in one transaction.
"""

from __future__ import annotations

import csv
from pathlib import Path

from engine.data.audio import AUDIO_SUFFIXES, duration_seconds
from engine.errors import DatasetError

TASKS = ("asr", "audio-classification", "text-classification")
SPLITS = ("train", "validation", "test")


def read_audiofolder(root: Path) -> tuple[str, list[dict], list[str]]:
    """Items of an audiofolder dataset: ``<split>/metadata.csv`` with ``file_name`` and
    ``transcription`` (speech recognition) or ``label`` (audio classification)."""
    split_dirs = [root / split for split in SPLITS if (root / split / "metadata.csv").is_file()]
    if not split_dirs and (root / "metadata.csv").is_file():
        split_dirs = [root]  # a single folder: everything is train
    if not split_dirs:
        raise DatasetError(f"{root.name}: no metadata.csv found (expected train/metadata.csv "
                           "and validation/metadata.csv, or metadata.csv at the top)")
    items, task = [], None
    for split_dir in split_dirs:
        split = split_dir.name if split_dir != root else "train"
        rows = _read_csv(split_dir / "metadata.csv")
        columns = set(rows[0]) if rows else set()
        split_task = "asr" if "transcription" in columns else (
            "audio-classification" if "label" in columns else None)
        if "file_name" not in columns or split_task is None:
            raise DatasetError(f"{split_dir.name}/metadata.csv needs columns file_name and "
                               f"transcription or label; found {', '.join(sorted(columns))}")
        if task not in (None, split_task):
            raise DatasetError("all splits must have the same columns (transcription or label)")
        task = split_task
        for position, row in enumerate(rows):
            audio = split_dir / row["file_name"]
            if audio.suffix.lower() not in AUDIO_SUFFIXES or not audio.is_file():
                raise DatasetError(f"{split}/{row['file_name']}: missing or not an audio file")
            items.append({
                "split": split, "position": position,
                "file": audio.relative_to(root).as_posix(),
                "text": row.get("transcription"), "label": row.get("label"),
                "duration_s": round(duration_seconds(audio), 3),
            })
    labels = sorted({item["label"] for item in items if item["label"] is not None})
    return task, items, labels


def read_text_table(root: Path) -> tuple[str, list[dict], list[str]]:
    """Items of ``<split>.csv`` files with ``text`` and ``label`` columns."""
    tables = [root / f"{split}.csv" for split in SPLITS if (root / f"{split}.csv").is_file()]
    if not tables:
        raise DatasetError(f"{root.name}: no train.csv / validation.csv found")
    items = []
    for table in tables:
        rows = _read_csv(table)
        if rows and not {"text", "label"} <= set(rows[0]):
            raise DatasetError(f"{table.name} needs columns text and label; "
                               f"found {', '.join(rows[0])}")
        items += [{"split": table.stem, "position": i, "file": None, "text": row["text"],
                   "label": row["label"], "duration_s": None} for i, row in enumerate(rows)]
    labels = sorted({item["label"] for item in items})
    return "text-classification", items, labels


def read_dataset_folder(root: Path) -> tuple[str, list[dict], list[str]]:
    if any((root / f"{split}.csv").is_file() for split in SPLITS):
        return read_text_table(root)
    return read_audiofolder(root)


def _read_csv(path: Path) -> list[dict]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    except UnicodeDecodeError:
        raise DatasetError(f"{path.name} is not UTF-8 text; save it as UTF-8 and import again") from None
