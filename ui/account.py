"""Who the visitor is here, and what the page offers them (issue 19).

`sign_in` runs once at the top of each run of the page: the login edge
(ui/auth.py) says who signed in, this module says which user of the access
policy (rag/access.py) they are, fresh from the app database each run, and
hands back the `Access` that every function below it is given. An OIDC
login goes into the audit trail once; the admins' Audit view reads the
trail through the same check.
"""

from __future__ import annotations

from datetime import UTC, datetime

import streamlit as st

from rag.access import LOCAL_USER, Access, AccessPolicy, Action, GroupMapping, User, identity_user
from rag.appdb import AppDB, AuditEntry
from rag.settings import Settings
from ui import auth
from ui.safe_text import plain

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
    if settings.auth == "oidc":
        record_login(identity, db)
    user = user_of(identity, settings, db)
    if user is None:
        st.title("Ask your documents")
        st.info(NO_ROLE.format(name=plain(identity.name)))
        st.stop()
    return Access(user, AccessPolicy(db))


def record_login(identity: auth.Identity, db: AppDB) -> None:
    """An OIDC login in the audit trail, once. Streamlit's cookie keeps the
    user signed in over every run and every reload of the page: a login is
    one ID token (its issue time), else, when the provider sends none, one
    browser session. (RAG_AUTH=local's logins are audited by rag.appdb.)"""
    key = identity.email or identity.name
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
    An OIDC login is first its groups mapping (RAG_AUTH_GROUP_ROLES), else
    the account an admin made for its e-mail (or name) with `rag users add`."""
    if settings.auth == "none":
        return LOCAL_USER
    if settings.auth == "local":
        return db.accounts.user(identity.name)
    key = identity.email or identity.name
    mapped = identity_user(key, identity.groups, GroupMapping.from_settings(settings))
    return mapped or db.accounts.user(key)


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
    st.dataframe(
        [
            {
                "when": datetime.fromtimestamp(e.ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
                "user": e.user, "action": e.action, "target": e.target, "detail": e.detail,
            }
            for e in entries
        ],
        hide_index=True,
    )  # fmt: skip
