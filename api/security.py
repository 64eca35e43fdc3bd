"""Who is asking, how often, and how much: bearer API keys resolved to their
account on every request, a token bucket per key, and a cap on request
bodies read before any handler runs."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError, response, unauthorized
from rag.settings import Settings
from team.access import LOCAL_USER, User
from team.appdb import AppDB
from team.appdb.keys import PREFIX, key_id


def authenticate(key: str | None, db: AppDB, settings: Settings) -> tuple[User, str]:
    """The user a request's bearer key belongs to, and the name its rate
    limit is kept under (the key's public id).

    With no login (RAG_AUTH=none, served on loopback only) a request without
    a key of ours is the local admin, as in the app: OpenAI's clients insist
    on some key, so a placeholder ("EMPTY") works. A key of ours that is
    unknown or revoked is refused in every mode."""
    key = (key or "").strip()
    if not key.startswith(PREFIX):
        if settings.auth == "none":
            return LOCAL_USER, LOCAL_USER.name
        raise unauthorized(
            "Missing or malformed API key: send `Authorization: Bearer kbqa-...` "
            "(create one with `rag keys create NAME`)."
        )
    user = db.keys.user(key)
    if user is None:
        raise unauthorized("Invalid API key: unknown or revoked, or its account is disabled.")
    return user, f"key:{key_id(key)}"  # never the secret


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per key: `burst` requests at once, refilled at `per_minute`.
    In memory, so per process; several replicas each allow the rate."""

    def __init__(
        self, per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, who: str) -> None:
        """Spend one request of `who`'s bucket; ApiError 429 when it is empty."""
        now = self.clock()
        with self._lock:
            bucket = self._buckets.setdefault(who, _Bucket(float(self.burst), now))
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return
            wait = math.ceil((1 - bucket.tokens) / self.rate)
        error = ApiError(
            429, f"Rate limit reached: try again in {wait} s.", "rate_limit_error",
            "rate_limit_exceeded",
        )  # fmt: skip
        error.headers["Retry-After"] = str(wait)
        raise error


class _TooLarge(BaseException):  # not Exception: FastAPI would make it a 400
    pass


class BodyLimit:
    """ASGI middleware refusing a request body over `limit(path)` bytes with
    413, whether it declares its length (before reading any of it) or
    streams it in chunks. The connection is closed after a refusal: the rest
    of the body is never read."""

    def __init__(self, app: ASGIApp, limit: Callable[[str], int]) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        too_large = ApiError(
            413, f"Request body larger than {limit // 1024} KB.", code="request_too_large"
        )
        too_large.headers["Connection"] = "close"
        if not declared.isdigit() or int(declared) > limit:
            await response(too_large)(scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise _TooLarge
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except _TooLarge:
            if not started:
                await response(too_large)(scope, receive, send)
