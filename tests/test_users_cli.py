"""`rag users`: local accounts and their grants from the shell, through
click's CliRunner on a real app database; every change audited."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cli.rag_main import main
from rag.settings import Settings
from team.access import Role
from team.appdb import open_app_db
from team.conversation import Turn

PASSWORD = "correct horse battery"


@pytest.fixture
def root(tmp_path, monkeypatch):
    root = tmp_path / "indexes"
    monkeypatch.setenv("RAG_INDEXES_ROOT", str(root))
    monkeypatch.delenv("RAG_APP_DB", raising=False)
    return root


def rag(*args: str, stdin: str | None = None):
    return CliRunner().invoke(main, ["users", *args], input=stdin)


def listed() -> list[dict]:
    result = rag("list", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_add_grant_revoke_remove_and_list(root):
    added = rag("add", "ann", "--role", "editor", "--kb", "default", "--kb", "larch",
                "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
    assert added.exit_code == 0, added.output
    assert "Added ann (editor)" in added.stdout
    assert listed() == [
        {"name": "ann", "role": "editor", "kbs": ["default", "larch"], "disabled": False,
         "created": listed()[0]["created"]},
    ]  # fmt: skip
    assert rag("revoke", "ann", "default").exit_code == 0
    assert rag("grant", "ann", "finance").exit_code == 0
    assert listed()[0]["kbs"] == ["finance", "larch"]
    db = open_app_db(Settings(indexes_root=root))
    assert db.accounts.verify_login("ann", PASSWORD).role is Role.EDITOR
    assert rag("remove", "ann").exit_code == 0
    assert listed() == []


def test_every_change_is_audited_with_who_ran_it(root):
    rag("add", "ann", "--role", "reader", "--password-stdin", stdin=PASSWORD)
    rag("grant", "ann", "default")
    rag("revoke", "ann", "default")
    rag("remove", "ann")
    entries = open_app_db(Settings(indexes_root=root)).audit.entries()
    assert [(e.action, e.target) for e in entries] == [
        ("user-add", "ann"), ("grant", "ann"), ("revoke", "ann"), ("user-remove", "ann"),
    ]  # fmt: skip
    assert all(e.user.startswith("cli:") for e in entries)


def test_the_list_is_readable_without_json(root):
    rag("add", "ann", "--role", "reader", "--kb", "default", "--password-stdin", stdin=PASSWORD)
    result = rag("list")
    assert result.exit_code == 0
    assert "ann" in result.stdout and "reader" in result.stdout and "default" in result.stdout


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["grant", "zed", "default"], None, "No user named 'zed'"),
        (["revoke", "zed", "default"], None, "No user named 'zed'"),
        (["remove", "zed"], None, "No user named 'zed'"),
        (["add", "ann", "--role", "reader", "--password-stdin"], "\n", "at least 8 characters"),
        (["add", "ann", "--role", "reader", "--password-stdin"], "", "at least 8 characters"),
        (["add", "a/b", "--role", "reader", "--password-stdin"], PASSWORD, "user name"),
        (["add", "ann", "--role", "reader", "--kb", "../x", "--password-stdin"], PASSWORD,
         "knowledge base name"),
    ],
)  # fmt: skip
def test_mistakes_exit_1_with_one_clear_line(root, args, stdin, message):
    result = rag(*args, stdin=stdin)
    assert result.exit_code == 1, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert listed() == []


def test_a_bad_role_is_a_usage_error(root):
    result = rag("add", "ann", "--role", "owner", "--password-stdin", stdin=PASSWORD)
    assert result.exit_code == 2
    assert "'owner' is not one of 'admin', 'editor', 'reader'" in result.output


def test_a_user_added_twice_is_refused(root):
    rag("add", "ann", "--role", "reader", "--password-stdin", stdin=PASSWORD)
    result = rag("add", "ann", "--role", "admin", "--password-stdin", stdin=PASSWORD)
    assert result.exit_code == 1 and "already exists" in result.stderr
    assert listed()[0]["role"] == "reader"


def test_the_password_can_be_typed_twice_instead(root):
    result = rag("add", "ann", "--role", "reader", stdin=f"{PASSWORD}\n{PASSWORD}\n")
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.stdout


def test_an_admin_is_added_with_every_knowledge_base(root):
    result = rag("add", "lead", "--role", "admin", "--password-stdin", stdin=PASSWORD)
    assert result.exit_code == 0, result.output
    assert "knowledge bases: all" in result.stdout and "none" not in result.stdout


def test_passwd_sets_a_new_password_and_ends_the_sessions(root):
    rag("add", "ann", "--role", "reader", "--password-stdin", stdin=PASSWORD)
    db = open_app_db(Settings(indexes_root=root))
    token = db.accounts.create_session(db.accounts.verify_login("ann", PASSWORD))
    result = rag("passwd", "ann", "--password-stdin", stdin="a brand new passphrase\n")
    assert result.exit_code == 0, result.output
    assert "ann" in result.stdout and "a brand new passphrase" not in result.stdout
    assert db.accounts.session_user(token) is None, "whoever was logged in is out"
    assert db.accounts.verify_login("ann", "a brand new passphrase").name == "ann"
    assert ("password", "ann") in [
        (e.action, e.target) for e in open_app_db(Settings(indexes_root=root)).audit.entries()
    ]
    short = rag("passwd", "ann", "--password-stdin", stdin="short\n")
    assert short.exit_code == 1 and "at least 8 characters" in short.stderr
    missing = rag("passwd", "zed", "--password-stdin", stdin=PASSWORD)
    assert missing.exit_code == 1 and "No user named 'zed'" in missing.stderr


def test_remove_says_the_conversations_go_too(root):
    rag("add", "ann", "--role", "reader", "--password-stdin", stdin=PASSWORD)
    db = open_app_db(Settings(indexes_root=root))
    db.conversations.add(db.conversations.start("ann", "default"), Turn("ann's question"))
    result = rag("remove", "ann")
    assert result.exit_code == 0, result.output
    assert "conversation" in result.stdout
    assert db.conversations.list("ann", "default") == []


def test_disable_keeps_a_user_out_until_enabled_and_role_changes_it(root):
    rag("add", "ann", "--role", "reader", "--kb", "default", "--password-stdin", stdin=PASSWORD)
    db = open_app_db(Settings(indexes_root=root))
    token = db.accounts.create_session(db.accounts.verify_login("ann", PASSWORD))
    _, key = db.keys.create("ann", by="test")
    disabled = rag("disable", "ann")
    assert disabled.exit_code == 0, disabled.output
    assert db.accounts.session_user(token) is None, "whoever was logged in is out"
    assert db.keys.user(key) is None, "and their keys are refused"
    assert db.accounts.user("ann") is None, "no run of the app or the API acts as ann"
    assert listed()[0]["disabled"] is True and listed()[0]["kbs"] == ["default"]
    assert rag("enable", "ann").exit_code == 0
    assert db.accounts.verify_login("ann", PASSWORD).name == "ann"
    assert db.keys.user(key) is not None
    assert rag("role", "ann", "editor").exit_code == 0
    assert listed()[0] | {"created": 0} == {
        "name": "ann", "role": "editor", "kbs": ["default"], "disabled": False, "created": 0,
    }  # fmt: skip
    actions = [(e.action, e.target) for e in db.audit.entries()]
    for done in [("disable", "ann"), ("enable", "ann"), ("role", "ann")]:
        assert done in actions, actions
    assert rag("disable", "zed").exit_code == 1
    assert rag("role", "ann", "owner").exit_code == 2  # not a role: a usage error
