"""Shared fixtures: a fresh data home per test, with the demo installed from a session copy."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

# The workbench is installed editable (make venv), so its packages import from anywhere;
# helpers shared by several test folders (audio_files.py) sit beside this file, whose folder
# pytest puts on sys.path (the root conftest's folder).
os.environ["HF_HUB_OFFLINE"] = "1"
# Under pytest-xdist (`make test` runs two workers) each worker gets its share of the cores.
torch.set_num_threads(max(1, (os.cpu_count() or 2) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))


# The longest files first (minutes each on 2 cores): xdist hands files to its workers in the
# order collected, so a long one started last would leave the other worker idle at the end.
LONGEST_FIRST = ("tests/browser/test_journey.py", "tests/engine/test_real_whisper.py",
                 "tests/engine/test_distributed.py", "tests/engine/test_resume.py",
                 "tests/engine/test_export.py", "tests/engine/test_ray.py")


def pytest_collection_modifyitems(config, items):
    def place(item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=place)  # stable: the order within a file and among the others stays
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def demo_template(tmp_path_factory) -> Path:
    """A data home with the demo installed once; tests get copies of it."""
    from engine import Workbench

    home = tmp_path_factory.mktemp("demo-home")
    workbench = Workbench(home)
    workbench.install_demo()
    workbench.storage.close()
    return home


def copy_home(template: Path, path: Path) -> None:
    """A copy of a data home whose model weights are hard links: the demo registers the installed
    whisper-base (290 MB of float32 safetensors), which would otherwise be copied for every test.
    Weights are never written in place (registering writes new files, deleting unlinks)."""
    def link_weights(source: str, target: str) -> None:
        if source.endswith(".safetensors"):
            try:
                os.link(source, target)
                return
            except OSError:
                pass  # another file system: copy
        shutil.copy2(source, target)

    shutil.copytree(template, path, copy_function=link_weights)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty data home, also set as LIM_HOME."""
    path = tmp_path / "home"
    monkeypatch.setenv("LIM_HOME", str(path))
    return path


@pytest.fixture
def demo_home(tmp_path, demo_template, monkeypatch) -> Path:
    """A data home holding the demo datasets and presets, also set as LIM_HOME."""
    path = tmp_path / "home"
    copy_home(demo_template, path)
    monkeypatch.setenv("LIM_HOME", str(path))
    return path


@pytest.fixture
def workbench(demo_home):
    from engine import Workbench

    workbench = Workbench(demo_home)
    yield workbench
    workbench.shutdown()
    workbench.storage.close()


# Small, fast settings for real training runs on two CPU cores.
FAST = {"max_steps": 4, "eval_steps": 0, "save_steps": 0, "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 20, "generation_max_length": 8}
