"""RAG_AUTH=local's login kept over reloads and tabs (issue 31): an HttpOnly,
SameSite=Strict cookie holding the session's token, nothing else (the app
database keeps only its hash, in the session's row; team.appdb.accounts).

Streamlit talks to the page over a websocket, which cannot set a cookie,
so the app serves a small HTTP route beside Streamlit's own (an `st.App`
route: streamlit_app.py). After a login the browser is sent, the way
st.login sends it to its provider, to the route with a one-time code good
for a minute; the route answers with the cookie and sends it back to the
app. The token itself never shows in the page or an address. At each run
the app reads the cookie (`st.context.cookies`) and asks the database
whether its session is still live, so Log out, an expired session or a
disabled account ends it in every tab at their next click; Log out also
sends the browser through the route that drops the cookie.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlencode

import streamlit as st
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.runtime.scriptrunner import get_script_run_ctx

COOKIE = "kbqa_session"
ROUTE = "/_kbqa/session"
HANDOFF_SECONDS = 60.0


@dataclass
class Handoffs:
    """One-time codes for tokens, kept in this process only (hashed), each
    good for `HANDOFF_SECONDS`: the bridge from a script run, which knows
    the token, to the HTTP route, which can set a cookie."""

    ttl: float = HANDOFF_SECONDS
    _codes: dict[str, tuple[str, float, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def issue(self, token: str, expires: float) -> str:
        """A code that `redeem` turns into `token` once; the cookie lives
        until `expires` (a Unix time: the session's own end)."""
        code = secrets.token_urlsafe(32)
        now = time.time()
        with self._lock:
            self._codes = {k: v for k, v in self._codes.items() if v[1] > now}
            self._codes[_hash(code)] = (token, now + self.ttl, expires)
        return code

    def redeem(self, code: str) -> tuple[str, float] | None:
        """The token and its session's end, or None for an unknown, used or
        stale code."""
        with self._lock:
            found = self._codes.pop(_hash(code), None)
        if found is None or found[1] <= time.time():
            return None
        return found[0], found[2]


def _hash(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


# The one exchange of this process: the route and every script run share it
# (the app and its HTTP routes are one process; a restart only asks for a
# new login of a session that had not yet posted its code).
HANDOFFS = Handoffs()


def routes(base_url_path: str = "") -> list[BaseRoute]:
    """The routes `st.App` serves beside Streamlit's (under the
    server.baseUrlPath, if any)."""
    path = _path(base_url_path, ROUTE)
    return [Route(path, _exchange, methods=["GET"]), Route(path + "/end", _end, methods=["GET"])]


async def _exchange(request: Request) -> Response:
    """A code, for the cookie; then on to the app, at the base the address
    named (`kb`, only as a query parameter of the app's own page)."""
    code = request.query_params.get("code", "")
    found = HANDOFFS.redeem(code) if code else None
    response = RedirectResponse(_app_url(request, request.query_params.get("kb")), 303)
    if found is not None:  # a used or stale code leads to the login page
        token, expires = found
        response.set_cookie(
            COOKIE, token, max_age=max(1, math.floor(expires - time.time())),
            path=_app_path(request), httponly=True, samesite="strict",
            secure=request.url.scheme == "https",
        )  # fmt: skip
    return response


async def _end(request: Request) -> Response:
    """After a Log out: the cookie dropped (its session is already over)."""
    response = RedirectResponse(_app_url(request, None), 303)
    response.delete_cookie(COOKIE, path=_app_path(request), httponly=True, samesite="strict")
    return response


def _app_path(request: Request) -> str:
    """The app's own path: the route's, less the route."""
    path = request.url.path
    return path[: path.index(ROUTE)] or "/"


def _app_url(request: Request, kb: str | None) -> str:
    base = _app_path(request).rstrip("/") + "/"
    return base + ("?" + urlencode({"kb": kb}) if kb else "")


def _path(base_url_path: str, route: str) -> str:
    return "/" + "/".join(p for p in (base_url_path.strip("/"), route.strip("/")) if p)


# -- in the script runs --------------------------------------------------------


def token() -> str | None:
    """The token of the session cookie this page was opened with, if any."""
    try:
        value = st.context.cookies.get(COOKIE)
    except (AttributeError, RuntimeError):  # no browser behind this run
        return None
    return value if isinstance(value, str) and value else None


def keep(token: str, expires: float) -> None:
    """After a login: the browser fetches the cookie, through the route,
    and comes back to the same base (`expires`: the session's end)."""
    query = {"code": HANDOFFS.issue(token, expires)}
    kb = st.query_params.get("kb")
    if kb:
        query["kb"] = kb
    _redirect(_route() + "?" + urlencode(query))


def forget() -> None:
    """After a Log out: the browser drops the cookie, through the route."""
    _redirect(_route() + "/end")


def _route() -> str:
    return _path(str(st.get_option("server.baseUrlPath") or ""), ROUTE)


def _redirect(url: str) -> None:
    """The page goes to `url`: Streamlit's own way, as st.login and
    st.logout send the browser to their routes. Nothing happens without a
    browser (AppTest): the session itself is signed in or out already."""
    ctx = get_script_run_ctx()
    if ctx is None:
        return
    message = ForwardMsg()
    message.auth_redirect.url = url
    ctx.enqueue(message)
