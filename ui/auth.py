"""Log-in for the app (``LIM_AUTH=on``): the session's user, the log-in page, log-out.

A log-in makes a log-in session in the database (engine/workbench/sessions.py). The browser
tab keeps its id in ``st.session_state``; the browser keeps a token for it in an HttpOnly cookie
(ui/session_cookie.py), so a reload or a second tab finds it again. Every page run checks it: a
session idle past ``session_timeout_minutes``, logged out, or whose account was disabled or
password changed since, ends with a message. With ``LIM_AUTH=off`` every session is the local
owner.
"""

from __future__ import annotations

import html
import json
from urllib.parse import urlencode

import streamlit as st

from engine.errors import AuthError
from engine.settings import load_config
from engine.workbench.accounts import password_rules
from ui.session_cookie import COOKIE, XSRF_COOKIE, cookie_route_served, handoff_url, xsrf_binding

SESSION_KEY = "auth.session"
NOTICE_KEY = "auth.notice"


def auth_on() -> bool:
    return load_config().auth == "on"


def session_user(workbench, now: float | None = None) -> dict | None:
    """This session's user (the local owner when auth is off); None when nobody is logged in
    here or in this browser (the cookie), or the log-in session has ended."""
    if not auth_on():
        return {"id": workbench.owner_id, "name": "local", "is_admin": 1}
    session_id = st.session_state.get(SESSION_KEY)
    if session_id is None:  # a fresh tab or a reload: the browser's cookie names the session
        session_id = workbench.login_session_id(browser_cookie(COOKIE) or "")
        if session_id is None:
            return None
        st.session_state[SESSION_KEY] = session_id
    user, why = workbench.check_login_session(session_id, now=now)
    if user is None:
        log_out(why)
    return user


def current_session() -> int | None:
    """This tab's log-in session id (None with auth off or logged out)."""
    return st.session_state.get(SESSION_KEY)


def log_out(notice: str | None = None) -> None:
    st.session_state.pop(SESSION_KEY, None)
    if notice:
        st.session_state[NOTICE_KEY] = notice


def browser_cookie(name: str) -> str | None:
    """A cookie the browser sent when this tab connected (None in tests without a browser)."""
    try:
        value = st.context.cookies.get(name)
    except Exception:  # no server session (AppTest)
        return None
    return value if isinstance(value, str) and value else None


def page_address(page) -> str:
    """The page's own address with its query, e.g. ``/training?run=3``: where a log-in lands."""
    query = urlencode(st.query_params.to_dict())
    return f"/{page.url_path}" + (f"?{query}" if query else "")


def client_address() -> str:
    """The browser's address as the server sees it (a reverse proxy's own address behind one)."""
    try:
        address = st.context.ip_address
    except Exception:  # no address outside a real server
        address = None
    return address if isinstance(address, str) and address else "unknown"  # AppTest: a mock


def log_in_page(workbench, next_path: str = "/") -> None:
    """Log in or sign up; on success the browser gets its cookie and lands on ``next_path``
    (the page and query the link asked for)."""
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
                _enter(workbench, lambda: workbench.log_in(name, password, client=client_address()),
                       next_path)
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
                    _enter(workbench, lambda: workbench.sign_up(name, password), next_path)


def password_rules_text() -> str:
    """The password rules sign-up checks (engine/workbench/accounts.py), said before submitting."""
    return "A password needs " + "; ".join(password_rules()) + "."


def _enter(workbench, attempt, next_path: str) -> None:
    try:
        user = attempt()
    except AuthError as error:
        st.error(str(error))
        return
    session_id, code = workbench.start_login_session(
        user["id"], binding=xsrf_binding(browser_cookie(XSRF_COOKIE)))
    st.session_state[SESSION_KEY] = session_id  # this tab is in already
    if cookie_route_served():  # the browser fetches its cookie and comes back to next_path
        url = handoff_url(code, next_path)
        st.html(f'<p>Logging you in… <a href="{html.escape(url)}" target="_self">continue</a></p>'
                f"<script>window.location.replace({json.dumps(url)});</script>",
                unsafe_allow_javascript=True)  # url: our route, a code and an encoded path
        st.stop()
    st.rerun()


def account_sidebar(workbench, user: dict) -> None:
    with st.sidebar:
        st.caption(f"Logged in as **{user['name']}**" + (" (admin)" if user["is_admin"] else ""))
        if st.button("Log out", key="auth.log_out", icon=":material/logout:",
                     help="Ends this log-in in every tab of this browser."):
            if (session_id := current_session()) is not None:
                workbench.end_login_session(session_id)
            log_out("You logged out.")
            st.rerun()
