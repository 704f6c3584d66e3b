"""Datasets and their items, mixed into ``Storage``."""

from __future__ import annotations

from collections.abc import Iterator

from storage.rows import VISIBLE, utc_now
from storage.schema import LOCAL_USER_ID


class DatasetStore:
    """Mixed into ``Storage``; needs its ``db``, ``atomic``, ``_rows``, ``_one``, ``_find`` and ``_owned``."""

    # ---------------------------------------------------------------- datasets
    def add_dataset(self, record: dict, items: list[dict]) -> int:
        """Insert a dataset and all its items in one transaction; returns its id."""
        record = {"owner_id": LOCAL_USER_ID, "shared": 0, "is_demo": 0, **record,
                  "created_at": utc_now(), "num_items": len(items)}
        with self.atomic() as db:
            dataset_id = db["datasets"].insert(record).last_pk
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
            db["dataset_changes"].insert({
                "dataset_id": dataset_id, "item_id": item_id, "time": utc_now(), "action": action,
                "before": {k: before[k] for k in ("split", "file", "text", "label")},
                "after": fields or None, "version_before": old_version, "version_after": new_version})

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
