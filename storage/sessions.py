"""Log-in sessions (issue 27); mixed into ``Storage``.

A row is one log-in: the browser's cookie carries a random token whose digest is
``token_hash``; until the cookie is set, a one-time code (``code_hash``, valid until
``code_until``) stands for it. Secrets arrive here already digested (engine/workbench/sessions.py);
this module only stores rows. Ended sessions are kept a day, so a tab still open can say why
it was logged out, then removed.
"""

from __future__ import annotations

KEEP_ENDED_S = 24 * 3600


class LoginSessionStore:
    """Rows of ``login_sessions``; needs ``_one``, ``db`` and ``atomic``."""

    def add_login_session(self, user_id: int, code_hash: str, code_until: float,
                          binding: str | None, now: float, idle_before: float) -> int:
        """A new session of ``user_id`` waiting for its cookie; old rows are cleared on the way
        (ended a day ago, idle past ``idle_before``, or a code never used)."""
        with self.atomic() as db:
            db.execute("delete from login_sessions where ended_at < ? or last_seen_at < ? or "
                       "(token_hash is null and code_until < ?)",
                       [now - KEEP_ENDED_S, idle_before - KEEP_ENDED_S, now - KEEP_ENDED_S])
            return db["login_sessions"].insert({
                "user_id": user_id, "code_hash": code_hash, "code_until": code_until,
                "binding": binding, "created_at": now, "last_seen_at": now}).last_pk

    def redeem_login_code(self, code_hash: str, token_hash: str, binding: str | None,
                          now: float) -> int | None:
        """Give the session named by a live one-time code its token (once: the code is spent,
        whatever the outcome); None when the code is unknown, spent, late, or from another
        browser (its ``binding`` differs)."""
        with self.atomic() as db:
            row = db.execute("select id, code_until, binding from login_sessions where code_hash = ? "
                             "and ended_at is null", [code_hash]).fetchone()
            if row is None:
                return None
            session_id, code_until, expected = row
            good = code_until >= now and (expected is None or expected == binding)
            db.execute("update login_sessions set code_hash = null, token_hash = ?, last_seen_at = "
                       "max(last_seen_at, ?) where id = ?", [token_hash if good else None, now, session_id])
            return session_id if good else None

    def login_session(self, session_id: int) -> dict | None:
        return self._one("select * from login_sessions where id = ?", [session_id])

    def login_session_id(self, token_hash: str) -> int | None:
        row = self.db.execute("select id from login_sessions where token_hash = ?",
                              [token_hash]).fetchone()
        return row[0] if row else None

    def touch_login_session(self, session_id: int, now: float) -> None:
        with self.atomic() as db:
            db.execute("update login_sessions set last_seen_at = ? where id = ? and ended_at is null",
                       [now, session_id])

    def end_login_sessions(self, why: str, now: float, *, session_id: int | None = None,
                           user_id: int | None = None, keep: int | None = None) -> int:
        """End one session, or every live one of a user (but ``keep``); returns how many. The
        token's digest stays (a day) so a reload can say why; an unused code is spent."""
        assert (session_id is None) != (user_id is None)
        column, value = ("id", session_id) if session_id is not None else ("user_id", user_id)
        with self.atomic() as db:
            return db.execute(
                f"update login_sessions set ended_at = ?, ended_why = ?, code_hash = null "
                f"where {column} = ? and ended_at is null and id != ?",
                [now, why, value, -1 if keep is None else keep]).rowcount
