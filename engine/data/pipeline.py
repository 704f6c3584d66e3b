"""Import in two steps: check (read, validate, split: nothing kept) and write (all or nothing).

    plan = prepare_import(Path("upload.zip"), staging, ImportOptions(task="asr"))
    print("\\n".join(plan.report.lines()))      # decide: skip the bad items, or cancel
    items = write_dataset(plan, target_folder, on_progress=print)
    discard(plan)                                 # the staged upload/extraction goes away

``write_dataset`` decodes every audio item once, resamples it to 16 kHz mono and writes it as
FLAC under ``<split>/``, with ``<split>/metadata.csv`` beside it: the Hugging Face audiofolder
layout, so the folder opens with ``datasets.load_dataset("audiofolder", data_dir=...)``.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

from engine.data.archives import ImportLimits, extract_zip
from engine.data.audio import SAMPLE_RATE
from engine.data.importers import ColumnChoice, SourceTable, choose_columns, read_source
from engine.data.splits import assign_splits
from engine.data.validation import ImportReport, Problem, Rules, check_rows, unread_files
from engine.errors import DatasetError
from storage import safe_name

Progress = Callable[[int, int, str], None]  # (done, total, what)
_HOST = safe_name(socket.gethostname())
_STAGING_OWNER = re.compile(r"^(upload|unzip)-(?P<pid>\d+)@(?P<host>[A-Za-z0-9._-]+)-[0-9a-f]{12}$")


@dataclass
class ImportOptions:
    """What the student chose (or left to detection) for one import."""

    task: str | None = None
    audio_column: str | None = None
    text_column: str | None = None
    label_column: str | None = None
    splits: str = "auto"                 # auto | keep | new
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 42
    keep_originals: bool = False         # also store the files as they came, under originals/
    rules: Rules = field(default_factory=Rules)


@dataclass
class ImportPlan:
    source: Path                         # the folder or table file that was read
    staging: Path | None                 # temporary files to delete afterwards (uploads, unzipped)
    table: SourceTable
    columns: ColumnChoice
    items: list[dict]
    report: ImportReport
    options: ImportOptions
    upload: Path | None = None           # the uploaded file's folder, if it came as an upload
    name: str = ""                       # what the user gave (the zip, table or folder), for reports


def prepare_import(path: Path, staging_root: Path, options: ImportOptions | None = None,
                   limits: ImportLimits | None = None, on_progress: Progress | None = None) -> ImportPlan:
    """Read and check everything; write nothing except the unpacked archive under staging."""
    options = options or ImportOptions()
    staging = None
    if path.is_file() and path.suffix.lower() == ".zip":
        staging = staging_root / staging_name("unzip")
        source = extract_zip(path, staging, limits or ImportLimits(), on_progress)
    else:
        source = path
    try:
        table = read_source(source)
        if not table.rows:
            raise DatasetError(f"{source.name} holds no rows or audio files to import")
        task = "audio-classification" if table.class_folders and options.task is None else options.task
        columns = choose_columns(table, task, options.audio_column, options.text_column,
                                 options.label_column)
        root = source if source.is_dir() else source.parent
        items, report = check_rows(table, columns, root, options.rules, on_progress)
        if source.is_dir() and table.layout != "save_to_disk":
            report.problems += unread_files(source, table, columns)
        if not items:
            raise DatasetError("none of the items can be imported:\n" + "\n".join(report.lines()))
        note = assign_splits(items, options.splits, options.validation_fraction,
                             options.test_fraction, options.seed)
        report.problems.append(Problem("note", "splits", note, False))
        report.split_counts = _count_splits(items)
    except BaseException:
        discard_staging(staging)
        raise
    return ImportPlan(source, staging, table, columns, items, report, options, name=path.name)


def write_dataset(plan: ImportPlan, target: Path, on_progress: Progress | None = None) -> list[dict]:
    """Write audio (16 kHz mono FLAC) and metadata under ``target``; returns the database rows.

    The caller removes ``target`` if this raises, so nothing half-imported remains."""
    from engine.data.export import write_metadata

    rows, used_names = [], set()
    total = len(plan.items)
    positions: dict[str, int] = {}
    for done, item in enumerate(sorted(plan.items, key=_split_order), start=1):
        split = item["split"]
        position = positions.get(split, 0)
        positions[split] = position + 1
        row = {"split": split, "position": position, "file": None, "text": item["text"],
               "label": item["label"], "duration_s": item.get("duration_s"),
               "source_name": item["source_name"] or item["where"],
               "sample_rate": item.get("sample_rate"), "channels": item.get("channels"),
               "content_hash": item["content_hash"], "original_file": None}
        if item["source"] is not None:
            row["file"] = _unique(f"{split}/{safe_name(Path(item['source_name']).stem)}.flac", used_names)
            _write_audio(item, target / row["file"])
            if plan.options.keep_originals:
                row["original_file"] = _keep_original(item, target, used_names)
        rows.append(row)
        if on_progress and (done % 20 == 0 or done == total):
            on_progress(done, total, item["source_name"] or item["where"])
    write_metadata(target, plan.columns.task, rows)
    return rows


def content_version(fingerprints) -> str:
    """A short hash of (split, file, text, label, content hash) of every item, in order.

    Any edit, removal or different audio gives a new version; runs record the one they used."""
    digest = hashlib.sha256()
    for fingerprint in fingerprints:
        digest.update(repr(tuple(fingerprint)).encode())
    return digest.hexdigest()[:12]


def version_after_change(fingerprints, item_id: int, action: str, fields: dict) -> str:
    """The version a dataset will have once item ``item_id`` is edited (``fields``) or removed.

    ``fingerprints`` are ``(id, split, file, text, label, content_hash)`` rows in version order."""
    changed = []
    for row_id, split, file, text, label, content_hash in fingerprints:
        if row_id == item_id:
            if action == "remove":
                continue
            text, label = fields.get("text", text), fields.get("label", label)
        changed.append((split, file, text, label, content_hash))
    return content_version(changed)


def staging_name(kind: str) -> str:
    """A new staging folder name, ``<kind>-<pid>@<host>-<random>``: the owner is in the name, so a
    folder whose process was killed (kill -9, a power cut) is known at the next start-up."""
    return f"{kind}-{os.getpid()}@{_HOST}-{uuid.uuid4().hex[:12]}"


def clean_stale_staging(staging_root: Path, max_age_s: float = 24 * 3600) -> None:
    """Remove uploads and unpacked archives left by sessions that never came back, and at once
    those of a process on this machine that no longer runs (killed mid-import)."""
    if not staging_root.is_dir():
        return
    cutoff = time.time() - max_age_s
    for entry in staging_root.iterdir():
        if not entry.name.startswith(("upload-", "unzip-")):
            continue
        owner = _STAGING_OWNER.match(entry.name)
        orphaned = owner is not None and owner["host"] == _HOST and not psutil.pid_exists(int(owner["pid"]))
        try:
            old = entry.stat().st_mtime < cutoff
        except FileNotFoundError:  # another process cleaned it meanwhile
            continue
        if orphaned or old:
            shutil.rmtree(entry, ignore_errors=True)


def discard(plan: ImportPlan) -> None:
    """Remove what the plan staged (unpacked archive, uploaded file); safe to call twice."""
    discard_staging(plan.staging)
    discard_staging(plan.upload)


def discard_staging(staging: Path | None) -> None:
    if staging is not None:
        shutil.rmtree(staging, ignore_errors=True)


def _write_audio(item: dict, destination: Path) -> None:
    """Decode once, mix down to mono, resample to 16 kHz, write 16-bit FLAC."""
    import soundfile

    destination.parent.mkdir(parents=True, exist_ok=True)
    source = item["source"]
    if (item["sample_rate"] == SAMPLE_RATE and item["channels"] == 1 and isinstance(source, Path)
            and source.suffix.lower() == ".flac"):
        shutil.copyfile(source, destination)  # already what models read: keep the exact bytes
        return
    try:
        # bytes, not a path: libsndfile cannot open a name that is not UTF-8 (caf\xe9.wav)
        data = source if isinstance(source, bytes) else source.read_bytes()
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as error:  # the header was fine at check time but the data is damaged
        raise DatasetError(f"{item['source_name']} ({item['where']}): the audio is damaged and cannot be decoded ({error}); "
                           "remove it or convert it, then import again") from error
    mono = samples.mean(axis=1)  # (frames, channels) -> (frames,)
    if rate != SAMPLE_RATE:
        import librosa

        mono = librosa.resample(mono, orig_sr=rate, target_sr=SAMPLE_RATE, res_type="soxr_hq")
    if not np.isfinite(mono).all():  # checked at import already; never store poisoned audio
        raise DatasetError(f"{item['source_name']} ({item['where']}): the audio holds NaN or infinite samples")
    soundfile.write(str(destination), mono.clip(-1.0, 1.0), SAMPLE_RATE, subtype="PCM_16", format="FLAC")


def _keep_original(item: dict, target: Path, used_names: set) -> str:
    name = Path(item["source_name"])
    relative = _unique(f"originals/{item['split']}/{safe_name(name.stem)}{name.suffix.lower()}", used_names)
    destination = target / relative
    destination.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(item["source"], bytes):
        destination.write_bytes(item["source"])
    else:
        shutil.copyfile(item["source"], destination)
    return relative


def _unique(relative: str, used: set) -> str:
    candidate, n = relative, 1
    stem, dot, suffix = relative.rpartition(".")
    while candidate.lower() in used:  # case-insensitive: the export may land on macOS/Windows
        n += 1
        candidate = f"{stem}-{n}.{suffix}"
    used.add(candidate.lower())
    return candidate


def _split_order(item: dict) -> int:
    # sorted() is stable: within a split, items keep the order they came in
    return {"train": 0, "validation": 1, "test": 2}.get(item["split"], 3)


def _count_splits(items: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item["split"]] = counts.get(item["split"], 0) + 1
    return counts
