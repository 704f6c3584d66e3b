"""Log-in sessions (issue 27): the one-time code, the cookie's token (stored only as a digest),
the sliding idle expiry, and the ends: log-out, an admin's disable, a password change."""

from __future__ import annotations

import hashlib
import time

import pytest

from engine.workbench.sessions import CODE_TTL_S, TOUCH_EVERY_S

PASSWORD = "correct horse battery"
T0 = 1_800_000_000.0


@pytest.fixture
def ada_bob(workbench):
    ada = workbench.sign_up("ada", PASSWORD)  # the admin
    bob = workbench.sign_up("bob", "staple gun sunrise")
    return ada, bob


def cookie_for(workbench, user, now=T0, binding="this browser"):
    """(session id, token) as a log-in and the cookie route make them (``now=None``: now)."""
    now = time.time() if now is None else now
    session_id, code = workbench.start_login_session(user["id"], binding=binding, now=now)
    token = workbench.redeem_login_code(code, binding=binding, now=now + 1)
    assert token is not None
    return session_id, token


def test_a_code_becomes_a_token_once_and_only_digests_are_stored(workbench, ada_bob):
    _, bob = ada_bob
    session_id, code = workbench.start_login_session(bob["id"], binding="b", now=T0)
    token = workbench.redeem_login_code(code, binding="b", now=T0 + 1)
    assert len(token) >= 43 and token != code  # 32 random bytes, base64url
    assert workbench.redeem_login_code(code, binding="b", now=T0 + 2) is None  # spent
    assert workbench.login_session_id(token) == session_id
    assert workbench.check_login_session(session_id, now=T0 + 2) == (workbench.current_user(bob["id"]), None)
    stored = " ".join(str(v) for row in workbench.storage.db["login_sessions"].rows for v in row.values())
    assert token not in stored and code not in stored
    assert hashlib.sha256(token.encode()).hexdigest() in stored
    assert workbench.login_session_id("a guessed token") is None
    assert workbench.login_session_id("") is None


def test_a_late_code_or_one_from_another_browser_gives_no_token(workbench, ada_bob):
    _, bob = ada_bob
    _, late = workbench.start_login_session(bob["id"], binding="b", now=T0)
    assert workbench.redeem_login_code(late, binding="b", now=T0 + CODE_TTL_S + 1) is None
    _, stolen = workbench.start_login_session(bob["id"], binding="bob's browser", now=T0)
    assert workbench.redeem_login_code(stolen, binding="another browser", now=T0 + 1) is None
    assert workbench.redeem_login_code(stolen, binding="bob's browser", now=T0 + 2) is None  # spent by the try
    assert workbench.redeem_login_code("not a code", now=T0) is None


def test_the_idle_expiry_slides_with_use(workbench, ada_bob, monkeypatch):
    monkeypatch.setenv("LIM_SESSION_TIMEOUT_MINUTES", "10")
    _, bob = ada_bob
    session_id, token = cookie_for(workbench, bob)
    for minute in (9, 18, 27):  # a page run every 9 minutes keeps it alive for 27
        user, why = workbench.check_login_session(session_id, now=T0 + minute * 60)
        assert user["name"] == "bob" and why is None
    user, why = workbench.check_login_session(session_id, now=T0 + 38 * 60)  # 11 idle minutes
    assert user is None and why == "You were logged out after 10 minutes without activity."
    # Ended for good: using it again, or the cookie in a new tab, does not bring it back.
    assert workbench.check_login_session(session_id, now=T0 + 38 * 60 + 1)[0] is None
    assert workbench.check_login_session(workbench.login_session_id(token), now=T0 + 38 * 60 + 2)[0] is None


def test_a_page_run_writes_the_idle_clock_at_most_every_few_seconds(workbench, ada_bob):
    _, bob = ada_bob
    session_id, _ = cookie_for(workbench, bob)
    workbench.check_login_session(session_id, now=T0 + TOUCH_EVERY_S - 1)
    assert workbench.storage.login_session(session_id)["last_seen_at"] == T0 + 1  # redeemed then
    workbench.check_login_session(session_id, now=T0 + TOUCH_EVERY_S + 2)
    assert workbench.storage.login_session(session_id)["last_seen_at"] == T0 + TOUCH_EVERY_S + 2


def test_log_out_ends_the_session_in_every_tab(workbench, ada_bob):
    _, bob = ada_bob
    session_id, token = cookie_for(workbench, bob, now=None)
    other_browser, _ = cookie_for(workbench, bob, now=None)
    workbench.end_login_session(session_id)
    second_tab = workbench.login_session_id(token)  # the same cookie: the same session
    assert workbench.check_login_session(second_tab) == (None, "You logged out.")
    assert workbench.check_login_session(other_browser)[0]["name"] == "bob"


def test_disabling_an_account_ends_its_sessions(workbench, ada_bob):
    ada, bob = ada_bob
    bobs, _ = cookie_for(workbench, bob, now=None)
    adas, _ = cookie_for(workbench, ada, now=None)
    workbench.for_user(ada).set_user_disabled("bob")
    assert workbench.check_login_session(bobs) == (None, "Your account was disabled.")
    workbench.for_user(ada).set_user_disabled("bob", False)  # enabled again: a new log-in, not the old one
    assert workbench.check_login_session(bobs)[0] is None
    assert workbench.check_login_session(adas)[0]["name"] == "ada"


def test_a_password_change_ends_the_other_sessions(workbench, ada_bob):
    ada, bob = ada_bob
    here, _ = cookie_for(workbench, bob, now=None)
    elsewhere, _ = cookie_for(workbench, bob, now=None)
    workbench.for_user(bob).reset_password("bob", "a new long passphrase", keep_session=here)
    assert workbench.check_login_session(here)[0]["name"] == "bob"
    assert workbench.check_login_session(elsewhere) == (None, "Your password was changed: log in with the new one.")
    workbench.for_user(ada).reset_password("bob", "the admin's reset phrase")  # an admin's reset: all
    assert workbench.check_login_session(here)[0] is None
