"""The audit trail: who did what to which target, when. Append-only: this
API has no way to change or remove an entry, and the database refuses to
as well (triggers, see schema.py)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine, select

from team.appdb.schema import audit

# What an entry keeps of each field: a name or action fits its column; a
# target or detail (a login name someone typed, a file name) is cut too, so
# no caller can fill the trail with megabytes or forge a second line.
MAX_NAME = 128
MAX_ACTION = 32
MAX_TARGET = 256
MAX_DETAIL = 1024
# Control characters (newlines, escapes, NUL, which PostgreSQL refuses) and
# the bidirectional overrides that make a name read backwards on screen.
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def clean(value: str, limit: int) -> str:
    """`value` as one printable line of at most `limit` characters."""
    value = _UNPRINTABLE.sub("\ufffd", str(value))
    return value if len(value) <= limit else value[: limit - 1] + "…"


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
                    ts=self.clock(),
                    username=clean(user, MAX_NAME),
                    action=clean(action, MAX_ACTION),
                    target=clean(target, MAX_TARGET),
                    detail=clean(detail, MAX_DETAIL),
                )
            )

    def has(self, user: str, action: str, target: str, detail: str) -> bool:
        """Whether the trail holds this entry already (at any time)."""
        query = select(audit.c.id).where(
            audit.c.username == clean(user, MAX_NAME), audit.c.action == clean(action, MAX_ACTION),
            audit.c.target == clean(target, MAX_TARGET),
            audit.c.detail == clean(detail, MAX_DETAIL),
        ).limit(1)  # fmt: skip
        with self.engine.connect() as conn:
            return conn.execute(query).first() is not None

    def entries(self, limit: int | None = None, newest_first: bool = False) -> list[AuditEntry]:
        order = audit.c.id.desc() if newest_first else audit.c.id
        query = select(audit).order_by(order).limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [AuditEntry(r.ts, r.username, r.action, r.target, r.detail) for r in rows]
