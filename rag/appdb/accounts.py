"""Local accounts: users, their grants, logins and sessions.

Passwords are kept as argon2id hashes. A failed login refuses the name
tried for a while, doubling with each failure (RAG_LOGIN_BACKOFF, at most
RAG_LOGIN_BACKOFF_MAX seconds); the count lives in the database, so it
holds across app replicas, and it is kept per name tried, so a name that
does not exist is answered exactly like one that does. Sessions are random
tokens, stored only as their SHA-256, that expire after RAG_SESSION_HOURS.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Connection, Engine, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from rag.access import LoginRefused, Role, User, valid_kb_name
from rag.appdb.audit import AuditLog
from rag.appdb.schema import api_keys, grants, login_attempts, sessions, users
from rag.errors import RagError
from rag.settings import Settings

MIN_PASSWORD = 8
_NAME = re.compile(r"[\w.@+-]{1,128}")  # a login name or an e-mail address
_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Checked against for a name without a password, so that a login
    takes as long whether or not the name exists."""
    return _hasher.hash(secrets.token_hex(16))


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Account:
    """A row of `rag users list`."""

    user: User
    created: float
    disabled: bool
    has_password: bool


class Accounts:
    def __init__(
        self, engine: Engine, audit: AuditLog, settings: Settings, clock: Callable[[], float]
    ) -> None:
        self.engine = engine
        self.audit = audit
        self.settings = settings
        self.clock = clock

    # -- users and grants ---------------------------------------------------------------

    def add_user(
        self, name: str, role: Role | str, password: str | None, kbs: Iterable[str] = (),
        *, by: str,
    ) -> User:  # fmt: skip
        """A new account; `password` None makes one with no local login (an
        OIDC user's grants). `by` names who did it, for the audit."""
        role = _role(role)
        if not _NAME.fullmatch(name):
            raise RagError(f"{name!r} is not a valid user name: letters, digits and . _ @ + -.")
        kbs = sorted(set(kbs))
        for kb in kbs:
            _check_kb(kb)
        hashed = None if password is None else _hasher.hash(_check_password(password))
        with self.engine.begin() as conn:
            if conn.execute(select(users.c.name).where(users.c.name == name)).first():
                raise RagError(f"A user named '{name}' already exists.")
            conn.execute(users.insert().values(name=name, role=role.value, password_hash=hashed,
                                               created=self.clock(), disabled=False))  # fmt: skip
            for kb in kbs:
                conn.execute(grants.insert().values(username=name, kb=kb))
        self.audit.record(by, "user-add", name, f"role={role}")
        for kb in kbs:
            self.audit.record(by, "grant", name, f"kb={kb}")
        return User(name, role, frozenset(kbs))

    def remove_user(self, name: str, *, by: str) -> None:
        """The account, its grants, sessions and API keys."""
        with self.engine.begin() as conn:
            self._existing(conn, name)
            conn.execute(delete(sessions).where(sessions.c.username == name))
            conn.execute(delete(grants).where(grants.c.username == name))
            conn.execute(delete(api_keys).where(api_keys.c.username == name))
            conn.execute(delete(users).where(users.c.name == name))
        self.audit.record(by, "user-remove", name)

    def set_password(self, name: str, password: str, *, by: str) -> None:
        hashed = _hasher.hash(_check_password(password))
        self._update(name, by, "password", password_hash=hashed)

    def set_disabled(self, name: str, disabled: bool, *, by: str) -> None:
        self._update(name, by, "disable" if disabled else "enable", disabled=disabled)

    def set_role(self, name: str, role: Role | str, *, by: str) -> None:
        role = _role(role)
        self._update(name, by, "role", f"role={role}", role=role.value)

    def _update(self, name: str, by: str, action: str, detail: str = "", **values: object) -> None:
        with self.engine.begin() as conn:
            self._existing(conn, name)
            conn.execute(update(users).where(users.c.name == name).values(**values))
            if action in ("password", "disable"):  # whoever was logged in is out
                conn.execute(delete(sessions).where(sessions.c.username == name))
        self.audit.record(by, action, name, detail)

    def grant(self, name: str, kb: str, *, by: str) -> None:
        _check_kb(kb)
        with self.engine.begin() as conn:
            self._existing(conn, name)
            held = select(grants).where(grants.c.username == name, grants.c.kb == kb)
            if conn.execute(held).first() is None:
                conn.execute(grants.insert().values(username=name, kb=kb))
        self.audit.record(by, "grant", name, f"kb={kb}")

    def revoke(self, name: str, kb: str, *, by: str) -> None:
        with self.engine.begin() as conn:
            self._existing(conn, name)
            conn.execute(delete(grants).where(grants.c.username == name, grants.c.kb == kb))
        self.audit.record(by, "revoke", name, f"kb={kb}")

    def user(self, name: str) -> User | None:
        """The enabled account `name` with its grants as they are now."""
        with self.engine.connect() as conn:
            return self._user(conn, name)

    def accounts(self) -> list[Account]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(users).order_by(users.c.name)).all()
            held = conn.execute(select(grants)).all()
        kbs: dict[str, set[str]] = {}
        for g in held:
            kbs.setdefault(g.username, set()).add(g.kb)
        return [
            Account(User(r.name, Role(r.role), frozenset(kbs.get(r.name, ()))),
                    r.created, bool(r.disabled), r.password_hash is not None)
            for r in rows
        ]  # fmt: skip

    @staticmethod
    def _existing(conn: Connection, name: str) -> None:
        if conn.execute(select(users.c.name).where(users.c.name == name)).first() is None:
            raise RagError(f"No user named '{name}'.")

    @staticmethod
    def _user(conn: Connection, name: str) -> User | None:
        row = conn.execute(select(users).where(users.c.name == name)).first()
        if row is None or row.disabled:
            return None
        held = conn.execute(select(grants.c.kb).where(grants.c.username == name)).scalars()
        return User(row.name, Role(row.role), frozenset(held))

    # -- logins --------------------------------------------------------------------------

    def verify_login(self, name: str, password: str) -> User:
        """The user, when `password` is theirs and the name is not being
        throttled; otherwise LoginRefused, with the same message for a wrong
        password and a name that does not exist. Every outcome is audited."""
        now, key = self.clock(), name[:128]
        with self.engine.connect() as conn:
            attempt = conn.execute(
                select(login_attempts).where(login_attempts.c.name == key)
            ).first()
            row = conn.execute(select(users).where(users.c.name == name)).first()
        if attempt is not None and attempt.blocked_until > now:
            wait = attempt.blocked_until - now
            self.audit.record("", "login-refused", key)
            raise LoginRefused(f"Too many failed logins: try again in {math.ceil(wait)} s.", wait)
        stored = row.password_hash if row is not None and not row.disabled else None
        # _verify first: an unknown name costs the same hash check.
        if not _verify(stored, password) or stored is None:
            failures = (attempt.failures if attempt is not None else 0) + 1
            wait = min(self.settings.login_backoff * 2 ** (failures - 1),
                       self.settings.login_backoff_max)  # fmt: skip
            with self.engine.begin() as conn:
                _upsert_attempt(conn, key, failures, now + wait)
            self.audit.record("", "login-failed", key)
            raise LoginRefused("Wrong name or password.")
        with self.engine.begin() as conn:
            conn.execute(delete(login_attempts).where(login_attempts.c.name == key))
            if _hasher.check_needs_rehash(stored):
                new = _hasher.hash(password)
                conn.execute(update(users).where(users.c.name == name).values(password_hash=new))
            user = self._user(conn, name)
        self.audit.record(name, "login", name)
        assert user is not None
        return user

    def create_session(self, user: User) -> str:
        """A new session for a user who just logged in; its token (keep it
        in a cookie or the browser session; only its hash is stored)."""
        token = secrets.token_urlsafe(32)
        now = self.clock()
        expires = now + self.settings.session_hours * 3600
        with self.engine.begin() as conn:
            self._existing(conn, user.name)
            conn.execute(delete(sessions).where(sessions.c.expires <= now))
            conn.execute(sessions.insert().values(token_hash=_token_hash(token),
                         username=user.name, created=now, expires=expires))  # fmt: skip
        return token

    def session_user(self, token: str) -> User | None:
        """The user of a live session, with their role and grants as they are
        now; None for an expired, ended or unknown token."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(sessions).where(sessions.c.token_hash == _token_hash(token))
            ).first()
            if row is None or row.expires <= self.clock():
                return None
            return self._user(conn, row.username)

    def end_session(self, token: str) -> None:
        with self.engine.begin() as conn:
            ended = conn.execute(
                delete(sessions).where(sessions.c.token_hash == _token_hash(token))
                .returning(sessions.c.username)
            ).scalars().all()  # fmt: skip
        for name in ended:
            self.audit.record(name, "logout", name)


def _role(role: Role | str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise RagError(f"Unknown role {role!r}: admin, editor or reader.") from None


def _check_kb(kb: str) -> None:
    if not valid_kb_name(kb):
        raise RagError(f"{kb!r} is not a knowledge base name: letters, digits and . _ -.")


def _check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise RagError(f"A password needs at least {MIN_PASSWORD} characters.")
    return password


def _verify(stored: str | None, password: str) -> bool:
    """Whether `password` is the one hashed in `stored`. With no hash, a
    dummy one is checked: the answer takes as long."""
    try:
        return _hasher.verify(stored or _dummy_hash(), password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False


def _upsert_attempt(conn: Connection, name: str, failures: int, until: float) -> None:
    insert = sqlite_insert if conn.dialect.name == "sqlite" else pg_insert
    statement = insert(login_attempts).values(name=name, failures=failures, blocked_until=until)
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=["name"], set_={"failures": failures, "blocked_until": until}
        )
    )
