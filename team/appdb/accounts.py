"""Local accounts: users, their grants, logins and sessions.

Passwords are kept as argon2id hashes. A failed login refuses the name
tried for a while, doubling with each failure (RAG_LOGIN_BACKOFF, at most
RAG_LOGIN_BACKOFF_MAX seconds); the count lives in the database, so it
holds across app replicas, and it is kept per name tried, so a name that
does not exist is answered exactly like one that does. A login is counted
before its password is checked, in the same statement that checks the
name is not refused: parallel guesses are each counted, one at a time. At
most MAX_HASHES password hashes run at once in a process (each takes 64 MiB).
Sessions are random tokens, stored only as their SHA-256, that expire after
RAG_SESSION_HOURS.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Connection, Engine, Table, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from rag.errors import RagError
from rag.settings import Settings
from team.access import LoginRefused, Role, User, valid_kb_name
from team.appdb.audit import AuditLog
from team.appdb.schema import (
    api_keys,
    conversations,
    grants,
    login_attempts,
    oidc_identities,
    revoked_grants,
    sessions,
    turns,
    users,
)

MIN_PASSWORD = 8
_NAME = re.compile(r"[\w.@+-]{1,128}")  # a login name or an e-mail address
_hasher = PasswordHasher()
# argon2id takes 64 MiB and a few CPU-tenths per hash: a burst of logins
# waits for a slot (HASH_WAIT_S at most) instead of exhausting the server.
MAX_HASHES = 4
HASH_WAIT_S = 10.0
HASH_SLOTS = threading.BoundedSemaphore(MAX_HASHES)
BUSY = "Too many logins at once: try again in a few seconds."
# How long a name is held while its password is checked (then: its window).
CHECKING_S = 15.0


@contextmanager
def _hash_slot() -> Iterator[None]:
    if not HASH_SLOTS.acquire(timeout=HASH_WAIT_S):
        raise LoginRefused(BUSY, 1.0)
    try:
        yield
    finally:
        HASH_SLOTS.release()


def _hash(password: str) -> str:
    with _hash_slot():
        return _hasher.hash(_check_password(password))


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
    revoked: frozenset[str] = frozenset()  # taken away, whatever OIDC groups grant
    provider: str = ""  # the OIDC issuer the account is bound to ("": none)


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
        hashed = None if password is None else _hash(password)
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

    def remove_user(self, name: str, *, by: str) -> int:
        """The account, its grants, sessions, API keys, OIDC binding and its
        conversations (the audit keeps what they did); how many conversations."""
        owned = select(conversations.c.id).where(conversations.c.username == name)
        with self.engine.begin() as conn:
            self._existing(conn, name)
            talks = len(conn.execute(owned).all())
            conn.execute(delete(turns).where(turns.c.conversation.in_(owned)))
            conn.execute(delete(conversations).where(conversations.c.username == name))
            for table in (sessions, grants, revoked_grants, api_keys, oidc_identities):
                conn.execute(delete(table).where(table.c.username == name))
            conn.execute(delete(users).where(users.c.name == name))
        self.audit.record(by, "user-remove", name, f"conversations={talks}")
        return talks

    def set_password(self, name: str, password: str, *, by: str) -> None:
        """A new password; whoever was logged in as `name` is out."""
        with self.engine.connect() as conn:
            self._existing(conn, name)  # before the hash: a typo costs no 64 MiB
        self._update(name, by, "password", password_hash=_hash(password))

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
        """`kb` for `name`; it undoes an earlier revoke."""
        _check_kb(kb)
        with self.engine.begin() as conn:
            self._existing(conn, name)
            _delete_row(conn, revoked_grants, name, kb)
            held = select(grants).where(grants.c.username == name, grants.c.kb == kb)
            if conn.execute(held).first() is None:
                conn.execute(grants.insert().values(username=name, kb=kb))
        self.audit.record(by, "grant", name, f"kb={kb}")

    def revoke(self, name: str, kb: str, *, by: str) -> None:
        """Takes `kb` from `name`, and keeps the revoke: it wins over what the
        user's OIDC groups grant, until an admin grants `kb` again."""
        _check_kb(kb)
        with self.engine.begin() as conn:
            self._existing(conn, name)
            _delete_row(conn, grants, name, kb)
            held = select(revoked_grants).where(
                revoked_grants.c.username == name, revoked_grants.c.kb == kb
            )
            if conn.execute(held).first() is None:
                conn.execute(revoked_grants.insert().values(username=name, kb=kb))
        self.audit.record(by, "revoke", name, f"kb={kb}")

    def forget_kb(self, kb: str, *, by: str) -> list[str]:
        """Ends every grant of `kb` (and every kept revoke), for a knowledge
        base being deleted: a new base of the same name starts with none.
        The users who held a grant, each revoke in the audit trail."""
        _check_kb(kb)
        with self.engine.begin() as conn:
            held = select(grants.c.username).where(grants.c.kb == kb).order_by(grants.c.username)
            holders = [row.username for row in conn.execute(held)]
            conn.execute(grants.delete().where(grants.c.kb == kb))
            conn.execute(revoked_grants.delete().where(revoked_grants.c.kb == kb))
        for name in holders:
            self.audit.record(by, "revoke", name, f"kb={kb} (deleted)")
        return holders

    def user(self, name: str) -> User | None:
        """The enabled account `name` with its grants as they are now."""
        with self.engine.connect() as conn:
            return self._user(conn, name)

    def accounts(self) -> list[Account]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(users).order_by(users.c.name)).all()
            held, taken = _by_user(conn, grants), _by_user(conn, revoked_grants)
            binds = conn.execute(select(oidc_identities.c.username, oidc_identities.c.issuer))
            bound = {b.username: b.issuer for b in binds}
        return [
            Account(User(r.name, Role(r.role), held.get(r.name, frozenset())),
                    r.created, bool(r.disabled), r.password_hash is not None,
                    taken.get(r.name, frozenset()), bound.get(r.name, ""))
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

    @staticmethod
    def revoked(conn: Connection, name: str) -> frozenset[str]:
        query = select(revoked_grants.c.kb).where(revoked_grants.c.username == name)
        return frozenset(conn.execute(query).scalars())

    # -- logins --------------------------------------------------------------------------

    def verify_login(self, name: str, password: str) -> User:
        """The user, when `password` is theirs and the name is not being
        throttled; otherwise LoginRefused, with the same message for a wrong
        password and a name that does not exist. Every outcome is audited."""
        now, key = self.clock(), name[:128]
        if not HASH_SLOTS.acquire(timeout=HASH_WAIT_S):
            self.audit.record("", "login-refused", key, "busy")
            raise LoginRefused(BUSY, 1.0)
        try:
            failures = self._count_attempt(key, now)
            with self.engine.connect() as conn:
                row = conn.execute(select(users).where(users.c.name == name)).first()
            stored = row.password_hash if row is not None and not row.disabled else None
            # _verify first: an unknown name costs the same hash check.
            right = _verify(stored, password) and stored is not None
            rehashed = None
            if right and stored is not None and _hasher.check_needs_rehash(stored):
                rehashed = _hasher.hash(password)
        finally:
            HASH_SLOTS.release()
        with self.engine.begin() as conn:
            if not right:
                wait = min(self.settings.login_backoff * 2 ** (failures - 1),
                           self.settings.login_backoff_max)  # fmt: skip
                conn.execute(update(login_attempts).where(login_attempts.c.name == key)
                             .values(blocked_until=now + wait))  # fmt: skip
            else:
                conn.execute(delete(login_attempts).where(login_attempts.c.name == key))
                if rehashed:
                    conn.execute(
                        update(users).where(users.c.name == name).values(password_hash=rehashed)
                    )
                user = self._user(conn, name)
        if not right:
            self.audit.record("", "login-failed", key)
            raise LoginRefused("Wrong name or password.")
        self.audit.record(name, "login", name)
        assert user is not None
        return user

    def _count_attempt(self, key: str, now: float) -> int:
        """Counts a login for the name `key`, unless the name is refused now,
        in one statement: the failures so far, this one included (a success
        clears them); otherwise LoginRefused. While its password is checked
        the name is held (CHECKING_S), so parallel guesses queue, each counted."""
        insert = sqlite_insert if self.engine.dialect.name == "sqlite" else pg_insert
        held = now + CHECKING_S
        first = insert(login_attempts).values(name=key, failures=1, blocked_until=held)
        count = first.on_conflict_do_update(
            index_elements=["name"],
            set_={"failures": login_attempts.c.failures + 1, "blocked_until": held},
            where=login_attempts.c.blocked_until <= now,
        ).returning(login_attempts.c.failures)
        with self.engine.begin() as conn:
            failures = conn.execute(count).scalar()
            if failures is not None:
                return int(failures)
            until = conn.execute(
                select(login_attempts.c.blocked_until).where(login_attempts.c.name == key)
            ).scalar_one()
        self.audit.record("", "login-refused", key)
        wait = max(until - now, 0.001)
        raise LoginRefused(f"Too many failed logins: try again in {math.ceil(wait)} s.", wait)

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


def _delete_row(conn: Connection, table: Table, name: str, kb: str) -> None:
    conn.execute(delete(table).where(table.c.username == name, table.c.kb == kb))


def _by_user(conn: Connection, table: Table) -> dict[str, frozenset[str]]:
    """A grants-like table's knowledge bases, per user name."""
    kbs: dict[str, set[str]] = {}
    for row in conn.execute(select(table.c.username, table.c.kb)):
        kbs.setdefault(row.username, set()).add(row.kb)
    return {name: frozenset(held) for name, held in kbs.items()}
