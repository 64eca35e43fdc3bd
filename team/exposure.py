"""Whether the app (and `rag serve`) may start as configured: with no login
(RAG_AUTH=none) only this machine may reach it (issue 19), and not over an
app database that holds accounts (issue 31), unless the operator insists.
serving.run and `rag serve` check before they start anything; the app
checks the address again for `streamlit run` started by hand."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import TYPE_CHECKING

from rag.settings import Settings

if TYPE_CHECKING:
    from team.appdb.accounts import Accounts


def is_loopback(host: str | None) -> bool:
    """Whether only this machine can reach `host` (a unix socket counts).
    No host at all is every interface: Streamlit's default."""
    if not host:
        return False
    if host == "localhost" or host.startswith("unix://"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


REFUSAL = (
    "The app has no login (RAG_AUTH=none) and would listen on {host}: anyone who "
    "reaches it could read, upload and delete every knowledge base. Configure a "
    "login (RAG_AUTH=oidc or RAG_AUTH=local), listen on 127.0.0.1, or, behind an "
    "authenticating proxy or firewall, insist with --insecure-no-auth "
    "(python -m serving.run) or RAG_INSECURE_NO_AUTH=1 (streamlit run)."
)


def refusal(settings: Settings, host: str | None) -> str | None:
    """Why the app must not serve `host` as configured; None when it may."""
    if settings.auth != "none" or settings.insecure_no_auth or is_loopback(host):
        return None
    return REFUSAL.format(host=host or "every interface")


ACCOUNTS_REFUSAL = (
    "RAG_AUTH is none (no login), yet the app database {db} holds {count} account(s): "
    "anyone who reaches {what} would be the admin, and those accounts' grants would not "
    "apply. Set RAG_AUTH=local (the accounts' passwords and API keys) or RAG_AUTH=oidc, "
    "or insist with --insecure-no-auth (RAG_INSECURE_NO_AUTH=1)."
)


def accounts_refusal(settings: Settings, what: str, accounts: Accounts | None = None) -> str | None:
    """Why `what` (the API, the app) must not start with no login: the app
    database holds accounts, so a team meant to sign in (issue 31). None when
    it may. Looks at the database only when RAG_AUTH=none, and never creates
    it; a caller that holds it open (the app, on every run) passes its
    `accounts`."""
    if settings.auth != "none" or settings.insecure_no_auth:
        return None
    from team.appdb import app_db_url, open_app_db

    url = app_db_url(settings)
    if accounts is None:
        if url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
            return None
        accounts = open_app_db(settings).accounts
    count = len(accounts.accounts())
    if not count:
        return None
    shown = url.render_as_string(hide_password=True).removeprefix("sqlite:///")
    return ACCOUNTS_REFUSAL.format(db=shown, count=count, what=what)


LOGIN_MODES = {
    "none": "no login: whoever reaches it is the local admin",
    "local": "the app's accounts",
    "oidc": "the identity provider",
}


def login_mode(settings: Settings) -> str:
    """The login mode, for a start-up line: `RAG_AUTH=local (the app's accounts)`."""
    return f"RAG_AUTH={settings.auth} ({LOGIN_MODES[settings.auth]})"
