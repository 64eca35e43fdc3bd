"""What a load balancer and Prometheus ask `rag serve`:

    GET /healthz    alive (no key: a load balancer sends none)
    GET /readyz     the app database, the stores and the LLM server answer;
                    503 naming the one that does not (no key)
    GET /metrics    Prometheus' text format (rag/telemetry.py), under the
                    same keys as every other route

/healthz and /readyz say which dependency is down by name only: never a
path, URL or error message (those go to the server's log). Every request is
counted by route template and status by `RequestMetrics`, the outermost
middleware, so refusals made before routing (413, 401, 429) count too.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.service import Requester, Service, service
from rag import telemetry
from rag.llm import check_server
from team import library

log = logging.getLogger("kbqa.api")
router = APIRouter(tags=["monitoring"])


@router.get("/healthz", summary="Alive (for a load balancer; no key needed)")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Ready: app database, stores and LLM reachable (no key needed)")
def readyz(request: Request) -> JSONResponse:
    svc = service(request)
    checks = {name: "ok" if _check(name, probe, svc) else "down" for name, probe in _PROBES}
    ready = all(state == "ok" for state in checks.values())
    body = {"status": "ready" if ready else "not ready", "checks": checks}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics (text format)")
def metrics(_: Requester) -> Response:
    data, content_type = telemetry.scrape()
    return Response(data, media_type=content_type)


def _app_db(svc: Service) -> str | None:
    svc.db.schema_version()
    return None


def _stores(svc: Service) -> str | None:
    """The folder of the knowledge bases can be listed, and every one open
    answers (a Milvus cluster behind it too)."""
    if not svc.root.is_dir():
        return "the indexes root is not a folder"
    library.list_knowledge_bases(svc.root)
    for kb in svc.open_knowledge_bases():
        kb.stats()
    return None


def _llm(svc: Service) -> str | None:
    return check_server(svc.settings)


_PROBES = (("app_db", _app_db), ("stores", _stores), ("llm", _llm))


def _check(name: str, probe: Any, svc: Service) -> bool:
    try:
        problem = probe(svc)
    except Exception as exc:  # any failure means not ready; the log says which
        problem = f"{type(exc).__name__}: {exc}"
    if problem:
        log.warning("readyz: %s is down: %s", name, problem)
    return not problem


class RequestMetrics:
    """ASGI middleware counting each request by route template (never the
    raw path: knowledge base and document names stay out), method and
    status, with its duration; a 429 also counts as rate-limited."""

    def __init__(self, app: ASGIApp, endpoints: dict[int, str], routes: list[BaseRoute]) -> None:
        self.app, self.endpoints, self.routes = app, endpoints, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status, started = 500, time.perf_counter()

        async def watching_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watching_send)
        finally:
            route = _route(scope, self.endpoints, self.routes)
            m = telemetry.metrics()
            m.requests.labels(route, scope["method"], str(status)).inc()
            m.request_seconds.labels(route).observe(time.perf_counter() - started)
            if status == 429:
                m.rate_limited.labels(route).inc()


def _route(scope: Scope, endpoints: dict[int, str], routes: list[BaseRoute]) -> str:
    """The template of the route that served the request: FastAPI's routes
    leave themselves in the scope, plain Starlette ones (/mcp) their
    endpoint; a request refused before routing (by the guard) is matched
    against the routes' templates; "other" for no such route."""
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str) and path:
        return path
    found = endpoints.get(id(scope.get("endpoint")))
    if found:
        return found
    for route in routes:
        match, _ = route.matches(scope)
        if match != Match.NONE:
            return str(getattr(route, "path", "other"))
    return "other"


def install(app: FastAPI) -> None:
    """The monitoring routes, and request counting around everything else."""
    app.include_router(router)
    plain = [r for r in app.router.routes if type(r) is Route]
    endpoints = {id(r.endpoint): r.path for r in plain}
    app.add_middleware(RequestMetrics, endpoints=endpoints, routes=_flat(app.router.routes))


def _flat(routes: list[BaseRoute]) -> list[BaseRoute]:
    """The routes with their templates: FastAPI keeps an included router's
    routes behind a wrapper that has none (`original_router`)."""
    out: list[BaseRoute] = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        out += _flat(list(inner.routes)) if inner is not None else [route]
    return out
