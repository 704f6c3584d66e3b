"""Log-in for the app (``LIM_AUTH=on``): the session's user, idle expiry, the log-in page.

A browser session keeps only its user's id and the time of its last page run in
``st.session_state`` (held by the Streamlit server, never in a cookie). Every page run checks
both: a session idle past ``session_timeout_minutes`` is logged out, and so is one whose
account was disabled or removed since. With ``LIM_AUTH=off`` every session is the local owner.
"""

from __future__ import annotations

import time

import streamlit as st

from engine.errors import AuthError
from engine.settings import load_config
from engine.workbench.accounts import password_rules

USER_KEY = "auth.user_id"
SEEN_KEY = "auth.last_seen"
NOTICE_KEY = "auth.notice"


def auth_on() -> bool:
    return load_config().auth == "on"


def session_user(workbench, now: float | None = None) -> dict | None:
    """This session's user (the local owner when auth is off); None when nobody is logged in,
    the session was idle too long, or the account was disabled since."""
    if not auth_on():
        return {"id": workbench.owner_id, "name": "local", "is_admin": 1}
    now = time.time() if now is None else now
    user_id = st.session_state.get(USER_KEY)
    if user_id is None:
        return None
    idle_s = now - st.session_state.get(SEEN_KEY, now)
    timeout_min = load_config().session_timeout_minutes
    user = workbench.current_user(user_id)
    if idle_s > timeout_min * 60 or user is None:
        log_out("You were logged out after "
                f"{timeout_min} minutes without activity." if user else "Your account was disabled.")
        return None
    st.session_state[SEEN_KEY] = now
    return user


def log_out(notice: str | None = None) -> None:
    for key in (USER_KEY, SEEN_KEY):
        st.session_state.pop(key, None)
    if notice:
        st.session_state[NOTICE_KEY] = notice


def client_address() -> str:
    """The browser's address as the server sees it (a reverse proxy's own address behind one)."""
    try:
        address = st.context.ip_address
    except Exception:  # no address outside a real server
        address = None
    return address if isinstance(address, str) and address else "unknown"  # AppTest: a mock


def log_in_page(workbench) -> None:
    """Log in or sign up; on success the session holds the user and the app reruns."""
    st.title("LessIsMore Workbench")
    if notice := st.session_state.pop(NOTICE_KEY, None):
        st.info(notice)
    first = workbench.storage.count_accounts() == 0
    log_in_tab, sign_up_tab = st.tabs(["Log in", "Sign up"])
    with log_in_tab:
        if first:
            st.caption("No accounts yet: sign up; the first account becomes the admin.")
        with st.form("auth.log_in"):
            name = st.text_input("Username", key="auth.log_in.name")
            password = st.text_input("Password", type="password", key="auth.log_in.password")
            if st.form_submit_button("Log in", type="primary"):
                _enter(lambda: workbench.log_in(name, password, client=client_address()))
    with sign_up_tab:
        if load_config().signup == "admin" and not first:
            st.info("Accounts here are made by an admin: ask one for yours. They make it on the "
                    "Account page and tell you your username and first password.")
            return
        st.caption(password_rules_text())  # before sign-up, not after a refusal
        with st.form("auth.sign_up"):
            name = st.text_input("Username", key="auth.sign_up.name",
                                 help="2 to 32 letters, digits, dots, dashes or underscores")
            password = st.text_input("Password", type="password", key="auth.sign_up.password")
            again = st.text_input("Password again", type="password", key="auth.sign_up.again")
            if st.form_submit_button("Sign up", type="primary"):
                if password != again:
                    st.error("The two passwords differ.")
                else:
                    _enter(lambda: workbench.sign_up(name, password))


def password_rules_text() -> str:
    """The password rules sign-up checks (engine/workbench/accounts.py), said before submitting."""
    return "A password needs " + "; ".join(password_rules()) + "."


def _enter(attempt) -> None:
    try:
        user = attempt()
    except AuthError as error:
        st.error(str(error))
        return
    st.session_state[USER_KEY] = user["id"]
    st.session_state[SEEN_KEY] = time.time()
    st.rerun()


def account_sidebar(user: dict) -> None:
    with st.sidebar:
        st.caption(f"Logged in as **{user['name']}**" + (" (admin)" if user["is_admin"] else ""))
        clicked = st.button("Log out", key="auth.log_out", icon=":material/logout:")
        if clicked:
            log_out("You logged out.")
            st.rerun()
