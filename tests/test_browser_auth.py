"""Logins end to end in headless Chromium (issue 19).

RAG_AUTH=oidc: a real OpenID Connect provider (oidc-provider-mock, its own
HTTP server), the app with Streamlit's st.login configured for it in
secrets.toml: the login page shows nothing of the knowledge bases; Log in
goes through the provider's form; back in the app the user's name and
groups are in the sidebar, and the login is in the audit trail once; Log
out ends the provider's session and shows the login page again.

RAG_AUTH=local: a wrong password refused, a reader who sees only their
base; an editor who uploads, an admin who grants a reader a base in the
Users view, and the reader who then sees it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from test_browser import ARTIFACTS, ask, browser_page, streamlit_app
from test_browser_flows import settled

pytestmark = [pytest.mark.browser]

ADA = {
    "name": "Ada Lovelace", "email": "ada@example.org", "email_verified": True,
    "groups": ["kb-readers", "staff"],
}  # fmt: skip
# Issue 29: a provider user with no e-mail whose display name is an account's
# name; one whose (disabled) account an admin made; one with a grant revoked.
MALLORY = {"name": "admin"}
READER = {"email_verified": True, "groups": ["kb-readers"]}
DORA = {"name": "Dora", "email": "dora@example.org", **READER}
RITA = {"name": "Rita", "email": "rita@example.org", **READER}
# No LLM: the login is what is tested; answers stay off (a refused port).
NO_LLM = SimpleNamespace(base_url="http://127.0.0.1:9/v1", served_model_name="none")


@pytest.fixture(scope="module")
def provider():
    """The OpenID provider on a free port of `localhost`, knowing Ada's claims
    (the app is reached as 127.0.0.1: another host, so the two never share
    cookies)."""
    from oidc_provider_mock import User, run_server_in_thread

    from serving.launch import free_port

    users = [User(sub=sub, claims=claims) for sub, claims in
             [("ada", ADA), ("mallory", MALLORY), ("dora", DORA), ("rita", RITA)]]  # fmt: skip
    with run_server_in_thread(port=free_port(), user_claims=users) as server:
        yield f"http://localhost:{server.server_port}"


def write_secrets(folder: Path, provider_url: str) -> Path:
    """Streamlit's [auth] section, as its documentation has it; the app's
    port is filled in by Streamlit ({port})."""
    path = folder / "secrets.toml"
    path.write_text(
        "[auth]\n"
        'redirect_uri = "http://127.0.0.1:{port}/oauth2callback"\n'
        'cookie_secret = "test-cookie-secret-with-enough-entropy-0123456789"\n'
        'client_id = "kbqa"\n'
        'client_secret = "kbqa-test-secret"\n'
        f'server_metadata_url = "{provider_url}/.well-known/openid-configuration"\n',
        encoding="utf-8",
    )
    return path


def test_oidc_login_shows_the_user_and_logout_returns_to_the_login_page(
    tmp_path, docs_index, provider, capsys
):
    from playwright.sync_api import expect

    secrets = write_secrets(tmp_path, provider)
    app = streamlit_app(
        tmp_path, docs_index, NO_LLM, args=("--secrets.files", str(secrets)), RAG_AUTH="oidc",
        RAG_AUTH_GROUP_ROLES='{"kb-readers": "reader"}',
        RAG_AUTH_GROUP_GRANTS='{"kb-readers": ["default"]}',
    )  # fmt: skip
    shot = ARTIFACTS / "oidc-logged-out.png"
    with app as url, browser_page(url, shot, "the login page after Log out", capsys) as page:
        log_in = page.get_by_role("button", name="Log in")
        expect(log_in).to_be_visible(timeout=60_000)
        # nothing of the app: no tabs, no sidebar (knowledge bases, settings)
        expect(page.get_by_role("tab")).to_have_count(0)
        expect(page.get_by_test_id("stSidebar")).to_have_count(0)
        _screenshot(page, "oidc-login-page.png", "the login page", capsys)

        log_in.click()
        page.wait_for_url(f"{provider}/oauth2/authorize*", timeout=30_000)
        page.locator("input[name=sub]").fill("ada")
        page.get_by_role("button", name="Authorize").click()

        page.wait_for_url(f"{url}/**", timeout=30_000)
        sidebar = page.get_by_test_id("stSidebar")
        expect(sidebar.get_by_text("Signed in as")).to_be_visible(timeout=60_000)
        expect(sidebar.get_by_text("Ada Lovelace")).to_be_visible()
        expect(sidebar.get_by_text("Groups: kb-readers, staff")).to_be_visible()
        expect(page.get_by_placeholder("Ask a question about your documents")).to_be_visible(
            timeout=60_000
        )
        _screenshot(page, "oidc-signed-in.png", "the signed-in view", capsys)
        page.reload()  # still signed in (Streamlit's cookie): not a second login
        expect(sidebar.get_by_text("Ada Lovelace")).to_be_visible(timeout=60_000)

        sidebar.get_by_role("button", name="Log out").click()
        page.wait_for_url(f"{provider}/oauth2/end_session*", timeout=30_000)
        page.get_by_role("button", name="End session").click()
        page.wait_for_url(f"{url}/**", timeout=30_000)
        expect(page.get_by_role("button", name="Log in")).to_be_visible(timeout=60_000)
        expect(page.get_by_text("Ada Lovelace")).to_have_count(0)
        page.reload()  # the identity cookie is gone, not only this session's view
        expect(page.get_by_role("button", name="Log in")).to_be_visible(timeout=60_000)
        expect(page.get_by_text("Signed in as")).to_have_count(0)
    logins = [e for e in _audit(tmp_path / "indexes") if e.action == "login"]
    assert [e.user for e in logins] == ["ada@example.org"], logins
    assert logins[0].detail.startswith("oidc, token issued "), "the real ID token has an iat"


def _audit(root: Path):
    """The audit trail of the app database the app keeps under `root`."""
    from rag.settings import Settings
    from team.appdb import open_app_db

    return open_app_db(Settings(indexes_root=root)).audit.entries()


PASSWORD = "correct horse battery"


def local_accounts_app(tmp_path: Path, docs_index: Path, *accounts: tuple[str, str, list[str]]):
    """An app with RAG_AUTH=local over a fresh app database holding
    `accounts` (name, role, knowledge bases; each with PASSWORD): the app
    (a context manager giving its URL) and the database."""
    from rag.settings import Settings
    from team.appdb import open_app_db

    app_db = str(tmp_path / "app.sqlite")
    db = open_app_db(Settings(app_db=app_db))
    for name, role, kbs in accounts:
        db.accounts.add_user(name, role, PASSWORD, kbs, by="test")
    app = streamlit_app(
        tmp_path, docs_index, NO_LLM,
        RAG_AUTH="local", RAG_APP_DB=app_db, RAG_LOGIN_BACKOFF="0.001",
    )  # fmt: skip
    return app, db


def test_local_login_refuses_a_wrong_password_and_shows_a_reader_only_their_base(
    tmp_path, docs_index, capsys
):
    """RAG_AUTH=local: an account made with the app database's API, a wrong
    password refused on the login page, the right one admitted; the reader
    sees one of the two knowledge bases and no Manage tab, and can ask."""
    import shutil

    from playwright.sync_api import expect

    app, _db = local_accounts_app(tmp_path, docs_index, ("rita", "reader", ["default"]))
    shot = ARTIFACTS / "local-reader-view.png"
    with app as url, browser_page(url, shot, "a reader's view", capsys) as page:
        root = tmp_path / "indexes"
        shutil.copytree(root / "default", root / "secret")  # a base rita is not granted
        log_in = page.get_by_role("button", name="Log in")
        expect(log_in).to_be_visible(timeout=60_000)
        expect(page.get_by_role("tab")).to_have_count(0)
        expect(page.get_by_test_id("stSidebar")).to_have_count(0)
        _screenshot(page, "local-login-page.png", "the local login page", capsys)

        page.get_by_label("Username").fill("rita")
        page.get_by_label("Password", exact=True).fill("not her password")
        log_in.click()
        expect(page.get_by_text("Wrong name or password.")).to_be_visible(timeout=30_000)
        expect(page.get_by_role("tab")).to_have_count(0)
        _screenshot(page, "local-login-refused.png", "a refused login", capsys)

        page.get_by_label("Password", exact=True).fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        sidebar = page.get_by_test_id("stSidebar")
        expect(sidebar.get_by_text("Signed in as")).to_be_visible(timeout=60_000)
        expect(sidebar.get_by_text("rita")).to_be_visible()
        expect(page.get_by_role("tab")).to_have_text(["Ask"])
        sidebar.get_by_test_id("stSelectbox").first.click()
        expect(page.get_by_role("option")).to_have_text(["default"])
        page.keyboard.press("Escape")
        ask(page, "How are broken files reported during ingestion?")
        expect(page.get_by_text("1. ").first).to_be_visible(timeout=60_000)
        # the run is over once the sidebar lists the conversation, titled by its question
        expect(sidebar.get_by_role("button", name="How are broken files")).to_be_visible(
            timeout=60_000
        )


NOTE = "# Larch Creek pump station\n\nThe Larch Creek pump was installed in 1987.\n"


def log_in_as(page, name: str, password: str = PASSWORD):
    """Fills the local login form and waits for the signed-in page; returns
    the sidebar."""
    from playwright.sync_api import expect

    page.get_by_label("Username").fill(name)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Log in").click()
    sidebar = page.get_by_test_id("stSidebar")
    expect(sidebar.get_by_text("Signed in as")).to_be_visible(timeout=60_000)
    expect(sidebar.get_by_text(name, exact=True)).to_be_visible()
    settled(page)
    return sidebar


def log_out(page) -> None:
    from playwright.sync_api import expect

    page.get_by_test_id("stSidebar").get_by_role("button", name="Log out").click()
    expect(page.get_by_role("button", name="Log in")).to_be_visible(timeout=60_000)


def choose(page, box: str, option: str) -> None:
    """Picks `option` in the visible selectbox labelled `box`."""
    from playwright.sync_api import expect

    combo = page.get_by_role("combobox", name=box, exact=True)
    combo.click()
    page.get_by_role("option", name=option, exact=True).click()
    expect(combo).to_have_value(option, timeout=30_000)
    settled(page)


def test_local_editor_uploads_admin_grants_and_the_reader_then_sees_the_base(
    tmp_path, docs_index, capsys
):
    """RAG_AUTH=local, three accounts on one app: eddie (editor of default)
    uploads a note in Manage; ada (admin) grants rita (reader of default)
    the base `secret` in the Users view; rita, logging in next, has both."""
    import shutil

    from playwright.sync_api import expect

    app, db = local_accounts_app(
        tmp_path, docs_index,
        ("rita", "reader", ["default"]), ("eddie", "editor", ["default"]), ("ada", "admin", []),
    )  # fmt: skip
    note = tmp_path / "larch-pump.md"
    note.write_text(NOTE, encoding="utf-8")
    shot = ARTIFACTS / "local-reader-granted.png"
    with app as url, browser_page(url, shot, "the reader after the grant", capsys) as page:
        shutil.copytree(tmp_path / "indexes" / "default", tmp_path / "indexes" / "secret")
        main = page.get_by_test_id("stMain")
        expect(page.get_by_role("button", name="Log in")).to_be_visible(timeout=60_000)

        log_in_as(page, "eddie")
        expect(page.get_by_role("tab")).to_have_text(["Ask", "Manage"])
        page.get_by_role("tab", name="Manage").click()
        main.locator("input[type='file']").set_input_files(str(note))
        main.get_by_role("button", name="Ingest").click()
        expect(main.get_by_text("Added 1, updated 0")).to_be_visible(timeout=180_000)
        settled(page)
        _screenshot(page, "local-editor-upload.png", "the editor's upload result", capsys)
        log_out(page)

        log_in_as(page, "ada")
        tabs = ["Ask", "Manage", "Users", "Audit", "Feedback"]
        expect(page.get_by_role("tab")).to_have_text(tabs)
        page.get_by_role("tab", name="Users").click()
        choose(page, "Account", "rita")
        choose(page, "Knowledge base to grant or revoke", "secret")
        main.get_by_role("button", name="Grant", exact=True).click()
        expect(main.get_by_text("Granted secret to rita.")).to_be_visible(timeout=30_000)
        settled(page)
        _screenshot(page, "local-users-view.png", "the admin's Users view", capsys)
        log_out(page)

        sidebar = log_in_as(page, "rita")
        expect(page.get_by_role("tab")).to_have_text(["Ask"])
        sidebar.get_by_test_id("stSelectbox").first.click()
        expect(page.get_by_role("option")).to_have_text(["default", "secret"])
        page.get_by_role("option", name="secret").click()
        expect(main.get_by_text("Knowledge base secret").first).to_be_visible(timeout=60_000)
    done = [(e.user, e.action, e.target) for e in db.audit.entries()]
    for entry in [("eddie", "upload", "default"), ("ada", "grant", "rita")]:
        assert entry in done, done


# -- OIDC identities cannot be borrowed (issue 29) ---------------------------------------


@pytest.fixture(scope="module")
def oidc_team(tmp_path_factory, docs_index, provider):
    """One app with RAG_AUTH=oidc and kb-readers mapped to readers of
    default and secret, over an app database holding: `admin` (an admin with
    a password), dora@example.org (disabled), rita@example.org (a reader).
    Yields the app's URL and the database."""
    import shutil

    from rag.settings import Settings
    from team.appdb import open_app_db

    tmp_path = tmp_path_factory.mktemp("oidc-team")
    app_db = str(tmp_path / "app.sqlite")
    db = open_app_db(Settings(app_db=app_db))
    db.accounts.add_user("admin", "admin", PASSWORD, by="test")
    db.accounts.add_user("dora@example.org", "reader", None, by="test")
    db.accounts.set_disabled("dora@example.org", True, by="test")
    db.accounts.add_user("rita@example.org", "reader", None, by="test")
    secrets = write_secrets(tmp_path, provider)
    app = streamlit_app(
        tmp_path, docs_index, NO_LLM, args=("--secrets.files", str(secrets)), RAG_AUTH="oidc",
        RAG_APP_DB=app_db, RAG_AUTH_GROUP_ROLES='{"kb-readers": "reader"}',
        RAG_AUTH_GROUP_GRANTS='{"kb-readers": ["default", "secret"]}',
    )  # fmt: skip
    with app as url:
        shutil.copytree(tmp_path / "indexes" / "default", tmp_path / "indexes" / "secret")
        yield url, db


def oidc_log_in(page, url: str, provider: str, sub: str) -> None:
    """Log in, then pick `sub` on the provider's form; back in the app."""
    from playwright.sync_api import expect

    log_in = page.get_by_role("button", name="Log in")
    expect(log_in).to_be_visible(timeout=60_000)
    log_in.click()
    page.wait_for_url(f"{provider}/oauth2/authorize*", timeout=30_000)
    page.locator("input[name=sub]").fill(sub)
    page.get_by_role("button", name="Authorize").click()
    page.wait_for_url(f"{url}/**", timeout=30_000)
    sidebar = page.get_by_test_id("stSidebar")  # the page may say it too
    expect(sidebar.get_by_text("Signed in as")).to_be_visible(timeout=60_000)
    settled(page)


def test_oidc_a_display_name_never_borrows_the_account_of_that_name(oidc_team, provider, capsys):
    """Mallory's provider account has no e-mail and the name `admin`: she is
    not the admin account (it was: issue 29, finding 4)."""
    from playwright.sync_api import expect

    url, db = oidc_team
    shot = ARTIFACTS / "oidc-borrowed-name.png"
    with browser_page(url, shot, "a borrowed name refused", capsys) as page:
        oidc_log_in(page, url, provider, "mallory")
        expect(page.get_by_text("no access to this app yet")).to_be_visible(timeout=30_000)
        expect(page.get_by_role("tab")).to_have_count(0)
    assert db.accounts.user("admin").role == "admin", "the admin account is untouched"
    assert "admin" not in {e.user for e in db.audit.entries() if e.action == "login"}


def test_oidc_a_disabled_account_in_a_mapped_group_cannot_get_in(oidc_team, provider, capsys):
    from playwright.sync_api import expect

    url, _db = oidc_team
    shot = ARTIFACTS / "oidc-disabled.png"
    with browser_page(url, shot, "a disabled account refused", capsys) as page:
        oidc_log_in(page, url, provider, "dora")
        expect(page.get_by_text("disabled")).to_be_visible(timeout=30_000)
        expect(page.get_by_role("tab")).to_have_count(0)
        expect(page.get_by_placeholder("Ask a question about your documents")).to_have_count(0)


def test_oidc_a_revoked_grant_is_gone_at_the_next_click(oidc_team, provider, capsys):
    """Rita reads default and secret through her group; an admin revokes
    secret from her account while she is signed in: her next click shows
    default only, though her group still grants both."""
    from playwright.sync_api import expect

    url, db = oidc_team
    shot = ARTIFACTS / "oidc-revoked.png"
    with browser_page(url, shot, "a revoked grant gone", capsys) as page:
        oidc_log_in(page, url, provider, "rita")
        sidebar = page.get_by_test_id("stSidebar")
        main = page.get_by_test_id("stMain")
        sidebar.get_by_test_id("stSelectbox").first.click()
        expect(page.get_by_role("option")).to_have_text(["default", "secret"])
        page.get_by_role("option", name="secret").click()
        expect(main.get_by_text("Knowledge base secret").first).to_be_visible(timeout=60_000)
        settled(page)
        db.accounts.revoke("rita@example.org", "secret", by="test")
        sidebar.get_by_test_id("stSelectbox").first.click()
        page.get_by_role("option", name="default").click()  # the next click
        settled(page)
        expect(main.get_by_text("Knowledge base default").first).to_be_visible(timeout=60_000)
        sidebar.get_by_test_id("stSelectbox").first.click()
        expect(page.get_by_role("option")).to_have_text(["default"], timeout=30_000)
        page.keyboard.press("Escape")


# -- the login form (issue 31) -------------------------------------------------------------


def test_the_local_login_form_offers_the_saved_password_not_a_new_one(tmp_path, docs_index, capsys):
    from playwright.sync_api import expect

    app, _db = local_accounts_app(tmp_path, docs_index, ("rita", "reader", ["default"]))
    shot = ARTIFACTS / "local-login-form.png"
    with app as url, browser_page(url, shot, "the login form", capsys) as page:
        expect(page.get_by_role("button", name="Log in")).to_be_visible(timeout=60_000)
        expect(page.get_by_label("Username")).to_have_attribute("autocomplete", "username")
        expect(page.get_by_label("Password", exact=True)).to_have_attribute(
            "autocomplete", "current-password"
        )


def _screenshot(page, name: str, what: str, capsys) -> None:
    page.wait_for_timeout(1_000)  # let the page settle
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    with capsys.disabled():
        print(f"\n[browser] screenshot of {what}: {path}")
