"""What every export starts from: a finished run's artifacts, and small helpers they share.

The facade (``Workbench.export_run``) looks the run up and fills ``RunArtifacts``; nothing in
``engine.export`` reads the database or knows the Workbench.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import ExportError

Progress = Callable[[str], None]


@dataclass
class RunArtifacts:
    """What an export needs to know about a finished run."""

    summary: dict  # Workbench.run_summary
    adapter_dir: Path
    base_dir: Path
    family: str
    labels: list[str]
    is_adapter: bool
    base_source: str = ""  # the model record's source: hub:<id>, package:<name>, preset:<name>, local:<path>
    # (split, audio files) the ct2 export transcribes to check parity (engine/export/ct2.py)
    parity_clips: tuple[str, list[Path]] = field(default_factory=lambda: ("none", []))


def fresh_folder(out: Path) -> Path:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} already exists and is not an empty folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def zip_folder_bytes(folder: Path, top: str, extra: dict[str, str] | None = None) -> bytes:
    """Every regular file of ``folder`` under ``top/`` in a zip, plus ``extra`` text files.
    Names come from our own folders, never from a user; symlinks are skipped."""
    extra = extra or {}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(folder.rglob("*")):
            if file.is_symlink() or not file.is_file() or file.name in extra:
                continue
            archive.write(file, f"{top}/{file.relative_to(folder).as_posix()}")
        for name, text in extra.items():
            archive.writestr(f"{top}/{name}", text)
    return buffer.getvalue()

