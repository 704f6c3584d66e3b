"""Read what a student brings into one table of rows, whatever its layout.

    table = read_source(Path("my-data"))       # a folder, or one .csv/.jsonl/.parquet file
    columns = choose_columns(table)            # detected task and columns (overridable)

Layouts understood:
- audiofolder: audio files + ``metadata.csv`` / ``metadata.jsonl`` with ``file_name`` and
  ``transcription`` or ``label``, at the top or in ``train/``, ``validation/``, ``test/``;
- audio files in per-class subfolders (the folder name is the label), optionally under split folders;
- a CSV / JSONL / Parquet table (or ``train.csv``, ``validation.csv``, ...) of text + label, or of
  audio paths + transcripts;
- a folder written by ``datasets.save_to_disk`` (audio or text).

Every row keeps where it came from (``_split``, ``_base`` for relative audio paths, ``_where``
for messages). Which column plays which role is decided afterwards, by ``choose_columns``.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from engine.data.audio import AUDIO_SUFFIXES
from engine.errors import DatasetError

TASKS = ("asr", "audio-classification", "text-classification")
SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
                 "val": "validation", "dev": "validation", "test": "test", "testing": "test"}
TABLE_SUFFIXES = (".csv", ".jsonl", ".parquet")
AUDIO_COLUMNS = ("file_name", "audio", "path", "audio_path", "audio_file", "file", "filename")
TEXT_COLUMNS = ("transcription", "transcript", "sentence", "text", "normalized_text")
LABEL_COLUMNS = ("label", "labels", "class", "category", "intent", "target")
INTERNAL = ("_split", "_base", "_where", "_line", "_broken")


@dataclass
class SourceTable:
    layout: str                      # e.g. "audiofolder", "class folders", "table", "save_to_disk"
    rows: list[dict]
    columns: list[str]
    notes: list[str] = field(default_factory=list)  # how the source was read (shown in the report)
    class_folders: bool = False
    tables: list[Path] = field(default_factory=list)  # the table files that were read


@dataclass
class ColumnChoice:
    task: str
    audio: str | None
    text: str | None
    label: str | None
    unknown: list[str]
    guessed: str | None = None       # why a column was taken that the layout does not name


def read_source(path: Path) -> SourceTable:
    """All rows of the dataset at ``path`` (a folder or a single table file)."""
    if path.is_file():
        if path.suffix.lower() not in TABLE_SUFFIXES:
            raise DatasetError(f"{path.name}: expected a folder, a .zip, or a .csv / .jsonl / .parquet table")
        return _table_source([(None, path)])
    if not path.is_dir():
        raise DatasetError(f"{path} is not a folder or a file on this machine")
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return read_saved_dataset(path)
    split_dirs = _split_dirs(path)
    metadata = [(split, _metadata_file(folder)) for split, folder in split_dirs]
    if any(found for _, found in metadata):
        return _table_source([(split, found) for split, found in metadata if found], "audiofolder")
    tables = [(SPLIT_ALIASES.get(p.stem.lower()), p) for p in sorted(path.iterdir())
              if p.is_file() and p.suffix.lower() in TABLE_SUFFIXES]
    if tables:
        return _table_source(tables)
    rows = [row for split, folder in split_dirs for row in _class_folder_rows(folder, split)]
    if rows:
        return SourceTable("class folders", rows, ["file_name", "label"], class_folders=True)
    raise DatasetError(f"{path.name}: found no metadata.csv / metadata.jsonl, no table of text or audio "
                       "paths, and no audio files in per-class subfolders; see 'Bring your own data' "
                       "in the README for the layouts the workbench reads")


def read_saved_dataset(path: Path) -> SourceTable:
    """A folder from ``datasets.save_to_disk``; audio columns come back as undecoded bytes."""
    try:
        import datasets
    except ImportError:
        raise DatasetError("reading a saved Hugging Face dataset needs the 'datasets' package "
                           "(pip install -r requirements.txt)") from None
    _check_saved_paths(path)
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as error:  # corrupt arrow files, unknown versions, ...
        raise DatasetError(f"{path.name} looks like a saved Hugging Face dataset but cannot be read: {error}") from error
    datasets.disable_progress_bars()
    parts = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [("train", loaded)]
    rows, columns = [], []
    for split_name, part in parts:
        class_names = {}
        for name, feature in part.features.items():
            if isinstance(feature, datasets.Audio):
                part = part.cast_column(name, datasets.Audio(decode=False))  # bytes, no torchcodec
            if isinstance(feature, datasets.ClassLabel):
                class_names[name] = feature.names  # labels by name, not number
        columns = columns or list(part.column_names)
        split = SPLIT_ALIASES.get(split_name.lower(), "train")
        for i, row in enumerate(part):
            for name, names in class_names.items():
                row[name] = names[row[name]] if row[name] is not None and row[name] >= 0 else None
            rows.append({**row, "_split": split, "_base": path, "_where": f"{split_name} row {i + 1}"})
    return SourceTable("save_to_disk", rows, columns)


def _check_saved_paths(root: Path) -> None:
    """Every path a saved dataset's own metadata names (splits, arrow files) must stay inside
    ``root``: ``datasets`` opens them as given, ``../`` included."""
    root = root.resolve()

    def inside(relative, source: Path) -> Path:
        target = (source.parent / str(relative)).resolve()
        if not isinstance(relative, str) or not target.is_relative_to(root):
            raise DatasetError(f"{source.relative_to(root).as_posix()} names {str(relative)[:80]!r}, a path "
                               "outside the dataset folder; it was not opened. Save the dataset again "
                               "with datasets' save_to_disk")
        return target

    def read_json(file: Path) -> dict:
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise DatasetError(f"{file.name} of the saved dataset is not readable JSON ({error.__class__.__name__}); "
                               "save the dataset again") from None
        if not isinstance(data, dict):
            raise DatasetError(f"{file.name} of the saved dataset is not a JSON object; save the dataset again")
        return data

    folders = [root]
    if (root / "dataset_dict.json").is_file():
        splits = read_json(root / "dataset_dict.json").get("splits", [])
        folders = [inside(split, root / "dataset_dict.json") for split in splits if isinstance(splits, list)]
    for folder in folders:
        state = folder / "state.json"
        if state.is_file():
            for entry in read_json(state).get("_data_files") or []:
                inside(entry.get("filename") if isinstance(entry, dict) else entry, state)


def choose_columns(table: SourceTable, task: str | None = None, audio: str | None = None,
                   text: str | None = None, label: str | None = None) -> ColumnChoice:
    """Detect the task and the column of each role; anything given explicitly wins."""
    if task is not None and task not in TASKS:
        raise DatasetError(f"task must be one of {', '.join(TASKS)}, not {task!r}")
    for given in (audio, text, label):
        if given is not None and given not in table.columns:
            raise DatasetError(f"there is no column {given!r}; columns: {', '.join(table.columns)}")
    given_audio = audio
    audio = audio or _first(table.columns, AUDIO_COLUMNS)
    text = text or _first(table.columns, TEXT_COLUMNS)
    label = label or _first(table.columns, LABEL_COLUMNS)
    if task is None:
        task = ("asr" if audio and text else "audio-classification" if audio and label
                else "text-classification" if text and label else None)
    if task is None:
        raise DatasetError(f"cannot tell what to learn from columns {', '.join(table.columns)}: name "
                           "them file_name + transcription (speech), file_name + label (audio classes) "
                           "or text + label (text classes), or choose the columns yourself")
    needed = {"asr": {"audio": audio, "transcript": text},
              "audio-classification": {"audio": audio, "label": label},
              "text-classification": {"text": text, "label": label}}[task]
    missing = [role for role, column in needed.items() if column is None]
    if missing:
        raise DatasetError(f"a {task} dataset needs a column for {' and '.join(missing)}; "
                           f"columns found: {', '.join(table.columns) or 'none'}")
    if task == "audio-classification":
        text = None
    if task == "asr":
        label = None
    if task == "text-classification":
        audio = None
    used = {audio, text, label}
    unknown = [c for c in table.columns if c not in used]
    guessed = None
    if table.layout == "audiofolder" and audio and audio != "file_name" and audio != given_audio:
        guessed = (f"the audiofolder layout names audio files in a file_name column, and this "
                   f"metadata has none; the {audio!r} column was taken as the audio column because "
                   "its name is a usual one for audio paths. Rename it to file_name (datasets' "
                   "load_dataset('audiofolder') needs that), or choose the audio column yourself")
    return ColumnChoice(task, audio, text, label, unknown, guessed)


# ---------------------------------------------------------------------------- layouts
def _split_dirs(root: Path) -> list[tuple[str | None, Path]]:
    found = [(SPLIT_ALIASES[p.name.lower()], p) for p in sorted(root.iterdir())
             if p.is_dir() and p.name.lower() in SPLIT_ALIASES]
    return found or [(None, root)]


def _metadata_file(folder: Path) -> Path | None:
    for name in ("metadata.csv", "metadata.jsonl"):
        if (folder / name).is_file():
            return folder / name
    return None


def _class_folder_rows(folder: Path, split: str | None) -> list[dict]:
    rows = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for audio in sorted(class_dir.rglob("*")):
            if audio.is_file() and audio.suffix.lower() in AUDIO_SUFFIXES:
                relative = audio.relative_to(folder).as_posix()
                rows.append({"file_name": relative, "label": class_dir.name, "_split": split,
                             "_base": folder, "_where": relative})
    return rows


def _table_source(tables: list[tuple[str | None, Path]], layout: str = "table") -> SourceTable:
    rows, columns, notes = [], [], []
    for split, table in tables:
        table_rows, table_columns, note = read_table(table)
        if note:
            notes.append(note)
        columns += [c for c in table_columns if c not in columns]
        prefix = table.relative_to(table.parent.parent).as_posix() if split and layout == "audiofolder" else table.name
        rows += [{**row, "_split": split, "_base": table.parent,
                  "_where": f"{prefix} row {row.get('_line') or i + 1}"}  # CSV: the line it starts on
                 for i, row in enumerate(table_rows)]
    return SourceTable(layout, rows, columns, notes, tables=[table for _, table in tables])


def read_table(path: Path) -> tuple[list[dict], list[str], str | None]:
    """Rows, columns and a note on how the file was read, for .csv, .jsonl and .parquet."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet(path)
    # surrogateescape keeps undecodable bytes as marks the validator reports row by row
    text = path.read_bytes().decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
    if suffix == ".jsonl":
        return _read_jsonl(path, text)
    return _read_csv(path, text)


def _read_csv(path: Path, text: str) -> tuple[list[dict], list[str], str | None]:
    header = text.split("\n", 1)[0]
    delimiter, note = ",", None
    if "," not in header:
        for candidate, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "bars")):
            if candidate in header:
                delimiter = candidate
                note = f"{path.name} separates columns with {name}, not commas; read it that way"
                break
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    columns = [c.strip() for c in (reader.fieldnames or [])]
    if not columns:
        raise DatasetError(f"{path.name} is empty; it needs a header line naming its columns")
    if any(_undecodable(c) for c in columns):
        raise DatasetError(f"the header of {path.name} is not UTF-8 text; open it in a spreadsheet and "
                           "save it as 'CSV UTF-8', then import again")
    reader.fieldnames = columns
    rows = []
    try:
        for row in reader:
            rows.append(_csv_row(path, row, reader.line_num, len(columns)))
    except csv.Error as error:
        raise DatasetError(f"{path.name} line {reader.line_num} cannot be read as CSV ({error}); "
                           "open it in a spreadsheet and save it as 'CSV UTF-8'") from None
    return rows, columns, note


def _csv_row(path: Path, row: dict, end: int, width: int) -> dict:
    """One CSV row, marked ``_broken`` when its quoting went wrong (the validator refuses it).

    A line break inside a value is only possible within quotes: in a metadata file it almost
    always means a quote that was never closed, which swallows the rows after it."""
    extra = row.pop(None, None)  # values beyond the header's columns
    values = [value for value in row.values() if isinstance(value, str)]
    # a quote left open to the end of the file keeps the last line break in the value
    start = end - sum(value.rstrip("\r\n").count("\n") for value in values)
    row = {**row, "_line": start}
    if any("\n" in value or "\r" in value for value in values):
        row["_broken"] = (f"a quote opened on this row runs on to line {end} of {path.name}, so lines "
                          f"{start}-{end} were read as one row; close the quote (or keep each row on "
                          "one line), then import again")
    elif extra:
        row["_broken"] = (f"has {width + len(extra)} values but the header names {width} columns (a "
                          "comma inside unquoted text?); put that text in double quotes")
    return row


def _read_jsonl(path: Path, text: str) -> tuple[list[dict], list[str], str | None]:
    rows, columns = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DatasetError(f"{path.name} line {number} is not valid JSON ({error.msg}); each line "
                               "must be one JSON object") from None
        if not isinstance(row, dict):
            raise DatasetError(f"{path.name} line {number} is not a JSON object")
        rows.append(row)
        columns += [c for c in row if c not in columns]
    return rows, columns, None


def _read_parquet(path: Path) -> tuple[list[dict], list[str], str | None]:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as error:  # pyarrow raises several kinds
        raise DatasetError(f"{path.name} is not a readable Parquet file: {error}") from error
    frame = frame.astype(object).where(frame.notna(), None)
    return frame.to_dict("records"), [str(c) for c in frame.columns], None


def _undecodable(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def _first(columns: list[str], candidates: tuple[str, ...]) -> str | None:
    lowered = {c.lower(): c for c in columns}
    return next((lowered[c] for c in candidates if c in lowered), None)
