"""The log-in cookie (issue 27): the route of the app's server (server.py) that sets it.

A Streamlit script talks to its browser over a websocket, which cannot set a cookie, and a
cookie set by JavaScript cannot be HttpOnly. So a log-in ends with the browser opening
``/_lim/session?code=...&next=<the page it was on>``: this route trades the one-time code
(engine/workbench/sessions.py) for a random session token, sets it as a cookie (HttpOnly,
SameSite=Strict, Secure over HTTPS, no Max-Age: the browser forgets it when it closes) and sends
the browser back to ``next``. Every page run reads it from ``st.context.cookies`` (the cookies
of the websocket's opening request), so a reload and a second tab are logged in.

Without server.py (a plain ``streamlit run app.py``) no route is served, and a log-in lasts as
long as its tab, as before.
"""

from __future__ import annotations

import binascii
import hashlib
import re
from collections.abc import Callable
from urllib.parse import urlencode

import streamlit as st
from starlette.requests import Request
from starlette.responses import RedirectResponse
from starlette.routing import Route

COOKIE = "lim_session"
ROUTE = "/_lim/session"
XSRF_COOKIE = "_streamlit_xsrf"  # Streamlit's own double-submit cookie (enableXsrfProtection)
# Where the route may send the browser back to: a path of this server (no scheme, no host, no
# "//" or backslash that a browser would read as another site).
_LOCAL_PATH = re.compile(r"^/(?![/\\])[^\\\s]*$")
_served = False


def routes(workbench: Callable[[], object]) -> list[Route]:
    """The routes server.py mounts on Streamlit's app; from then on log-ins set the cookie.
    ``workbench`` gives the shared engine (ui.state.shared_workbench)."""
    global _served
    _served = True

    def start_session(request: Request) -> RedirectResponse:  # sync: Starlette runs it in a thread
        params = request.query_params
        target = params.get("next", "/")
        response = RedirectResponse(target if _LOCAL_PATH.match(target) else "/", status_code=303)
        response.headers["Cache-Control"] = "no-store"
        response.headers["Referrer-Policy"] = "no-referrer"  # the spent code stays out of logs
        token = workbench().redeem_login_code(
            params.get("code", ""), binding=xsrf_binding(request.cookies.get(XSRF_COOKIE)))
        if token is not None:
            secure = request.url.scheme == "https" or bool(st.get_option("server.sslCertFile"))
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=secure,
                                path="/")
        return response

    return [Route(ROUTE, start_session, methods=["GET"])]


def cookie_route_served() -> bool:
    return _served


def handoff_url(code: str, next_path: str) -> str:
    return f"{ROUTE}?{urlencode({'code': code, 'next': next_path})}"


def xsrf_binding(xsrf_cookie: str | None) -> str | None:
    """A digest of this browser's XSRF secret, or None without one. Streamlit masks the secret
    afresh on every page load (``2|mask|masked|time``: the secret XOR the repeated mask), so
    the cookie's text changes and the secret does not."""
    if not xsrf_cookie:
        return None
    secret = xsrf_cookie.strip("\"'").encode()
    parts = xsrf_cookie.strip("\"'").split("|")
    if len(parts) == 4 and parts[0] == "2":
        try:
            mask, masked = binascii.unhexlify(parts[1]), binascii.unhexlify(parts[2])
            secret = bytes(b ^ mask[i % len(mask)] for i, b in enumerate(masked))
        except (binascii.Error, ZeroDivisionError):
            pass
    return hashlib.sha256(secret).hexdigest()
