"""The admins' Users view (issues 19, 31): the accounts of the app database
with their roles, knowledge bases and state; an admin adds an account, sets
its password, grants or revokes a knowledge base, changes a role, disables
or enables an account, or removes it with its conversations.

Each function asks the session's `Access` for Action.ADMIN itself, not only
the page that offers the tab: a session that forges a widget event still
ends here. team.appdb keeps every change in the audit trail, with the
admin's name."""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from rag.errors import RagError
from team.access import Access, Action, Role
from team.appdb import Account, AppDB
from ui.safe_text import cell, plain

_DONE = "users-done"  # what the last change did, shown after the page ran again
NO_ACCOUNTS = "No accounts yet: add one below (or with `rag users add`)."


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


def add_user(
    access: Access, db: AppDB, name: str, role: Role | str, password: str, kbs: list[str]
) -> None:
    """A new account; with no password it has no local login (an OIDC user
    whose verified e-mail is `name` gets it at their first login)."""
    access.require(Action.ADMIN)
    db.accounts.add_user(name.strip(), role, password or None, kbs, by=access.user.name)


def set_password(access: Access, db: AppDB, name: str, password: str) -> None:
    access.require(Action.ADMIN)
    db.accounts.set_password(name, password, by=access.user.name)


def remove_user(access: Access, db: AppDB, name: str) -> int:
    """Removes the account with its conversations; how many there were."""
    access.require(Action.ADMIN)
    _not_yourself(access, name, "remove your own account")
    return db.accounts.remove_user(name, by=access.user.name)


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
    """The table's rows: an admin's grants are all the bases. The table
    downloads as CSV: no cell may start a spreadsheet formula."""
    return [
        {
            "name": cell(a.user.name), "role": a.user.role.value,
            "knowledge bases": "all" if a.user.role is Role.ADMIN
            else ", ".join(sorted(a.user.grants)) or "none",
            "revoked": ", ".join(sorted(a.revoked)),
            "login": _login_of(a),
            "disabled": a.disabled,
        }
        for a in listed
    ]  # fmt: skip


def _login_of(account: Account) -> str:
    if account.provider:
        return cell(f"provider ({account.provider})")
    return "password" if account.has_password else "none yet"


def users_tab(access: Access, db: AppDB, kbs: list[str]) -> None:
    """The accounts in a table, one account's controls, then a new account.
    `kbs`: the knowledge bases to grant (the core service lists them)."""
    listed = accounts(access, db)
    done = st.session_state.pop(_DONE, None)
    if done:
        st.success(done)
    if not listed:
        st.info(NO_ACCOUNTS)
    else:
        # A table shows its cells as text: names are never Markdown.
        st.dataframe(rows(listed), hide_index=True)
        _change_account(access, db, kbs, listed)
    _add_account(access, db, kbs)


def _change_account(access: Access, db: AppDB, kbs: list[str], listed: list[Account]) -> None:
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
        password = st.text_input(
            "New password", type="password", autocomplete="new-password", key=f"users-pw:{name}"
        )
        if st.button("Set password"):
            _act(lambda: set_password(access, db, name, password),
                 f"New password set for {who}; their sessions are ended.")  # fmt: skip
    with right:
        kb = st.selectbox("Knowledge base to grant or revoke", kbs, key="users-kb")
        grant_col, revoke_col = st.columns(2)
        if grant_col.button("Grant", disabled=not kb) and kb:
            _act(lambda: grant(access, db, name, kb), f"Granted {plain(kb)} to {who}.")
        if revoke_col.button("Revoke", disabled=not kb) and kb:
            _act(lambda: revoke(access, db, name, kb), f"Revoked {plain(kb)} from {who}.")
        sure = st.checkbox(
            f"Yes, remove {who}, with their conversations and API keys", key=f"users-rm:{name}"
        )
        if st.button("Remove account", disabled=not sure):
            _act(lambda: remove_user(access, db, name), f"Removed {who} and their conversations.")


def _add_account(access: Access, db: AppDB, kbs: list[str]) -> None:
    st.subheader("Add an account")
    with st.form("users-add", clear_on_submit=True):
        name = st.text_input("Name", help="A login name, or the e-mail of an OIDC user.")
        role = st.selectbox("Role of the new account", [r.value for r in Role], index=2)
        chosen = st.multiselect("Knowledge bases", kbs)
        password = st.text_input(
            "Password", type="password", autocomplete="new-password",
            help="Empty: no local login (an OIDC user's account).",
        )  # fmt: skip
        added = st.form_submit_button("Add account")
    if added:
        _act(lambda: add_user(access, db, name, role, password, chosen), f"Added {plain(name)}.")


def _act(change: Callable[[], object], done: str) -> None:
    """Makes the change, then runs the page again so that everything on it
    (the table, the buttons, the audit) shows it; or says why not."""
    try:
        change()
    except RagError as exc:
        st.error(str(exc))
        return
    st.session_state[_DONE] = done
    st.rerun()
