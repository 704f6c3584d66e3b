"""Runs: the queue, claims, heartbeats, stop requests, deletion; mixed into ``Storage``."""

from __future__ import annotations

import time
from typing import Any

from sqlite_utils import Database

from storage.rows import VISIBLE, utc_now
from storage.schema import LOCAL_USER_ID

# The order in which workers take queued runs: a fair queue between users (issue 27: alice's
# five runs must not starve bob's one). Runs an admin moved (``queue_pinned``) come first, in
# their positions. The others take turns by owner, round robin: every owner's first queued run,
# then every owner's second, and so on (a pinned run uses up one of its owner's turns, so a
# move never gives an owner extra turns); within a turn the owner served least recently goes
# first (served: the newest heartbeat of any of their runs a worker took; never served counts
# as longest ago), then the earlier submission. An owner's own runs keep their own order
# (``queue_position``: submission, or the owner's own moves). ``place`` is 1 for the next run.
FAIR_ORDER = """
    with served as (
        select owner_id, max(heartbeat_at) as at from runs
        where status != 'queued' and heartbeat_at is not null group by owner_id),
    turns as (
        select id, owner_id, queue_position, queue_pinned, row_number() over (
            partition by owner_id order by queue_pinned desc, queue_position, id) as turn
        from runs where status = 'queued'),
    fair as (
        select t.id, row_number() over (
            order by t.queue_pinned desc, case when t.queue_pinned then t.queue_position end,
                     t.turn, coalesce(served.at, 0), t.queue_position, t.id) as place
        from turns t left join served on served.owner_id = t.owner_id)
"""


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

    def claim_next_run(self, worker: str, run_id: int | None = None, slots: int | None = 1,
                       scope: str | None = None) -> dict | None:
        """Atomically move the next queued run (or ``run_id``) to ``running`` for ``worker``.

        The next run is the first of ``FAIR_ORDER`` (pinned runs, then turns by owner). One
        UPDATE statement does the check and the change, so two workers (the app and a command
        line) can never both claim the same run; it also refuses while ``slots`` runs are
        ``running`` on the same host (whichever processes train them: the app, ``train --wait``,
        ``worker``), so one device never trains more runs at once than the workbench's ``slots``
        setting allows; ``slots=None`` leaves that count to the caller (a Ray task: Ray's own
        resources decide how many runs a machine of its cluster trains). The clock of the claimed
        run stops until it trains (``wall_time_at``). ``scope``: the ``LIKE`` pattern of the
        workers whose runs count against ``slots`` (default: this host's, ``host:%``; one GPU of
        several: ``host:%@cuda:1``, engine/training/slots.py).
        """
        target = "?" if run_id is not None else (
            f"({FAIR_ORDER} select id from fair order by place limit 1)")
        host = scope or f"{worker.split(':', 1)[0]}:%"
        params: list[Any] = [worker, time.time(), utc_now()]
        if run_id is not None:
            params.append(run_id)
        room = ""
        if slots is not None:  # None: no cap on this host (a Ray cluster decides, engine/training/cluster.py)
            # A ``run_alone`` run (it ran out of memory beside others) starts only on an idle
            # host, and nothing starts beside it.
            running_here = "select count(*) from runs where status = 'running' and worker like ?"
            room = (f" and ({running_here}) < ? and (run_alone = 0 or ({running_here}) = 0) "
                    "and not exists (select 1 from runs where status = 'running' and worker like ? "
                    "and run_alone = 1)")
            params += [host, max(1, int(slots)), host, host]
        with self.atomic() as db:
            row = db.execute(
                "update runs set status = 'running', worker = ?, heartbeat_at = ?, "
                "started_at = coalesce(started_at, ?), error = null, wall_time_at = null "
                f"where id = {target} and status = 'queued'{room} returning id",
                params,
            ).fetchone()
        return self.get_run(row[0], owner_id=None) if row else None

    def next_queued_run(self) -> dict | None:
        """The run a worker claims next (the first of ``FAIR_ORDER``), or None."""
        return self._one(f"{FAIR_ORDER} select runs.* from fair join runs on runs.id = fair.id "
                         "order by fair.place limit 1", [])

    def running_on_host(self, host: str) -> list[dict]:
        """Runs ``running`` on ``host`` (whichever process or thread trains them)."""
        return self._rows("select * from runs where status = 'running' and worker like ?", [f"{host}:%"])

    def beat(self, run_id: int, worker: str | None, at: float) -> bool:
        """Record that ``worker`` still trains ``run_id``; False when it no longer holds the claim."""
        with self.atomic() as db:
            return db.execute("update runs set heartbeat_at = ? where id = ? and status = 'running' "
                              "and worker is ?", [at, run_id, worker]).rowcount == 1

    def queued_runs(self, owner_id: int | None = None) -> list[dict]:
        """Queued runs in the order a worker will take them (everybody's: one device)."""
        rows = self._rows(f"{FAIR_ORDER} select runs.* from fair join runs on runs.id = fair.id "
                          "order by fair.place")
        return rows if owner_id is None else [r for r in rows if r["owner_id"] == owner_id]

    @staticmethod
    def _fair_order(db: Database) -> list[int]:
        return [row[0] for row in db.execute(f"{FAIR_ORDER} select id from fair order by place")]

    def requeue_run(self, run_id: int, **fields: Any) -> None:
        """Put a run back at the end of its owner's turns (resume), unpinned."""
        with self.atomic() as db:
            fields = {**fields, "status": "queued", "queue_pinned": 0,
                      "queue_position": self._next_queue_position(db)}
            db["runs"].update(run_id, fields)

    def move_in_queue(self, run_id: int, position: int, *, pin: bool = False) -> list[int]:
        """Move a queued run towards 1-based ``position`` of the queue's order; returns the new
        order (ids, next first).

        ``pin`` (an admin's move): the run goes exactly to ``position`` and it and every run
        ahead of it are pinned there, ahead of the turns by owner, in that order; runs queued
        later take turns behind them, and the pins end as the runs are taken. Without ``pin``
        (an owner's move) the run changes places only with its owner's own unpinned runs, so
        it takes the turn of the own run nearest ``position`` and nobody else's turn moves
        (with one owner, as without accounts, that is exactly ``position``)."""
        with self.atomic() as db:
            order = self._fair_order(db)
            if run_id not in order:
                raise ValueError(f"run {run_id} is not queued")
            runs = {row[0]: (row[1], row[2], row[3]) for row in db.execute(
                "select id, owner_id, queue_pinned, queue_position from runs where status = 'queued'")}
            wanted = max(0, min(position - 1, len(order) - 1))
            others = [queued_id for queued_id in order if queued_id != run_id]
            if pin:
                moved = others[:wanted] + [run_id] + others[wanted:]
                pinned_before = [moved.index(i) for i in order if runs[i][1] and i != run_id]
                pinned = moved[:max([wanted, *pinned_before]) + 1]
                base = db.execute("select coalesce(max(queue_position), 0) from runs").fetchone()[0]
                for offset, pinned_id in enumerate(pinned, start=1):
                    db.execute("update runs set queue_pinned = 1, queue_position = ? where id = ?",
                               [base + offset, pinned_id])
            else:
                owner = runs[run_id][0]
                own = [i for i in others if runs[i][0] == owner and not runs[i][1]]
                ahead = sum(1 for i in others[:wanted] if i in own)
                own.insert(ahead, run_id)
                # The owner's runs swap their places (positions) among themselves only.
                places = sorted(runs[i][2] for i in own)
                for place, own_id in zip(places, own):
                    db.execute("update runs set queue_pinned = 0, queue_position = ? where id = ?",
                               [place, own_id])
            return self._fair_order(db)

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

    def finished_runs_of_model(self, model_id: int, exclude: int | None = None, limit: int = 10) -> list[dict]:
        """The newest completed runs of ``model_id`` (any owner: how fast this machine is),
        newest first; for estimates only, never shown."""
        return self._rows("select * from runs where status = 'completed' and model_id = ? and id is not ? "
                          "and step > 0 order by id desc limit ?", [model_id, exclude, limit])

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
