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

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from storage.files import FileStore
from storage.schema import LOCAL_USER_ID, migrations
from storage.users import UserStore

JSON_COLUMNS = {"splits", "labels", "tasks", "settings", "metrics", "report", "before", "after",
                "tags", "grid", "study_cell"}


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# Visible to a viewer: their own items, shared ones, or all (an admin's view; third parameter).
VISIBLE = "(owner_id = ? or shared = 1 or ?)"


class Storage(UserStore):
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
        return [_decode(row) for row in self.db.query(sql, list(params))]

    def _one(self, sql: str, params: Iterable[Any] = ()) -> dict | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    # ---------------------------------------------------------------- datasets
    def add_dataset(self, record: dict, items: list[dict]) -> int:
        """Insert a dataset and all its items in one transaction; returns its id."""
        record = {"owner_id": LOCAL_USER_ID, "shared": 0, "is_demo": 0, **record,
                  "created_at": utc_now(), "num_items": len(items)}
        with self.atomic() as db:
            dataset_id = db["datasets"].insert(_encode(record)).last_pk
            db["dataset_items"].insert_all(
                ({**item, "dataset_id": dataset_id} for item in items), batch_size=500
            )
        return dataset_id

    def find_dataset(self, name_or_id: str | int, owner_id: int = LOCAL_USER_ID, *,
                     see_all: bool = False) -> dict | None:
        return self._find("datasets", name_or_id, owner_id, see_all)

    def list_datasets(self, owner_id: int = LOCAL_USER_ID, *, see_all: bool = False) -> list[dict]:
        return self._rows(f"select * from datasets where {VISIBLE} order by id",
                          [owner_id, int(see_all)])

    def dataset_items(self, dataset_id: int, split: str | None = None,
                      limit: int | None = None, offset: int = 0) -> list[dict]:
        sql, params = "select * from dataset_items where dataset_id = ?", [dataset_id]
        if split is not None:
            sql += " and split = ?"
            params.append(split)
        sql += " order by split, position"
        if limit is not None:
            sql += " limit ? offset ?"
            params += [limit, offset]
        return self._rows(sql, params)

    def count_items(self, dataset_id: int) -> dict[str, int]:
        rows = self.db.execute(
            "select split, count(*) from dataset_items where dataset_id = ? group by split",
            [dataset_id],
        ).fetchall()
        return dict(rows)

    def delete_dataset(self, dataset_id: int, owner_id: int = LOCAL_USER_ID) -> dict:
        """Remove a dataset's rows (runs keep their own copy of its name and version)."""
        record = self._owned("datasets", dataset_id, owner_id)
        with self.atomic() as db:
            db.execute("delete from dataset_items where dataset_id = ?", [dataset_id])
            db.execute("delete from dataset_changes where dataset_id = ?", [dataset_id])
            db.execute("delete from datasets where id = ?", [dataset_id])
        return record

    def search_items(self, dataset_id: int, split: str | None = None, query: str = "",
                     label: str | None = None, limit: int = 50, offset: int = 0) -> tuple[list[dict], int]:
        """One page of items matching a search (text, label or file name) and the total count.

        Paginated in SQL: a page of a 100,000-item dataset reads 50 rows, never the table."""
        where, params = _item_filter(dataset_id, split, query, label)
        total = self.db.execute(f"select count(*) from dataset_items where {where}", params).fetchone()[0]
        rows = self._rows(f"select * from dataset_items where {where} order by split, position "
                          "limit ? offset ?", [*params, limit, offset])
        return rows, total

    def get_item(self, dataset_id: int, item_id: int) -> dict | None:
        return self._one("select * from dataset_items where id = ? and dataset_id = ?", [item_id, dataset_id])

    def change_item(self, dataset_id: int, item_id: int, action: str, fields: dict,
                    new_version: str) -> None:
        """Edit (``fields``) or remove an item, recording before/after, all or nothing."""
        before = self.get_item(dataset_id, item_id)
        with self.atomic() as db:
            if action == "remove":
                db.execute("delete from dataset_items where id = ?", [item_id])
            else:
                db["dataset_items"].update(item_id, fields)
            old_version = db.execute("select version from datasets where id = ?", [dataset_id]).fetchone()[0]
            db.execute("update datasets set version = ?, num_items = (select count(*) from dataset_items "
                       "where dataset_id = ?) where id = ?", [new_version, dataset_id, dataset_id])
            db["dataset_changes"].insert(_encode({
                "dataset_id": dataset_id, "item_id": item_id, "time": utc_now(), "action": action,
                "before": {k: before[k] for k in ("split", "file", "text", "label")},
                "after": fields or None, "version_before": old_version, "version_after": new_version}))

    def dataset_changes(self, dataset_id: int, limit: int = 100) -> list[dict]:
        return self._rows("select * from dataset_changes where dataset_id = ? order by id desc limit ?",
                          [dataset_id, limit])

    def item_fingerprints(self, dataset_id: int) -> Iterator[tuple]:
        """(id, split, file, text, label, content_hash) of every item, in order: a version's input."""
        yield from self.db.execute(
            "select id, split, file, text, label, content_hash from dataset_items where dataset_id = ? "
            "order by split, file, text, label, content_hash", [dataset_id])

    def item_stats(self, dataset_id: int, bucket_s: float) -> dict:
        """Aggregates for the dataset page, computed in SQL (no full-table load)."""
        def grouped(sql: str, params: list) -> list[tuple]:
            return self.db.execute(sql, params).fetchall()

        where = "dataset_id = ?"
        return {
            "splits": dict(grouped(f"select split, count(*) from dataset_items where {where} "
                                   "group by split", [dataset_id])),
            "totals": self._one(f"select count(*) as items, sum(duration_s) as seconds, "
                                f"min(duration_s) as shortest, max(duration_s) as longest "
                                f"from dataset_items where {where}", [dataset_id]),
            "durations": grouped(f"select cast(duration_s / ? as int), count(*) from dataset_items "
                                 f"where {where} and duration_s is not null group by 1 order by 1",
                                 [bucket_s, dataset_id]),
            "labels": grouped(f"select label, split, count(*) from dataset_items where {where} "
                              "and label is not null group by label, split order by label", [dataset_id]),
            "text_words": grouped(f"select length(trim(text)) - length(replace(trim(text), ' ', '')) + 1, "
                                  f"count(*) from dataset_items where {where} and text is not null "
                                  "group by 1 order by 1", [dataset_id]),
            "formats": grouped(f"select sample_rate, channels, count(*) from dataset_items where {where} "
                               "and sample_rate is not null group by 1, 2 order by 3 desc", [dataset_id]),
        }

    # ---------------------------------------------------------------- models
    def add_model(self, record: dict) -> int:
        record = {"owner_id": LOCAL_USER_ID, "shared": 0, "is_preset": 0, **record,
                  "created_at": utc_now()}
        with self.atomic() as db:
            return db["models"].insert(_encode(record)).last_pk

    def find_model(self, name_or_id: str | int, owner_id: int = LOCAL_USER_ID, *,
                   see_all: bool = False) -> dict | None:
        return self._find("models", name_or_id, owner_id, see_all)

    def list_models(self, owner_id: int = LOCAL_USER_ID, *, see_all: bool = False) -> list[dict]:
        return self._rows(f"select * from models where {VISIBLE} order by id",
                          [owner_id, int(see_all)])

    def delete_model(self, model_id: int, owner_id: int = LOCAL_USER_ID) -> dict:
        record = self._owned("models", model_id, owner_id)
        with self.atomic() as db:
            db.execute("delete from models where id = ?", [model_id])
        return record

    def _find(self, table: str, name_or_id: str | int, owner_id: int, see_all: bool = False) -> dict | None:
        if isinstance(name_or_id, int) or str(name_or_id).isdigit():
            found = self._one(f"select * from {table} where id = ? and {VISIBLE}",
                              [int(name_or_id), owner_id, int(see_all)])
            if found:
                return found
        if not str(name_or_id).isascii() and not _is_utf8(str(name_or_id)):
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

    # ---------------------------------------------------------------- runs
    def create_run(self, record: dict) -> int:
        record = {"owner_id": LOCAL_USER_ID, **record, "status": "queued",
                  "created_at": utc_now(), "step": 0, "stop_requested": 0}
        with self.atomic() as db:
            record["queue_position"] = self._next_queue_position(db)
            record["id"] = db.execute(  # never a deleted run's id (schema m007)
                "select max(coalesce((select max(id) from runs), 0), "
                "coalesce((select max(id) from deleted_runs), 0)) + 1").fetchone()[0]
            return db["runs"].insert(_encode(record)).last_pk

    # ---------------------------------------------------------------- studies
    def create_study(self, record: dict, runs: list[dict]) -> tuple[int, list[int]]:
        """Insert a study and queue its runs (each with its "queued" event and ``warnings``, a
        list of texts) in one transaction: all of them or none."""
        record = {"owner_id": LOCAL_USER_ID, **record, "created_at": utc_now()}
        with self.atomic() as db:
            study_id = db["studies"].insert(_encode(record)).last_pk
            run_ids = []
            for run in runs:
                run = dict(run)
                warnings = run.pop("warnings", [])
                run_id = self.create_run({"owner_id": record["owner_id"], **run, "study_id": study_id})
                for message, level in [("queued", "info"), *((w, "warning") for w in warnings)]:
                    self.add_event(run_id, message, level)
                run_ids.append(run_id)
        return study_id, run_ids

    def list_studies(self, owner_id: int = LOCAL_USER_ID, *, see_all: bool = False) -> list[dict]:
        return self._rows(f"select * from studies where {VISIBLE} order by id desc",
                          [owner_id, int(see_all)])

    def get_study(self, study_id: int, owner_id: int = LOCAL_USER_ID, *,
                  see_all: bool = False) -> dict | None:
        return self._one(f"select * from studies where id = ? and {VISIBLE}",
                         [study_id, owner_id, int(see_all)])

    def study_runs(self, study_id: int, owner_id: int = LOCAL_USER_ID, *,
                   see_all: bool = False) -> list[dict]:
        """The study's runs this viewer may read, in the order they were queued (all of them
        for its owner; sharing a study shares its runs, ``set_shared``)."""
        return self._rows(f"select * from runs where study_id = ? and {VISIBLE} order by id",
                          [study_id, owner_id, int(see_all)])

    def delete_study(self, study_id: int, owner_id: int = LOCAL_USER_ID) -> list[int] | None:
        """Remove a study and every one of its runs' rows in one transaction; returns the run ids
        removed, or None (nothing removed) while one of them is queued or running. Statuses are
        read under the write lock, so no worker claims a run between the check and the delete."""
        self._owned("studies", study_id, owner_id)
        with self.atomic() as db:
            rows = db.execute("select id, status from runs where study_id = ?", [study_id]).fetchall()
            if any(status in ("queued", "running") for _, status in rows):
                return None
            for run_id, _ in rows:
                self._delete_run_rows(db, run_id)
            db.execute("delete from studies where id = ?", [study_id])
        return [run_id for run_id, _ in rows]

    @staticmethod
    def _next_queue_position(db: Database) -> int:
        return db.execute("select coalesce(max(queue_position), 0) + 1 from runs").fetchone()[0]

    def get_run(self, run_id: int, owner_id: int | None = LOCAL_USER_ID, *,
                see_all: bool = False) -> dict | None:
        if owner_id is None:  # the worker reads any run it was given
            return self._one("select * from runs where id = ?", [run_id])
        return self._one(f"select * from runs where id = ? and {VISIBLE}",
                         [run_id, owner_id, int(see_all)])

    def list_runs(self, owner_id: int = LOCAL_USER_ID, limit: int | None = None, *,
                  see_all: bool = False) -> list[dict]:
        sql = f"select * from runs where {VISIBLE} order by id desc"
        params: list[Any] = [owner_id, int(see_all)]
        if limit is not None:
            sql += " limit ?"
            params.append(limit)
        return self._rows(sql, params)

    def update_run(self, run_id: int, **fields: Any) -> None:
        with self.atomic() as db:
            db["runs"].update(run_id, _encode(fields))

    def claim_next_run(self, worker: str, run_id: int | None = None) -> dict | None:
        """Atomically move the first queued run (or ``run_id``) to ``running`` for ``worker``.

        The queue is ordered by ``queue_position``, then id. One UPDATE statement does the
        check and the change, so two workers (the app and a command line) can never both claim
        the same run; it also refuses while another run is ``running`` on the same host, so
        the app and a ``train --wait`` never train two runs on one device at once.
        """
        target = "?" if run_id is not None else (
            "(select id from runs where status = 'queued' order by queue_position, id limit 1)")
        host = worker.split(":", 1)[0]
        params: list[Any] = [worker, time.time(), utc_now()]
        if run_id is not None:
            params.append(run_id)
        params.append(f"{host}:%")
        with self.atomic() as db:
            row = db.execute(
                "update runs set status = 'running', worker = ?, heartbeat_at = ?, "
                "started_at = coalesce(started_at, ?), error = null "
                f"where id = {target} and status = 'queued' and not exists ("
                "select 1 from runs where status = 'running' and worker like ?) returning id",
                params,
            ).fetchone()
        return self.get_run(row[0], owner_id=None) if row else None

    def beat(self, run_id: int, worker: str | None, at: float) -> bool:
        """Record that ``worker`` still trains ``run_id``; False when it no longer holds the claim."""
        with self.atomic() as db:
            return db.execute("update runs set heartbeat_at = ? where id = ? and status = 'running' "
                              "and worker is ?", [at, run_id, worker]).rowcount == 1

    def queued_runs(self, owner_id: int | None = None) -> list[dict]:
        """Queued runs in the order a worker will take them (everybody's: one device)."""
        rows = self._rows("select * from runs where status = 'queued' order by queue_position, id")
        return rows if owner_id is None else [r for r in rows if r["owner_id"] == owner_id]

    def requeue_run(self, run_id: int, **fields: Any) -> None:
        """Put a run back at the end of the queue (resume)."""
        with self.atomic() as db:
            fields = {**fields, "status": "queued",
                      "queue_position": self._next_queue_position(db)}
            db["runs"].update(run_id, _encode(fields))

    def move_in_queue(self, run_id: int, position: int) -> list[int]:
        """Move a queued run to 1-based ``position`` among queued runs; returns the new order."""
        with self.atomic() as db:
            order = [row[0] for row in db.execute(
                "select id from runs where status = 'queued' order by queue_position, id")]
            if run_id not in order:
                raise ValueError(f"run {run_id} is not queued")
            order.remove(run_id)
            order.insert(max(0, min(position - 1, len(order))), run_id)
            # Renumber the queued runs after every non-queued position, so the order is total.
            base = db.execute("select coalesce(max(queue_position), 0) from runs "
                              "where status != 'queued'").fetchone()[0]
            for offset, queued_id in enumerate(order, start=1):
                db.execute("update runs set queue_position = ? where id = ?", [base + offset, queued_id])
        return order

    def delete_run(self, run_id: int, owner_id: int = LOCAL_USER_ID) -> bool:
        """Remove a finished run's rows (record, metrics, log, display series); False, and
        nothing removed, when it is queued or running. The status is read under the write lock,
        so a worker cannot claim the run between the check and the delete."""
        self._owned("runs", run_id, owner_id)
        with self.atomic() as db:
            status = db.execute("select status from runs where id = ?", [run_id]).fetchone()[0]
            if status in ("queued", "running"):
                return False
            self._delete_run_rows(db, run_id)
        return True

    @staticmethod
    def _delete_run_rows(db: Database, run_id: int) -> None:
        for table in ("run_metrics", "run_events", "run_series"):
            db.execute(f"delete from {table} where run_id = ?", [run_id])
        db.execute("delete from runs where id = ?", [run_id])
        db.execute("insert or ignore into deleted_runs (id) values (?)", [run_id])

    def request_stop(self, run_id: int) -> None:
        with self.atomic() as db:
            db.execute("update runs set stop_requested = 1 where id = ?", [run_id])

    def stop_requested(self, run_id: int) -> bool:
        row = self.db.execute("select stop_requested from runs where id = ?", [run_id]).fetchone()
        return bool(row and row[0])

    def runs_with_status(self, *statuses: str) -> list[dict]:
        marks = ",".join("?" * len(statuses))
        return self._rows(f"select * from runs where status in ({marks}) order by id",
                          list(statuses))

    def seconds_per_step(self, model_id: int, method: str) -> float | None:
        """Wall seconds per step over the completed runs of ``model_id`` with ``method`` (None
        when there are none): how fast this machine trains that combination."""
        row = self.db.execute(
            "select sum(wall_time_s), sum(step) from runs where status = 'completed' and "
            "model_id = ? and method = ? and step > 0", [model_id, method]).fetchone()
        return row[0] / row[1] if row and row[1] else None

    # ---------------------------------------------------------------- metrics and events
    def add_metrics(self, run_id: int, step: int, wall_time: float, values: dict[str, float]) -> None:
        rows = [{"run_id": run_id, "step": step, "wall_time": wall_time, "name": name,
                 "value": float(value)} for name, value in values.items() if value is not None]
        with self.atomic() as db:
            # Upsert: a resumed run that replays a step replaces the point instead of duplicating it.
            db["run_metrics"].upsert_all(rows, pk=("run_id", "name", "step"))

    def delete_metrics_after(self, run_id: int, step: int) -> None:
        with self.atomic() as db:
            db.execute("delete from run_metrics where run_id = ? and step > ?", [run_id, step])

    def metrics(self, run_id: int, names: Iterable[str] | None = None) -> list[dict]:
        sql, params = "select * from run_metrics where run_id = ?", [run_id]
        if names is not None:
            names = list(names)
            sql += f" and name in ({','.join('?' * len(names))})"
            params += names
        return self._rows(sql + " order by step, name", params)

    def metric_means(self, run_id: int, names: Iterable[str]) -> dict[str, float]:
        """The mean of each named metric the run logged (names it never logged are absent)."""
        names = list(names)
        rows = self.db.execute(
            f"select name, avg(value) from run_metrics where run_id = ? and name in "
            f"({','.join('?' * len(names))}) group by name", [run_id, *names]).fetchall()
        return dict(rows)

    def latest_metrics(self, run_id: int, names: Iterable[str]) -> dict[str, float]:
        """The value at the highest step of each named metric (names never logged are absent).

        One primary-key lookup per name, so a 100,000-step run answers as fast as a short one."""
        found = {}
        for name in names:
            row = self.db.execute("select value from run_metrics where run_id = ? and name = ? "
                                  "order by step desc limit 1", [run_id, name]).fetchone()
            if row is not None:
                found[name] = row[0]
        return found

    def metric_series(self, run_id: int, name: str, from_step: int = 0) -> dict[str, list]:
        """One metric of one run as three columns in step order, from ``from_step`` on (the
        primary key's index serves this query, so it reads only the rows it returns)."""
        rows = self.db.execute(
            "select step, wall_time, value from run_metrics where run_id = ? and name = ? "
            "and step >= ? order by step", [run_id, name, from_step]).fetchall()
        steps, walls, values = (list(column) for column in zip(*rows)) if rows else ([], [], [])
        return {"step": steps, "wall_time": walls, "value": values}

    def stored_series(self, run_id: int, name: str) -> dict | None:
        row = self.db.execute("select last_step, points from run_series where run_id = ? and name = ?",
                              [run_id, name]).fetchone()
        return {"last_step": row[0], "columns": json.loads(row[1])} if row else None

    def store_series(self, run_id: int, name: str, last_step: int, columns: dict) -> None:
        with self.atomic() as db:
            db["run_series"].upsert({"run_id": run_id, "name": name, "last_step": last_step,
                                     "points": json.dumps(columns)}, pk=("run_id", "name"))

    def stored_series_names(self, run_id: int, last_step: int) -> list[str] | None:
        """The metric names stored for this run at ``last_step``, or None when not (yet) stored."""
        rows = self.db.execute("select name, last_step from run_series where run_id = ? order by name",
                               [run_id]).fetchall()
        if not rows or any(step != last_step for _, step in rows):
            return None
        return [name for name, _ in rows]

    def metric_names(self, run_id: int) -> list[str]:
        """The run's metric names, sorted: one index seek per name (a skip scan written out),
        where ``select distinct`` would read every row of a long run."""
        return [row[0] for row in self.db.execute(
            "with recursive names(name) as ("
            " select min(name) from run_metrics where run_id = :run"
            " union all"
            " select (select min(name) from run_metrics where run_id = :run and name > names.name)"
            " from names where names.name is not null) "
            "select name from names where name is not null", {"run": run_id})]

    def add_event(self, run_id: int, message: str, level: str = "info") -> None:
        with self.atomic() as db:
            db["run_events"].insert(
                {"run_id": run_id, "time": utc_now(), "level": level, "message": message})

    def events(self, run_id: int, limit: int = 200) -> list[dict]:
        rows = self._rows(
            "select * from run_events where run_id = ? order by id desc limit ?", [run_id, limit])
        return rows[::-1]


def _item_filter(dataset_id: int, split: str | None, query: str, label: str | None) -> tuple[str, list]:
    where, params = ["dataset_id = ?"], [dataset_id]
    if split:
        where.append("split = ?")
        params.append(split)
    if label is not None:
        where.append("label = ?")
        params.append(label)
    if query.strip():
        pattern = "%" + query.strip().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        where.append("(text like ? escape '\\' or label like ? escape '\\' or source_name like ? "
                     "escape '\\' or file like ? escape '\\')")
        params += [pattern] * 4
    return " and ".join(where), params


def _encode(record: dict) -> dict:
    return {k: (json.dumps(v) if k in JSON_COLUMNS and v is not None and not isinstance(v, str)
                else v) for k, v in record.items()}


def _decode(row: dict) -> dict:
    row = dict(row)
    for key in JSON_COLUMNS & row.keys():
        if isinstance(row[key], str):
            row[key] = json.loads(row[key])
    return row


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
