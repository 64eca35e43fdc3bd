"""The access policy (team/access.py): each role calling each action
directly, as the app, the `rag` command and the HTTP API do before they
open anything; the groups claim of an OIDC login mapped to a user."""

from __future__ import annotations

import pytest

from rag.errors import RagError
from rag.settings import Settings
from team.access import (
    LOCAL_USER,
    AccessDenied,
    AccessPolicy,
    Action,
    GroupMapping,
    Role,
    User,
    identity_user,
)
from team.appdb import AppDB, open_app_db

KBS = ["default", "larch", "finance"]
ADMIN = User("ada", Role.ADMIN)
EDITOR = User("eve", Role.EDITOR, frozenset({"larch"}))
READER = User("rex", Role.READER, frozenset({"default"}))


@pytest.fixture
def db(tmp_path) -> AppDB:
    return open_app_db(Settings(indexes_root=tmp_path / "indexes"))


@pytest.fixture
def policy(db) -> AccessPolicy:
    return AccessPolicy(db)


def test_a_reader_reads_only_granted_bases_and_writes_none(policy):
    assert policy.readable(READER, KBS) == ["default"]
    assert policy.allows(READER, Action.READ, "default")
    assert not policy.allows(READER, Action.READ, "larch"), "an ungranted base"
    assert not policy.allows(READER, Action.WRITE, "default"), "writing even a granted base"
    assert not policy.allows(READER, Action.ADMIN, None)


def test_an_editor_reads_and_writes_granted_bases_but_manages_no_users(policy):
    assert policy.readable(EDITOR, KBS) == ["larch"]
    assert policy.allows(EDITOR, Action.WRITE, "larch")
    assert not policy.allows(EDITOR, Action.WRITE, "default")
    assert not policy.allows(EDITOR, Action.ADMIN, None)
    assert not policy.allows(EDITOR, Action.ADMIN, "larch")


def test_an_admin_does_everything_in_every_base(policy):
    assert policy.readable(ADMIN, KBS) == KBS
    for action in Action:
        assert all(policy.allows(ADMIN, action, kb) for kb in KBS)
    assert policy.allows(ADMIN, Action.ADMIN, None)


def test_single_user_mode_is_a_local_admin(policy):
    assert LOCAL_USER.role is Role.ADMIN
    assert policy.readable(LOCAL_USER, KBS) == KBS


def test_a_read_or_write_needs_a_knowledge_base(policy):
    assert not policy.allows(EDITOR, Action.READ, None)
    assert not policy.allows(EDITOR, Action.WRITE, "")


def test_require_raises_a_message_for_the_user_and_audits_the_denial(policy, db):
    policy.require(READER, Action.READ, "default")  # allowed: nothing raised, nothing kept
    with pytest.raises(AccessDenied) as denied:
        policy.require(READER, Action.WRITE, "default")
    assert isinstance(denied.value, RagError)
    assert "default" in str(denied.value) and "reader" in str(denied.value)
    with pytest.raises(AccessDenied, match="admin"):
        policy.require(EDITOR, Action.ADMIN)
    with pytest.raises(AccessDenied, match="no access"):
        policy.require(EDITOR, Action.READ, "finance")
    assert [(e.user, e.action, e.target, e.detail) for e in db.audit.entries()] == [
        ("rex", "denied", "default", "write"),
        ("eve", "denied", "", "admin"),
        ("eve", "denied", "finance", "read"),
    ]


def test_a_policy_without_a_database_still_decides():
    with pytest.raises(AccessDenied):
        AccessPolicy(None).require(READER, Action.WRITE, "default")


# -- OIDC groups -----------------------------------------------------------------------------

MAPPING = GroupMapping(
    roles={"kb-admins": Role.ADMIN, "kb-editors": Role.EDITOR, "staff": Role.READER},
    grants={"staff": frozenset({"default"}), "finance-team": frozenset({"finance"})},
)


def test_the_strongest_role_of_a_users_groups_wins_and_grants_add_up():
    user = identity_user("eve@example.org", ["staff", "kb-editors", "finance-team"], MAPPING)
    assert user == User("eve@example.org", Role.EDITOR, frozenset({"default", "finance"}))
    assert identity_user("ada@example.org", ["kb-admins"], MAPPING).role is Role.ADMIN


def test_a_user_in_no_mapped_group_gets_the_default_role_or_nothing():
    assert identity_user("x@example.org", ["other"], MAPPING) is None
    assert identity_user("x@example.org", [], MAPPING) is None
    lenient = GroupMapping(roles={}, grants={"staff": frozenset({"default"})}, default=Role.READER)
    assert identity_user("x@example.org", ["staff"], lenient) == User(
        "x@example.org", Role.READER, frozenset({"default"})
    )


def test_the_mapping_is_read_from_the_settings():
    settings = Settings(
        auth_group_roles={"kb-editors": "editor"},
        auth_group_grants={"kb-editors": ["larch", "default"]},
        auth_default_role="reader",
    )
    mapping = GroupMapping.from_settings(settings)
    assert mapping == GroupMapping(
        roles={"kb-editors": Role.EDITOR},
        grants={"kb-editors": frozenset({"larch", "default"})},
        default=Role.READER,
    )


def test_the_mapping_comes_from_the_environment_as_json(monkeypatch):
    monkeypatch.setenv("RAG_AUTH_GROUP_ROLES", '{"kb-admins": "admin"}')
    monkeypatch.setenv("RAG_AUTH_GROUP_GRANTS", '{"staff": ["default"]}')
    mapping = GroupMapping.from_settings(Settings())
    assert mapping.roles == {"kb-admins": Role.ADMIN}
    assert mapping.grants == {"staff": frozenset({"default"})}
    assert mapping.default is None
