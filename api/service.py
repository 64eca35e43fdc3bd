"""What every route shares: the settings, the app database, the access
policy, the LLM client, the rate limiter and the open knowledge bases.
Built once by `create_app`; the routes reach it through `service(request)`."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from api.errors import ApiError, unauthorized
from api.security import RateLimiter, authenticate
from rag import telemetry
from rag.knowledge_base import KnowledgeBase
from rag.llm import ChatModel
from rag.settings import Settings
from team import library
from team.access import Access, AccessPolicy, Action, valid_kb_name
from team.appdb import AppDB
from team.sources import SourceNames

# Where the guard (guard.py) leaves the requester's Access in a request's scope.
ACCESS = "kbqa.access"


@dataclass
class Service:
    settings: Settings
    db: AppDB
    chat: ChatModel
    limiter: RateLimiter
    policy: AccessPolicy = field(init=False)
    _kbs: dict[str, KnowledgeBase] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.policy = AccessPolicy(self.db)

    @property
    def root(self) -> Path:
        return self.settings.indexes_root

    def access(self, key: str | None) -> Access:
        """The requester (resolved afresh: a revoked grant or key holds at
        once), charged one request of their rate limit."""
        user, who = authenticate(key, self.db, self.settings)
        self.limiter.take(who)
        return Access(user, self.policy)

    def kb_dir(self, access: Access, name: str, action: Action = Action.READ) -> Path:
        """The folder of the knowledge base `name`, once the user may do
        `action` there. Asked first, so a user learns nothing about a
        knowledge base they may not use, not even whether it exists."""
        if not valid_kb_name(name):
            raise ApiError(404, f"No knowledge base named {name!r}.", code="model_not_found")
        access.require(action, name)
        return self.root / name

    def open(self, access: Access, name: str) -> KnowledgeBase:
        """The knowledge base `name`, for reading; opened once and shared (it
        follows later ingests by itself)."""
        kb_dir = self.kb_dir(access, name)
        if name not in library.list_knowledge_bases(self.root) or not library.has_index(
            kb_dir, self.settings
        ):
            raise ApiError(
                404, f"The knowledge base '{name}' does not exist or has no documents yet.",
                code="model_not_found",
            )  # fmt: skip
        with self._lock:
            telemetry.record_cache("knowledge_base", hit=name in self._kbs)
            if name not in self._kbs:
                self._kbs[name] = KnowledgeBase.open(kb_dir, settings=self.settings)
            return self._kbs[name]

    def open_knowledge_bases(self) -> list[KnowledgeBase]:
        with self._lock:
            return list(self._kbs.values())

    def close(self) -> None:
        with self._lock:
            for kb in self._kbs.values():
                kb.close()
            self._kbs.clear()


_PATH_KEYS = ("source", "path")


def public(value: Any, names: SourceNames) -> Any:
    """`value` (JSON-like) as a client may see it: document paths relative to
    the knowledge base (`SourceNames`, as the app shows them) and the
    server's folders taken out of any message, never its absolute paths."""
    if isinstance(value, dict):
        return {
            k: names.show(v) if k in _PATH_KEYS and isinstance(v, str) else public(v, names)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [public(v, names) for v in value]
    if isinstance(value, str):
        return names.redact(value)
    return value


def service(request: Request) -> Service:
    svc: Service = request.app.state.service
    return svc


# Declared so /docs offers an "Authorize" button; the guard (guard.py) reads
# the key, from the headers, before any body is read.
_bearer = HTTPBearer(auto_error=False, description="An API key from `rag keys create NAME`.")


def requester(request: Request, _: Annotated[object, Depends(_bearer)]) -> Access:
    """The dependency every route takes: who asks, as the guard let them in."""
    access = request.scope.get(ACCESS)
    if not isinstance(access, Access):  # a route reached around the guard
        raise unauthorized("No API key was checked for this request.")
    return access


Requester = Annotated[Access, Depends(requester)]
