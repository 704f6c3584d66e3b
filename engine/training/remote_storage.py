"""The database of a data home for Ray tasks on other machines (engine/training/cluster.py).

SQLite must not be written over a network file system (its WAL needs memory shared by the
writers), so the tasks that train a study's runs on a Ray cluster never open the data home's
database themselves: ``StorageService``, a Ray actor on the driver's machine, holds the
``Storage``, and each task's ``RemoteStorage`` sends it every call. Files (datasets, models,
the runs' folders) are read and written on the shared data home directly. This module imports
neither torch nor Ray, so the service's process starts in a moment.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from storage import FileStore, Storage

# Storage calls a task may not make through the service: connections and transactions are the
# service's own.
PRIVATE_CALLS = frozenset({"db", "atomic", "close"})


class StorageService:
    """The data home's database for a cluster's tasks: a Ray actor on the driver's machine
    that makes each ``Storage`` call a task sends (``RemoteStorage``)."""

    def __init__(self, home: str):
        self.storage = Storage(home)

    def call(self, name: str, args: tuple, kwargs: dict) -> Any:
        if name.startswith("_") or name in PRIVATE_CALLS:
            raise AttributeError(f"Storage.{name} is not served to Ray tasks")
        return getattr(self.storage, name)(*args, **kwargs)


class RemoteStorage:
    """What the code that trains a run sees as its ``Storage`` on a Ray machine: ``files`` on
    the shared data home, every other call answered by the ``StorageService``."""

    def __init__(self, service: Any, home: Path):
        self._service, self.home, self.files = service, home, FileStore(home)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        import ray  # only ever called inside a Ray task, where Ray is installed

        def call(*args: Any, **kwargs: Any) -> Any:
            return ray.get(self._service.call.remote(name, args, kwargs))
        return call

    def close(self) -> None:
        """Nothing to close: the connections are the service's."""
