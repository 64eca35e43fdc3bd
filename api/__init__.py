"""`rag serve`: the knowledge bases over HTTP, for programs (issue 21).

    POST   /v1/chat/completions                     OpenAI-compatible, cited answers  (chat.py)
    POST   /v1/feedback                             thumbs up/down on an answer       (feedback.py)
    GET    /v1/models                               the knowledge bases a key may read
    POST   /v1/search                               ranked passages                   (knowledge.py)
    GET    /v1/knowledge-bases/{kb}/stats           the numbers
    GET    /v1/knowledge-bases/{kb}/documents       the documents
    POST   /v1/knowledge-bases/{kb}/documents       upload and ingest (multipart)
    DELETE /v1/knowledge-bases/{kb}/documents/{id}  remove one
    /mcp                                            the MCP tools, streamable HTTP    (mcp.py)
    GET    /healthz, /readyz, /metrics              for load balancers and Prometheus (health.py)
    /docs                                           the OpenAPI documentation

Every request carries `Authorization: Bearer <key>` (`rag keys create
NAME`); the key's account and its grants decide, through the same access
policy as the app (service.py, security.py). Before any route, the guard
(guard.py) decides from the headers alone: the Host, another web page's
requests, the key, its rate and the body's size. Errors leave in OpenAI's
JSON shape (errors.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import chat, errors, feedback, health, knowledge, mcp
from api.guard import Guard, Hosts
from api.mcp_tools import mcp_http_app
from api.security import RateLimiter
from api.service import Service
from rag.llm import ChatModel
from rag.settings import Settings
from team.appdb import AppDB, open_app_db

__all__ = ["Service", "create_app"]

UPLOAD_PATH = "/documents"


def create_app(
    settings: Settings, db: AppDB | None = None, chat_model: ChatModel | None = None,
    host: str = "127.0.0.1",
) -> FastAPI:  # fmt: skip
    """The API over `settings.indexes_root`; `db` and `chat_model` default to
    the app database and the LLM server the settings name. `host` is the
    address served: with RAG_API_ALLOWED_HOSTS, the Host names answered."""
    svc = Service(
        settings=settings,
        db=db or open_app_db(settings),
        # None: the core service asks the LLM server per answer what it serves
        # (the model, its context, the small model's profile), as `rag ask` does:
        # a server started after us, or replaced by another model, is met as it is.
        chat=chat_model,
        limiter=RateLimiter(settings.api_requests_per_minute, settings.api_burst),
    )
    # The tools call the routes' core service: one cache of open knowledge bases.
    mcp_app = mcp_http_app(settings, mcp.caller(svc), host=host, check_hosts=False, svc=svc.core)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # A mounted app's lifespan does not run by itself: the MCP session
        # manager's task group lives as long as the API.
        async with mcp_app.router.lifespan_context(mcp_app):
            yield
        svc.close()

    app = FastAPI(
        title="kbqa",
        summary="Cited answers, search and ingestion over your knowledge bases",
        version="1",
        lifespan=lifespan,
    )
    app.state.service = svc
    app.state.mcp_app = mcp_app
    errors.install(app, settings)
    app.include_router(chat.router)
    app.include_router(knowledge.router)
    app.include_router(feedback.router)
    mcp.mount(app, mcp_app)
    upload_limit = int(settings.max_file_mb * settings.max_upload_files * 1024 * 1024) + 65536
    json_limit = settings.api_max_body_kb * 1024

    def limit(path: str) -> int:
        return upload_limit if path.endswith(UPLOAD_PATH) else json_limit

    app.add_middleware(Guard, svc=svc, hosts=served_hosts(settings, host), limit=limit)
    health.install(app)  # /healthz, /readyz, /metrics; counts every request (outermost)
    return app


def served_hosts(settings: Settings, host: str) -> Hosts:
    """The Host names the API answers to when it listens on `host`."""
    return Hosts.served(host, settings.api_allowed_hosts)
