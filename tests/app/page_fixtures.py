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


def assert_built_before_offered(app) -> list:
    """Every download button on the page holds its file (a media URL), none a deferred callable:
    Streamlit drops a callable's placeholder at the next rerun, so a click soon after another
    download found "Deferred file … not found" and nothing came (issue 27). Returns the buttons."""
    buttons = app.get("download_button")
    for button in buttons:
        assert not button.proto.deferred_file_id and button.proto.url, button.proto.label
        assert button.proto.ignore_rerun, f"{button.proto.label}: a download need not rerun the page"
    return buttons


@pytest.fixture
def no_memory_estimate(monkeypatch):
    """``check_run`` without its memory estimate (a dry run in a child process: about a minute
    on a busy 2-core machine) for tests about something else; every run "fits"."""
    from engine.workbench.run_planning import RunPlanningMixin

    monkeypatch.setattr(RunPlanningMixin, "_check_memory", lambda self, *args, **kwargs: {
        "fits": True, "message": "memory not estimated in this test", "estimate_mb": None,
        "free_mb": None, "shape": {}})
