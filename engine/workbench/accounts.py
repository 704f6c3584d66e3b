"""Accounts: sign-up, log-in with slow-down, admin actions, and the per-user view of the facade.

    wb = Workbench()
    user = wb.sign_up("ada", "a long passphrase")       # the first account becomes the admin
    wb.for_user(user).add_user("bob", "another passphrase")  # an admin makes one for bob
    user = wb.log_in("ada", "a long passphrase", client="203.0.113.7")
    mine = wb.for_user(user)                            # every call scoped to ada's items

Passwords are hashed with argon2id (argon2-cffi's ``PasswordHasher`` defaults); only the hash
is stored. Repeated failed log-ins are slowed per username and per client: after a few free
failures within ``FAILURE_WINDOW_S``, each further attempt must wait twice as long as the last
(up to ``MAX_DELAY_S``) and is refused without checking the password until then.
"""

from __future__ import annotations

import copy
import math
import re
import time

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from engine.errors import AuthError, NotFoundError
from engine.settings import load_config
from storage import LOCAL_USER_ID

MIN_PASSWORD_CHARS = 10
USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,31}$")
RESERVED_NAMES = {"local", "admin", "root", "everyone"}
# Hand-written rather than a library (zxcvbn is not a dependency): NIST SP 800-63B asks for
# length and a check against common passwords, not composition rules; this is that, small.
COMMON_PASSWORDS = {"password", "password1", "password12", "password123", "1234567890",
                    "qwertyuiop", "letmein123", "iloveyou12", "administrator", "0123456789",
                    "abcdefghij", "passw0rd123", "welcome123", "qwerty1234", "1q2w3e4r5t"}
FREE_FAILURES_PER_USER = 3       # failures before a username is slowed down
FREE_FAILURES_PER_CLIENT = 20    # a class behind one address shares this one
FAILURE_WINDOW_S = 15 * 60       # failures older than this are forgotten
MAX_DELAY_S = 300

_hasher = PasswordHasher()
# Verified against when the username does not exist, so a wrong name costs as long as a wrong
# password and the answer's timing does not tell which names exist.
_DUMMY_HASH = _hasher.hash("not a real password, only for timing")


# Each rule a new password must meet: (the rule as the sign-up form states it before anyone
# submits, the check, the refusal). ``password_problem`` applies them and ``password_rules``
# lists them, so what the page promises is what sign-up checks.
PASSWORD_RULES = (
    (f"at least {MIN_PASSWORD_CHARS} characters (a few words you will remember make a good one)",
     lambda password, username: len(password) >= MIN_PASSWORD_CHARS,
     f"the password needs at least {MIN_PASSWORD_CHARS} characters (a few words make a good one)"),
    ("not a common password, nor a few characters repeated",
     lambda password, username: password.lower() not in COMMON_PASSWORDS and len(set(password)) >= 4,
     "that password is too easy to guess; choose a longer or less common one"),
    ("not containing the username",
     lambda password, username: not username or username.lower() not in password.lower(),
     "the password must not contain the username"),
)


def password_rules() -> list[str]:
    """The rules of ``password_problem`` in words, for a form to show before it is submitted."""
    return [rule for rule, _, _ in PASSWORD_RULES]


def password_problem(password: str, username: str = "") -> str | None:
    """What is wrong with a new password, or None (``PASSWORD_RULES``): at least 10
    characters, not a common password, not one character repeated, not the username."""
    return next((refusal for _, holds, refusal in PASSWORD_RULES if not holds(password, username)), None)


def username_problem(name: str) -> str | None:
    if not USERNAME.match(name or ""):
        return ("a username has 2 to 32 letters, digits, dots, dashes or underscores and starts "
                "with a letter or digit")
    if name.lower() in RESERVED_NAMES:
        return f"{name!r} is reserved; choose another username"
    return None


def slow_down_delay(failures: int, free: int) -> float:
    """Seconds a caller must wait after its last failure: 0 for the first ``free``, then 1, 2,
    4, ... up to ``MAX_DELAY_S``."""
    return 0.0 if failures < free else float(min(2 ** (failures - free), MAX_DELAY_S))


class AccountsMixin:
    # ------------------------------------------------------------------ the per-user view
    def for_user(self, user: dict | str | int):
        """This workbench as ``user`` sees it: the same storage, worker and caches; every call
        scoped to the user's own items and shared ones (an admin sees everybody's)."""
        record = user if isinstance(user, dict) else self.storage.find_user(user)
        if record is None:
            raise NotFoundError(f"no user {user!r}")
        if record.get("disabled"):
            raise AuthError(f"the account {record['name']!r} is disabled; ask an admin")
        view = copy.copy(self)
        view.owner_id = record["id"]
        view.see_all = bool(record["is_admin"]) and record["id"] != LOCAL_USER_ID
        view.user = {k: record[k] for k in ("id", "name", "is_admin")}
        return view

    @property
    def is_admin(self) -> bool:
        user = getattr(self, "user", None)
        return bool(user and user["is_admin"])

    # ------------------------------------------------------------------ sign-up and log-in
    def sign_up(self, name: str, password: str) -> dict:
        """Make your own account (the log-in page). The first account (besides the single-user
        ``local`` owner) is the admin; after it, with ``signup = "admin"`` (LIM_SIGNUP), only an
        admin makes accounts (``add_user``)."""
        if load_config().signup == "admin" and self.storage.count_accounts() > 0:
            raise AuthError("accounts here are made by an admin; ask one for yours")
        return self._create_account(name, password)

    def add_user(self, name: str, password: str, *, is_admin: bool = False) -> dict:
        """An account made for someone by an admin (or by the command line of the machine that
        holds the data home, whatever ``signup`` says)."""
        self._require_admin()
        return self._create_account(name, password, is_admin=is_admin)

    def _create_account(self, name: str, password: str, *, is_admin: bool = False) -> dict:
        name = (name or "").strip()
        problem = username_problem(name) or password_problem(password, name)
        if problem:
            raise AuthError(problem)
        if self.storage.find_user(name) is not None:
            raise AuthError(f"the username {name!r} is taken; choose another")
        first = self.storage.count_accounts() == 0
        user_id = self.storage.add_user(name, _hasher.hash(password), is_admin=is_admin or first)
        return self._public(self.storage.find_user(user_id))

    def log_in(self, name: str, password: str, *, client: str = "unknown",
               now: float | None = None) -> dict:
        """The user's record when the password matches; ``AuthError`` otherwise (the same
        message for an unknown name and a wrong password), or while slowed down."""
        now = time.time() if now is None else now
        name = (name or "").strip()
        since = now - FAILURE_WINDOW_S
        for column, value, free, who in (("username", name, FREE_FAILURES_PER_USER, f"for {name!r}"),
                                         ("client", client, FREE_FAILURES_PER_CLIENT, "from this address")):
            failures, last = self.storage.login_failures(column, value, since)
            wait = (last or now) + slow_down_delay(failures, free) - now
            if wait > 0:
                raise AuthError(f"too many failed log-ins {who}; try again in {math.ceil(wait)} s")
        user = self.storage.find_user(name) if name else None
        if not _verify(user["password_hash"] if user and user["password_hash"] else _DUMMY_HASH, password) \
                or user is None or not user["password_hash"]:
            self.storage.record_login_failure(name, client, now)
            raise AuthError("wrong username or password")
        if user["disabled"]:
            raise AuthError(f"the account {user['name']!r} is disabled; ask an admin")
        self.storage.clear_login_failures(user["name"], before=since)
        fields = {"last_login_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}
        if _hasher.check_needs_rehash(user["password_hash"]):  # argon2 parameters moved on
            fields["password_hash"] = _hasher.hash(password)
        self.storage.update_user(user["id"], **fields)
        return self._public(user)

    def current_user(self, user_id: int) -> dict | None:
        """A logged-in session's user as stored now (None when gone or disabled)."""
        user = self.storage.find_user(int(user_id))
        return None if user is None or user["disabled"] else self._public(user)

    # ------------------------------------------------------------------ sharing
    def share(self, kind: str, item: str | int, shared: bool = True) -> None:
        """Share one of your datasets, models, runs or studies read-only with everybody (or
        stop). A study's runs are shared (or not) with it."""
        getter = {"dataset": self.get_dataset, "model": self.get_model, "run": self.get_run,
                  "study": self.get_study}.get(kind)
        if getter is None:
            raise NotFoundError(f"cannot share a {kind!r}; share a dataset, model, run or study")
        record = getter(item)
        if record["owner_id"] != self.owner_id:
            raise AuthError(f"{kind} {record.get('name') or record['id']} is another user's; only "
                            "its owner can share it")
        table = "studies" if kind == "study" else f"{kind}s"
        self.storage.set_shared(table, record["id"], self.owner_id, shared)

    def _owner_name(self, record: dict) -> str:
        user = self.storage.find_user(int(record["owner_id"]))
        return user["name"] if user else "?"

    # ------------------------------------------------------------------ admin
    def list_users(self) -> list[dict]:
        self._require_admin()
        return self.storage.list_users()

    def set_user_disabled(self, name: str, disabled: bool = True) -> dict:
        """Disable (or enable) an account; its log-in sessions end (every tab says so at its
        next page run) and its items stay."""
        self._require_admin()
        user = self._user(name)
        if user["id"] == self.owner_id and disabled:
            raise AuthError("you cannot disable your own account")
        self.storage.update_user(user["id"], disabled=int(disabled))
        if disabled:
            self._end_user_sessions(user["id"], "disabled")
        return self._public(self.storage.find_user(user["id"]))

    def reset_password(self, name: str, new_password: str, *, keep_session: int | None = None) -> None:
        """Set a user's password (admins; or anyone for their own account). The user's log-in
        sessions end, but ``keep_session`` (the tab where you changed your own)."""
        user = self._user(name)
        if user["id"] != self.owner_id:
            self._require_admin()
        problem = password_problem(new_password, user["name"])
        if problem:
            raise AuthError(problem)
        self.storage.update_user(user["id"], password_hash=_hasher.hash(new_password))
        self._end_user_sessions(user["id"], "password changed", keep=keep_session)

    def set_admin(self, name: str, is_admin: bool = True) -> None:
        self._require_admin()
        self.storage.update_user(self._user(name)["id"], is_admin=int(is_admin))

    def _require_admin(self) -> None:
        # Single-user mode's local owner (no accounts) administers itself too.
        if not (self.is_admin or self.owner_id == LOCAL_USER_ID):
            raise AuthError("only an admin can do that")

    def _user(self, name: str) -> dict:
        user = self.storage.find_user(name)
        if user is None or user["id"] == LOCAL_USER_ID:
            raise NotFoundError(f"no user {name!r}")
        return user

    @staticmethod
    def _public(user: dict) -> dict:
        """A user record without the password hash."""
        return {k: v for k, v in user.items() if k != "password_hash"}


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False
