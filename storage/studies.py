"""Studies: a grid of runs stored all or nothing, mixed into ``Storage``."""

from __future__ import annotations



from storage.rows import VISIBLE, utc_now
from storage.schema import LOCAL_USER_ID


class StudyStore:
    """Mixed into ``Storage``; needs its ``db``, ``atomic``, ``_rows``, ``_one``, ``_find`` and ``_owned``."""

    # ---------------------------------------------------------------- studies
    def create_study(self, record: dict, runs: list[dict]) -> tuple[int, list[int]]:
        """Insert a study and queue its runs (each with its "queued" event and ``warnings``, a
        list of texts) in one transaction: all of them or none."""
        record = {"owner_id": LOCAL_USER_ID, **record, "created_at": utc_now()}
        with self.atomic() as db:
            study_id = db["studies"].insert(record).last_pk
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
