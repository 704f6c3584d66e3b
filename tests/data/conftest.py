"""Fixtures of the dataset tests: an empty workbench on a fresh data home."""

from __future__ import annotations

import pytest


@pytest.fixture
def workbench_empty(home):
    from engine import Workbench

    workbench = Workbench(home)
    yield workbench
    workbench.storage.close()
