"""Metric points, stored series and run events, mixed into ``Storage``."""

from __future__ import annotations

from collections.abc import Iterable


from storage.rows import utc_now


class MetricStore:
    """Mixed into ``Storage``; needs its ``db``, ``atomic``, ``_rows``, ``_one``, ``_find`` and ``_owned``."""

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

    def metric_summaries(self, run_id: int, names: Iterable[str]) -> dict[str, dict]:
        """For each named metric the run logged: its value at the first and the last logged
        step, its minimum, maximum and mean, and how many steps logged it."""
        summaries = {}
        for name in names:
            row = self.db.execute(
                "select min(step), max(step), min(value), max(value), avg(value), count(*) "
                "from run_metrics where run_id = ? and name = ?", [run_id, name]).fetchone()
            if not row or not row[5]:
                continue
            at = lambda step: self.db.execute(  # noqa: E731 (one primary-key lookup)
                "select value from run_metrics where run_id = ? and name = ? and step = ?",
                [run_id, name, step]).fetchone()[0]
            summaries[name] = {"first_step": row[0], "last_step": row[1], "first": at(row[0]),
                               "last": at(row[1]), "min": row[2], "max": row[3], "mean": row[4],
                               "steps": row[5]}
        return summaries

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
        row = self._one("select last_step, points from run_series where run_id = ? and name = ?",
                        [run_id, name])
        return {"last_step": row["last_step"], "columns": row["points"]} if row else None

    def store_series(self, run_id: int, name: str, last_step: int, columns: dict) -> None:
        with self.atomic() as db:
            db["run_series"].upsert({"run_id": run_id, "name": name, "last_step": last_step,
                                     "points": columns}, pk=("run_id", "name"))

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
