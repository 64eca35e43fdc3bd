"""Whether the app may listen where it is told to (issue 19): with no login
(RAG_AUTH=none) only this machine may reach it, unless the operator
insists. serving.run checks before it starts anything; the app checks again
for `streamlit run` started by hand."""

from __future__ import annotations

import ipaddress

from rag.settings import Settings


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
