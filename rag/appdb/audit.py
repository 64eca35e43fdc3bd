"""The audit trail: who did what to which target, when. Append-only: this
API has no way to change or remove an entry, and the database refuses to
as well (triggers, see schema.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine, select

from rag.appdb.schema import audit


@dataclass(frozen=True)
class AuditEntry:
    ts: float  # seconds since the epoch
    user: str  # "" for a login attempt, "cli:<os user>" for the `rag users` command
    action: str  # login, login-failed, login-refused, logout, user-add, grant, denied, upload...
    target: str  # a user name or a knowledge base
    detail: str


class AuditLog:
    def __init__(self, engine: Engine, clock: Callable[[], float]) -> None:
        self.engine = engine
        self.clock = clock

    def record(self, user: str, action: str, target: str = "", detail: str = "") -> None:
        with self.engine.begin() as conn:
            conn.execute(
                audit.insert().values(
                    ts=self.clock(), username=user, action=action, target=target, detail=detail
                )
            )

    def has(self, user: str, action: str, target: str, detail: str) -> bool:
        """Whether the trail holds this entry already (at any time)."""
        query = select(audit.c.id).where(
            audit.c.username == user, audit.c.action == action,
            audit.c.target == target, audit.c.detail == detail,
        ).limit(1)  # fmt: skip
        with self.engine.connect() as conn:
            return conn.execute(query).first() is not None

    def entries(self, limit: int | None = None, newest_first: bool = False) -> list[AuditEntry]:
        order = audit.c.id.desc() if newest_first else audit.c.id
        query = select(audit).order_by(order).limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [AuditEntry(r.ts, r.username, r.action, r.target, r.detail) for r in rows]
