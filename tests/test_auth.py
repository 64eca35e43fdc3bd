"""Who can get in (issue 19): with no login (RAG_AUTH=none) the app serves a
loopback address only, unless told --insecure-no-auth; with RAG_AUTH=oidc
it shows nothing but a login page until Streamlit's st.login has signed the
visitor in, and refuses to run without the [auth] secrets. The login itself,
through a real OpenID provider, is in test_browser_auth.py."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_secure_defaults import listening_addresses, make_run

from serving import launch

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "streamlit_app.py")

# What Streamlit documents for its [auth] section (secrets.toml).
AUTH_SECRETS = {
    "redirect_uri": "http://localhost:8501/oauth2callback",
    "cookie_secret": "a-long-random-test-secret-0123456789",
    "client_id": "kbqa",
    "client_secret": "test-secret",
    "server_metadata_url": "http://127.0.0.1:9400/.well-known/openid-configuration",
}


# -- serving.run: the refusal --------------------------------------------------------


def _serving_run(*args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """`python -m serving.run --no-llm ARGS` to its end (30 s at most: a run
    that starts the app instead of refusing is stopped and fails the test)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    runner = subprocess.Popen(
        [sys.executable, "-m", "serving.run", "--no-llm", *args],
        env={**env, **settings}, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = runner.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(runner.pid, signal.SIGKILL)
        output, _ = runner.communicate()
        pytest.fail(f"serving.run did not refuse; it ran on:\n{output}")
    return subprocess.CompletedProcess(runner.args, runner.returncode, output)


def test_serving_run_refuses_another_host_without_a_login(docs_index: Path) -> None:
    port = launch.free_port()
    done = _serving_run("--host", "0.0.0.0", "--port", str(port), "--index", str(docs_index))
    assert done.returncode == 2, done.stdout
    assert "RAG_AUTH=oidc" in done.stdout and "RAG_AUTH=local" in done.stdout
    assert "--insecure-no-auth" in done.stdout
    assert "Traceback" not in done.stdout
    assert not listening_addresses(port), "the app was started"


def test_serving_run_takes_another_host_when_a_login_is_configured(docs_index: Path) -> None:
    with make_run(docs_index, "--host", "0.0.0.0", RAG_AUTH="oidc") as (port, runner):
        assert listening_addresses(port) & {"0.0.0.0", "::"}
        os.killpg(runner.pid, signal.SIGTERM)
        output, _ = runner.communicate(timeout=30)
    assert "no login" not in output, output


def test_the_refusal_rule() -> None:
    from rag.settings import Settings
    from team.exposure import is_loopback, refusal

    for host in ["127.0.0.1", "127.0.0.2", "::1", "localhost", "unix:///run/kbqa.sock"]:
        assert is_loopback(host), host
        assert refusal(Settings(auth="none"), host) is None, host
    for host in ["0.0.0.0", "::", "192.168.1.10", "example.org", "", None]:
        assert not is_loopback(host), host
        assert refusal(Settings(auth="none"), host), host
        assert refusal(Settings(auth="none", insecure_no_auth=True), host) is None
        assert refusal(Settings(auth="oidc"), host) is None
        assert refusal(Settings(auth="local"), host) is None


# -- the app: RAG_AUTH=none --------------------------------------------------------


def _app():
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(APP, default_timeout=120)


@contextlib.contextmanager
def server_address(address: str | None) -> Iterator[None]:
    """Streamlit's server.address, as `streamlit run --server.address` sets it."""
    from streamlit import config

    before = config.get_option("server.address")
    config.set_option("server.address", address)
    try:
        yield
    finally:
        config.set_option("server.address", before)


def _shows_knowledge_bases(at) -> bool:
    return bool(at.tabs) or bool(at.sidebar.selectbox)


def test_without_login_on_loopback_the_app_is_served_to_the_local_user(
    app_env: pytest.MonkeyPatch,
) -> None:
    from ui.auth import LOCAL_USER, Identity

    assert Identity(name="local", email="", groups=()) == LOCAL_USER
    with server_address("127.0.0.1"):
        at = _app().run()
    assert not at.exception, [e.value for e in at.exception]
    assert _shows_knowledge_bases(at)
    assert not [b for b in at.sidebar.button if b.label == "Log out"]


@pytest.mark.parametrize("address", ["0.0.0.0", None])
def test_without_login_the_app_started_by_hand_on_another_address_refuses(
    app_env: pytest.MonkeyPatch, address: str | None
) -> None:
    # `streamlit run streamlit_app.py --server.address 0.0.0.0`, or started
    # outside the project folder, where no config.toml says 127.0.0.1 and
    # Streamlit listens on every interface.
    with server_address(address):
        at = _app().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not _shows_knowledge_bases(at)
    assert not at.chat_input and not at.file_uploader
    shown = " ".join(e.value for e in at.error)
    assert "RAG_AUTH=oidc" in shown and "RAG_INSECURE_NO_AUTH" in shown, shown


def test_without_login_insisting_serves_another_address(app_env: pytest.MonkeyPatch) -> None:
    app_env.setenv("RAG_INSECURE_NO_AUTH", "1")  # as serving.run --insecure-no-auth passes it
    with server_address("0.0.0.0"):
        at = _app().run()
    assert not at.exception, [e.value for e in at.exception]
    assert _shows_knowledge_bases(at)


def test_without_login_the_app_refuses_an_app_database_with_accounts(
    app_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # `streamlit run streamlit_app.py` by hand, RAG_AUTH unset, while the
    # team's accounts are in the app database (issue 31): no one may become
    # the admin by reaching the page.
    from rag.settings import Settings
    from team.appdb import open_app_db

    app_env.setenv("RAG_APP_DB", str(tmp_path / "app.sqlite"))
    open_app_db(Settings()).accounts.add_user("ann", "admin", "a long passphrase", [], by="test")
    with server_address("127.0.0.1"):
        at = _app().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not _shows_knowledge_bases(at)
    assert not at.chat_input and not at.file_uploader
    shown = " ".join(e.value for e in at.error)
    assert "RAG_AUTH=local" in shown and "1 account(s)" in shown, shown
    app_env.setenv("RAG_INSECURE_NO_AUTH", "1")  # insisting still serves it
    with server_address("127.0.0.1"):
        assert _shows_knowledge_bases(_app().run())


# -- the app: RAG_AUTH=oidc --------------------------------------------------------


@pytest.fixture
def oidc_env(app_env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    app_env.setenv("RAG_AUTH", "oidc")
    return app_env


def _oidc_app(**secrets: str):
    at = _app()
    at.secrets["auth"] = {**AUTH_SECRETS, **secrets}
    return at


@pytest.mark.parametrize("missing", ["all", "client_secret", "cookie_secret"])
def test_oidc_without_its_secrets_shows_an_error_page(
    oidc_env: pytest.MonkeyPatch, missing: str
) -> None:
    at = _app()
    if missing != "all":
        at.secrets["auth"] = {k: v for k, v in AUTH_SECRETS.items() if k != missing}
    at.user = {"is_logged_in": True, "name": "Ada", "email": "ada@example.org"}
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not _shows_knowledge_bases(at)
    shown = " ".join(e.value for e in at.error)
    assert "secrets.toml" in shown and "[auth]" in shown, shown
    if missing != "all":
        assert missing in shown
    assert "test-secret" not in shown and AUTH_SECRETS["cookie_secret"] not in shown


def test_oidc_shows_only_a_login_page_until_signed_in(oidc_env: pytest.MonkeyPatch) -> None:
    at = _oidc_app()
    at.user = {"is_logged_in": False}
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [b.label for b in at.button] == ["Log in"]
    assert not _shows_knowledge_bases(at)
    assert not at.chat_input and not at.file_uploader


def test_oidc_signed_in_user_sees_the_app_and_can_log_out(oidc_env: pytest.MonkeyPatch) -> None:
    oidc_env.setenv("RAG_AUTH_GROUP_ROLES", '{"kb-readers": "reader"}')
    oidc_env.setenv("RAG_AUTH_GROUP_GRANTS", '{"kb-readers": ["default"]}')
    at = _oidc_app()
    at.user = {
        "is_logged_in": True, "name": "Ada Lovelace", "email": "ada@example.org",
        "groups": ["kb-readers", "staff"], "iss": ISSUER, "sub": "ada",
    }  # fmt: skip
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert _shows_knowledge_bases(at)
    sidebar_text = " ".join(m.value for m in [*at.sidebar.markdown, *at.sidebar.caption])
    assert "Ada Lovelace" in sidebar_text and "kb-readers" in sidebar_text
    assert [t.label for t in at.tabs] == ["Ask"], "a reader, through the groups mapping"
    next(b for b in at.sidebar.button if b.label == "Log out").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert [b.label for b in at.button] == ["Log in"]
    assert not _shows_knowledge_bases(at)


def test_oidc_identity_reads_the_configured_groups_claim() -> None:
    from ui.auth import Identity, identity_from_claims

    claims = {"name": "Ada", "email": "ada@example.org", "groups": ["a"], "roles": ["kb-admin"]}
    assert identity_from_claims(claims, "roles") == Identity(
        "Ada", "ada@example.org", ("kb-admin",)
    )
    assert identity_from_claims(claims, "groups").groups == ("a",)
    # one group as a plain string; no claim at all; no name: the email, then the subject
    assert identity_from_claims({"sub": "u1", "grp": "ops"}, "grp") == Identity(
        "u1", "", ("ops",), subject="u1"
    )
    assert identity_from_claims({"email": "b@x.org"}, "groups") == Identity(
        "b@x.org", "b@x.org", ()
    )


def test_the_groups_claim_is_a_setting(oidc_env: pytest.MonkeyPatch) -> None:
    oidc_env.setenv("RAG_AUTH_GROUPS_CLAIM", "roles")
    at = _oidc_app()
    at.user = {"is_logged_in": True, "name": "Ada", "groups": ["wrong"], "roles": ["kb-admin"],
               "iss": ISSUER, "sub": "ada"}  # fmt: skip
    at.run()
    sidebar_text = " ".join(m.value for m in [*at.sidebar.markdown, *at.sidebar.caption])
    assert "kb-admin" in sidebar_text and "wrong" not in sidebar_text


ISSUER = "https://idp.example.org"
ADA = {
    "is_logged_in": True, "name": "Ada", "email": "ada@example.org", "email_verified": True,
    "groups": ["staff"], "iss": ISSUER, "sub": "ada",
}  # fmt: skip


def test_oidc_user_in_no_mapped_group_and_without_an_account_is_told_to_ask_an_admin(
    oidc_env: pytest.MonkeyPatch,
) -> None:
    oidc_env.setenv("RAG_AUTH_GROUP_ROLES", '{"kb-readers": "reader"}')
    at = _oidc_app()
    at.user = ADA
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not _shows_knowledge_bases(at)
    assert not at.chat_input and not at.file_uploader
    shown = " ".join(m.value for m in [*at.info, *at.warning, *at.error])
    assert "no access" in shown and "ask an admin" in shown, shown
    assert [b.label for b in at.sidebar.button] == ["Log out"], "they can still leave"


def test_oidc_user_without_a_mapped_group_gets_the_account_an_admin_made(
    oidc_env: pytest.MonkeyPatch, kb_root: Path
) -> None:
    from rag.settings import Settings
    from team.appdb import open_app_db

    shutil.copytree(kb_root / "default", kb_root / "secret")
    db = open_app_db(Settings(indexes_root=kb_root))
    db.accounts.add_user("ada@example.org", "editor", None, ["default"], by="test")
    at = _oidc_app()
    at.user = ADA
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.label for t in at.tabs] == ["Ask", "Manage"]
    assert at.sidebar.selectbox[0].options == ["default"], "only the base granted to her"


def test_oidc_claims_carry_the_issuer_subject_and_whether_the_email_is_verified() -> None:
    from ui.auth import identity_from_claims

    claims = {"iss": ISSUER, "sub": "s-1", "email": "a@x.org", "email_verified": True}
    identity = identity_from_claims(claims, "groups")
    assert (identity.issuer, identity.subject, identity.email_verified) == (ISSUER, "s-1", True)
    assert identity_from_claims({**claims, "email_verified": "true"}, "g").email_verified
    assert not identity_from_claims({**claims, "email_verified": False}, "g").email_verified
    assert not identity_from_claims({"sub": "s-1", "email": "a@x.org"}, "g").email_verified


def test_oidc_an_unverified_email_does_not_get_the_account_made_for_it(
    oidc_env: pytest.MonkeyPatch, kb_root: Path
) -> None:
    from rag.settings import Settings
    from team.appdb import open_app_db

    db = open_app_db(Settings(indexes_root=kb_root))
    db.accounts.add_user("ada@example.org", "admin", None, by="test")
    at = _oidc_app()
    at.user = {**ADA, "email_verified": False, "sub": "not-ada"}
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not _shows_knowledge_bases(at)
    assert "ask an admin" in " ".join(m.value for m in at.info)


def test_oidc_a_token_without_a_subject_is_refused(oidc_env: pytest.MonkeyPatch) -> None:
    oidc_env.setenv("RAG_AUTH_DEFAULT_ROLE", "reader")
    at = _oidc_app()
    at.user = {k: v for k, v in ADA.items() if k != "sub"}
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not _shows_knowledge_bases(at)
    assert "no issuer or subject" in " ".join(e.value for e in at.error)


def _logins(kb_root: Path) -> list[tuple[str, str, str, str]]:
    from rag.settings import Settings
    from team.appdb import open_app_db

    entries = open_app_db(Settings(indexes_root=kb_root)).audit.entries()
    return [(e.user, e.action, e.target, e.detail) for e in entries if e.action == "login"]


def test_an_oidc_login_is_audited_once_not_at_every_run(
    oidc_env: pytest.MonkeyPatch, kb_root: Path
) -> None:
    """Streamlit's cookie keeps an OIDC user signed in over every rerun and
    every reload of the page: the audit trail has their login once. A new
    login at the provider issues a new ID token (its `iat`): a new entry."""
    oidc_env.setenv("RAG_AUTH_GROUP_ROLES", '{"kb-readers": "reader"}')
    oidc_env.setenv("RAG_AUTH_GROUP_GRANTS", '{"kb-readers": ["default"]}')
    ada = {**ADA, "groups": ["kb-readers"], "sub": "ada", "iat": 1_700_000_000}
    at = _oidc_app()
    at.user = ada
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    at.run()
    at.run()
    once = [("ada@example.org", "login", "ada@example.org", "oidc, token issued 1700000000")]
    assert _logins(kb_root) == once
    reloaded = _oidc_app()  # a reload: a new session of the page, the same login
    reloaded.user = ada
    reloaded.run()
    assert _shows_knowledge_bases(reloaded)
    assert _logins(kb_root) == once
    again = _oidc_app()  # logged out and in again at the provider
    again.user = {**ada, "iat": 1_700_003_600}
    again.run()
    assert _logins(kb_root) == [*once, ("ada@example.org", "login", "ada@example.org",
                                        "oidc, token issued 1700003600")]  # fmt: skip
