"""Fixtures shared by page tests (imported by name: a conftest.py here would shadow tests/conftest.py,
which the tests import FAST from)."""

from __future__ import annotations

import pytest


@pytest.fixture
def downloads(monkeypatch):
    """What pages hand to download buttons, by file name: a spy on Streamlit's in-memory media
    store (the real store still gets everything)."""
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    seen: dict[str, bytes] = {}
    original = MemoryMediaFileStorage.load_and_get_id

    def spy(self, path_or_data, mimetype, kind, filename=None):
        if filename:
            seen[filename] = path_or_data if isinstance(path_or_data, bytes) else path_or_data.encode()
        return original(self, path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", spy)
    return seen
