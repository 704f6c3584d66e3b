"""File store under the data home: ``datasets/``, ``models/`` and ``runs/<id>/``.

Paths kept in the database are relative to the home, so a data home can be moved or mounted
elsewhere. Nothing a user typed becomes a path without going through ``safe_name``.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str) -> str:
    """A file-system-safe slug of ``name`` (no separators, no leading dots, never empty)."""
    slug = _UNSAFE.sub("-", name.strip()).strip("-.")
    return slug[:80] or "item"


class FileStore:
    def __init__(self, home: Path):
        self.home = home

    def resolve(self, relative: str | Path) -> Path:
        """The absolute path of a stored relative path; refuses anything outside the home."""
        path = (self.home / relative).resolve()
        if not path.is_relative_to(self.home):
            raise ValueError(f"path {relative!s} escapes the data home")
        return path

    def relative(self, path: Path) -> str:
        return path.resolve().relative_to(self.home).as_posix()

    def new_dir(self, kind: str, name: str) -> Path:
        """A fresh, empty folder ``<home>/<kind>/<safe name>[-N]``."""
        base = self.home / kind
        base.mkdir(parents=True, exist_ok=True)
        stem = safe_name(name)
        candidate, n = base / stem, 1
        while candidate.exists():
            n += 1
            candidate = base / f"{stem}-{n}"
        candidate.mkdir()
        return candidate

    def run_dir(self, run_id: int) -> Path:
        path = self.home / "runs" / str(int(run_id))
        path.mkdir(parents=True, exist_ok=True)
        return path

    def remove(self, relative: str) -> None:
        path = self.resolve(relative)
        if path != self.home and path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
