"""Row helpers every store shares: JSON columns, timestamps, the visibility rule."""

from __future__ import annotations

import json
from datetime import datetime, timezone

JSON_COLUMNS = {"splits", "labels", "tasks", "settings", "metrics", "report", "before", "after",
                "tags", "grid", "study_cell"}


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# Visible to a viewer: their own items, shared ones, or all (an admin's view; third parameter).
VISIBLE = "(owner_id = ? or shared = 1 or ?)"


def encode_row(record: dict) -> dict:
    return {k: (json.dumps(v) if k in JSON_COLUMNS and v is not None and not isinstance(v, str)
                else v) for k, v in record.items()}


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
