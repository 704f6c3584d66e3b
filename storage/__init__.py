"""Persistence for the workbench: a SQLite database (sqlite-utils) and a file store.

No torch and no streamlit here; the engine is the only caller.
"""

from storage.database import Storage, utc_now
from storage.files import FileStore, safe_name
from storage.schema import LOCAL_USER_ID

__all__ = ["Storage", "FileStore", "safe_name", "utc_now", "LOCAL_USER_ID"]
