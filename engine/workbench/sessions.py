"""Log-in sessions (issue 27): what keeps a browser logged in across reloads and tabs.

    session_id, code = wb.start_login_session(user["id"], binding=digest_of_xsrf_secret)
    token = wb.redeem_login_code(code, binding=...)    # the server's cookie route, once
    session_id = wb.login_session_id(token)            # a reload or a second tab
    user, why = wb.check_login_session(session_id)     # every page run: None and why when ended
    wb.end_login_session(session_id)                   # log-out

A log-in makes a session and a one-time code (valid ``CODE_TTL_S``); the app's cookie route
trades the code for a random token set as an HttpOnly cookie (ui/session_cookie.py). Only
SHA-256 digests of the token and the code are stored. Sessions expire after
``session_timeout_minutes`` without a page run (sliding) and end at log-out, when an admin
disables the account and when its password changes.
"""

from __future__ import annotations

import hashlib
import secrets
import time

from engine.settings import load_config

CODE_TTL_S = 120      # the browser follows the code at once; a slow machine still makes it
TOUCH_EVERY_S = 15    # a page run moves the idle clock at most this often (one write, not one per run)
ENDED = {
    "idle": "You were logged out after {minutes} minutes without activity.",
    "logged out": "You logged out.",
    "disabled": "Your account was disabled.",
    "password changed": "Your password was changed: log in with the new one.",
}


def digest(secret: str) -> str:
    """The stored form of a token or code. A plain SHA-256 suffices (no salt, no argon2): the
    secrets are 256 random bits from ``secrets.token_urlsafe``, so nobody can guess one back
    from its digest, unlike a password. A leaked database then holds no cookie to replay."""
    return hashlib.sha256(secret.encode()).hexdigest()


class LoginSessionsMixin:
    def start_login_session(self, user_id: int, *, binding: str | None = None,
                            now: float | None = None) -> tuple[int, str]:
        """A new session for ``user_id`` (who just logged in or signed up) and the one-time code
        that turns it into a cookie. ``binding`` (a digest of something only this browser holds)
        must come back with the code, so a code sent to someone else's browser logs nobody in."""
        now = time.time() if now is None else now
        code = secrets.token_urlsafe(32)
        session_id = self.storage.add_login_session(
            int(user_id), digest(code), now + CODE_TTL_S, binding, now, now - self._idle_s())
        return session_id, code

    def redeem_login_code(self, code: str, *, binding: str | None = None,
                          now: float | None = None) -> str | None:
        """The token for the browser's cookie, once per code; None when the code is unknown,
        spent, older than ``CODE_TTL_S`` or comes with another binding."""
        now = time.time() if now is None else now
        token = secrets.token_urlsafe(32)
        found = self.storage.redeem_login_code(digest(code or ""), digest(token), binding, now)
        return token if found is not None else None

    def login_session_id(self, token: str) -> int | None:
        """The session a cookie's token stands for (live or ended), or None."""
        return self.storage.login_session_id(digest(token)) if token else None

    def check_login_session(self, session_id: int, *,
                            now: float | None = None) -> tuple[dict | None, str | None]:
        """(the session's user, None) while it lives, and its idle clock moves; (None, a message
        for the user) once it has ended, idled past the timeout, or its account was disabled."""
        now = time.time() if now is None else now
        session = self.storage.login_session(int(session_id))
        if session is None:
            return None, None
        why = session["ended_why"]
        if why is None and now - session["last_seen_at"] > self._idle_s():
            why = "idle"
        user = self.current_user(session["user_id"]) if why is None else None
        if why is None and user is None:
            why = "disabled"
        if why is not None:
            if session["ended_at"] is None:
                self.storage.end_login_sessions(why, now, session_id=session["id"])
            return None, ENDED.get(why, "You were logged out.").format(
                minutes=load_config().session_timeout_minutes)
        if now - session["last_seen_at"] >= TOUCH_EVERY_S:
            self.storage.touch_login_session(session["id"], now)
        return user, None

    def end_login_session(self, session_id: int, why: str = "logged out") -> None:
        self.storage.end_login_sessions(why, time.time(), session_id=int(session_id))

    def _end_user_sessions(self, user_id: int, why: str, *, keep: int | None = None) -> int:
        """End every session of a user (all tabs, all browsers) but ``keep``."""
        return self.storage.end_login_sessions(why, time.time(), user_id=int(user_id), keep=keep)

    @staticmethod
    def _idle_s() -> float:
        return load_config().session_timeout_minutes * 60.0
