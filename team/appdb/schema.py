"""The app database's tables (SQLAlchemy Core, one schema for SQLite and
PostgreSQL), its version, and the triggers that keep the audit append-only.

Names are stored as text, not as keys into `users`: conversations and the
audit also belong to users who log in through OIDC or to the one local
user, who have no row there.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)

from rag.errors import RagError

# The numbered migrations are in MIGRATIONS below: an older database is
# brought up to this version on first open; an older app refuses a newer one.
SCHEMA_VERSION = 4

metadata = MetaData()

meta = Table(
    "kbqa_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)
users = Table(
    "users",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("role", String(16), nullable=False),
    Column("password_hash", Text),  # NULL: no local login (an OIDC user's grants)
    Column("created", Float, nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
)
grants = Table(
    "grants",
    metadata,
    Column("username", String(128), ForeignKey("users.name"), primary_key=True),
    Column("kb", String(64), primary_key=True),
)
sessions = Table(
    "sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),  # sha256 of the token, hex
    Column("username", String(128), ForeignKey("users.name"), nullable=False),
    Column("created", Float, nullable=False),
    Column("expires", Float, nullable=False),
)
# Failed logins per name tried, whether or not it exists: so the throttle
# says nothing about who has an account.
login_attempts = Table(
    "login_attempts",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("failures", Integer, nullable=False),
    Column("blocked_until", Float, nullable=False),
)
conversations = Table(
    "conversations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("username", String(128), nullable=False),
    Column("kb", String(64), nullable=False),
    Column("title", Text, nullable=False, default=""),
    Column("started", Float, nullable=False),
    Column("updated", Float, nullable=False),
    Index("conversations_by_user", "username", "kb", "updated"),
)
turns = Table(
    "turns",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("conversation", Integer, ForeignKey("conversations.id"), nullable=False, index=True),
    Column("data", Text, nullable=False),  # team.conversation.Turn.to_json
)
# The HTTP API's bearer keys (rag keys): only the SHA-256 of a key is kept;
# `key_id`, the public part of the key, names it in `rag keys list/revoke`.
api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", String(32), primary_key=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("username", String(128), ForeignKey("users.name"), nullable=False),
    Column("label", Text, nullable=False, default=""),
    Column("created", Float, nullable=False),
    Column("revoked", Float),  # NULL: in use
)
# An OIDC login's account (issue 29): the provider's issuer and subject, bound
# at the first login, never its name or an unverified e-mail.
oidc_identities = Table(
    "oidc_identities",
    metadata,
    Column("issuer", String(255), primary_key=True),
    Column("subject", String(255), primary_key=True),
    Column("username", String(128), ForeignKey("users.name"), nullable=False, unique=True),
    Column("bound", Float, nullable=False),
)
# Knowledge bases an admin took away from a user: they win over what the
# user's OIDC groups grant (RAG_AUTH_GROUP_GRANTS).
revoked_grants = Table(
    "revoked_grants",
    metadata,
    Column("username", String(128), ForeignKey("users.name"), primary_key=True),
    Column("kb", String(64), primary_key=True),
)
# An answer given to a user (API completion id or app turn) and their vote on it.
answer_feedback = Table(
    "answer_feedback",
    metadata,
    Column("answer_id", String(64), primary_key=True),
    Column("username", String(128), nullable=False),
    Column("kb", String(64), nullable=False),
    Column("answered", Float, nullable=False),
    Column("question", Text, nullable=False),
    Column("data", Text, nullable=False),  # the turn's JSON and the passages retrieved
    Column("vote", Integer),  # 1 up, -1 down, NULL: not voted (forgotten past a bound)
    Column("comment", Text),
    Column("voted", Float),
    Index("answer_feedback_by_user", "username", "vote", "answered"),
    Index("answer_feedback_by_kb", "kb", "vote", "voted"),
)
audit = Table(
    "audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False),
    Column("username", String(128), nullable=False),
    Column("action", String(32), nullable=False),
    Column("target", Text, nullable=False),
    Column("detail", Text, nullable=False),
)

_APPEND_ONLY = "the audit trail is append-only"
_TRIGGERS = {
    "sqlite": [
        f"CREATE TRIGGER IF NOT EXISTS audit_no_{verb} BEFORE {verb.upper()} ON audit "
        f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END"
        for verb in ("update", "delete")
    ],
    "postgresql": [
        "CREATE OR REPLACE FUNCTION kbqa_audit_append_only() RETURNS trigger "
        f"LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION '{_APPEND_ONLY}'; END $$",
        "CREATE OR REPLACE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit "
        "FOR EACH ROW EXECUTE FUNCTION kbqa_audit_append_only()",
        "CREATE OR REPLACE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit "
        "FOR EACH STATEMENT EXECUTE FUNCTION kbqa_audit_append_only()",
    ],
}


class AppDBIncompatible(RagError):
    """The app database was written by a newer version of the app."""


def _create(*tables: Table) -> Callable[[Connection], None]:
    return lambda conn: metadata.create_all(conn, tables=list(tables), checkfirst=True)


# What each version adds to the one before, in order: a database at version
# n runs n+1 .. SCHEMA_VERSION in one transaction.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    2: _create(api_keys),  # the HTTP API's bearer keys
    3: _create(oidc_identities, revoked_grants),  # OIDC bindings; revokes over groups
    4: _create(answer_feedback),  # answers given and the votes on them (feedback.py)
}


def create_or_check(engine: Engine) -> bool:
    """Creates the schema on first use, migrates an older one, refuses a
    schema newer than this code reads. True when it was created just now."""
    with engine.begin() as conn:
        if not engine.dialect.has_table(conn, "kbqa_meta"):
            metadata.create_all(conn)
            for statement in _TRIGGERS.get(engine.dialect.name, []):
                conn.execute(text(statement))
            conn.execute(meta.insert().values(key="schema", value=str(SCHEMA_VERSION)))
            return True
        found = int(conn.execute(meta.select().where(meta.c.key == "schema")).one().value)
        if found > SCHEMA_VERSION:
            raise AppDBIncompatible(
                f"The app database was written by a newer version of the app (schema {found}; "
                f"this one reads schema {SCHEMA_VERSION}). Upgrade the app."
            )
        for version in range(found + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[version](conn)
        if found < SCHEMA_VERSION:
            conn.execute(
                meta.update().where(meta.c.key == "schema").values(value=str(SCHEMA_VERSION))
            )
    return False
