"""The knowledge bases as MCP tools (the official `mcp` SDK), for assistants
and agents that speak the Model Context Protocol:

    list_knowledge_bases()                       the names the caller may read
    search_knowledge_base(knowledge_base, query, k, mode)   ranked passages
    ask_knowledge_base(knowledge_base, question)  the cited answer, as the app gives it

Two transports, one set of tools: `rag mcp` (stdio, cli/mcp_stdio.py) and
`mcp_http_app` (streamable HTTP, which `rag serve` mounts at /mcp behind
its API keys: api/mcp.py). The tools translate to the core service
(core/service.py), which asks the access policy first, with the caller's
`Access` resolved fresh for that call, so a revoked grant takes effect at the
next call. RagErrors become tool errors carrying their user message; any
other failure reaches the client only as "Error executing tool ..." (the SDK
withholds its text).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from core.service import MAX_K, KnowledgeService
from rag.errors import RagError
from rag.settings import SearchMode, Settings
from team.access import Access, AccessDenied, AccessPolicy, User, local_access

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request

    from rag.knowledge_base import KnowledgeBase
    from team.appdb import AppDB

# Who is calling a tool: the stdio command's fixed user, or the bearer key of
# the HTTP request (the `Context` carries the request). Raises AccessDenied
# when there is nobody.
AccessFor = Callable[[Context], Access]
# The HTTP side: the starlette Request of a call -> its Access.
RequestAccess = Callable[["Request"], Access]


@dataclass(frozen=True)
class Passage:
    n: int  # rank, from 1
    source: str
    page: int | None
    score: float
    text: str
    chunk_id: int
    locator: str = ""  # a table passage's sheet or table, and rows


@dataclass(frozen=True)
class Passages:
    knowledge_base: str
    query: str
    mode: str
    passages: list[Passage] = field(default_factory=list)


@dataclass(frozen=True)
class CitedPassage:
    n: int  # the [n] marker in the answer
    source: str
    page: int | None
    text: str
    chunk_id: int
    locator: str = ""


@dataclass(frozen=True)
class CitedAnswer:
    knowledge_base: str
    question: str
    answer: str  # with [n] markers
    found: bool  # False: "not in the knowledge base"
    citations: list[CitedPassage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class KnowledgeTools:
    """What the tools do, without the protocol: plain methods that take the
    caller's Access first (tests and other edges can call them directly).
    The rules, the cache and the chat model are the core service's `svc`
    (`rag serve` passes the API's, so the process keeps one cache)."""

    def __init__(
        self, settings: Settings, relative_sources: bool = False,
        svc: KnowledgeService | None = None,
    ) -> None:  # fmt: skip
        self.settings = settings
        # Over HTTP the caller is not the server's operator: document paths
        # are shown relative to the knowledge base (team/sources.py), as the
        # API's routes show them. Over stdio the operator runs it: full paths.
        self.relative_sources = relative_sources
        self.service = svc or KnowledgeService(settings)

    def names(self, access: Access) -> list[str]:
        return self.service.names(access)

    def search(self, access: Access, kb: str, query: str, k: int, mode: str) -> Passages:
        hits = self.service.search(access, kb, query, k, mode)
        show = self._paths(self.service.open(access, kb))
        passages = [
            Passage(n, show(h.source), h.page, h.score, h.text, h.chunk_id, h.locator)
            for n, h in enumerate(hits, start=1)
        ]
        return Passages(kb, query, mode, passages)

    def ask(self, access: Access, kb: str, question: str) -> CitedAnswer:
        result = self.service.ask(access, kb, question)
        show = self._paths(self.service.open(access, kb))
        citations = [
            CitedPassage(
                c.n, show(c.hit.source), c.hit.page, c.hit.text, c.hit.chunk_id, c.hit.locator
            )
            for c in result.citations
        ]
        return CitedAnswer(kb, question, result.text, result.found, citations, result.notes)

    def _paths(self, base: KnowledgeBase) -> Callable[[str], str]:
        if not self.relative_sources:
            return str
        from team.sources import SourceNames

        return SourceNames.of(base).show


def mcp_server(
    settings: Settings, access_for: AccessFor, relative_sources: bool = False,
    svc: KnowledgeService | None = None,
) -> MCPServer:  # fmt: skip
    """The MCP server with the three tools; `access_for` names the caller of
    each call; `relative_sources` hides the server's folders from paths;
    `svc` is the core service to call (default: one of its own)."""
    tools = KnowledgeTools(settings, relative_sources, svc)
    server = MCPServer(
        "kbqa",
        instructions="Search and question the knowledge bases of this kbqa server; "
        "answers cite their passages as [n].",
    )

    def shown(exc: RagError) -> str:
        # Over HTTP the caller is not the operator: no server folder, no LLM address.
        if not relative_sources:
            return str(exc)
        from team.sources import server_redacted

        return server_redacted(str(exc), settings)

    def caller(ctx: Context) -> Access:
        try:
            return access_for(ctx)
        except RagError as exc:
            raise ToolError(shown(exc)) from None

    def _run(work: Callable[[], Any]) -> Any:
        """The RagErrors a user can cause, as tool errors with their message."""
        try:
            return work()
        except RagError as exc:
            raise ToolError(shown(exc)) from None

    @server.tool()
    def list_knowledge_bases(ctx: Context) -> list[str]:
        """The knowledge bases you may search and ask."""
        return _run(lambda: tools.names(caller(ctx)))

    @server.tool()
    def search_knowledge_base(
        knowledge_base: str,
        query: str,
        ctx: Context,
        k: Annotated[int, Field(description=f"passages to return, 1 to {MAX_K}")] = 8,
        mode: SearchMode = "hybrid",
    ) -> Passages:
        """The passages of a knowledge base that best match `query`, best
        first, with their source file, page and score."""
        return _run(lambda: tools.search(caller(ctx), knowledge_base, query, k, mode))

    @server.tool()
    def ask_knowledge_base(knowledge_base: str, question: str, ctx: Context) -> CitedAnswer:
        """Answer `question` from a knowledge base. The answer cites its
        passages as [n]; `citations` lists each one's source, page and text.
        `found` is false when the knowledge base does not answer it."""
        return _run(lambda: tools.ask(caller(ctx), knowledge_base, question))

    return server


# -- who is calling -----------------------------------------------------------------------


def stdio_access(settings: Settings, user: str | None) -> AccessFor:
    """The caller of `rag mcp`: the local user (RAG_AUTH=none, no --user), or
    the account `user` of the app database, looked up at each call. Whoever
    runs the command can read the app database anyway, so naming the account
    is enough (as `rag users` records changes as the OS user)."""
    if user is None:
        if settings.auth != "none":
            raise RagError(f"RAG_AUTH is {settings.auth}: name the account with --user NAME.")
        local = local_access()
        return lambda ctx: local
    from team.appdb import open_app_db

    db = open_app_db(settings)
    policy = AccessPolicy(db)
    if db.accounts.user(user) is None:
        raise AccessDenied(f"There is no account named {user!r} (see `rag users list`).")

    def access_for(ctx: Context) -> Access:
        found = db.accounts.user(user)
        if found is None:
            raise AccessDenied(f"The account {user!r} no longer exists.")
        return Access(found, policy)

    return access_for


def user_for_key(db: AppDB, key: str) -> User | None:
    """The account an API key (`rag keys create NAME`) belongs to, with its
    grants as they are now; None for an unknown or revoked key or a disabled
    account. (`rag serve` resolves keys through its own `authenticate`, with
    the same table: api/mcp.py.)"""
    return db.keys.user(key)


def bearer_access(settings: Settings) -> RequestAccess:
    """The caller of an HTTP call: the local user with RAG_AUTH=none (the
    server binds loopback then), else the account of the request's
    `Authorization: Bearer KEY` (`user_for_key`)."""
    if settings.auth == "none":
        local = local_access()
        return lambda request: local
    from team.appdb import open_app_db

    db = open_app_db(settings)
    policy = AccessPolicy(db)

    def resolve(request: Request) -> Access:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        user = user_for_key(db, key.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            raise AccessDenied("A valid API key is needed (Authorization: Bearer KEY).")
        return Access(user, policy)

    return resolve


def mcp_http_app(
    settings: Settings, resolve: RequestAccess | None = None, host: str = "127.0.0.1",
    check_hosts: bool = True, svc: KnowledgeService | None = None,
) -> Starlette:  # fmt: skip
    """The tools over streamable HTTP: an ASGI app whose one route is /mcp.

    `resolve` turns each call's HTTP request into the caller's Access
    (default: `bearer_access`); raising AccessDenied makes the call a tool
    error. `host` is the address served: on a loopback one the SDK also
    refuses requests whose Host header is not loopback (DNS rebinding);
    `check_hosts=False` leaves Host and Origin to the app in front (`rag
    serve`'s guard, which knows RAG_API_ALLOWED_HOSTS).

    To serve it inside another app (`rag serve`), mount it at the root after
    the app's own routes, and run its lifespan (the session manager) inside
    the app's: `async with mcp_app.router.lifespan_context(mcp_app): ...`;
    a mounted app's lifespan does not run by itself. `svc` is the core
    service the tools call (`rag serve` passes the API's: one cache); the
    app keeps it as `app.state.knowledge`."""
    by_request = resolve or bearer_access(settings)
    svc = svc or KnowledgeService(settings)

    def access_for(ctx: Context) -> Access:
        request = ctx.request_context.request
        if request is None:
            raise AccessDenied("No HTTP request to take the caller from.")
        return by_request(request)

    server = mcp_server(settings, access_for, relative_sources=True, svc=svc)
    if check_hosts:
        app = server.streamable_http_app(host=host)
    else:
        from mcp.server.transport_security import TransportSecuritySettings

        unchecked = TransportSecuritySettings(enable_dns_rebinding_protection=False)
        app = server.streamable_http_app(host=host, transport_security=unchecked)
    app.state.knowledge = svc
    return app
