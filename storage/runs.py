"""Runs: the queue, claims, heartbeats, stop requests, deletion; mixed into ``Storage``."""

from __future__ import annotations

import time
from typing import Any

from sqlite_utils import Database

from storage.rows import VISIBLE, utc_now
from storage.schema import LOCAL_USER_ID


class RunStore:
    """Mixed into ``Storage``; needs its ``db``, ``atomic``, ``_rows``, ``_one``, ``_find`` and ``_owned``."""

    # ---------------------------------------------------------------- runs
    def create_run(self, record: dict) -> int:
        record = {"owner_id": LOCAL_USER_ID, **record, "status": "queued",
                  "created_at": utc_now(), "step": 0, "stop_requested": 0}
        with self.atomic() as db:
            record["queue_position"] = self._next_queue_position(db)
            record["id"] = db.execute(  # never a deleted run's id (schema m007)
                "select max(coalesce((select max(id) from runs), 0), "
                "coalesce((select max(id) from deleted_runs), 0)) + 1").fetchone()[0]
            return db["runs"].insert(record).last_pk

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
            db["runs"].update(run_id, fields)

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
            db["runs"].update(run_id, fields)

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

    def seconds_outside_steps(self, model_id: int, method: str) -> float | None:
        """Mean seconds a completed run of ``model_id`` with ``method`` spent outside its
        optimizer steps (loading the model, the final scoring, saving): start to finish less
        its ``wall_time_s``; None when no such run has both times."""
        row = self.db.execute(
            "select avg(max(0.0, (julianday(finished_at) - julianday(started_at)) * 86400.0 - wall_time_s)), "
            "count(*) from runs where status = 'completed' and model_id = ? and method = ? and step > 0 "
            "and started_at is not null and finished_at is not null and wall_time_s is not null",
            [model_id, method]).fetchone()
        return float(row[0]) if row and row[1] else None
