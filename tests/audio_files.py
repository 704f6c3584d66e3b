"""Makers of real audio and table files for the dataset and page tests (made at test time, none
checked in), and the empty-workbench fixture (imported by the test modules: a second conftest
would shadow tests/conftest.py). It sits beside conftest.py, whose folder pytest puts on sys.path."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile


def tone(seconds: float, rate: int = 16_000, channels: int = 1, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def write_audio(path: Path, seconds: float = 0.5, rate: int = 16_000, channels: int = 1,
                freq: float = 440.0, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), tone(seconds, rate, channels, freq), rate, **kwargs)
    return path


def write_csv(path: Path, rows: list[list], delimiter: str = ",", encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding=encoding) as handle:
        csv.writer(handle, delimiter=delimiter).writerows(rows)
    return path


def speech_folder(root: Path, splits=("train", "validation"), per_split: int = 4) -> Path:
    """An audiofolder for speech recognition: <split>/metadata.csv + distinct tones."""
    for s, split in enumerate(splits):
        rows = [["file_name", "transcription"]]
        for i in range(per_split):
            write_audio(root / split / f"clip{i}.wav", freq=200 + 50 * i + 500 * s)
            rows.append([f"clip{i}.wav", f"sentence number {i} of {split}"])
        write_csv(root / split / "metadata.csv", rows)
    return root


def class_folder(root: Path, labels=("yes", "no"), per_class: int = 6) -> Path:
    for c, label in enumerate(labels):
        for i in range(per_class):
            write_audio(root / label / f"{label}{i}.flac", freq=300 + 40 * i + 700 * c)
    return root


def audiofolder_subset(source: Path, dest: Path, counts: dict[str, int]) -> Path:
    """The first ``counts[split]`` clips of each split of an audiofolder speech set (e.g. a demo
    set), copied with their transcriptions into ``dest``: a small real set for bounded runs."""
    for split, count in counts.items():
        with open(source / split / "metadata.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))[:count]
        (dest / split).mkdir(parents=True)
        for row in rows:
            shutil.copy(source / split / row["file_name"], dest / split / row["file_name"])
        with open(dest / split / "metadata.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["file_name", "transcription"])
            writer.writeheader()
            writer.writerows(rows)
    return dest


@pytest.fixture
def workbench_empty(home):
    """A workbench on a fresh, empty data home (no demo)."""
    from engine import Workbench

    workbench = Workbench(home)
    yield workbench
    workbench.storage.close()
