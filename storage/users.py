"""Users and failed log-ins (the accounts of issue 17); mixed into ``Storage``.

Passwords arrive here already hashed (engine/workbench/accounts.py hashes with argon2); this module only
stores rows. Usernames are compared case-insensitively, so "Ada" and "ada" are one account.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any


class UserStore:
    """User rows and the log of failed log-ins; needs ``_rows``, ``_one`` and ``atomic``."""

    def add_user(self, name: str, password_hash: str, *, is_admin: bool = False) -> int:
        created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        with self.atomic() as db:
            return db["users"].insert({"name": name, "password_hash": password_hash,
                                       "is_admin": int(is_admin), "disabled": 0,
                                       "created_at": created}).last_pk

    def find_user(self, name_or_id: str | int) -> dict | None:
        if isinstance(name_or_id, int):
            return self._one("select * from users where id = ?", [name_or_id])
        return self._one("select * from users where lower(name) = lower(?)", [str(name_or_id)])

    def list_users(self) -> list[dict]:
        return self._rows("select id, name, is_admin, disabled, created_at, last_login_at, "
                          "password_hash is not null as has_password from users order by id")

    def count_accounts(self) -> int:
        """Users who can log in (the single-user mode's ``local`` owner has no password)."""
        return self.db.execute("select count(*) from users where password_hash is not null").fetchone()[0]

    def update_user(self, user_id: int, **fields: Any) -> None:
        with self.atomic() as db:
            db["users"].update(user_id, fields)

    def record_login_failure(self, username: str, client: str, at: float) -> None:
        with self.atomic() as db:
            db["login_failures"].insert({"username": username.lower(), "client": client, "at": at})

    def login_failures(self, column: str, value: str, since: float) -> tuple[int, float | None]:
        """(failures since ``since``, time of the last one) for one username or one client."""
        assert column in ("username", "client")  # a column name, never user text
        value = value.lower() if column == "username" else value
        row = self.db.execute(f"select count(*), max(at) from login_failures where {column} = ? "
                              "and at >= ?", [value, since]).fetchone()
        return row[0], row[1]

    def clear_login_failures(self, username: str, before: float) -> None:
        """Forget a username's failures (after a good log-in) and everybody's older ones."""
        with self.atomic() as db:
            db.execute("delete from login_failures where username = ? or at < ?",
                       [username.lower(), before])
