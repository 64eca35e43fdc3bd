"""The app's own database: users, grants, sessions, conversations and the
audit trail. Never inside an index folder (ingestion owns those): by
default a SQLite file beside the indexes, `<indexes_root>/.app/app.sqlite`;
with RAG_APP_DB a file path or a `postgresql://` URL, which several app
replicas behind a load balancer share.

    db = open_app_db(settings)
    db.accounts       users, grants, logins, sessions   (accounts.py)
    db.conversations  each user's conversations          (conversations.py)
    db.audit          the append-only audit trail        (audit.py)
    db.keys           the HTTP API's bearer keys         (keys.py)
    db.identities     OIDC logins bound to accounts      (identities.py)
    db.feedback       answers given, votes on them       (feedback.py)

The schema is created on first use and versioned (schema.py).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, make_url, select
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError

from rag.errors import RagError
from rag.settings import Settings
from team.access import LOCAL_USER
from team.appdb.accounts import Account, Accounts
from team.appdb.audit import AuditEntry, AuditLog
from team.appdb.conversations import ConversationMissing, Conversations
from team.appdb.feedback import Feedback
from team.appdb.identities import Identities, OidcLogin
from team.appdb.keys import ApiKey, ApiKeys
from team.appdb.schema import AppDBIncompatible, create_or_check, meta

__all__ = [
    "Account",
    "ApiKey",
    "AppDB",
    "AppDBIncompatible",
    "AuditEntry",
    "ConversationMissing",
    "OidcLogin",
    "app_db_url",
    "open_app_db",
]

LEGACY_CONVERSATIONS = "conversations.sqlite"  # what the app kept before accounts


def app_db_url(settings: Settings) -> URL:
    configured = settings.app_db.get_secret_value().strip()
    if not configured:
        return URL.create("sqlite", database=str(settings.indexes_root / ".app" / "app.sqlite"))
    if "://" not in configured:
        return URL.create("sqlite", database=configured)
    url = make_url(configured)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")  # psycopg 3, not SQLAlchemy's default
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise RagError(
            f"RAG_APP_DB must be a file path or a postgresql:// URL, not {url.drivername}://"
        )
    return url


class AppDB:
    def __init__(
        self, engine: Engine, settings: Settings, clock: Callable[[], float] = time.time
    ) -> None:
        self.engine = engine
        self.audit = AuditLog(engine, clock)
        self.accounts = Accounts(engine, self.audit, settings, clock)
        self.conversations = Conversations(engine, clock)
        self.keys = ApiKeys(engine, self.accounts, self.audit, clock)
        self.identities = Identities(engine, self.accounts, self.audit, clock)
        self.feedback = Feedback(engine, self.audit, clock)

    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(select(meta.c.value).where(meta.c.key == "schema")).scalar_one()
            )


def open_app_db(settings: Settings, clock: Callable[[], float] = time.time) -> AppDB:
    """The app database the settings name, its schema created on first use.
    The conversations a SQLite-backed app kept before it had accounts move
    to the local user then. `clock` is for the tests."""
    url = app_db_url(settings)
    engine = _engine(url)
    try:
        created = create_or_check(engine)
    except OperationalError as exc:
        shown = url.render_as_string(hide_password=True)
        raise RagError(f"Cannot open the app database {shown}: {exc.orig}") from exc
    db = AppDB(engine, settings, clock)
    legacy = settings.indexes_root / ".app" / LEGACY_CONVERSATIONS
    if created and legacy.is_file():
        db.conversations.import_legacy(legacy, LOCAL_USER.name)
    return db


def _engine(url: URL) -> Engine:
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    _private_file(Path(url.database or ""))
    engine = create_engine(url, connect_args={"timeout": 10})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        # WAL: the app's readers never wait for a writer.
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA foreign_keys=ON")

    return engine


def _private_file(path: Path) -> None:
    """Creates the SQLite file (and its folder) readable by this user only:
    it holds password hashes, sessions and conversations. SQLite gives its
    -wal and -shm files the mode of the database file. An existing file keeps
    its mode (an operator may share it with a group on purpose)."""
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True, mode=0o700)
    if str(path) in ("", ":memory:") or path.exists():
        return
    with contextlib.suppress(FileExistsError):  # another process made it just now
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
