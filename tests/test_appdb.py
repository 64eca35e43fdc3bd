"""The app's own database (rag/appdb): accounts, logins, sessions, grants,
conversations per user and the append-only audit trail. Every test runs
twice: on the default SQLite file and on a real PostgreSQL server
(tests/postgres_server.py)."""

from __future__ import annotations

import itertools
import re
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy
from builders import Clock

from rag.access import LoginRefused, Role, User
from rag.appdb import AppDB, AppDBIncompatible, open_app_db
from rag.appdb.schema import SCHEMA_VERSION
from rag.conversation import Conversation, Turn
from rag.errors import RagError
from rag.settings import Settings
from rag.types import Answer, Chunk, Citation, Hit
from ui.conversation import to_markdown

_databases = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request, tmp_path: Path) -> Settings:
    if request.param == "sqlite":
        return Settings(indexes_root=tmp_path / "indexes")
    server = request.getfixturevalue("pg_server")
    url = server.create_database(f"kbqa_test_{next(_databases)}")
    return Settings(indexes_root=tmp_path / "indexes", app_db=url)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db(settings: Settings, clock: Clock) -> AppDB:
    return open_app_db(settings, clock=clock)


PASSWORD = "correct horse battery"


def actions(db: AppDB) -> list[tuple[str, str, str]]:
    return [(e.user, e.action, e.target) for e in db.audit.entries()]


# -- where it lives, and its schema ------------------------------------------------------


def test_the_default_database_is_a_sqlite_file_beside_the_indexes_never_in_one(tmp_path):
    root = tmp_path / "indexes"
    (root / "default").mkdir(parents=True)
    db = open_app_db(Settings(indexes_root=root))
    db.accounts.add_user("ann", Role.READER, PASSWORD, by="cli")
    assert (root / ".app" / "app.sqlite").is_file()
    assert not list((root / "default").iterdir()), "nothing written inside an index folder"


def test_the_schema_is_versioned_and_a_newer_one_is_refused(db, settings, clock):
    assert db.schema_version() == SCHEMA_VERSION
    with db.engine.begin() as conn:
        conn.execute(sqlalchemy.text("UPDATE kbqa_meta SET value = '99' WHERE key = 'schema'"))
    with pytest.raises(AppDBIncompatible, match="newer"):
        open_app_db(settings, clock=clock)


# -- accounts and logins -------------------------------------------------------------------


def test_a_right_password_logs_in_and_the_hash_is_argon2(db):
    db.accounts.add_user("ann", Role.EDITOR, PASSWORD, kbs=["default"], by="cli")
    user = db.accounts.verify_login("ann", PASSWORD)
    assert user == User("ann", Role.EDITOR, frozenset({"default"}))
    with db.engine.connect() as conn:
        stored = conn.execute(sqlalchemy.text("SELECT password_hash FROM users")).scalar_one()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored


def test_a_wrong_password_and_an_unknown_name_get_the_same_answer(db, clock):
    db.accounts.add_user("ann", Role.READER, PASSWORD, by="cli")
    with pytest.raises(LoginRefused) as wrong:
        db.accounts.verify_login("ann", "not the password")
    with pytest.raises(LoginRefused) as unknown:
        db.accounts.verify_login("nobody-here", "not the password")
    assert str(wrong.value) == str(unknown.value) == "Wrong name or password."


def test_repeated_failures_are_refused_for_a_window_that_grows(db, clock):
    db.accounts.add_user("ann", Role.READER, PASSWORD, by="cli")
    with pytest.raises(LoginRefused):
        db.accounts.verify_login("ann", "guess 1")
    # Within the window, even the right password is refused, unchecked.
    with pytest.raises(LoginRefused, match="Too many failed logins") as refused:
        db.accounts.verify_login("ann", PASSWORD)
    first_wait = refused.value.retry_after
    assert first_wait > 0
    clock.advance(first_wait + 0.01)
    with pytest.raises(LoginRefused, match="Wrong name or password"):
        db.accounts.verify_login("ann", "guess 2")
    with pytest.raises(LoginRefused) as refused:
        db.accounts.verify_login("ann", PASSWORD)
    assert refused.value.retry_after > first_wait, "the window grows with each failure"
    clock.advance(refused.value.retry_after + 0.01)
    assert db.accounts.verify_login("ann", PASSWORD).name == "ann"
    # a success clears the count
    with pytest.raises(LoginRefused, match="Wrong name"):
        db.accounts.verify_login("ann", "guess 3")
    clock.advance(first_wait + 0.01)
    assert db.accounts.verify_login("ann", PASSWORD).name == "ann"


def test_the_throttle_is_kept_in_the_database_so_it_holds_across_replicas(db, settings, clock):
    db.accounts.add_user("ann", Role.READER, PASSWORD, by="cli")
    with pytest.raises(LoginRefused):
        db.accounts.verify_login("ann", "guess")
    replica = open_app_db(settings, clock=clock)  # another app process, same database
    with pytest.raises(LoginRefused, match="Too many failed logins"):
        replica.accounts.verify_login("ann", PASSWORD)


def test_unknown_names_are_throttled_too(db):
    with pytest.raises(LoginRefused, match="Wrong"):
        db.accounts.verify_login("ghost", "x")
    with pytest.raises(LoginRefused, match="Too many failed logins"):
        db.accounts.verify_login("ghost", "x")


def test_a_removed_or_disabled_user_cannot_log_in(db, clock):
    db.accounts.add_user("ann", Role.READER, PASSWORD, by="cli")
    db.accounts.add_user("bob", Role.READER, PASSWORD, by="cli")
    db.accounts.set_disabled("bob", True, by="cli")
    db.accounts.remove_user("ann", by="cli")
    for name in ("ann", "bob"):
        with pytest.raises(LoginRefused, match="Wrong name or password"):
            db.accounts.verify_login(name, PASSWORD)


def test_bad_accounts_are_refused_with_clear_messages(db):
    with pytest.raises(RagError, match="at least 8 characters"):
        db.accounts.add_user("ann", Role.READER, "", by="cli")
    with pytest.raises(RagError, match="user name"):
        db.accounts.add_user("ann\n", Role.READER, PASSWORD, by="cli")
    db.accounts.add_user("ann", Role.READER, PASSWORD, by="cli")
    with pytest.raises(RagError, match="already exists"):
        db.accounts.add_user("ann", Role.ADMIN, PASSWORD, by="cli")
    with pytest.raises(RagError, match="No user named 'zed'"):
        db.accounts.grant("zed", "default", by="cli")
    with pytest.raises(RagError, match="knowledge base name"):
        db.accounts.grant("ann", "../etc", by="cli")


def test_grants_and_revokes_show_in_the_user(db):
    db.accounts.add_user("ann", Role.READER, PASSWORD, by="cli")
    db.accounts.grant("ann", "default", by="cli")
    db.accounts.grant("ann", "larch", by="cli")
    db.accounts.grant("ann", "larch", by="cli")  # twice is once
    assert db.accounts.user("ann").grants == {"default", "larch"}
    db.accounts.revoke("ann", "default", by="cli")
    assert db.accounts.user("ann").grants == {"larch"}
    assert db.accounts.user("nobody") is None
    assert [a.user.name for a in db.accounts.accounts()] == ["ann"]


# -- sessions ------------------------------------------------------------------------------


def test_a_session_expires_after_its_hours(db, settings, clock):
    db.accounts.add_user("ann", Role.READER, PASSWORD, kbs=["default"], by="cli")
    token = db.accounts.create_session(db.accounts.verify_login("ann", PASSWORD))
    assert db.accounts.session_user(token) == User("ann", Role.READER, frozenset({"default"}))
    clock.advance(settings.session_hours * 3600 - 60)
    assert db.accounts.session_user(token) is not None
    clock.advance(120)
    assert db.accounts.session_user(token) is None
    assert db.accounts.session_user("made-up-token") is None


def test_a_session_sees_grant_changes_and_ends_with_logout_or_removal(db):
    db.accounts.add_user("ann", Role.READER, PASSWORD, by="cli")
    token = db.accounts.create_session(db.accounts.verify_login("ann", PASSWORD))
    db.accounts.grant("ann", "larch", by="cli")
    assert db.accounts.session_user(token).grants == {"larch"}, "no stale grants"
    db.accounts.end_session(token)
    assert db.accounts.session_user(token) is None
    token = db.accounts.create_session(db.accounts.verify_login("ann", PASSWORD))
    db.accounts.remove_user("ann", by="cli")
    assert db.accounts.session_user(token) is None


def test_the_session_token_is_not_stored_as_is(db):
    db.accounts.add_user("ann", Role.READER, PASSWORD, by="cli")
    token = db.accounts.create_session(db.accounts.verify_login("ann", PASSWORD))
    with db.engine.connect() as conn:
        stored = conn.execute(sqlalchemy.text("SELECT token_hash FROM sessions")).scalar_one()
    assert token not in stored and len(token) >= 40


# -- the audit trail -------------------------------------------------------------------------


def test_logins_grants_and_changes_are_audited(db):
    db.accounts.add_user("ann", Role.READER, PASSWORD, by="cli:root")
    db.accounts.grant("ann", "default", by="cli:root")
    db.accounts.revoke("ann", "default", by="cli:root")
    with pytest.raises(LoginRefused):
        db.accounts.verify_login("ann", "wrong")
    with pytest.raises(LoginRefused):
        db.accounts.verify_login("ann", PASSWORD)  # refused: within the window
    assert actions(db) == [
        ("cli:root", "user-add", "ann"),
        ("cli:root", "grant", "ann"),
        ("cli:root", "revoke", "ann"),
        ("", "login-failed", "ann"),
        ("", "login-refused", "ann"),
    ]
    assert [e.detail for e in db.audit.entries()][:3] == ["role=reader", "kb=default", "kb=default"]


def test_the_audit_trail_is_append_only(db, clock):
    db.audit.record("ann", "upload", "default", "a.pdf")
    assert not hasattr(db.audit, "update") and not hasattr(db.audit, "delete")
    entry = db.audit.entries()[0]
    assert (entry.ts, entry.user, entry.action, entry.target) == (
        clock.now,
        "ann",
        "upload",
        "default",
    )
    # Below the API too: the database itself refuses to change or drop a row.
    for sql in ("UPDATE audit SET detail = 'x'", "DELETE FROM audit"):
        with (
            pytest.raises(sqlalchemy.exc.DatabaseError, match="append-only"),
            db.engine.begin() as c,
        ):
            c.execute(sqlalchemy.text(sql))
    assert [e.detail for e in db.audit.entries()] == ["a.pdf"]


def test_the_audit_reads_newest_first_within_a_limit(db, clock):
    for n in range(5):
        db.audit.record("ann", "upload", "default", f"{n}.pdf")
        clock.advance(1)
    assert [e.detail for e in db.audit.entries(limit=2, newest_first=True)] == ["4.pdf", "3.pdf"]


# -- conversations -------------------------------------------------------------------------


def answer_with_citation() -> Answer:
    chunk = Chunk(text="The pump was installed in 1987.", source="/docs/larch.md", start=0,
                  end=31, page=None, ordinal=0, id=7)  # fmt: skip
    hit = Hit(chunk, 0.9)
    return Answer(question="When?", text="In 1987 [1].", citations=[Citation(1, hit)], hits=[hit])


def test_a_user_never_sees_another_users_conversations(db):
    talks = db.conversations
    ann = talks.start("ann", "default")
    talks.add(ann, Turn("ann's secret question", answer=answer_with_citation()))
    bob = talks.current("bob", "default")
    assert bob.id != ann.id and not bob.turns
    assert [c.id for c in talks.list("ann", "default")] == [ann.id]
    assert talks.list("bob", "default") == []
    for steal in (talks.open, talks.delete):
        with pytest.raises(RagError, match="No such conversation"):
            steal("bob", ann.id)
    with pytest.raises(RagError, match="No such conversation"):
        talks.rename("bob", ann.id, "mine now")
    assert talks.open("ann", ann.id).turns[0].question == "ann's secret question"


def test_conversations_are_kept_per_knowledge_base_reopened_renamed_and_deleted(db, clock):
    talks = db.conversations
    first = talks.start("ann", "default")
    talks.add(first, Turn("When was the pump installed?", answer=answer_with_citation()))
    clock.advance(10)
    second = talks.start("ann", "default")
    talks.add(second, Turn("And the other one?", error="The model is unreachable."))
    talks.start("ann", "default")  # empty: not listed
    talks.add(talks.start("ann", "larch"), Turn("Larch?"))
    listed = talks.list("ann", "default")
    assert [(c.id, c.title, c.turns) for c in listed] == [
        (second.id, "And the other one?", 1),
        (first.id, "When was the pump installed?", 1),
    ]
    reopened = talks.open("ann", first.id)
    assert reopened.turns[0].answer.citations[0].hit.text == "The pump was installed in 1987."
    talks.rename("ann", first.id, "Pump history")
    assert talks.open("ann", first.id).title == "Pump history"
    talks.delete("ann", second.id)
    assert [c.id for c in talks.list("ann", "default")] == [first.id]
    with pytest.raises(RagError, match="No such conversation"):
        talks.open("ann", second.id)


def test_the_current_conversation_is_the_last_one_used(db, clock):
    talks = db.conversations
    old = talks.start("ann", "default")
    talks.add(old, Turn("old"))
    clock.advance(5)
    talks.start("ann", "default")
    assert talks.current("ann", "default").turns == []
    clock.advance(5)
    talks.add(talks.open("ann", old.id), Turn("again"))
    assert [t.question for t in talks.current("ann", "default").turns] == ["old", "again"]


def test_a_conversation_exports_as_markdown_with_the_cited_passages(db):
    talks = db.conversations
    conversation = talks.start("ann", "default")
    talks.add(conversation, Turn("When was the pump installed?", answer=answer_with_citation()))
    talks.add(conversation, Turn("Why?", error="The model is unreachable."))
    text = to_markdown(talks.open("ann", conversation.id))
    assert "When was the pump installed?" in text and "In 1987 [1]." in text
    assert "The pump was installed in 1987." in text and "larch.md" in text
    assert "The model is unreachable." in text
    assert text.index("When was") < text.index("In 1987") < text.index("Why?")


def test_markdown_export_defuses_markup_in_stored_text():
    hostile = Turn("# heading\n[x](https://evil.example) <script>", error="")
    text = to_markdown_of([hostile])
    # every bracket and angle bracket escaped: no link, no HTML
    assert not re.search(r"(?<!\\)[\[\]<]", text.split("## Question 1")[1]), text


def to_markdown_of(turns: list[Turn]) -> str:
    return to_markdown(Conversation(id=1, kb="default", started=0.0, turns=turns))


# -- the history kept before accounts ---------------------------------------------------------


def test_the_conversations_kept_before_accounts_move_to_the_local_user(tmp_path):
    root = tmp_path / "indexes"
    (root / ".app").mkdir(parents=True)
    legacy = sqlite3.connect(root / ".app" / "conversations.sqlite")
    legacy.executescript(
        "CREATE TABLE conversations (id INTEGER PRIMARY KEY, kb TEXT NOT NULL, started REAL);"
        "CREATE TABLE turns (id INTEGER PRIMARY KEY, conversation INTEGER, data TEXT NOT NULL);"
    )
    legacy.execute("INSERT INTO conversations VALUES (1, 'default', 5.0)")
    legacy.execute("INSERT INTO turns VALUES (1, 1, ?)", (Turn("Kept?").to_json(),))
    legacy.commit()
    legacy.close()
    db = open_app_db(Settings(indexes_root=root))
    assert [t.question for t in db.conversations.current("local", "default").turns] == ["Kept?"]
    again = open_app_db(Settings(indexes_root=root))  # imported once only
    assert len(again.conversations.list("local", "default")) == 1
