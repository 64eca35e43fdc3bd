"""Accounts, roles and per-knowledge-base access in the app (issue 19),
through AppTest sessions of each role with RAG_AUTH=local, users made with
the app database's own API, and the real indexes: a reader sees only the
bases granted to them and no Manage tab, and the Manage actions called
directly as the reader (what replaying a widget event amounts to) are
refused below the UI; an editor uploads into a granted base only; an admin
does everything and reads the audit trail."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from builders import delete_box
from streamlit.testing.v1 import AppTest
from test_app import APP, app, texts

from rag.settings import Settings
from team.appdb import AppDB, open_app_db
from team.conversation import Turn

PASSWORD = "correct horse battery"
QUESTION = "How are broken files reported during ingestion?"
NOTE = b"# Larch Creek pump station\n\nThe Larch Creek pump was installed in 1987."


@pytest.fixture
def team(app_env: pytest.MonkeyPatch, kb_root: Path, tmp_path: Path) -> AppDB:
    """Two knowledge bases (default, secret) and three accounts: rita reads
    default, eddie edits default, ada is an admin. No LLM: answers are off,
    searches still show passages."""
    from serving.launch import free_port

    shutil.copytree(kb_root / "default", kb_root / "secret")
    app_env.setenv("RAG_AUTH", "local")
    app_env.setenv("RAG_APP_DB", str(tmp_path / "app.sqlite"))
    app_env.setenv("RAG_LOGIN_BACKOFF", "0.001")
    app_env.setenv("RAG_LLM_URL", f"http://127.0.0.1:{free_port()}/v1")
    db = open_app_db(Settings())
    db.accounts.add_user("rita", "reader", PASSWORD, ["default"], by="test")
    db.accounts.add_user("eddie", "editor", PASSWORD, ["default"], by="test")
    db.accounts.add_user("ada", "admin", PASSWORD, by="test")
    return db


def log_in(at: AppTest, name: str, password: str = PASSWORD) -> AppTest:
    """Fills the login form of `at` (already run) and submits it."""
    at.text_input[0].input(name)
    at.text_input[1].input(password)
    next(b for b in at.button if b.label == "Log in").click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def signed_in(name: str) -> AppTest:
    return log_in(app().run(), name)


def picker(at: AppTest):
    return next(s for s in at.sidebar.selectbox if s.label == "Knowledge base")


def tab_labels(at: AppTest) -> list[str]:
    return [t.label for t in at.tabs]


def tab(at: AppTest, label: str):
    return next(t for t in at.tabs if t.label == label)


def access_of(db: AppDB, name: str):
    """What a session of `name` holds: the user as the database has them
    now, and the one policy."""
    from team.access import Access, AccessPolicy

    user = db.accounts.user(name)
    assert user is not None
    return Access(user, AccessPolicy(db))


def state_of(kb_dir: Path) -> tuple[int, list[str], list[str]]:
    """What a Manage action would change: the published generation, the
    documents, and the files in the folder."""
    from rag.knowledge_base import KnowledgeBase

    kb = KnowledgeBase.open(kb_dir)
    try:
        generation, documents = kb.stats().generation, sorted(d.path for d in kb.documents())
    finally:
        kb.close()
    return generation, documents, sorted(str(p.relative_to(kb_dir)) for p in kb_dir.rglob("*"))


# -- logging in -------------------------------------------------------------------


def test_a_wrong_password_is_refused_and_the_right_one_admitted(team):
    at = app().run()
    assert not at.tabs and not at.sidebar.selectbox, "nothing but the login form"
    log_in(at, "rita", "not her password")
    assert [e.value for e in at.error] == ["Wrong name or password."]
    assert not at.tabs
    log_in(at, "nobody", "not a password")
    assert [e.value for e in at.error] == ["Wrong name or password."], "the same for no such name"
    at.run()  # the throttle of a millisecond has passed
    log_in(at, "rita")
    assert not at.error, [e.value for e in at.error]
    assert picker(at).options == ["default"]
    shown = [m.value for m in at.sidebar.markdown]
    assert any("rita" in m for m in shown), shown
    actions = [(e.action, e.target) for e in team.audit.entries()]
    assert ("login-failed", "rita") in actions and ("login", "rita") in actions


def test_a_disabled_account_is_signed_out_at_its_next_run_and_log_out_ends_the_session(team):
    at = signed_in("rita")
    assert at.tabs
    team.accounts.set_disabled("rita", True, by="test")
    at.run()
    assert not at.tabs and [b.label for b in at.button] == ["Log in"]
    team.accounts.set_disabled("rita", False, by="test")
    at = signed_in("rita")
    next(b for b in at.sidebar.button if b.label == "Log out").click().run()
    assert not at.tabs and [b.label for b in at.button] == ["Log in"]
    assert ("rita", "logout") in [(e.user, e.action) for e in team.audit.entries()]


# -- a reader -----------------------------------------------------------------------


def test_a_reader_sees_only_granted_bases_no_manage_tab_and_can_ask(team):
    at = signed_in("rita")
    assert picker(at).options == ["default"]
    assert tab_labels(at) == ["Ask"]
    assert not at.file_uploader
    assert not [m for m in at.multiselect if m.label == "Delete documents"]
    assert not [b for b in at.button if b.label.startswith(("Rebuild", "Ingest", "Delete"))]
    assert not [e for e in at.sidebar.expander if e.label == "New knowledge base"]
    at.chat_input[0].set_value(QUESTION).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(e.label.startswith("1. ") for e in at.expander), "the passages are shown"


def test_a_revoked_grant_takes_effect_at_the_next_run(team):
    team.accounts.grant("rita", "secret", by="test")
    at = signed_in("rita")
    assert picker(at).options == ["default", "secret"]
    picker(at).set_value("secret").run()
    team.accounts.revoke("rita", "secret", by="test")
    at.run()  # any click: the page runs again
    assert not at.exception, [e.value for e in at.exception]
    assert picker(at).options == ["default"] and picker(at).value == "default"
    assert "secret" not in texts(at)
    team.accounts.revoke("rita", "default", by="test")
    at.run()
    assert picker(at).options == []
    assert not at.chat_input and not at.tabs
    assert any("ask an admin" in i.value for i in at.info), [i.value for i in at.info]


def _ask_page(app_file: str, kb_name: str, question: str, llm_down: str | None) -> None:
    """The Ask tab's `ask` called as rita on `kb_name`: what replaying a
    question for a base she may not read amounts to."""
    import importlib.util

    import streamlit as st

    from rag.knowledge_base import KnowledgeBase
    from rag.settings import Settings
    from team.access import Access, AccessPolicy
    from team.appdb import open_app_db
    from team.conversation import Conversation
    from team.sources import SourceNames

    # Loaded under another name: as `streamlit_app` it would build its ASGI app.
    spec = importlib.util.spec_from_file_location("kbqa_page", app_file)
    assert spec and spec.loader
    page = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(page)
    settings = Settings()
    db = open_app_db(settings)
    rita = Access(db.accounts.user("rita"), AccessPolicy(db))
    kb = KnowledgeBase.open(settings.indexes_root / kb_name)
    conversation = Conversation(0, kb_name, 0.0)
    turn = page.ask(rita, kb, SourceNames.of(kb), settings, question, conversation, llm_down)
    st.session_state["turn_error"] = turn.error


def test_a_question_to_a_base_the_reader_may_not_read_is_refused_by_the_service(team):
    """The core service is the one home of the read check: the page does not
    ask the policy again before it, and shows the service's refusal as the
    Ask tab shows a base it may not open."""
    from ui import safe_text

    refusal = safe_text.escape(
        "You have no access to the knowledge base 'secret'. An admin can grant it."
    )
    # Answering (svc.stream), and passages only while the LLM is down (svc.search).
    for llm_down in (None, "The LLM server is not reachable."):
        at = AppTest.from_function(
            _ask_page, args=(APP, "secret", QUESTION, llm_down), default_timeout=240
        ).run()
        assert not at.exception, [e.value for e in at.exception]
        assert [e.value for e in at.error] == [refusal], llm_down
        assert at.session_state["turn_error"] == refusal
        assert not at.expander, "no passages of the base are shown"
    denied = [e for e in team.audit.entries() if e.user == "rita" and e.action == "denied"]
    assert [(e.target, e.detail) for e in denied] == [("secret", "read")] * 2


def test_the_manage_actions_called_as_a_reader_are_refused_and_change_nothing(team, kb_root):
    from core.service import KnowledgeService
    from team import library
    from team.access import AccessDenied, Action

    rita = access_of(team, "rita")
    kb_dir = kb_root / "default"
    settings = Settings(index=kb_dir)
    svc = KnowledgeService(Settings())  # what the app's tabs call
    before = state_of(kb_dir)
    document = before[1][0]
    attempts = {
        "create": lambda: svc.create(rita, "mine"),
        "upload": lambda: svc.upload(rita, "default", [("n.md", lambda: NOTE)]),
        "delete": lambda: svc.delete(rita, "default", [document]),
        "rebuild": lambda: svc.rebuild(rita, "default"),
        "open to manage": lambda: svc.open(rita, "default", Action.WRITE),
        "open another": lambda: svc.open(rita, "secret"),
        # and below the service, where each is asked again
        "library create": lambda: library.create(rita, kb_root, "mine"),
        "save": lambda: library.save_uploads(rita, kb_dir, [library.Upload("n.md", NOTE)], 1),
        "ingest": lambda: library.ingest_files(rita, kb_dir, [document], settings, print),
        "library delete": lambda: library.delete_documents(rita, kb_dir, [document], settings),
        "library rebuild": lambda: library.rebuild(rita, kb_dir, settings, print),
    }
    for what, attempt in attempts.items():
        with pytest.raises(AccessDenied):
            attempt()
            pytest.fail(f"{what} was allowed")
    assert state_of(kb_dir) == before
    assert not (kb_root / "mine").exists()
    denied = [e for e in team.audit.entries() if e.user == "rita" and e.action == "denied"]
    assert len(denied) == len(attempts)


# -- an editor ------------------------------------------------------------------------


def test_an_editor_uploads_into_a_granted_base_but_not_another(team, kb_root):
    from team import library
    from team.access import AccessDenied

    at = signed_in("eddie")
    assert picker(at).options == ["default"]
    assert tab_labels(at) == ["Ask", "Manage"]
    at.file_uploader[0].set_value([("larch.md", NOTE, "text/markdown")]).run()
    next(b for b in at.button if b.label == "Ingest").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Added 1" in s.value for s in at.success), [e.value for e in at.error]
    assert (kb_root / "default" / "uploads" / "larch.md").is_file()
    eddie = access_of(team, "eddie")
    with pytest.raises(AccessDenied):
        library.save_uploads(eddie, kb_root / "secret", [library.Upload("n.md", NOTE)], 1)
    assert not (kb_root / "secret" / "uploads").exists()
    # a base of their own needs a grant first
    at.sidebar.text_input[0].set_value("contracts")
    next(b for b in at.sidebar.button if b.label == "Create").click().run()
    assert any("no access" in e.value for e in at.sidebar.error), at.sidebar.error
    assert not (kb_root / "contracts").exists()
    uploads = [e for e in team.audit.entries() if e.action == "upload"]
    assert [(e.user, e.target) for e in uploads] == [("eddie", "default")]


# -- an admin ----------------------------------------------------------------------------


def test_an_admin_manages_every_base_and_reads_the_audit(team, kb_root):
    at = signed_in("ada")
    assert picker(at).options == ["default", "secret"]
    assert tab_labels(at) == ["Ask", "Manage", "Users", "Audit", "Feedback"]
    picker(at).set_value("secret").run()
    doomed = next(p for p in delete_box(at).options if p.endswith("searching.md"))
    delete_box(at).set_value([doomed]).run()
    next(c for c in at.checkbox if c.label.startswith("Yes, delete 1")).check().run()
    next(b for b in at.button if b.label == "Delete selected").click().run()
    assert any("Deleted 1" in s.value for s in at.success)
    next(b for b in at.button if b.label == "Rebuild this knowledge base").click().run()
    at.sidebar.text_input[0].set_value("contracts")
    next(b for b in at.sidebar.button if b.label == "Create").click().run()
    assert picker(at).value == "contracts"
    assert not at.exception, [e.value for e in at.exception]
    done = [(e.user, e.action, e.target) for e in team.audit.entries()]
    for entry in [("ada", "delete", "secret"), ("ada", "rebuild", "secret"),
                  ("ada", "create", "contracts")]:  # fmt: skip
        assert entry in done, done
    audit = tab(at, "Audit").dataframe[0].value
    assert list(audit["action"][:3]) == ["create", "rebuild", "delete"], "newest first"
    assert "login" in set(audit["action"])


def test_an_admin_deletes_a_knowledge_base_once_its_name_is_typed_and_its_grants_end(team, kb_root):
    from core.service import KnowledgeService
    from team.access import AccessDenied

    team.accounts.grant("rita", "secret", by="test")
    assert not [x for x in signed_in("eddie").expander if x.label == "Delete this knowledge base"]
    with pytest.raises(AccessDenied):  # an editor with a grant, below the UI
        KnowledgeService(Settings()).delete_knowledge_base(access_of(team, "eddie"), "default")
    at = signed_in("ada")
    picker(at).set_value("secret").run()
    go = next(b for b in at.button if b.label == "Delete knowledge base")
    assert go.disabled, "not before the name is typed"

    def confirm():
        return next(t for t in at.text_input if t.label == "Type “secret” to confirm")

    confirm().set_value("default").run()  # another base's name does not do
    assert next(b for b in at.button if b.label == "Delete knowledge base").disabled
    assert (kb_root / "secret").is_dir()
    confirm().set_value("secret").run()
    next(b for b in at.button if b.label == "Delete knowledge base").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Deleted knowledge base “secret”" in s.value for s in at.success)
    assert picker(at).options == ["default"] and picker(at).value == "default"
    assert at.query_params.get("kb") == "default"
    assert not (kb_root / "secret").exists() and (kb_root / "default").is_dir()
    rita = team.accounts.user("rita")
    assert rita is not None and rita.grants == frozenset({"default"})
    done = [(e.user, e.action, e.target) for e in team.audit.entries()]
    assert ("ada", "delete knowledge base", "secret") in done and ("ada", "revoke", "rita") in done


def test_readers_and_editors_have_no_audit_view(team):
    from team.access import AccessDenied
    from ui import account

    for name in ("rita", "eddie"):
        assert "Audit" not in tab_labels(signed_in(name))
        with pytest.raises(AccessDenied):
            account.audit_entries(access_of(team, name), team)


# -- the admins' Users view ------------------------------------------------------------


def users_table(at: AppTest) -> dict[str, dict[str, object]]:
    """The Users view's table, a row per account name."""
    table = tab(at, "Users").dataframe[0].value
    return {row["name"]: row for row in table.to_dict("records")}


def change(at: AppTest, account: str, button: str, **choices: str) -> AppTest:
    """In the Users view: pick `account`, set the other selectboxes by label
    (`Role=`, `kb=`), then click `button`."""
    users = tab(at, "Users")
    next(s for s in users.selectbox if s.label == "Account").set_value(account).run()
    labels = {"Role": "Role", "kb": "Knowledge base to grant or revoke"}
    for name, value in choices.items():
        users = tab(at, "Users")
        next(s for s in users.selectbox if s.label == labels[name]).set_value(value).run()
    next(b for b in tab(at, "Users").button if b.label == button).click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_an_admin_grants_a_reader_a_base_and_the_reader_then_sees_it(team):
    at = signed_in("ada")
    assert users_table(at)["rita"] == {
        "name": "rita", "role": "reader", "knowledge bases": "default", "revoked": "",
        "login": "password", "disabled": False,
    }  # fmt: skip
    change(at, "rita", "Grant", kb="secret")
    assert any("Granted" in s.value for s in tab(at, "Users").success), at.error
    assert users_table(at)["rita"]["knowledge bases"] == "default, secret", "the table is fresh"
    assert ("ada", "grant", "rita", "kb=secret") in [
        (e.user, e.action, e.target, e.detail) for e in team.audit.entries()
    ]
    assert picker(signed_in("rita")).options == ["default", "secret"]
    change(at, "rita", "Revoke", kb="default")
    assert picker(signed_in("rita")).options == ["secret"]
    assert users_table(at)["rita"]["revoked"] == "default", "a revoke is kept, over groups too"


def test_an_admin_changes_a_role_and_disables_an_account_but_not_their_own(team):
    at = signed_in("ada")
    change(at, "eddie", "Change role", Role="reader")
    assert users_table(at)["eddie"]["role"] == "reader"
    assert tab_labels(signed_in("eddie")) == ["Ask"], "no Manage tab any more"
    change(at, "rita", "Disable")
    assert users_table(at)["rita"]["disabled"] is True
    rita = log_in(app().run(), "rita")
    assert not rita.tabs and [e.value for e in rita.error] == ["Wrong name or password."]
    change(at, "rita", "Enable")
    assert signed_in("rita").tabs
    change(at, "ada", "Disable")
    assert any("your own" in e.value for e in tab(at, "Users").error), at.error
    change(at, "ada", "Change role", Role="reader")
    assert users_table(at)["ada"] == {
        "name": "ada", "role": "admin", "knowledge bases": "all", "revoked": "",
        "login": "password", "disabled": False,
    }  # fmt: skip
    done = [(e.user, e.action, e.target, e.detail) for e in team.audit.entries()]
    for entry in [("ada", "role", "eddie", "role=reader"), ("ada", "disable", "rita", ""),
                  ("ada", "enable", "rita", "")]:  # fmt: skip
        assert entry in done, done


@pytest.mark.parametrize("name", ["rita", "eddie"])
def test_the_users_functions_called_as_a_non_admin_are_refused_and_change_nothing(team, name):
    from team.access import AccessDenied
    from ui import users

    before = team.accounts.accounts()
    assert "Users" not in tab_labels(signed_in(name))
    who = access_of(team, name)
    attempts = {
        "list": lambda: users.accounts(who, team),
        "grant": lambda: users.grant(who, team, name, "secret"),
        "revoke": lambda: users.revoke(who, team, "rita", "default"),
        "role": lambda: users.set_role(who, team, name, "admin"),
        "disable": lambda: users.set_disabled(who, team, "ada", True),
    }
    for what, attempt in attempts.items():
        with pytest.raises(AccessDenied):
            attempt()
            pytest.fail(f"{name} could {what}")
    denied = [e for e in team.audit.entries() if e.user == name and e.action == "denied"]
    assert len(denied) == len(attempts)
    assert team.accounts.accounts() == before


# -- knowledge bases sharing one Milvus (issue 29) ---------------------------------------


def test_a_reader_of_one_base_in_a_shared_milvus_sees_nothing_of_another(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, embedder
):
    """The bases default (public notes) and secret (a confidential one) in
    one Milvus Lite file; rita reads default only."""
    from test_milvus_isolation import FINANCE, PUBLIC, SECRET, build

    from serving.launch import free_port

    settings = build(tmp_path, "default", PUBLIC, embedder)
    build(tmp_path, "secret", FINANCE, embedder)
    for name, value in {
        "RAG_INDEXES_ROOT": settings.indexes_root, "RAG_INDEX": settings.index,
        "RAG_STORE": settings.store, "RAG_AUTH": "local", "RAG_APP_DB": tmp_path / "app.sqlite",
        "RAG_LOGIN_BACKOFF": "0.001", "RAG_LLM_URL": f"http://127.0.0.1:{free_port()}/v1",
        "RAG_LLM_RETRIES": "0",
    }.items():  # fmt: skip
        monkeypatch.setenv(name, str(value))
    open_app_db(Settings()).accounts.add_user("rita", "reader", PASSWORD, ["default"], by="test")
    at = signed_in("rita")
    assert picker(at).options == ["default"]
    at.chat_input[0].set_value("Zanzibar merger confidential").run()
    assert not at.exception, [e.value for e in at.exception]
    shown = [e.label for e in at.expander if e.label.startswith(("1. ", "2. "))]
    assert shown, "the passages are shown"
    assert SECRET not in texts(at) and "merger" not in "\n".join(shown)


# -- adding, resetting and removing accounts in the Users view (issue 31) -----------------


def users_form(at: AppTest, **fields: str) -> None:
    """Fills the text inputs of the Users view by label."""
    users = tab(at, "Users")
    for label, value in fields.items():
        next(t for t in users.text_input if t.label == label).input(value)


def test_an_admin_adds_an_account_sets_its_password_and_removes_it(team):
    at = signed_in("ada")
    users_form(at, Name="nora", Password=PASSWORD)
    next(m for m in tab(at, "Users").multiselect if m.label == "Knowledge bases").set_value(
        ["default"]
    )
    next(b for b in tab(at, "Users").button if b.label == "Add account").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Added nora" in s.value for s in tab(at, "Users").success), at.error
    assert users_table(at)["nora"]["role"] == "reader"
    assert picker(signed_in("nora")).options == ["default"]

    next(s for s in tab(at, "Users").selectbox if s.label == "Account").set_value("nora").run()
    users_form(at, **{"New password": "a brand new passphrase"})
    next(b for b in tab(at, "Users").button if b.label == "Set password").click().run()
    assert any("New password set" in s.value for s in tab(at, "Users").success), at.error
    assert not log_in(app().run(), "nora").tabs, "the old password is refused"
    assert signed_in_with("nora", "a brand new passphrase").tabs

    team.conversations.add(team.conversations.start("nora", "default"), Turn(QUESTION))
    next(s for s in tab(at, "Users").selectbox if s.label == "Account").set_value("nora").run()
    remove = next(b for b in tab(at, "Users").button if b.label == "Remove account")
    assert remove.disabled, "removing asks first"
    next(c for c in tab(at, "Users").checkbox if c.label.startswith("Yes, remove")).check().run()
    next(b for b in tab(at, "Users").button if b.label == "Remove account").click().run()
    assert any("Removed nora" in s.value for s in tab(at, "Users").success), at.error
    assert "nora" not in users_table(at)
    assert team.conversations.list("nora", "default") == []
    done = [(e.user, e.action, e.target) for e in team.audit.entries()]
    for entry in [("ada", "user-add", "nora"), ("ada", "password", "nora"),
                  ("ada", "user-remove", "nora")]:  # fmt: skip
        assert entry in done, done


def test_an_admin_cannot_remove_their_own_account(team):
    from rag.errors import RagError
    from ui import users

    with pytest.raises(RagError, match="your own"):
        users.remove_user(access_of(team, "ada"), team, "ada")
    assert team.accounts.user("ada") is not None


def signed_in_with(name: str, password: str) -> AppTest:
    return log_in(app().run(), name, password)


# -- what the tables let a spreadsheet run (issue 29) -----------------------------------------

FORMULA_START = ("=", "+", "-", "@")


def test_the_audit_and_users_tables_neutralise_spreadsheet_formulas(team):
    """Both tables download as CSV from the app: a cell that a spreadsheet
    would run as a formula starts with an apostrophe instead."""
    hostile = '=HYPERLINK("http://evil.example","x")'
    log_in(app().run(), hostile, "not a password")  # a failed login keeps the name tried
    team.audit.record("@SUM(1+1)", "upload", "+cmd|' /C calc'!A0", "-2+3")
    team.accounts.add_user("-bob", "reader", PASSWORD, by="test")
    at = signed_in("ada")
    audit = tab(at, "Audit").dataframe[0].value
    cells = [str(v) for column in ("user", "action", "target", "detail") for v in audit[column]]
    assert not [c for c in cells if c.startswith(FORMULA_START)], cells
    assert "'" + hostile in cells and "'@SUM(1+1)" in cells
    names = list(users_table(at))
    assert "'-bob" in names and not [n for n in names if n.startswith(FORMULA_START)]
