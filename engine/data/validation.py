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

import numpy as np

from engine.data.audio import AUDIO_SUFFIXES
from engine.data.importers import ColumnChoice, SourceTable
from engine.errors import DatasetError
from engine.text import clean_text, printable, storable

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
    "broken_row": "Rows the table's quoting broke",
    "wrong_type": "Values of the wrong type",
    "bad_samples": "Audio with NaN or infinite samples",
    "odd_format": "Audio in a format out of range",
    "long_transcript": "Transcripts too long for their clip",
    "control_chars": "Text with control characters (removed)",
    "silence": "Digital silence",
    "clipping": "Clipped audio",
    "guessed_column": "Columns taken by their name",
    "unlisted_audio": "Audio files no row names (left out)",
    "unused_files": "Other files that were not read",
    "unknown_columns": "Columns that were ignored",
    "few_items": "Classes with too few items",
    "note": "How the files were read",
}


@dataclass
class Rules:
    max_duration_s: float = 30.0    # Whisper's window; longer clips get cut off silently
    min_duration_s: float = 0.1     # shorter than one 100 ms frame of context
    min_items_per_class: int = 5    # fewer cannot be split three ways and learned from
    max_sample_rate: int = 384_000  # the highest rate studio gear records; above is a lying header
    max_channels: int = 8           # 7.1 surround; more is a lying header or not speech
    # Whisper's decoder takes at most 448 label tokens, about 2,000 characters of English (~4.5
    # per token; fewer for most other scripts); the collator cuts anything longer, so a longer
    # transcript would train on a cut label, and that much text for one clip is a wrong row.
    max_transcript_chars: int = 2_000
    max_chars_per_second: float = 40.0  # fast speech is ~20; more means text not spoken in the clip
    clipped_fraction: float = 0.005     # share of samples at full scale that counts as clipping


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
        """The report as stored (a JSON column). Names from outside (a JSONL key, a file name)
        can hold surrogates, which UTF-8 cannot: they are stored written out (``storable``)."""
        return _storable({"task": self.task, "layout": self.layout, "columns": self.columns,
                          "rows": self.rows, "split_counts": self.split_counts,
                          "problems": [asdict(p) for p in self.problems]})


def _storable(value):
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, dict):
        return {_storable(key): _storable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_storable(item) for item in value]
    return value


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
    if columns.guessed:
        report.problems.append(Problem("guessed_column", "columns", columns.guessed, False))
    _check_column_types(table, columns)
    items, first_seen = [], {}
    for number, row in enumerate(table.rows, start=1):
        if on_progress and (number % 50 == 0 or number == len(table.rows)):
            on_progress(number, len(table.rows), row["_where"])
        where = _where(row, columns)
        item, problem = _check_row({**row, "_where": where}, columns, root.resolve(), rules)
        if problem is None:
            problem = _duplicate(item, first_seen)
        if problem is not None:
            report.problems.append(Problem(problem[0], where, problem[1], True))
        else:
            items.append(item)
            report.problems += [Problem(kind, where, message, False) for kind, message in item.pop("flags", [])]
    _check_classes(items, columns, report, rules)
    return items, report


def _where(row: dict, columns: ColumnChoice) -> str:
    """Where a row came from, with the audio file it names: "train/metadata.csv row 7 (a.wav)"."""
    value = row.get(columns.audio) if columns.audio else None
    if isinstance(value, dict):
        value = value.get("path")
    where = printable(row["_where"])  # names from outside: shown on pages, printed, stored
    if isinstance(value, str) and value.strip() and value.strip() != row["_where"]:
        return f"{where} ({printable(value.strip())[:120]})"
    return where


def _check_column_types(table: SourceTable, columns: ColumnChoice) -> None:
    """Refuse a text column that holds no text at all, or labels that are decimal numbers
    (typed tables: Parquet, JSONL), naming the column and the type expected."""
    wrong = []
    for role, column in (("text", columns.text), ("label", columns.label)):
        if column is None:
            continue
        kinds = {type(row.get(column)).__name__ for row in table.rows if row.get(column) is not None}
        if role == "text" and kinds and "str" not in kinds:
            wrong.append(f"column {column!r} holds {_kind_names(kinds)}, but the text column must hold "
                         "text (strings)")
        fractional = any(isinstance(row.get(column), float) and not float(row[column]).is_integer()
                         for row in table.rows)
        if role == "label" and fractional:
            wrong.append(f"column {column!r} holds floats (decimal numbers such as 0.5), but labels must "
                         "be class names (strings) or whole numbers; this looks like a score to regress, "
                         "which the workbench does not train")
    if wrong:
        raise DatasetError("; ".join(wrong) + ". Choose other columns, or convert these in the file")


def _kind_names(kinds: set[str]) -> str:
    names = {"int": "integers", "float": "floats (numbers)", "bool": "true/false values",
             "list": "lists", "dict": "nested objects", "bytes": "binary data"}
    return " and ".join(sorted(names.get(kind, kind) for kind in kinds))


def _check_row(row: dict, columns: ColumnChoice, root: Path, rules: Rules):
    item = {"split": row.get("_split"), "where": row["_where"], "source": None, "source_name": None,
            "text": None, "label": None, "flags": []}
    if row.get("_broken"):
        return item, ("broken_row", row["_broken"])
    for role, column in (("text", columns.text), ("label", columns.label)):
        value = row.get(column) if column else None
        whole_number = (isinstance(value, (int, float)) and not isinstance(value, bool)
                        and float(value).is_integer())
        if role == "label" and whole_number:
            value = str(int(value))  # class ids: 1 and 1.0 (a Parquet column with gaps) are "1"
        elif value is not None and not isinstance(value, str):
            expected = "text (a string)" if role == "text" else "a class name or a whole number"
            return item, ("wrong_type", f"column {column!r} holds {_kind_names({type(value).__name__})} "
                          f"({printable(repr(value))[:60]}); a {role} must be {expected}")
        if isinstance(value, str):
            value, removed = clean_text(value)
            if removed:
                item["flags"].append(("control_chars", f"the {role} held control characters (NUL, terminal "
                                      "escapes or text-direction overrides); they were removed"))
        item[role] = value
    for value in (item["text"], item["label"]):
        # any surrogate: a byte that was not UTF-8 (surrogateescape) or a lone JSON \ud800 escape;
        # SQLite stores UTF-8 only, so either would stop the whole import at the insert
        if value is not None and any("\ud800" <= ch <= "\udfff" for ch in value):
            return item, ("non_utf8", "holds bytes that are not UTF-8 text; save the file as UTF-8")
    if columns.text and not (item["text"] or "").strip():
        return item, ("empty_transcript", "the transcript is empty" if columns.task == "asr"
                      else "the text is empty")
    if columns.label and not (item["label"] or "").strip():
        return item, ("missing_label", "no label; give it one or remove the row")
    if columns.audio is None:
        item["content_hash"] = _sha256((item["text"] or "").encode())
        return item, None
    problem = _check_audio(item, row.get(columns.audio), row["_base"], root, rules)
    if problem is None and columns.task == "asr":
        problem = _check_transcript_length(item, rules)
    return item, problem


def _check_transcript_length(item: dict, rules: Rules):
    """Refuse transcripts no clip can hold; flag ones too long for their clip."""
    length, seconds = len(item["text"]), max(item.get("duration_s") or 0.0, 0.001)
    if length > rules.max_transcript_chars:
        return "long_transcript", (f"the transcript has {length:,} characters for a {seconds:.1f} s clip: "
                                   f"over Whisper's limit of 448 label tokens (about {rules.max_transcript_chars:,} "
                                   "characters at most); it is probably a wrong row, or the clip needs cutting")
    if length / seconds > rules.max_chars_per_second and length > 40:
        item["flags"].append(("long_transcript", f"{length} characters for a {seconds:.1f} s clip "
                              f"({length / seconds:.0f} per second, speech has about 15); check the "
                              "transcript belongs to this clip"))
    return None


def _check_audio(item: dict, value, base: Path, root: Path, rules: Rules):
    if isinstance(value, dict):  # a Hugging Face Audio value: {"bytes": ..., "path": ...}
        data, name = value.get("bytes"), value.get("path")
        if data is None and name:
            value = name
        else:
            item.update(source=bytes(data or b""), source_name=printable(Path(name or "audio.wav").name))
    if not isinstance(value, dict):
        if not value or not str(value).strip():
            return "missing_file", "no audio file named in this row"
        path = (base / str(value).strip()).resolve()
        if not path.is_relative_to(root):
            return "missing_file", f"{value} points outside the dataset folder; it was not read"
        if not path.is_file():
            return "missing_file", f"{value} is not there; check the file name (case matters)"
        # printable(): a file name that is not UTF-8 cannot be stored as text in SQLite
        item.update(source=path, source_name=printable(path.relative_to(root).as_posix()))
    return _audio_facts(item, rules)


def _audio_facts(item: dict, rules: Rules):
    import soundfile

    data = item["source"].read_bytes() if isinstance(item["source"], Path) else item["source"]
    try:
        info = soundfile.info(io.BytesIO(data))
    except Exception:
        return "unreadable_audio", ("not a WAV, FLAC, MP3 or OGG file the workbench can read (wrong "
                                    "extension or damaged); convert it, e.g. ffmpeg -i in out.wav")
    if not 0 < info.samplerate <= rules.max_sample_rate or not 0 < info.channels <= rules.max_channels:
        return "odd_format", (f"its header says {info.samplerate:,} Hz and {info.channels} channel(s); the "
                              f"workbench reads up to {rules.max_sample_rate:,} Hz and {rules.max_channels} "
                              "channels. The header is probably damaged: convert it, e.g. ffmpeg -i in out.wav")
    duration = info.frames / info.samplerate
    item.update(sample_rate=info.samplerate, channels=info.channels, duration_s=round(duration, 3),
                content_hash=_sha256(data))
    if info.frames <= 0:
        return "empty_audio", "the file holds no sound at all"
    if duration > rules.max_duration_s:
        return "too_long", (f"{_minutes(duration)} long; the model listens to {rules.max_duration_s:g} s "
                            "at a time, so cut it into shorter clips (ffmpeg -f segment) first")
    if duration < rules.min_duration_s:
        return "too_short", f"{duration * 1000:.0f} ms long; clips under {rules.min_duration_s:g} s hold too little to learn from"
    return _check_samples(item, data, rules)


def _check_samples(item: dict, data: bytes, rules: Rules):
    """Decode once, block by block (bounded memory): refuse NaN / infinite samples (a float WAV
    can hold them; they would poison every gradient), flag digital silence and clipping."""
    import soundfile

    frames = peak = clipped = 0
    try:
        for block in soundfile.blocks(io.BytesIO(data), blocksize=65_536, dtype="float32", always_2d=True):
            if not np.isfinite(block).all():
                return "bad_samples", ("holds NaN or infinite samples (a damaged float WAV); it is not "
                                       "stored as training audio: export it again as 16-bit PCM")
            magnitude = np.abs(block)
            peak = max(peak, float(magnitude.max(initial=0.0)))
            clipped += int((magnitude >= 0.999).sum())
            frames += block.size
    except Exception as error:  # the header read fine, the data is damaged (truncated, bad frames)
        return "unreadable_audio", (f"the audio data is damaged and cannot be decoded ({printable(str(error))[:120]}); "
                                    "convert it again, e.g. ffmpeg -i in out.wav")
    if frames == 0:
        return "empty_audio", "the file holds no sound at all"
    if peak == 0.0:
        item["flags"].append(("silence", "every sample is zero (digital silence); check the recording"))
    elif clipped / frames > rules.clipped_fraction:
        item["flags"].append(("clipping", f"{clipped / frames:.1%} of the samples are at full scale "
                              "(clipped): the recording was too loud; record it again if you can"))
    return None


DEBRIS = {"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini"}  # left by zip tools and file managers


def unread_files(root: Path, table: SourceTable, columns: ColumnChoice, limit: int = 5) -> list[Problem]:
    """Warnings for files under ``root`` that no row used: audio files no row names (left out),
    and everything else (a zip of 20,000 entries of which 3 are the dataset says so)."""
    root = root.resolve()
    used = {path.resolve() for path in table.tables}
    for row in table.rows:
        value = row.get(columns.audio) if columns.audio else None
        if isinstance(value, str) and value.strip():
            used.add((Path(row["_base"]) / value.strip()).resolve())
    audio, other = [], []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_dir() or DEBRIS & set(relative.parts) or path.resolve() in used:
            continue
        (audio if path.suffix.lower() in AUDIO_SUFFIXES else other).append(printable(relative.as_posix()))
    problems = []
    if audio:
        problems.append(Problem("unlisted_audio", "folder", f"{len(audio)} audio file(s) no row names were "
                                f"left out: {_some(audio, limit)}; add a row for each to import them", False))
    if other:
        problems.append(Problem("unused_files", "folder", f"{len(other)} files are not part of the dataset "
                                f"and were not read: {_some(other, limit)}", False))
    return problems


def _some(names: list[str], limit: int) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


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


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} minutes" if seconds >= 120 else f"{seconds:.1f} s"
