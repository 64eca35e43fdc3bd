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
from argon2 import Type
from builders import Clock

from rag.errors import RagError
from rag.settings import Settings
from rag.types import Answer, Chunk, Citation, Hit
from team.access import LoginRefused, Role, User
from team.appdb import AppDB, AppDBIncompatible, open_app_db
from team.appdb.schema import SCHEMA_VERSION
from team.conversation import Conversation, Turn
from ui.conversation import to_markdown

_databases = itertools.count()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
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


def test_a_right_password_logs_in_and_the_hash_is_argon2(db, cheap_password_hashes):
    # The session hashes cheaply (conftest.py); the product's own cost is argon2id's
    # RFC 9106 low-memory choice: 64 MiB, three passes.
    product = cheap_password_hashes
    assert (product.type, product.memory_cost, product.time_cost) == (Type.ID, 65536, 3)
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


# -- the login throttle under parallel attempts (issue 29) -------------------------------------


def test_parallel_wrong_passwords_are_each_counted(db):
    """Eight wrong passwords for one name at once: each that was checked is
    counted (the check and the count are one step), so parallel guesses
    buy no more tries than sequential ones."""
    import threading

    db.accounts.add_user("ann", Role.READER, PASSWORD, by="cli")
    start = threading.Barrier(8)
    answers: list[str] = []

    def guess(n: int) -> None:
        start.wait()
        try:
            db.accounts.verify_login("ann", f"guess {n}")
        except LoginRefused as exc:
            answers.append(str(exc))

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with db.engine.connect() as conn:
        failures = conn.execute(sqlalchemy.text("SELECT failures FROM login_attempts")).scalar()
    checked = answers.count("Wrong name or password.")
    assert len(answers) == 8 and checked >= 1
    assert failures == checked, f"{checked} passwords checked, {failures} counted"


def test_password_hashes_wait_for_a_free_slot(db):
    """A global bound on concurrent password hashes: while every slot is
    taken, a login waits (here until the test frees one) instead of hashing."""
    import threading
    import time

    from team.appdb import accounts

    db.accounts.add_user("ann", Role.READER, PASSWORD, by="cli")
    held = [accounts.HASH_SLOTS.acquire(timeout=1) for _ in range(accounts.MAX_HASHES)]
    assert all(held)
    threading.Timer(0.5, accounts.HASH_SLOTS.release).start()
    started = time.monotonic()
    try:
        assert db.accounts.verify_login("ann", PASSWORD).name == "ann"
        assert time.monotonic() - started >= 0.45, "it hashed while every slot was taken"
    finally:
        for _ in range(accounts.MAX_HASHES - 1):
            accounts.HASH_SLOTS.release()


# -- what the audit keeps (issue 29) ---------------------------------------------------------


def test_audit_names_and_targets_are_cleaned_and_cut_to_a_bound(db):
    from team.appdb.audit import MAX_DETAIL, MAX_NAME, MAX_TARGET

    long_name = "x" * 5000 + "\n\x1b[31mforged entry"
    db.audit.record(long_name, "login-failed", "t\r\n" * 3000, "d\x00" * 9000)
    with pytest.raises(LoginRefused):
        db.accounts.verify_login("\u202eevil\nname" + "y" * 400, "whatever")
    for entry in db.audit.entries():
        assert len(entry.user) <= MAX_NAME and len(entry.target) <= MAX_TARGET
        assert len(entry.detail) <= MAX_DETAIL
        for text in (entry.user, entry.target, entry.detail):
            assert not re.search(r"[\x00-\x1f\x7f\u202a-\u202e\u2066-\u2069]", text), repr(text)


# -- removing an account, and the database file (issue 29) -------------------------------------


def test_removing_an_account_removes_its_conversations(db):
    db.accounts.add_user("ann", Role.READER, PASSWORD, by="cli")
    kept = db.conversations.start("bob", "default")
    db.conversations.add(kept, Turn("bob's question"))
    gone = db.conversations.start("ann", "default")
    db.conversations.add(gone, Turn("ann's question", answer=answer_with_citation()))
    db.accounts.remove_user("ann", by="cli")
    assert db.conversations.list("ann", "default") == []
    with db.engine.connect() as conn:
        left = conn.execute(sqlalchemy.text("SELECT count(*) FROM turns")).scalar_one()
    assert left == 1, "ann's turns are gone, bob's stays"
    assert [c.id for c in db.conversations.list("bob", "default")] == [kept.id]


def test_the_app_database_file_is_created_0600(tmp_path):
    import stat

    root = tmp_path / "indexes"
    db = open_app_db(Settings(indexes_root=root))
    db.accounts.add_user("ann", Role.READER, PASSWORD, by="cli")
    made = [p for p in (root / ".app").iterdir() if p.name.startswith("app.sqlite")]
    assert made and (root / ".app" / "app.sqlite") in made
    for path in made:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, (path, oct(path.stat().st_mode))
    assert stat.S_IMODE((root / ".app").stat().st_mode) == 0o700


# -- OIDC identities bound to the provider's iss + sub (issue 29) ------------------------------

ISSUER = "https://idp.example.org"


def oidc(sub: str, email: str = "", verified: bool = False, groups: tuple[str, ...] = ()):
    from team.appdb import OidcLogin

    return OidcLogin(ISSUER, sub, email=email, email_verified=verified, groups=groups)


def mapping():
    from team.access import GroupMapping

    return GroupMapping(
        roles={"kb-readers": Role.READER, "kb-admins": Role.ADMIN},
        grants={"kb-readers": frozenset({"default", "handbook"})},
    )


def test_a_providers_name_or_unverified_email_never_borrows_an_account(db):
    from team.access import GroupMapping

    db.accounts.add_user("admin", Role.ADMIN, PASSWORD, by="cli")
    db.accounts.add_user("ada@example.org", Role.EDITOR, None, ["default"], by="cli")
    bare = GroupMapping()
    assert db.identities.resolve(oidc("admin"), bare) is None, "sub 'admin' is not the account"
    assert db.identities.resolve(oidc("mallory", email="admin"), bare) is None
    assert db.identities.resolve(oidc("mallory", email="ada@example.org"), bare) is None
    user = db.identities.resolve(oidc("mallory", groups=("kb-readers",)), mapping())
    assert user is not None and user.name not in ("admin", "ada@example.org", "mallory")
    assert user.role is Role.READER


def test_a_verified_email_binds_an_existing_account_once(db):
    from team.access import GroupMapping

    db.accounts.add_user("ada@example.org", Role.EDITOR, None, ["default"], by="cli")
    ada = oidc("ada-1", email="ada@example.org", verified=True)
    expected = User("ada@example.org", Role.EDITOR, frozenset({"default"}))
    assert db.identities.resolve(ada, GroupMapping()) == expected
    assert db.identities.bound(ISSUER, "ada-1") == "ada@example.org"
    # another subject with the same verified e-mail (a second provider account) does not
    assert db.identities.resolve(oidc("ada-2", "ada@example.org", True), GroupMapping()) is None
    assert db.identities.resolve(ada, GroupMapping()) == expected, "the bound subject still is"
    assert ("", "oidc-bind", "ada@example.org") in actions(db)


def test_an_admitted_login_gets_its_own_account_bound_to_its_subject(db):
    bo = oidc("bo-7", email="bo@example.org", verified=True, groups=("kb-readers",))
    assert db.identities.resolve(bo, mapping()) == User(
        "bo@example.org", Role.READER, frozenset({"default", "handbook"})
    )
    nameless = db.identities.resolve(oidc("u/1 2", groups=("kb-readers",)), mapping())
    assert nameless is not None and nameless.name.startswith("oidc-")
    listed = {a.user.name: a for a in db.accounts.accounts()}
    assert set(listed) == {"bo@example.org", nameless.name}
    assert not listed["bo@example.org"].has_password
    assert db.identities.resolve(oidc("nobody", groups=("staff",)), mapping()) is None
    assert set(a.user.name for a in db.accounts.accounts()) == set(listed), "no entry, no account"


def test_a_disabled_account_wins_over_every_group(db):
    admin = oidc("root-1", email="root@example.org", verified=True, groups=("kb-admins",))
    assert db.identities.resolve(admin, mapping()).role is Role.ADMIN
    db.accounts.set_disabled("root@example.org", True, by="cli")
    with pytest.raises(LoginRefused, match="disabled"):
        db.identities.resolve(admin, mapping())


def test_a_revoked_grant_wins_over_the_groups_grants(db):
    reader = oidc("rita-1", email="rita@example.org", verified=True, groups=("kb-readers",))
    assert db.identities.resolve(reader, mapping()).grants == {"default", "handbook"}
    db.accounts.revoke("rita@example.org", "handbook", by="cli")
    assert db.identities.resolve(reader, mapping()).grants == {"default"}
    db.accounts.grant("rita@example.org", "handbook", by="cli")
    assert db.identities.resolve(reader, mapping()).grants == {"default", "handbook"}


def test_removing_an_account_removes_its_binding(db):
    bo = oidc("bo-7", email="bo@example.org", verified=True, groups=("kb-readers",))
    db.identities.resolve(bo, mapping())
    db.accounts.remove_user("bo@example.org", by="cli")
    assert db.identities.bound(ISSUER, "bo-7") is None


def test_a_version_2_database_upgrades_to_the_current_schema(db, settings, clock):
    """A database from before the OIDC bindings (schema 2): opened by this
    code, it gains the new tables and keeps its accounts."""
    db.accounts.add_user("ann", Role.READER, PASSWORD, ["default"], by="cli")
    with db.engine.begin() as conn:
        conn.execute(sqlalchemy.text("DROP TABLE oidc_identities"))
        conn.execute(sqlalchemy.text("DROP TABLE revoked_grants"))
        conn.execute(sqlalchemy.text("UPDATE kbqa_meta SET value = '2' WHERE key = 'schema'"))
    upgraded = open_app_db(settings, clock=clock)
    assert upgraded.schema_version() == SCHEMA_VERSION >= 3
    assert upgraded.accounts.verify_login("ann", PASSWORD).grants == {"default"}
    ann = oidc("ann-1", email="ann", verified=True)
    assert upgraded.identities.resolve(ann, mapping()).name == "ann"
