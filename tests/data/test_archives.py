"""Safe extraction against crafted zips, and the upload size limit."""

from __future__ import annotations

import io
import stat
import zipfile

import pytest

from engine.data.archives import ImportLimits, extract_zip, save_upload
from engine.errors import DatasetError


def make_zip(path, entries):
    """entries: (name, bytes) or (ZipInfo, bytes)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for name, data in entries:
            bundle.writestr(name, data)
    return path


@pytest.mark.parametrize("evil_name", ["../escaped.txt", "ok/../../escaped.txt", "/tmp/escaped.txt",
                                       "C:/escaped.txt", "..\\escaped.txt"])
def test_paths_outside_the_target_are_refused_before_anything_is_written(tmp_path, evil_name):
    archive = make_zip(tmp_path / "evil.zip", [("good.txt", b"fine"), (evil_name, b"owned")])
    target = tmp_path / "out" / "inside"
    with pytest.raises(DatasetError, match="unsafe path"):
        extract_zip(archive, target, ImportLimits())
    assert not target.exists()
    assert not list(tmp_path.rglob("escaped.txt"))


def test_links_are_refused(tmp_path):
    link = zipfile.ZipInfo("data/link.wav")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = make_zip(tmp_path / "link.zip", [("data/a.txt", b"x"), (link, b"/etc/passwd")])
    with pytest.raises(DatasetError, match="link"):
        extract_zip(archive, tmp_path / "out", ImportLimits())
    assert not (tmp_path / "out").exists()


def test_a_zip_bomb_over_the_size_limit_is_refused(tmp_path):
    # 3 MB of zeros compresses to a few KB: a small bomb against a 1 MB limit
    archive = make_zip(tmp_path / "bomb.zip", [("zeros.bin", bytes(3 * 1024 * 1024))])
    assert archive.stat().st_size < 50_000
    with pytest.raises(DatasetError, match="zip bomb"):
        extract_zip(archive, tmp_path / "out", ImportLimits(max_unpacked_mb=1))
    assert not (tmp_path / "out").exists()


def test_a_bomb_that_lies_about_its_size_is_stopped_while_writing(tmp_path):
    archive = make_zip(tmp_path / "liar.zip", [("zeros.bin", bytes(3 * 1024 * 1024))])
    data = bytearray(archive.read_bytes())
    # Patch the declared uncompressed size (local header and central directory) to 10 bytes.
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.find(signature)
        data[at + offset:at + offset + 4] = (10).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    with pytest.raises(DatasetError):  # zipfile stops at the declared size and fails the CRC
        extract_zip(archive, tmp_path / "out", ImportLimits(max_unpacked_mb=1))
    assert not (tmp_path / "out").exists()


def test_too_many_files_are_refused(tmp_path):
    archive = make_zip(tmp_path / "many.zip", [(f"f{i}.txt", b"x") for i in range(11)])
    with pytest.raises(DatasetError, match="11 files, more than the limit of 10"):
        extract_zip(archive, tmp_path / "out", ImportLimits(max_files=10))


def test_a_good_zip_unpacks_into_its_single_top_folder(tmp_path):
    archive = make_zip(tmp_path / "ok.zip", [("set/train/a.txt", b"a"), ("__MACOSX/._set", b"junk")])
    top = extract_zip(archive, tmp_path / "out", ImportLimits())
    assert top == tmp_path / "out" / "set"
    assert (top / "train" / "a.txt").read_bytes() == b"a"


def test_not_a_zip_gets_a_clear_message(tmp_path):
    fake = tmp_path / "fake.zip"
    fake.write_bytes(b"this is not a zip")
    with pytest.raises(DatasetError, match="not a zip archive"):
        extract_zip(fake, tmp_path / "out", ImportLimits())


def test_uploads_get_safe_names_and_a_size_limit(tmp_path):
    saved = save_upload(tmp_path, "../../etc/my data?.csv", io.BytesIO(b"text,label\n"), ImportLimits())
    assert saved.parent == tmp_path and saved.name == "my-data.csv"
    with pytest.raises(DatasetError, match="upload limit of 1 MB"):
        save_upload(tmp_path, "big.zip", io.BytesIO(bytes(2 * 1024 * 1024)), ImportLimits(max_upload_mb=1))
    assert not (tmp_path / "big.zip").exists()


def test_limits_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("LIM_MAX_UPLOAD_MB", "7")
    assert ImportLimits().max_upload_mb == 7
