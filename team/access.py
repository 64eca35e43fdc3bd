"""Who may do what: one policy that every edge (the app, the `rag` command,
the HTTP API) asks before it lists, opens, renders or changes a knowledge
base, instead of checks spread over widgets and routes.

Roles: an admin does everything in every knowledge base and manages users;
an editor reads and writes (upload, delete, rebuild) the bases granted to
them; a reader reads (asks, searches, sees passages and pages) the bases
granted to them. With no login (RAG_AUTH=none, loopback only) the one user
is LOCAL_USER, an admin.

A `User` is resolved fresh for each request (team.appdb's
`Accounts.session_user`, or `identity_user` for an OIDC login), so a
revoked grant takes effect at the next request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from rag.errors import RagError

if TYPE_CHECKING:
    from rag.settings import Settings


class Role(StrEnum):
    ADMIN = "admin"
    EDITOR = "editor"
    READER = "reader"


class Action(StrEnum):
    READ = "read"  # ask, search, see passages and pages
    WRITE = "write"  # create, upload, delete, rebuild
    ADMIN = "admin"  # users, grants, the audit trail


ALLOWED: Mapping[Role, frozenset[Action]] = {
    Role.ADMIN: frozenset(Action),
    Role.EDITOR: frozenset({Action.READ, Action.WRITE}),
    Role.READER: frozenset({Action.READ}),
}
# Strongest first: a user in several groups gets the strongest of their roles.
STRENGTH = [Role.ADMIN, Role.EDITOR, Role.READER]

# A knowledge base is a folder under the indexes root: one plain name. The
# one home of the rule: the app, the API, MCP, the accounts and the library
# all ask `valid_kb_name`. Starting with a letter or digit keeps out ".",
# ".." and hidden folders.
_KB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
KB_NAME_RULE = "Use letters, digits, '-', '_' or '.' (up to 64)."


def valid_kb_name(name: str) -> bool:
    """Whether `name` may name a knowledge base (KB_NAME_RULE)."""
    # fullmatch: `$` in match() would accept a name ending in a newline.
    return bool(_KB_NAME.fullmatch(name))


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    grants: frozenset[str] = field(default_factory=frozenset)  # knowledge bases; admins need none


LOCAL_USER = User("local", Role.ADMIN)  # RAG_AUTH=none: the one user of a loopback app


class AccessDenied(RagError):
    """The user may not do this; the message says what and why."""


class LoginRefused(RagError):
    """A failed or throttled login. The message never says whether the name
    exists; `retry_after` is the seconds left of a throttle (0: none)."""

    def __init__(self, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Audit(Protocol):
    def record(self, user: str, action: str, target: str = "", detail: str = "") -> None: ...


class _Grants(Protocol):
    def forget_kb(self, kb: str, *, by: str) -> list[str]: ...


class _TeamDB(Protocol):
    @property
    def audit(self) -> _Audit: ...

    @property
    def accounts(self) -> _Grants: ...


class AccessPolicy:
    """The one choke point. `db` (team.appdb.AppDB) keeps the denials in its
    audit trail; without one the policy still decides."""

    def __init__(self, db: _TeamDB | None) -> None:
        self.db = db

    def allows(self, user: User, action: Action, kb: str | None = None) -> bool:
        if action not in ALLOWED[user.role]:
            return False
        if user.role is Role.ADMIN:
            return True
        return bool(kb) and kb in user.grants

    def readable(self, user: User, kb_names: Iterable[str]) -> list[str]:
        """The knowledge bases of `kb_names` the user may read, in order."""
        return [kb for kb in kb_names if self.allows(user, Action.READ, kb)]

    def require(self, user: User, action: Action, kb: str | None = None) -> None:
        """Returns when allowed; otherwise records the attempt in the audit
        trail and raises AccessDenied."""
        if self.allows(user, action, kb):
            return
        if self.db is not None:
            self.db.audit.record(user.name, "denied", kb or "", str(action))
        raise AccessDenied(_why(user, action, kb))


@dataclass(frozen=True)
class Access:
    """One user and the one policy, passed down together from the edge that
    signed the user in (one request, one run of the app's page): every
    function that lists, opens, shows or changes a knowledge base takes it
    and asks it first."""

    user: User
    policy: AccessPolicy

    def allows(self, action: Action, kb: str | None = None) -> bool:
        return self.policy.allows(self.user, action, kb)

    def require(self, action: Action, kb: str | None = None) -> None:
        self.policy.require(self.user, action, kb)

    def readable(self, kb_names: Iterable[str]) -> list[str]:
        return self.policy.readable(self.user, kb_names)

    def role_allows(self, action: Action) -> bool:
        """Whether the user's role has `action` in some knowledge base (to
        offer an action whose knowledge base is not named yet)."""
        return action in ALLOWED[self.user.role]

    def record(self, action: str, kb: str, detail: str = "") -> None:
        """Keeps what the user did (upload, delete, rebuild, create) in the
        audit trail."""
        if self.policy.db is not None:
            self.policy.db.audit.record(self.user.name, action, kb, detail)


def local_access() -> Access:
    """The local operator who owns the files: LOCAL_USER under a policy
    without an audit trail. The caller of `rag search/ask/stats`, of `rag
    mcp` without --user and of the loopback API with RAG_AUTH=none; whoever
    runs them can read the folders anyway."""
    return Access(LOCAL_USER, AccessPolicy(None))


def _why(user: User, action: Action, kb: str | None) -> str:
    if action is Action.ADMIN:
        return "Only an admin can manage users and grants or read the audit trail."
    if not kb:
        return "Choose a knowledge base first."
    if action is Action.READ or kb not in user.grants:
        return f"You have no access to the knowledge base '{kb}'. An admin can grant it."
    return (
        f"Your role ({user.role}) can read '{kb}' but not change it. "
        "An admin can make you an editor."
    )


# -- an OIDC login's groups claim ---------------------------------------------------------


@dataclass(frozen=True)
class GroupMapping:
    """What an identity provider's groups mean here: `roles` maps a group to
    a role, `grants` a group to the knowledge bases its members may use;
    `default` is the role of a user in no group of `roles` (None: no entry)."""

    roles: Mapping[str, Role] = field(default_factory=dict)
    grants: Mapping[str, frozenset[str]] = field(default_factory=dict)
    default: Role | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> GroupMapping:
        default = settings.auth_default_role
        return cls(
            roles={group: Role(role) for group, role in settings.auth_group_roles.items()},
            grants={g: frozenset(kbs) for g, kbs in settings.auth_group_grants.items()},
            default=Role(default) if default else None,
        )


def identity_user(name: str, groups: Sequence[str], mapping: GroupMapping) -> User | None:
    """The user an identity (a name or e-mail and its groups) is here: the
    strongest role of their groups and every knowledge base any of them is
    granted; None when no group maps to a role and there is no default."""
    roles = {mapping.roles[g] for g in groups if g in mapping.roles}
    role = next((r for r in STRENGTH if r in roles), mapping.default)
    if role is None:
        return None
    grants = frozenset().union(*(mapping.grants.get(g, frozenset()) for g in groups))
    return User(name, role, grants)
