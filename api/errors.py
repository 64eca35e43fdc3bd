"""The HTTP edge's conversion of errors: every failure leaves as OpenAI's
error JSON, `{"error": {"message", "type", "code"}}`, with the status code
OpenAI's clients expect (401 raises `openai.AuthenticationError`, 403
`PermissionDeniedError`, 429 `RateLimitError`...). The core raises the same
`RagError`s here as in the app and the CLI; only this module knows their
statuses."""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.service import (
    AmbiguousDocument,
    BadPassageCount,
    NoSuchDocument,
    TooLong,
    TooManyFiles,
)
from rag import errors
from rag.settings import Settings
from team.access import AccessDenied
from team.sources import server_redacted

log = logging.getLogger("kbqa.api")


class ApiError(Exception):
    """A refusal of the API itself: its status, OpenAI's error type and code."""

    def __init__(
        self, status: int, message: str, type_: str = "invalid_request_error", code: str = ""
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code
        self.headers: dict[str, str] = {}


def unauthorized(message: str) -> ApiError:
    return ApiError(401, message, "authentication_error", "invalid_api_key")


# The core's errors, most specific first: (status, type, code).
_STATUS: list[tuple[type[errors.RagError], int, str, str]] = [
    (AccessDenied, 403, "permission_error", "permission_denied"),
    (TooLong, 400, "invalid_request_error", "message_too_long"),
    (TooManyFiles, 400, "invalid_request_error", "too_many_files"),
    (BadPassageCount, 400, "invalid_request_error", "invalid_k"),
    (NoSuchDocument, 404, "invalid_request_error", "document_not_found"),
    (AmbiguousDocument, 409, "invalid_request_error", "ambiguous_document"),
    (errors.QuestionTooLong, 400, "invalid_request_error", "context_length_exceeded"),
    (errors.BadFilter, 400, "invalid_request_error", "invalid_filter"),
    (errors.NothingMatches, 404, "invalid_request_error", "no_document_matches"),
    (errors.IndexMissing, 404, "invalid_request_error", "model_not_found"),
    (errors.IndexBusy, 409, "conflict_error", "index_busy"),
    (errors.RebuildRefused, 409, "conflict_error", "rebuild_refused"),
    (errors.LLMUnreachable, 503, "server_error", "llm_unreachable"),
    (errors.LLMTimeout, 504, "server_error", "llm_timeout"),
    (errors.LLMError, 502, "server_error", "llm_error"),
]


def from_rag_error(exc: errors.RagError, settings: Settings) -> ApiError:
    """The core's error as the API's; its message without the server's
    folders or the LLM server's address (team.sources.server_redacted)."""
    message = server_redacted(str(exc), settings)
    for kind, status, type_, code in _STATUS:
        if isinstance(exc, kind):
            return ApiError(status, message, type_, code)
    return ApiError(500, message, "server_error", "internal_error")


def body(error: ApiError) -> dict[str, object]:
    return {"error": {"message": error.message, "type": error.type, "code": error.code or None}}


def sse_event(error: ApiError) -> str:
    """The error as a server-sent event, for a failure after the stream
    began (the status line is already sent); OpenAI's client raises it."""
    return f"data: {json.dumps(body(error))}\n\n"


def response(error: ApiError) -> JSONResponse:
    return JSONResponse(body(error), status_code=error.status, headers=error.headers)


def install(app: FastAPI, settings: Settings) -> None:
    """The handlers that give every error OpenAI's shape."""

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return response(exc)

    @app.exception_handler(errors.RagError)
    async def _rag(_: Request, exc: errors.RagError) -> JSONResponse:
        log.info("refused: %s", exc)  # the operator's log keeps the full message
        return response(from_rag_error(exc, settings))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else "invalid request"
        return response(ApiError(400, message, code="invalid_request"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return response(ApiError(exc.status_code, str(exc.detail)))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", exc_info=exc)
        return response(ApiError(500, "Internal error; see the server log.", "server_error"))
