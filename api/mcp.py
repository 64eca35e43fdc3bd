"""/mcp: the MCP tools (api/mcp_tools.py) over streamable HTTP, under
the API's keys, grants and rate limit.

Each HTTP request to /mcp is let in by the API's guard (guard.py) as the
routes are: its Host, Origin and bearer key (401 for a bad key, 429 over the
key's rate, as a JSON-RPC error whose message the client shows; an MCP
session spends a few requests: initialize, its notification, then one per
tool call). Each tool call then resolves the key
to its account afresh and asks the access policy, so a knowledge base the
account may not read is a tool error, and a revoked grant holds at the next
call."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from api.errors import ApiError, body
from api.mcp_tools import RequestAccess
from api.security import authenticate
from api.service import Service
from team.access import Access, AccessDenied

PATH = "/mcp"
AUTH_ERROR = -32001  # JSON-RPC leaves -32000..-32099 to servers; MCP names none for this


def bearer_key(headers: Headers) -> str | None:
    scheme, _, key = headers.get("authorization", "").partition(" ")
    return key.strip() if scheme.lower() == "bearer" else None


def caller(svc: Service) -> RequestAccess:
    """The account of a tool call's HTTP request (its bearer key), as it is
    now. The request already passed the guard, so a refusal here means the
    key was revoked in between: a tool error."""

    def resolve(request: Request) -> Access:
        try:
            user, _ = authenticate(bearer_key(request.headers), svc.db, svc.settings)
        except ApiError as exc:
            raise AccessDenied(exc.message) from None
        return Access(user, svc.policy)

    return resolve


def refusal(error: ApiError) -> JSONResponse:
    """The API's refusal (its status, and OpenAI's error object as `data`) in
    JSON-RPC's shape: an MCP client shows a JSON-RPC error's message, where
    it reports any other error body only as "Server returned an error"."""
    rpc = {"code": AUTH_ERROR, "message": error.message, "data": body(error)["error"]}
    reply = {"jsonrpc": "2.0", "id": None, "error": rpc}
    return JSONResponse(reply, status_code=error.status, headers=error.headers)


def mount(app: Starlette, mcp_app: Starlette) -> None:
    """The MCP app's one route (/mcp) among the API's own, so the API's
    guard (Host, Origin, key, rate, body limit) and 404s apply around it.
    Its lifespan is the caller's to run (`create_app` does)."""
    (route,) = [r for r in mcp_app.routes if isinstance(r, Route) and r.path == PATH]
    app.router.routes.append(Route(PATH, endpoint=route.app, include_in_schema=False))
