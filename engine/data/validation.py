"""The import report: every row checked before anything is written, every problem in words.

    items, report = check_rows(table, columns, root, rules)
    report.blocking     # items that would be skipped (bad audio, duplicates, empty transcripts, ...)
    report.warnings     # worth knowing, nothing skipped (unknown columns, classes with few items)

An item that fails a check is kept out of ``items`` and named in ``report.problems`` with what is
wrong and what to do. The caller decides: import without the skipped items, or cancel.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.data.importers import ColumnChoice, SourceTable
from engine.errors import DatasetError

# kind -> heading shown above its problems
KINDS = {
    "missing_file": "Missing audio files",
    "unreadable_audio": "Files that are not readable audio",
    "empty_audio": "Empty audio",
    "too_long": "Clips longer than the model window",
    "too_short": "Clips too short to learn from",
    "duplicate": "Duplicates (same content as an earlier item)",
    "non_utf8": "Text that is not UTF-8",
    "empty_transcript": "Empty transcripts or texts",
    "missing_label": "Items without a label",
    "unknown_columns": "Columns that were ignored",
    "few_items": "Classes with too few items",
    "note": "How the files were read",
}


@dataclass
class Rules:
    max_duration_s: float = 30.0    # Whisper's window; longer clips get cut off silently
    min_duration_s: float = 0.1     # shorter than one 100 ms frame of context
    min_items_per_class: int = 5    # fewer cannot be split three ways and learned from


@dataclass
class Problem:
    kind: str
    where: str
    message: str
    skipped: bool


@dataclass
class ImportReport:
    task: str
    layout: str
    columns: dict
    rows: int = 0
    problems: list[Problem] = field(default_factory=list)
    split_counts: dict = field(default_factory=dict)

    @property
    def blocking(self) -> list[Problem]:
        return [p for p in self.problems if p.skipped]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if not p.skipped]

    def by_kind(self) -> dict[str, list[Problem]]:
        grouped: dict[str, list[Problem]] = {}
        for problem in self.problems:
            grouped.setdefault(problem.kind, []).append(problem)
        return grouped

    def summary(self) -> str:
        kept = self.rows - len(self.blocking)
        text = f"{self.rows} rows read as {self.task} ({self.layout}): {kept} items usable"
        if self.blocking:
            text += f", {len(self.blocking)} left out"
        return text

    def lines(self, limit: int = 5) -> list[str]:
        """The report as text (the command line prints it; the page shows it grouped)."""
        lines = [self.summary()]
        for kind, problems in self.by_kind().items():
            lines.append(f"{KINDS.get(kind, kind)} ({len(problems)}):")
            lines += [f"  - {p.where}: {p.message}" for p in problems[:limit]]
            if len(problems) > limit:
                lines.append(f"  ... and {len(problems) - limit} more")
        return lines

    def to_dict(self) -> dict:
        return {"task": self.task, "layout": self.layout, "columns": self.columns, "rows": self.rows,
                "split_counts": self.split_counts, "problems": [asdict(p) for p in self.problems]}


def report_from_dict(data: dict) -> ImportReport:
    """The report back from its stored form (``ImportReport.to_dict``)."""
    problems = [Problem(**p) for p in data.get("problems", [])]
    return ImportReport(data["task"], data["layout"], data["columns"], data.get("rows", 0), problems,
                        data.get("split_counts", {}))


def check_rows(table: SourceTable, columns: ColumnChoice, root: Path, rules: Rules | None = None,
               on_progress=None) -> tuple[list[dict], ImportReport]:
    """Candidate items (without the bad ones) and the report of everything found."""
    rules = rules or Rules()
    report = ImportReport(columns.task, table.layout, {"audio": columns.audio, "text": columns.text,
                                                       "label": columns.label}, rows=len(table.rows))
    report.problems += [Problem("note", "source", note, False) for note in table.notes]
    if columns.unknown:
        report.problems.append(Problem("unknown_columns", "columns", f"{', '.join(columns.unknown)} "
                                       "not used for this task; they are left out of the dataset", False))
    items, first_seen = [], {}
    for number, row in enumerate(table.rows, start=1):
        if on_progress and (number % 50 == 0 or number == len(table.rows)):
            on_progress(number, len(table.rows), row["_where"])
        item, problem = _check_row(row, columns, root.resolve(), rules)
        if problem is None:
            problem = _duplicate(item, first_seen)
        if problem is not None:
            report.problems.append(Problem(problem[0], row["_where"], problem[1], True))
        else:
            items.append(item)
    _check_classes(items, columns, report, rules)
    return items, report


def _check_row(row: dict, columns: ColumnChoice, root: Path, rules: Rules):
    item = {"split": row.get("_split"), "where": row["_where"], "source": None, "source_name": None,
            "text": _string(row.get(columns.text)) if columns.text else None,
            "label": _string(row.get(columns.label)) if columns.label else None}
    for value in (item["text"], item["label"]):
        if value is not None and any("\udc80" <= ch <= "\udcff" for ch in value):
            return item, ("non_utf8", "holds bytes that are not UTF-8 text; save the file as UTF-8")
    if columns.text and not (item["text"] or "").strip():
        return item, ("empty_transcript", "the transcript is empty" if columns.task == "asr"
                      else "the text is empty")
    if columns.label and not (item["label"] or "").strip():
        return item, ("missing_label", "no label; give it one or remove the row")
    if columns.audio is None:
        item["content_hash"] = _sha256((item["text"] or "").encode())
        return item, None
    return item, _check_audio(item, row.get(columns.audio), row["_base"], root, rules)


def _check_audio(item: dict, value, base: Path, root: Path, rules: Rules):
    if isinstance(value, dict):  # a Hugging Face Audio value: {"bytes": ..., "path": ...}
        data, name = value.get("bytes"), value.get("path")
        if data is None and name:
            value = name
        else:
            item.update(source=bytes(data or b""), source_name=Path(name or "audio.wav").name)
    if not isinstance(value, dict):
        if not value or not str(value).strip():
            return "missing_file", "no audio file named in this row"
        path = (base / str(value).strip()).resolve()
        if not path.is_relative_to(root):
            return "missing_file", f"{value} points outside the dataset folder; it was not read"
        if not path.is_file():
            return "missing_file", f"{value} is not there; check the file name (case matters)"
        item.update(source=path, source_name=path.relative_to(root).as_posix())
    return _audio_facts(item, rules)


def _audio_facts(item: dict, rules: Rules):
    import soundfile

    data = item["source"].read_bytes() if isinstance(item["source"], Path) else item["source"]
    try:
        info = soundfile.info(io.BytesIO(data))
    except Exception:
        return "unreadable_audio", ("not a WAV, FLAC, MP3 or OGG file the workbench can read (wrong "
                                    "extension or damaged); convert it, e.g. ffmpeg -i in out.wav")
    duration = info.frames / info.samplerate if info.samplerate else 0.0
    item.update(sample_rate=info.samplerate, channels=info.channels, duration_s=round(duration, 3),
                content_hash=_sha256(data))
    if info.frames <= 0:
        return "empty_audio", "the file holds no sound at all"
    if duration > rules.max_duration_s:
        return "too_long", (f"{_minutes(duration)} long; the model listens to {rules.max_duration_s:g} s "
                            "at a time, so cut it into shorter clips (ffmpeg -f segment) first")
    if duration < rules.min_duration_s:
        return "too_short", f"{duration * 1000:.0f} ms long; clips under {rules.min_duration_s:g} s hold too little to learn from"
    return None


def _duplicate(item: dict, first_seen: dict):
    key = (item.get("content_hash"), item["label"]) if item["source"] is None else item.get("content_hash")
    if key in first_seen:
        return "duplicate", f"same content as {first_seen[key]}; only the first is kept"
    first_seen[key] = item["where"]
    return None


def _check_classes(items: list[dict], columns: ColumnChoice, report: ImportReport, rules: Rules) -> None:
    if columns.label is None or not items:  # no items at all: the caller says so
        return
    counts = Counter(item["label"] for item in items)
    if len(counts) < 2:
        only = f" ({next(iter(counts))!r})" if counts else ""
        raise DatasetError(f"the label column {columns.label!r} has {len(counts)} class{only}; "
                           "classification needs at least two classes; check you chose the right "
                           "column, or add examples of the other classes")
    for label, count in sorted(counts.items()):
        if count < rules.min_items_per_class:
            report.problems.append(Problem("few_items", f"class {label!r}", f"only {count} item(s); "
                                           f"aim for at least {rules.min_items_per_class} per class so "
                                           "every split gets some", False))


def _string(value) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} minutes" if seconds >= 120 else f"{seconds:.1f} s"
