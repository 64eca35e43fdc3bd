"""The admins' Users view (issue 19): the accounts of the app database with
their roles, knowledge bases and state; an admin grants or revokes a
knowledge base, changes a role, disables or enables an account.

Each function asks the session's `Access` for Action.ADMIN itself, not only
the page that offers the tab: a session that forges a widget event still
ends here. rag.appdb keeps every change in the audit trail, with the
admin's name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import streamlit as st

from ingest import library
from rag.access import Access, Action, Role
from rag.appdb import Account, AppDB
from rag.errors import RagError
from ui.safe_text import plain

_DONE = "users-done"  # what the last change did, shown after the page ran again
NO_ACCOUNTS = "No accounts yet: add one with `rag users add NAME --role reader --password-stdin`."


def accounts(access: Access, db: AppDB) -> list[Account]:
    access.require(Action.ADMIN)
    return db.accounts.accounts()


def grant(access: Access, db: AppDB, name: str, kb: str) -> None:
    access.require(Action.ADMIN)
    db.accounts.grant(name, kb, by=access.user.name)


def revoke(access: Access, db: AppDB, name: str, kb: str) -> None:
    access.require(Action.ADMIN)
    db.accounts.revoke(name, kb, by=access.user.name)


def set_role(access: Access, db: AppDB, name: str, role: Role | str) -> None:
    access.require(Action.ADMIN)
    _not_yourself(access, name, "change your own role")
    db.accounts.set_role(name, role, by=access.user.name)


def set_disabled(access: Access, db: AppDB, name: str, disabled: bool) -> None:
    access.require(Action.ADMIN)
    if disabled:
        _not_yourself(access, name, "disable your own account")
    db.accounts.set_disabled(name, disabled, by=access.user.name)


def _not_yourself(access: Access, name: str, what: str) -> None:
    # An admin who demoted or disabled themselves might leave nobody to undo it.
    if name == access.user.name:
        raise RagError(f"You cannot {what}: ask another admin.")


def rows(listed: list[Account]) -> list[dict[str, object]]:
    """The table's rows: an admin's grants are all the bases."""
    return [
        {
            "name": a.user.name, "role": a.user.role.value,
            "knowledge bases": "all" if a.user.role is Role.ADMIN
            else ", ".join(sorted(a.user.grants)) or "none",
            "disabled": a.disabled,
        }
        for a in listed
    ]  # fmt: skip


def users_tab(access: Access, db: AppDB, root: Path) -> None:
    """The accounts in a table, then one account's controls."""
    listed = accounts(access, db)
    done = st.session_state.pop(_DONE, None)
    if done:
        st.success(done)
    if not listed:
        st.info(NO_ACCOUNTS)
        return
    # A table shows its cells as text: names are never Markdown.
    st.dataframe(rows(listed), hide_index=True)
    st.subheader("Change an account")
    name = st.selectbox("Account", [a.user.name for a in listed], key="users-account")
    account = next(a for a in listed if a.user.name == name)
    who = plain(name)
    left, right = st.columns(2)
    with left:
        roles = [r.value for r in Role]
        role = st.selectbox(
            "Role", roles, index=roles.index(account.user.role), key=f"users-role:{name}"
        )
        if st.button("Change role"):
            _act(lambda: set_role(access, db, name, role), f"{who} is now {role}.")
        switch = "Enable" if account.disabled else "Disable"
        if st.button(switch):
            _act(lambda: set_disabled(access, db, name, not account.disabled), f"{switch}d {who}.")
    with right:
        kbs = library.list_knowledge_bases(root)
        kb = st.selectbox("Knowledge base to grant or revoke", kbs, key="users-kb")
        grant_col, revoke_col = st.columns(2)
        if grant_col.button("Grant", disabled=not kb) and kb:
            _act(lambda: grant(access, db, name, kb), f"Granted {plain(kb)} to {who}.")
        if revoke_col.button("Revoke", disabled=not kb) and kb:
            _act(lambda: revoke(access, db, name, kb), f"Revoked {plain(kb)} from {who}.")


def _act(change: Callable[[], None], done: str) -> None:
    """Makes the change, then runs the page again so that everything on it
    (the table, the buttons, the audit) shows it; or says why not."""
    try:
        change()
    except RagError as exc:
        st.error(str(exc))
        return
    st.session_state[_DONE] = done
    st.rerun()
