"""Who is using the app: the login edge (issue 19).

`require_identity` runs once at the top of the app and either returns the
signed-in `Identity` or draws a login page (or an error page) and stops the
script, so nothing below it (knowledge bases, passages, Manage) is drawn
for a visitor who is not signed in.

RAG_AUTH picks the mode:
- none: no login, one local user; served on a loopback address only
  (team/exposure.py), as `streamlit run` by hand may be told otherwise.
- oidc: Streamlit's own st.login / st.user / st.logout with an OpenID
  Connect provider, configured as Streamlit documents it: an [auth] section
  in .streamlit/secrets.toml. Groups come from the RAG_AUTH_GROUPS_CLAIM
  claim of the provider's ID token.
- local: accounts kept by the app (team.appdb's `Accounts`): a name and
  password form; the session's token is all this browser keeps (in the
  session and in an HttpOnly cookie, ui/session_cookie.py, so a reload or a
  new tab stays signed in), and it is looked up at every run, so a Log out,
  a disabled account, a changed password or an expired session signs the
  visitor out of every tab at their next click.

Names, emails and groups come from the provider: shown as plain text only.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

import streamlit as st

from rag.settings import Settings
from team.access import LoginRefused
from team.exposure import accounts_refusal, refusal
from ui import session_cookie
from ui.safe_text import plain

if TYPE_CHECKING:
    from team.appdb.accounts import Accounts


@dataclass(frozen=True)
class Identity:
    name: str
    email: str
    groups: tuple[str, ...] = ()
    # An OIDC login's ID token issue time ("iat"; "" if none): one per login
    # at the provider, the same over every run and reload of the page.
    issued: str = ""
    # Who the provider says this is (team.appdb.identities binds the account
    # to them): the ID token's "iss" and "sub", and its "email_verified".
    issuer: str = ""
    subject: str = ""
    email_verified: bool = False


# RAG_AUTH=none: everyone who reaches the loopback address is this user.
LOCAL_USER = Identity(name="local", email="", groups=())

# What st.login() needs for its default provider ([auth] in secrets.toml).
OIDC_KEYS = ("redirect_uri", "cookie_secret", "client_id", "client_secret", "server_metadata_url")

# RAG_AUTH=local: the token of the signed-in account's session (the
# database keeps only its hash), for this browser session only.
_LOCAL_SESSION = "kbqa_session"


def identity_from_claims(claims: Mapping[str, object], groups_claim: str) -> Identity:
    """The identity an OIDC provider vouches for. A provider may send the
    groups as a list or, for one group, as a string; a user without a name
    claim is shown by email, then by subject."""
    email = str(claims.get("email") or "")
    name = str(claims.get("name") or email or claims.get("sub") or "")
    raw = claims.get(groups_claim)
    if isinstance(raw, str):
        groups: tuple[str, ...] = (raw,)
    elif isinstance(raw, list | tuple):
        groups = tuple(str(g) for g in raw)
    else:
        groups = ()
    issued = claims.get("iat")
    # A few providers send the flag as the string "true".
    verified = claims.get("email_verified") in (True, "true")
    return Identity(
        name=name, email=email, groups=groups, issued=str(issued or ""),
        issuer=str(claims.get("iss") or ""), subject=str(claims.get("sub") or ""),
        email_verified=verified,
    )  # fmt: skip


def current_identity(settings: Settings, accounts: Accounts) -> Identity | None:
    """Who is signed in to this session; None when nobody is."""
    if settings.auth == "none":
        return LOCAL_USER
    if settings.auth == "oidc":
        if not st.user.get("is_logged_in"):
            return None
        return identity_from_claims(st.user.to_dict(), settings.auth_groups_claim)
    # This tab's own login, else the one its cookie brought (a reload, a new tab)
    token = st.session_state.get(_LOCAL_SESSION) or session_cookie.token()
    user = accounts.session_user(token) if isinstance(token, str) else None
    if user is None:  # expired, ended, or the account was disabled or removed
        st.session_state.pop(_LOCAL_SESSION, None)
        return None
    st.session_state[_LOCAL_SESSION] = token
    return Identity(name=user.name, email="", groups=())


def require_identity(settings: Settings, accounts: Accounts) -> Identity:
    """The signed-in identity; otherwise a login or error page, and the
    script stops there. `accounts` checks RAG_AUTH=local's logins."""
    problem = refusal(settings, st.get_option("server.address"))
    # No login over an app database holding accounts (the rule `rag serve`
    # and `make run` apply too): started by hand, the app refuses as well.
    problem = problem or accounts_refusal(settings, "the app", accounts)
    if settings.auth == "oidc":
        problem = problem or oidc_config_problem()
    if problem:
        _stop_with(problem)
    identity = current_identity(settings, accounts)
    if identity is None:
        # The login page in a placeholder: a login in this run clears it and
        # the app is drawn in the same run. No st.rerun() here: a rerun
        # clears the messages still queued for the browser, and with them,
        # under load, the redirect that fetches the session cookie.
        page = st.empty()
        with page.container():
            identity = _login_page(settings, accounts)
        if identity is None:
            st.stop()
        page.empty()
    if settings.auth != "none":
        _signed_in(identity, settings, accounts)
    return identity


def oidc_config_problem() -> str | None:
    """What is missing from the [auth] secrets that st.login() reads (the
    names only: never the values)."""
    try:
        section = st.secrets.get("auth")
    except FileNotFoundError:  # no secrets.toml, or one that does not parse
        section = None
    if not isinstance(section, Mapping):
        return (
            "RAG_AUTH=oidc needs an [auth] section in .streamlit/secrets.toml with "
            + ", ".join(OIDC_KEYS)
            + " (see the README's Teams section)."
        )
    missing = [key for key in OIDC_KEYS if not section.get(key)]
    if missing:
        return (
            "RAG_AUTH=oidc: the [auth] section of .streamlit/secrets.toml lacks "
            + ", ".join(missing)
            + "."
        )
    return None


def _stop_with(problem: str) -> NoReturn:
    st.title("Ask your documents")
    st.error(problem)
    st.stop()


def _login_page(settings: Settings, accounts: Accounts) -> Identity | None:
    """The login page; the identity of a login made in this run, if any."""
    st.title("Ask your documents")
    if settings.auth == "oidc":
        st.write("Sign in with your organisation's account to see your knowledge bases.")
        if st.button("Log in", type="primary"):
            st.login()
        return None
    with st.form("login"):
        # What a password manager needs to offer the saved login, not a new password.
        name = st.text_input("Username", autocomplete="username")
        password = st.text_input("Password", type="password", autocomplete="current-password")
        submitted = st.form_submit_button("Log in", type="primary")
    if not submitted:
        return None
    try:
        user = accounts.verify_login(name, password)
    except LoginRefused as exc:  # says nothing of whether the name exists
        st.error(str(exc))
        return None
    token = accounts.create_session(user)
    st.session_state[_LOCAL_SESSION] = token
    session_cookie.keep(token, expires=time.time() + settings.session_hours * 3600)
    return Identity(name=user.name, email="", groups=())


def _signed_in(identity: Identity, settings: Settings, accounts: Accounts) -> None:
    """The user's name in the sidebar, with a Log out button."""
    with st.sidebar:
        st.markdown(f"Signed in as **{plain(identity.name)}**")
        if identity.email and identity.email != identity.name:
            st.caption(plain(identity.email))
        if identity.groups:
            st.caption("Groups: " + ", ".join(plain(g) for g in identity.groups))
        # A callback: it runs before the next run, which then draws the
        # login page and nothing of the signed-out session.
        st.button("Log out", on_click=_log_out, args=(settings, accounts))
        st.divider()


def _log_out(settings: Settings, accounts: Accounts) -> None:
    if settings.auth == "oidc":
        st.logout()  # Streamlit's cookie, then the provider's own logout page
        return
    token = st.session_state.pop(_LOCAL_SESSION, None)
    if isinstance(token, str):
        accounts.end_session(token)  # the token is no use to anyone after this
    session_cookie.forget()
