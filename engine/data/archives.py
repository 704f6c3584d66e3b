"""Uploads and zip archives, unpacked without trusting them.

    limits = ImportLimits()                          # from LIM_* environment variables
    saved = save_upload(staging, "course.zip", stream, limits)
    folder = extract_zip(saved, staging / "unpacked", limits)

A zip from a course page can hold ``../`` paths, absolute paths, symbolic links, passwords or a
few KB that inflate to gigabytes. ``extract_zip`` checks every entry *before* writing anything
(paths, links, encryption, file count, declared size and compression ratio, per entry and in
total) and writes with its own byte counter, so a lying size header cannot get past the limits
either. Python's ``zipfile`` does the reading; the checks are ours because no maintained library
offers them as a policy (zipfile itself only guards against overlapping-entry bombs).
"""

from __future__ import annotations

import shutil
import stat
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from engine.errors import DatasetError
from storage import safe_name

MB = 1024 * 1024
CHUNK = 1 * MB
# Entries smaller than this are exempt from the ratio check: a tiny CSV or a short silent WAV
# packs 100:1 and more, and cannot hurt anyone at that size.
RATIO_EXEMPT_BYTES = 1 * MB
PROGRESS_EVERY = 64 * MB  # unpacked bytes between progress calls


def _configured(name: str) -> int:
    from engine.settings import load_config  # the one place the workbench's settings live

    return getattr(load_config(), name)


@dataclass
class ImportLimits:
    """Ceilings on what an import may bring in (``engine.settings.WorkbenchConfig``: LIM_*
    environment variables or the config file)."""

    max_upload_mb: int = field(default_factory=lambda: _configured("max_upload_mb"))
    max_unpacked_mb: int = field(default_factory=lambda: _configured("max_unpacked_mb"))
    max_files: int = field(default_factory=lambda: _configured("max_files"))
    max_compression_ratio: int = field(default_factory=lambda: _configured("max_compression_ratio"))


def save_upload(staging: Path, filename: str, stream: BinaryIO, limits: ImportLimits) -> Path:
    """Copy an uploaded file into ``staging`` under a safe name, refusing it past the size limit."""
    staging.mkdir(parents=True, exist_ok=True)
    name = PurePosixPath(filename.replace("\\", "/")).name
    stem, dot, suffix = name.rpartition(".")
    target = staging / (f"{safe_name(stem)}.{safe_name(suffix)}" if dot else safe_name(name))
    written, limit = 0, limits.max_upload_mb * MB
    with target.open("wb") as out:
        while chunk := stream.read(CHUNK):
            written += len(chunk)
            if written > limit:
                out.close()
                target.unlink()
                raise DatasetError(f"{name} is larger than the upload limit of {limits.max_upload_mb} MB; "
                                   "point the workbench at the folder on this machine instead, or raise "
                                   "LIM_MAX_UPLOAD_MB")
            out.write(chunk)
    return target


def extract_zip(archive: Path, target: Path, limits: ImportLimits,
                on_progress: Callable[[int, int, str], None] | None = None) -> Path:
    """Unpack ``archive`` into ``target`` (new) safely; returns the dataset's top folder.

    ``on_progress(done_mb, total_mb, "MB unpacked, now <entry>")`` is called every 64 MB and at
    the end, so a long extraction is never silent."""
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = _checked_members(bundle, limits)
            target.mkdir(parents=True, exist_ok=False)
            try:
                _write_members(bundle, members, target, limits, on_progress)
            except BaseException:  # KeyboardInterrupt and SystemExit too: nothing half-unpacked stays
                shutil.rmtree(target, ignore_errors=True)
                raise
    except zipfile.BadZipFile:
        raise DatasetError(f"{archive.name} is not a zip archive (or it is damaged); "
                           "make it again with a zip tool and upload it again") from None
    except (RuntimeError, NotImplementedError, EOFError, zlib.error, OSError) as error:
        # zipfile says "password required", "compression method not supported", a bad CRC ...
        raise DatasetError(f"{archive.name} cannot be unpacked ({error}); make it again with a "
                           "plain zip tool (no password, standard compression) and upload it again") from None
    return single_top_folder(target)


def single_top_folder(folder: Path) -> Path:
    """Zips made by dragging a folder hold one folder: step into it (ignoring macOS debris)."""
    entries = [p for p in folder.iterdir() if p.name not in ("__MACOSX", ".DS_Store")]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else folder


def _checked_members(bundle: zipfile.ZipFile, limits: ImportLimits) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    infos = bundle.infolist()
    files = [info for info in infos if not info.is_dir()]
    if len(files) > limits.max_files:
        raise DatasetError(f"the archive holds {len(files)} files, more than the limit of "
                           f"{limits.max_files}; split it into smaller archives or raise LIM_MAX_FILES")
    declared = sum(info.file_size for info in files)
    if declared > limits.max_unpacked_mb * MB:
        raise DatasetError(f"the archive would unpack to {declared / MB:,.0f} MB, more than the limit of "
                           f"{limits.max_unpacked_mb} MB; it may be a zip bomb, or raise LIM_MAX_UNPACKED_MB")
    _check_ratio(files, limits)
    checked, seen = [], set()
    for info in files:
        if info.filename in seen:  # the later entry would silently replace the one checked first
            raise DatasetError(f"the archive holds two entries named {info.filename}; it was refused "
                               "and nothing was unpacked: zip the folder again")
        seen.add(info.filename)
        if info.flag_bits & 0x1:
            raise DatasetError(f"the archive is password-protected ({info.filename} is encrypted); "
                               "the workbench cannot unpack it: zip the files again without a password")
        if _is_link(info):
            raise DatasetError(f"the archive holds a link ({info.filename}); links are refused because "
                               "they can point outside the dataset: zip the real files instead")
        checked.append((info, _safe_member_path(info.filename)))
    return checked


def _check_ratio(files: list[zipfile.ZipInfo], limits: ImportLimits) -> None:
    """Refuse entries (and archives) that inflate far more than real data does."""
    limit = limits.max_compression_ratio
    for info in files:
        if info.file_size > RATIO_EXEMPT_BYTES and info.file_size > limit * max(info.compress_size, 1):
            raise DatasetError(
                f"the archive entry {info.filename} inflates {info.file_size / max(info.compress_size, 1):,.0f} "
                f"times (compression ratio over the limit of {limit}); it looks like a zip bomb and "
                "nothing was unpacked. If the data is real, raise LIM_MAX_COMPRESSION_RATIO")
    packed = sum(info.compress_size for info in files)
    unpacked = sum(info.file_size for info in files)
    if unpacked > RATIO_EXEMPT_BYTES and unpacked > limit * max(packed, 1):
        raise DatasetError(f"the archive inflates {unpacked / max(packed, 1):,.0f} times in total (compression "
                           f"ratio over the limit of {limit}); it looks like a zip bomb and nothing was "
                           "unpacked. If the data is real, raise LIM_MAX_COMPRESSION_RATIO")


def _safe_member_path(name: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (path.parts and ":" in path.parts[0]) or ".." in path.parts:
        raise DatasetError(f"the archive holds an unsafe path ({name}) that points outside the "
                           "dataset folder; it was refused and nothing was unpacked")
    return path


def _is_link(info: zipfile.ZipInfo) -> bool:
    mode = info.external_attr >> 16
    return stat.S_ISLNK(mode)


def _write_members(bundle, members, target: Path, limits: ImportLimits, on_progress=None) -> None:
    written, limit = 0, limits.max_unpacked_mb * MB
    total_mb = max(1, round(sum(info.file_size for info, _ in members) / MB))
    next_report = PROGRESS_EVERY
    for info, relative in members:
        destination = target.joinpath(*relative.parts)
        if not destination.resolve().is_relative_to(target.resolve()):  # belt and braces
            raise DatasetError(f"the archive entry {info.filename} points outside the dataset folder")
        destination.parent.mkdir(parents=True, exist_ok=True)
        entry_written = 0
        with bundle.open(info) as source, destination.open("wb") as out:
            # Count real bytes: a bomb can declare small sizes in its headers.
            while chunk := source.read(CHUNK):
                written += len(chunk)
                entry_written += len(chunk)
                if written > limit:
                    raise DatasetError(f"the archive unpacks to more than {limits.max_unpacked_mb} MB; "
                                       "it may be a zip bomb, or raise LIM_MAX_UNPACKED_MB")
                if (entry_written > RATIO_EXEMPT_BYTES
                        and entry_written > limits.max_compression_ratio * max(info.compress_size, 1)):
                    raise DatasetError(f"the archive entry {info.filename} inflates more than "
                                       f"{limits.max_compression_ratio} times; it looks like a zip bomb. "
                                       "If the data is real, raise LIM_MAX_COMPRESSION_RATIO")
                out.write(chunk)
                if on_progress and written >= next_report:
                    next_report += PROGRESS_EVERY
                    on_progress(min(written // MB, total_mb), total_mb, f"MB unpacked, now {info.filename}")
    if on_progress:
        on_progress(total_mb, total_mb, "MB unpacked")
