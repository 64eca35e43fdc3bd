"""What every route shares: the settings, the app database, the access
policy, the LLM client, the rate limiter and the core service
(core/service.py: the open knowledge bases and the rules).
Built once by `create_app`; the routes reach it through `service(request)`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from api.errors import unauthorized
from api.security import RateLimiter, authenticate
from core.service import KnowledgeService
from rag.knowledge_base import KnowledgeBase
from rag.llm import ChatModel
from rag.settings import Settings
from team.access import Access, AccessPolicy, Action
from team.appdb import AppDB
from team.sources import SourceNames

# Where the guard (guard.py) leaves the requester's Access in a request's scope.
ACCESS = "kbqa.access"


@dataclass
class Service:
    settings: Settings
    db: AppDB
    chat: ChatModel | None
    limiter: RateLimiter
    policy: AccessPolicy = field(init=False)
    # The process's one KnowledgeService: the routes and the /mcp tools share it.
    core: KnowledgeService = field(init=False)

    def __post_init__(self) -> None:
        self.policy = AccessPolicy(self.db)
        self.core = KnowledgeService(self.settings, chat=self.chat)

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
        return self.core.kb_dir(access, name, action)

    def open(self, access: Access, name: str) -> KnowledgeBase:
        return self.core.open(access, name)

    def open_knowledge_bases(self) -> list[KnowledgeBase]:
        return self.core.open_knowledge_bases()

    def close(self) -> None:
        self.core.close()


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
