"""Registered models, mixed into ``Storage``."""

from __future__ import annotations



from storage.rows import VISIBLE, utc_now
from storage.schema import LOCAL_USER_ID


class ModelStore:
    """Mixed into ``Storage``; needs its ``db``, ``atomic``, ``_rows``, ``_one``, ``_find`` and ``_owned``."""

    # ---------------------------------------------------------------- models
    def add_model(self, record: dict) -> int:
        record = {"owner_id": LOCAL_USER_ID, "shared": 0, "is_preset": 0, **record,
                  "created_at": utc_now()}
        with self.atomic() as db:
            return db["models"].insert(record).last_pk

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
