"""Row helpers every store shares: JSON columns, timestamps, the visibility rule.

JSON on the way in is sqlite-utils' job: ``insert``/``update``/``upsert`` store a dict, list or
tuple value as JSON text (``json.dumps(value, default=repr, ensure_ascii=False)``), so stores
pass records as they are. On the way out SQLite gives text back, so ``decode_row`` parses the
columns named in ``JSON_COLUMNS``, the one list of them. Rows written before (by ``json.dumps``
with its defaults: ``ensure_ascii=True``) hold ``\\u00e9`` escapes where new rows hold ``é``;
``json.loads`` reads both alike.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

# Every column stored as JSON text, by name (a name means the same in every table):
# datasets splits, labels, report; dataset_changes before, after; models tasks; runs settings,
# metrics, tags, study_cell; studies grid, settings; run_series points.
JSON_COLUMNS = frozenset({"splits", "labels", "tasks", "settings", "metrics", "report", "before",
                          "after", "tags", "grid", "study_cell", "points"})


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# Visible to a viewer: their own items, shared ones, or all (an admin's view; third parameter).
VISIBLE = "(owner_id = ? or shared = 1 or ?)"


def decode_row(row: dict) -> dict:
    row = dict(row)
    for key in JSON_COLUMNS & row.keys():
        if isinstance(row[key], str):
            row[key] = json.loads(row[key])
    return row


def is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
