"""SQLite store of users, datasets, models, runs and their metrics, through sqlite-utils.

One ``Storage`` per data home. It is safe to share between threads: every thread gets its own
connection (SQLite connections must not cross threads), the database runs in WAL mode so the
training worker can write while pages read, and a busy timeout absorbs short write contention
from a second process (the command line next to the app).

Every read of a user's items is scoped to an owner: an item is visible to its owner and, when
``shared`` is set (the demo sets), read-only to everybody; ``see_all=True`` (an admin's view)
shows every owner's items. Changing or deleting an item checks its owner (``_owned``).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from storage.files import FileStore
from storage.schema import migrations
from storage.datasets import DatasetStore
from storage.metrics import MetricStore
from storage.models import ModelStore
from storage.rows import VISIBLE, decode_row, is_utf8, utc_now  # noqa: F401 (utc_now: re-exported)
from storage.runs import RunStore
from storage.sessions import LoginSessionStore
from storage.studies import StudyStore
from storage.users import UserStore


class Storage(DatasetStore, ModelStore, RunStore, StudyStore, MetricStore, UserStore,
              LoginSessionStore):
    """The database and file store under one data home (``LIM_HOME``)."""

    def __init__(self, home: str | Path):
        self.home = Path(home).resolve()
        self.home.mkdir(parents=True, exist_ok=True)
        self.files = FileStore(self.home)
        self.path = self.home / "workbench.db"
        self._local = threading.local()
        self.db.enable_wal()
        migrations.apply(self.db)

    # ---------------------------------------------------------------- connections
    @property
    def db(self) -> Database:
        """This thread's connection (made on first use)."""
        db = getattr(self._local, "db", None)
        if db is None:
            conn = sqlite3.connect(self.path, timeout=30)
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=NORMAL")
            db = Database(conn)
            self._local.db = db
        return db

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    @contextmanager
    def atomic(self) -> Iterator[Database]:
        """A write transaction, all or nothing.

        ``BEGIN IMMEDIATE`` takes the write lock up front, so a writer waits (busy timeout)
        for another writer instead of failing: a deferred transaction that first reads and
        then writes cannot wait in WAL mode and fails with "database is locked" at once.
        """
        db = self.db
        if db.conn.in_transaction:  # nested: a savepoint inside the open transaction
            with db.atomic():
                yield db
            return
        db.conn.execute("BEGIN IMMEDIATE")
        try:
            yield db
            # COMMIT may raise too (a deferred foreign key, a full disk): it is rolled back
            # like a failed body, or the open transaction would swallow every later write.
            db.conn.execute("COMMIT")
        except BaseException as error:
            self._roll_back(error)
            raise

    def _roll_back(self, cause: BaseException) -> None:
        """End this thread's failed transaction without hiding ``cause``."""
        conn = self.db.conn
        try:
            conn.rollback()  # a no-op when SQLite already ended the transaction itself
        except sqlite3.Error as error:
            # A connection that cannot roll back is not reused: the next call opens a fresh one.
            cause.add_note(f"rolling back failed too ({error}); the connection was closed")
            self.close()

    # ---------------------------------------------------------------- helpers
    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[dict]:
        return [decode_row(row) for row in self.db.query(sql, list(params))]

    def _one(self, sql: str, params: Iterable[Any] = ()) -> dict | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None


    def _find(self, table: str, name_or_id: str | int, owner_id: int, see_all: bool = False) -> dict | None:
        if isinstance(name_or_id, int) or str(name_or_id).isdigit():
            found = self._one(f"select * from {table} where id = ? and {VISIBLE}",
                              [int(name_or_id), owner_id, int(see_all)])
            if found:
                return found
        if not str(name_or_id).isascii() and not is_utf8(str(name_or_id)):
            return None  # bytes that are not UTF-8 (from a command line) can name nothing stored
        # The owner's own item wins over a shared one of the same name.
        return self._one(
            f"select * from {table} where name = ? and {VISIBLE} "
            "order by owner_id = ? desc, shared desc, id limit 1",
            [str(name_or_id), owner_id, int(see_all), owner_id],
        )

    def _owned(self, table: str, item_id: int, owner_id: int) -> dict:
        record = self._one(f"select * from {table} where id = ?", [item_id])
        if record is None or record["owner_id"] != owner_id:
            noun = "study" if table == "studies" else table[:-1]
            raise PermissionError(f"no {noun} {item_id} of yours to delete")
        return record

    def set_shared(self, table: str, item_id: int, owner_id: int, shared: bool) -> None:
        """Share an item read-only with everybody (or stop sharing it); owners only. A study's
        runs follow the study in the same transaction: its table is made of their results."""
        assert table in ("datasets", "models", "runs", "studies")  # a table name, never user text
        with self.atomic() as db:
            if db.execute(f"update {table} set shared = ? where id = ? and owner_id = ?",
                          [int(shared), item_id, owner_id]).rowcount != 1:
                noun = "study" if table == "studies" else table[:-1]
                raise PermissionError(f"no {noun} {item_id} of yours to share")
            if table == "studies":
                db.execute("update runs set shared = ? where study_id = ? and owner_id = ?",
                           [int(shared), item_id, owner_id])
