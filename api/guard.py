"""What `rag serve` decides from a request's headers alone, before a byte of
its body is read (issue 29):

1. the Host: the address served, or a name of RAG_API_ALLOWED_HOSTS; any
   other is a page that rebound its own DNS name to this server (421);
2. a request that changes something (any method but GET, HEAD, OPTIONS)
   sent by another web page: its `Origin` is not this server's (403); and a
   POST a page elsewhere could send without asking the browser first (a
   form's or text's content type, or none) that carries neither a key nor
   the `X-Requested-With` header (403); pages elsewhere can send neither;
3. who asks (the bearer key: 401) and whether within their rate (429);
4. how large the body may be, by route: declared too large, 413 at once;
   streamed, 413 once over (security.BodyLimit).

The requester's `Access` is left in the request's scope for the routes
(`service.requester`). /mcp's refusals come in JSON-RPC's shape."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import ApiError, response
from api.mcp import PATH as MCP_PATH
from api.mcp import bearer_key, refusal
from api.security import BodyLimit
from api.service import ACCESS, Service

# No key for these (the Host and Origin rules still apply): the API docs, and
# the health checks a load balancer makes (they name a dependency, nothing more).
PUBLIC = frozenset(
    {"/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc", "/healthz", "/readyz"}
)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SCRIPT_HEADER = "X-Requested-With"
# The content types a page may POST anywhere without a CORS preflight.
SIMPLE_TYPES = frozenset(
    {"", "application/x-www-form-urlencoded", "multipart/form-data", "text/plain"}
)
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def host_name(value: str) -> str:
    """The name of a Host header (or an origin's netloc), without its port:
    `[::1]:8080` -> `::1`, `Kb.Example.org.:443` -> `kb.example.org`."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    name, colon, port = value.rpartition(":")
    name = name if colon and port.isdigit() and ":" not in name else value
    return name.rstrip(".")


def _is_loopback(name: str) -> bool:
    return ipaddress.ip_address(name).is_loopback


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Hosts:
    """The Host names a server answers to. A wildcard address (0.0.0.0, ::)
    answers to any address literal (a rebinding page has a name, never an
    address: the browser connects to the address its name resolves to) and
    to the configured names, which a proxy's or DNS name needs."""

    names: frozenset[str]
    configured: frozenset[str]
    any_address: bool = False
    anything: bool = False

    @classmethod
    def served(cls, host: str, configured: list[str]) -> Hosts:
        own = host_name(host) if host else ""
        names = {own} if own else set()
        wildcard = own in ("", "0.0.0.0", "::")
        if (
            wildcard
            or own in LOOPBACK_NAMES
            or (_is_ip(own) and ipaddress.ip_address(own).is_loopback)
        ):
            names |= LOOPBACK_NAMES
        listed = frozenset(host_name(name) for name in configured if name.strip() != "*")
        return cls(
            frozenset(names) | listed, listed, wildcard, "*" in [c.strip() for c in configured]
        )

    def allows(self, host: str) -> bool:
        name = host_name(host)
        if self.anything:
            return bool(name)
        return name in self.names or (self.any_address and _is_ip(name))

    def shown(self) -> str:
        """For the start-up line."""
        if self.anything:
            return "any Host (RAG_API_ALLOWED_HOSTS=*)"
        listed = ", ".join(sorted(self.names))
        return listed + (" and any IP address" if self.any_address else "")


def wrong_host(headers: Headers, hosts: Hosts) -> ApiError | None:
    """A Host this server is not: a page that rebound its name to us."""
    host = headers.get("host", "")
    if hosts.allows(host):
        return None
    return ApiError(
        421, f"This server does not answer to the host {host[:100]!r}. If that name is this "
        "server's (a proxy's, or its DNS name), add it to RAG_API_ALLOWED_HOSTS.",
        code="host_not_allowed",
    )  # fmt: skip


def foreign_origin(headers: Headers, method: str, hosts: Hosts) -> ApiError | None:
    """A request that changes something, sent by a page of another origin."""
    origin = headers.get("origin")
    if method in SAFE_METHODS or origin is None:
        return None
    netloc = urlsplit(origin).netloc.lower()
    if netloc and (
        netloc == headers.get("host", "").lower() or host_name(netloc) in hosts.configured
    ):
        return None
    return ApiError(
        403, f"Refused: a request from another web page ({origin[:100]}). Pages elsewhere "
        "may not change anything here.", code="cross_site_request",
    )  # fmt: skip


def keyless_form(headers: Headers, method: str) -> ApiError | None:
    """A POST that a page elsewhere could send without asking the browser
    first (no Origin from older browsers), with neither a key nor our header."""
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    keyless = "authorization" not in headers and SCRIPT_HEADER.lower() not in headers
    if method != "POST" or content_type not in SIMPLE_TYPES or not keyless:
        return None
    return ApiError(
        403, "Refused: a form post with neither an API key (Authorization: Bearer ...) nor "
        f"the header {SCRIPT_HEADER}, as a page elsewhere could send it. Scripts: add either "
        f"(with RAG_AUTH=none any value does, e.g. `-H '{SCRIPT_HEADER}: curl'`).",
        code="cross_site_request",
    )  # fmt: skip


class Guard:
    """The ASGI middleware in front of every route (see the module's text)."""

    def __init__(
        self, app: ASGIApp, svc: Service, hosts: Hosts, limit: Callable[[str], int]
    ) -> None:
        self.app = app
        self.svc = svc
        self.hosts = hosts
        self.limited = BodyLimit(app, limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        error = wrong_host(headers, self.hosts) or foreign_origin(
            headers, scope["method"], self.hosts
        )
        if error is None and scope["path"] not in PUBLIC:
            try:  # the app database: off the event loop
                scope[ACCESS] = await run_in_threadpool(self.svc.access, bearer_key(headers))
            except ApiError as refused:
                error = refused
        # After the key: without one under RAG_AUTH=local, 401 says what to do.
        error = error or keyless_form(headers, scope["method"])
        if error is not None:
            await self._refuse(error, scope, receive, send)
            return
        await self.limited(scope, receive, send)

    async def _refuse(self, error: ApiError, scope: Scope, receive: Receive, send: Send) -> None:
        reply: Response = refusal(error) if scope["path"] == MCP_PATH else response(error)
        # The body is left unread: the connection is closed after the answer.
        reply.headers["Connection"] = "close"
        await reply(scope, receive, send)
