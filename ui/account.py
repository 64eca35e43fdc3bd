"""Who the visitor is here, and what the page offers them (issue 19).

`sign_in` runs once at the top of each run of the page: the login edge
(ui/auth.py) says who signed in, this module says which user of the access
policy (team/access.py) they are, fresh from the app database each run, and
hands back the `Access` that every function below it is given. An OIDC
login is the account bound to the provider's issuer and subject
(team/appdb/identities.py), never one named like its display name; it goes
into the audit trail once. The admins' Audit view reads the trail through
the same check.
"""

from __future__ import annotations

from datetime import UTC, datetime

import streamlit as st

from rag.settings import Settings
from team.access import LOCAL_USER, Access, AccessPolicy, Action, GroupMapping, LoginRefused, User
from team.appdb import AppDB, AuditEntry, OidcLogin
from ui import auth
from ui.safe_text import cell, plain

_AUDITED_LOGIN = "kbqa_oidc_login"  # the OIDC login this session put in the audit trail
AUDIT_ROWS = 500  # the newest entries shown; the table keeps them all

NO_ROLE = (
    "You are signed in as **{name}**, but you have no access to this app yet: "
    "ask an admin to give your account a role."
)
NO_KNOWLEDGE_BASE = (
    "No knowledge base is shared with you yet: ask an admin to grant you one."
)  # fmt: skip


def sign_in(settings: Settings, db: AppDB) -> Access:
    """The signed-in user's `Access`; until there is one, a login page (or a
    page saying to ask an admin), and the script stops there."""
    identity = auth.require_identity(settings, db.accounts)
    try:
        user = user_of(identity, settings, db)
    except LoginRefused as exc:  # a disabled account, whatever its groups
        st.title("Ask your documents")
        st.error(str(exc))
        st.stop()
    if settings.auth == "oidc" and user is not None:
        record_login(identity, user.name, db)
    if user is None:
        st.title("Ask your documents")
        st.info(NO_ROLE.format(name=plain(identity.name)))
        st.stop()
    return Access(user, AccessPolicy(db))


def record_login(identity: auth.Identity, key: str, db: AppDB) -> None:
    """An OIDC login of the account `key` in the audit trail, once.
    Streamlit's cookie keeps the user signed in over every run and every
    reload of the page: a login is one ID token (its issue time), else, when
    the provider sends none, one browser session. (RAG_AUTH=local's logins
    are audited by team.appdb.)"""
    login = (key, identity.issued)
    if st.session_state.get(_AUDITED_LOGIN) == login:
        return
    st.session_state[_AUDITED_LOGIN] = login
    detail = f"oidc, token issued {identity.issued}" if identity.issued else "oidc"
    if identity.issued and db.audit.has(key, "login", key, detail):
        return  # a reload, or another tab, of a login already kept
    db.audit.record(key, "login", key, detail)


def user_of(identity: auth.Identity, settings: Settings, db: AppDB) -> User | None:
    """The user an identity is, with their role and grants as they are now.
    An OIDC login is the account bound to its issuer and subject, with what
    its groups add (RAG_AUTH_GROUP_ROLES, RAG_AUTH_GROUP_GRANTS) unless the
    account is disabled (LoginRefused) or a grant was revoked from it."""
    if settings.auth == "none":
        return LOCAL_USER
    if settings.auth == "local":
        return db.accounts.user(identity.name)
    login = OidcLogin(
        identity.issuer, identity.subject, identity.email, identity.email_verified,
        identity.groups,
    )  # fmt: skip
    return db.identities.resolve(login, GroupMapping.from_settings(settings))


def views(access: Access, kb: str) -> list[str]:
    """The page's tabs for this user in knowledge base `kb`."""
    shown = ["Ask"]
    if access.allows(Action.WRITE, kb):
        shown.append("Manage")
    if access.allows(Action.ADMIN):
        shown += ["Users", "Audit"]
    return shown


def audit_entries(access: Access, db: AppDB, limit: int = AUDIT_ROWS) -> list[AuditEntry]:
    """The newest entries of the audit trail, for an admin only."""
    access.require(Action.ADMIN)
    return db.audit.entries(limit=limit, newest_first=True)


def audit_tab(access: Access, db: AppDB) -> None:
    entries = audit_entries(access, db)
    st.caption(
        f"The newest {len(entries)} entries, newest first: logins, uploads, deletes, "
        "rebuilds, new knowledge bases, grants and refusals."
    )
    # A table shows its cells as text: names and details are never Markdown.
    st.dataframe(audit_rows(entries), hide_index=True)


def audit_rows(entries: list[AuditEntry]) -> list[dict[str, str]]:
    """The Audit tab's rows. The table downloads as CSV: no cell may start
    a spreadsheet formula (a login name like `=HYPERLINK(...)`)."""
    return [
        {
            "when": datetime.fromtimestamp(e.ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "user": cell(e.user), "action": cell(e.action), "target": cell(e.target),
            "detail": cell(e.detail),
        }
        for e in entries
    ]  # fmt: skip
