"""Which account an OIDC login is (issue 29): the provider's issuer and
subject (`iss` + `sub`, which the provider never gives to anyone else), bound
to one account at its first login. A display name is never an account name,
and an e-mail address counts only when the provider says it is verified.

At a subject's first login, its account is
- the account named by its verified e-mail, when no subject has it yet (an
  admin made it ahead with `rag users add`); bound once, then no other
  subject gets it, whatever its e-mail;
- else, when the groups mapping admits the login (a role from its groups, or
  RAG_AUTH_DEFAULT_ROLE), a new account with no password and no grants of
  its own, named by the verified e-mail if that name is free, else
  `oidc-<subject>`; admins then see it, and can disable it, in the Users tab;
- else none: the visitor is told to ask an admin.

What the bound account says wins over the groups: a disabled account is
refused whatever its groups, and a knowledge base an admin revoked from it is
gone whatever its groups grant. Otherwise the user has the stronger role and
all the knowledge bases of the account and of the groups.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import IntegrityError

from team.access import STRENGTH, GroupMapping, LoginRefused, Role, User, identity_user
from team.appdb.accounts import Accounts
from team.appdb.audit import AuditLog
from team.appdb.schema import oidc_identities, users

DISABLED = "This account is disabled: ask an admin."
NO_SUBJECT = "The identity provider's ID token has no issuer or subject: this login cannot be used."
_NAME_CHARS = re.compile(r"[^\w.@+-]")


@dataclass(frozen=True)
class OidcLogin:
    """What an OIDC provider vouches for in its ID token."""

    issuer: str
    subject: str
    email: str = ""
    email_verified: bool = False
    groups: tuple[str, ...] = ()

    @property
    def verified_email(self) -> str:
        return self.email if self.email_verified else ""


class Identities:
    def __init__(
        self, engine: Engine, accounts: Accounts, audit: AuditLog, clock: Callable[[], float]
    ) -> None:
        self.engine = engine
        self.accounts = accounts
        self.audit = audit
        self.clock = clock

    def bound(self, issuer: str, subject: str) -> str | None:
        """The account name bound to this issuer and subject, if any."""
        with self.engine.connect() as conn:
            return _bound(conn, issuer, subject)

    def resolve(self, login: OidcLogin, mapping: GroupMapping) -> User | None:
        """The user this login is now, binding its account at the first login;
        None when it has no account and its groups admit it nowhere.
        LoginRefused for a disabled account or a token with no subject."""
        if not login.issuer or not login.subject:
            raise LoginRefused(NO_SUBJECT)
        mapped = identity_user("", login.groups, mapping)
        name = self.bound(login.issuer, login.subject)
        if name is None:
            name = self._bind(login, admitted=mapped is not None)
        if name is None:
            return None
        with self.engine.connect() as conn:
            row = conn.execute(select(users).where(users.c.name == name)).first()
            own = self.accounts._user(conn, name)
            revoked = self.accounts.revoked(conn, name)
        if row is None:
            return None  # removed just now
        if own is None:
            raise LoginRefused(DISABLED)
        if mapped is None:
            return User(name, own.role, own.grants - revoked)
        role = next(r for r in STRENGTH if r in (own.role, mapped.role))
        return User(name, role, (own.grants | mapped.grants) - revoked)

    def _bind(self, login: OidcLogin, admitted: bool) -> str | None:
        """Binds the login's subject to the account of its verified e-mail
        (once), or to a new account when its groups admit it."""
        email = login.verified_email
        for _attempt in range(3):  # another tab of the same first login may bind first
            try:
                with self.engine.begin() as conn:
                    name = _unbound_account(conn, email)
                    made = name is None and admitted
                    if made:
                        name = _free_name(conn, email, login.subject)
                        conn.execute(users.insert().values(
                            name=name, role=Role.READER.value, password_hash=None,
                            created=self.clock(), disabled=False,
                        ))  # fmt: skip
                    if name is None:
                        return None
                    conn.execute(oidc_identities.insert().values(
                        issuer=login.issuer, subject=login.subject, username=name,
                        bound=self.clock(),
                    ))  # fmt: skip
            except IntegrityError:
                found = self.bound(login.issuer, login.subject)
                if found is not None:
                    return found
                continue
            if made:
                self.audit.record("", "user-add", name, "oidc, role=reader")
            self.audit.record("", "oidc-bind", name, f"{login.issuer} {login.subject}")
            return name
        return None


def _bound(conn: Connection, issuer: str, subject: str) -> str | None:
    query = select(oidc_identities.c.username).where(
        oidc_identities.c.issuer == issuer, oidc_identities.c.subject == subject
    )
    return conn.execute(query).scalar()


def _unbound_account(conn: Connection, email: str) -> str | None:
    """The account named `email` when no subject is bound to it yet."""
    if not email:
        return None
    taken = select(oidc_identities.c.username).where(oidc_identities.c.username == email)
    if conn.execute(taken).first() is not None:
        return None
    return conn.execute(select(users.c.name).where(users.c.name == email)).scalar()


def _free_name(conn: Connection, email: str, subject: str) -> str:
    """A name for a new account: the verified e-mail if no account has it,
    else `oidc-<subject>` (with -2, -3... if that is taken)."""
    free = select(users.c.name).where(users.c.name == email)
    if (
        email
        and not _NAME_CHARS.search(email)
        and len(email) <= 128
        and not conn.execute(free).first()
    ):
        return email
    base = "oidc-" + _NAME_CHARS.sub("_", subject)[:100]
    name, n = base, 1
    while conn.execute(select(users.c.name).where(users.c.name == name)).first() is not None:
        n += 1
        name = f"{base}-{n}"
    return name
