"""The HTTP API's bearer keys (`rag keys`). A key belongs to an account and
carries that account's role and grants as they are at each request: a
revoked grant, a disabled or removed account, or a revoked key takes effect
at the next request.

A key reads `kbqa-<key id>-<secret>`. Only its SHA-256 is stored; the key id
is its public part, to list and revoke it by.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Row, select, update

from rag.errors import RagError
from team.access import User
from team.appdb.accounts import Accounts
from team.appdb.audit import AuditLog
from team.appdb.schema import api_keys

PREFIX = "kbqa-"


def key_id(key: str) -> str:
    """The public part of a key (the secret after it may hold dashes too)."""
    return key.removeprefix(PREFIX).split("-", 1)[0]


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """A row of `rag keys list` (never the key itself)."""

    key_id: str
    user: str
    label: str
    created: float
    revoked: float | None


class ApiKeys:
    def __init__(
        self, engine: Engine, accounts: Accounts, audit: AuditLog, clock: Callable[[], float]
    ) -> None:
        self.engine = engine
        self.accounts = accounts
        self.audit = audit
        self.clock = clock

    def create(self, username: str, label: str = "", *, by: str) -> tuple[ApiKey, str]:
        """A new key for the account `username`: its row, and the key itself,
        which is shown once and never stored."""
        key_id = secrets.token_hex(6)
        key = f"{PREFIX}{key_id}-{secrets.token_urlsafe(32)}"
        row = ApiKey(key_id, username, label, self.clock(), None)
        with self.engine.begin() as conn:
            self.accounts._existing(conn, username)
            conn.execute(
                api_keys.insert().values(
                    key_id=key_id, token_hash=_hash(key), username=username, label=label,
                    created=row.created, revoked=None,
                )
            )  # fmt: skip
        self.audit.record(by, "key-create", username, f"key={key_id}")
        return row, key

    def revoke(self, key_id: str, *, by: str) -> ApiKey:
        with self.engine.begin() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.key_id == key_id)).first()
            if row is None:
                raise RagError(f"No API key with the id '{key_id}'.")
            if row.revoked is None:
                conn.execute(
                    update(api_keys).where(api_keys.c.key_id == key_id).values(revoked=self.clock())
                )
        self.audit.record(by, "key-revoke", row.username, f"key={key_id}")
        return self._row(row)

    def list(self) -> list[ApiKey]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(api_keys).order_by(api_keys.c.created)).all()
        return [self._row(r) for r in rows]

    def user(self, key: str) -> User | None:
        """The account a key belongs to, with its grants as they are now;
        None for an unknown or revoked key, or a disabled or removed account."""
        if not key.startswith(PREFIX):
            return None
        with self.engine.connect() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.token_hash == _hash(key))).first()
            if row is None or row.revoked is not None:
                return None
            return self.accounts._user(conn, row.username)

    @staticmethod
    def _row(row: Row[Any]) -> ApiKey:
        return ApiKey(row.key_id, row.username, row.label, row.created, row.revoked)
