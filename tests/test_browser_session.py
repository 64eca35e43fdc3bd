"""A signed-in session in headless Chromium (issue 31): it survives a
reload and a second tab for its lifetime, through an HttpOnly cookie that
carries the session's token only (the database keeps its hash); Log out
ends it in every tab. And the base on screen is the base asked: when
another user signs in in the same tab, the address, the picker, the page
and the next question's citations all name that user's base, not the one
the previous user picked.

Screenshots of each step go to test-artifacts/browser/ (and to
$KBQA_SCREENS when set)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlparse

import pytest
from misbehaving_server import MODEL, misbehaving_server
from test_browser import ARTIFACTS, ask, browser_page, chromium, streamlit_app
from test_browser_auth import NO_LLM, PASSWORD, log_in_as, log_out
from test_browser_flows import settled

pytestmark = [pytest.mark.browser]

COOKIE = "kbqa_session"


@contextlib.contextmanager
def browser_tabs(url: str, shot: Path, what: str, capsys):
    """Like test_browser.browser_page, in a browser context that can open
    a second tab sharing the first one's cookies."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1400, "height": 1600})
        page = context.new_page()
        page.goto(url)
        yield page
        page.wait_for_timeout(1_000)
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    with capsys.disabled():
        print(f"\n[browser] screenshot of {what}: {shot}")


def local_accounts_app(tmp_path: Path, docs_index: Path, *accounts, llm=NO_LLM):
    """An app with RAG_AUTH=local answering with `llm`, over a fresh app
    database holding `accounts` (name, role, knowledge bases)."""
    from rag.settings import Settings
    from team.appdb import open_app_db

    app_db = str(tmp_path / "app.sqlite")
    db = open_app_db(Settings(app_db=app_db))
    for name, role, kbs in accounts:
        db.accounts.add_user(name, role, PASSWORD, kbs, by="test")
    app = streamlit_app(
        tmp_path, docs_index, llm, RAG_AUTH="local", RAG_APP_DB=app_db,
        RAG_LOGIN_BACKOFF="0.001", RAG_LLM_RETRIES="0",
    )  # fmt: skip
    return app, db


def snap(page, name: str) -> None:
    """A full-page screenshot of this step."""
    page.wait_for_timeout(800)
    folders = [ARTIFACTS] + (
        [Path(os.environ["KBQA_SCREENS"])] if "KBQA_SCREENS" in os.environ else []
    )
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(folder / name), full_page=True)


def signed_in_as(page, name: str) -> None:
    from playwright.sync_api import expect

    sidebar = page.get_by_test_id("stSidebar")
    expect(sidebar.get_by_text("Signed in as")).to_be_visible(timeout=180_000)
    expect(sidebar.get_by_text(name, exact=True)).to_be_visible()


def on_login_page(page) -> None:
    from playwright.sync_api import expect

    expect(page.get_by_role("button", name="Log in")).to_be_visible(timeout=180_000)
    expect(page.get_by_text("Signed in as")).to_have_count(0)
    expect(page.get_by_role("tab")).to_have_count(0)


def test_a_login_survives_reloads_and_a_new_tab_and_log_out_ends_it_everywhere(
    tmp_path, docs_index, capsys
):
    app, db = local_accounts_app(tmp_path, docs_index, ("rita", "reader", ["default"]))
    shot = ARTIFACTS / "session-logged-out.png"
    with app as url, browser_tabs(url, shot, "the login page after Log out", capsys) as page:
        on_login_page(page)
        snap(page, "session-1-login-page.png")
        log_in_as(page, "rita")
        snap(page, "session-2-signed-in.png")

        page.reload()
        signed_in_as(page, "rita")
        settled(page)
        snap(page, "session-3-after-reload.png")
        [cookie] = [c for c in page.context.cookies() if c["name"] == COOKIE]
        assert cookie["httpOnly"], cookie
        assert cookie["sameSite"] == "Strict", cookie
        assert "rita" not in cookie["value"]
        # the token itself: the database keeps only its hash, of a live session
        assert db.accounts.session_user(cookie["value"]).name == "rita"
        assert hashlib.sha256(cookie["value"].encode()).hexdigest() not in cookie["value"]

        second = page.context.new_page()
        second.goto(url)
        signed_in_as(second, "rita")
        settled(second)
        snap(second, "session-4-second-tab.png")

        log_out(page)
        snap(page, "session-5-logged-out.png")
        page.reload()
        on_login_page(page)
        snap(page, "session-6-reload-after-log-out.png")
        second.reload()  # the other tab: the session is over there too
        on_login_page(second)
        assert db.accounts.session_user(cookie["value"]) is None
        assert not [c for c in page.context.cookies() if c["name"] == COOKIE]


QUESTION = "What does the knowledge base say?"


def cited_source(page) -> str:
    """The file the next answer's first citation names."""
    from playwright.sync_api import expect

    main = page.get_by_test_id("stMain")
    expect(page.get_by_text("Answered", exact=True).last).to_be_visible(timeout=120_000)
    summary = main.locator("summary", has_text="[1] ").last
    expect(summary).to_be_visible(timeout=30_000)
    return summary.inner_text()


def test_another_user_in_the_same_tab_sees_one_base_everywhere(
    tmp_path, docs_index, notes_index, capsys
):
    """ada picks `handbook` and logs out; eddie logs in in the same tab: the
    address, the picker, the page's heading and the next answer's citation
    all name eddie's base (his own default), not ada's choice."""
    from playwright.sync_api import expect

    with misbehaving_server() as server:
        server.answer_with("The answer is in the first passage [1].")
        llm = SimpleNamespace(base_url=server.url("ok"), served_model_name=MODEL)
        app, _db = local_accounts_app(
            tmp_path, docs_index, ("ada", "admin", []),
            ("eddie", "editor", ["default", "handbook"]), llm=llm,
        )  # fmt: skip
        shot = ARTIFACTS / "session-second-user.png"
        with app as url, browser_page(url, shot, "the second user's page", capsys) as page:
            shutil.copytree(notes_index, tmp_path / "indexes" / "handbook")
            main = page.get_by_test_id("stMain")
            sidebar = log_in_as(page, "ada")
            combo = sidebar.get_by_role("combobox", name="Knowledge base")
            combo.click()
            page.get_by_role("option", name="handbook", exact=True).click()
            expect(main.get_by_text("Knowledge base handbook").first).to_be_visible(timeout=180_000)
            settled(page)
            assert parse_qs(urlparse(page.url).query).get("kb") == ["handbook"]
            snap(page, "relogin-1-ada-handbook.png")
            log_out(page)
            snap(page, "relogin-2-logged-out.png")

            sidebar = log_in_as(page, "eddie")
            snap(page, "relogin-3-eddie-signed-in.png")
            picker = sidebar.get_by_role("combobox", name="Knowledge base")
            expect(picker).to_have_value("default", timeout=30_000)
            expect(main.get_by_text("Knowledge base default").first).to_be_visible(timeout=180_000)
            expect(main.get_by_text("Knowledge base handbook")).to_have_count(0)
            assert parse_qs(urlparse(page.url).query).get("kb") == ["default"], page.url
            ask(page, QUESTION)
            source = cited_source(page)
            settled(page)
            snap(page, "relogin-4-eddie-answer.png")
            docs = {p.name for p in (Path(__file__).resolve().parent.parent / "docs").rglob("*")}
            assert any(name in source for name in docs), source
            expect(picker).to_have_value("default")
            expect(main.get_by_text("Knowledge base default").first).to_be_visible(timeout=180_000)
            assert parse_qs(urlparse(page.url).query).get("kb") == ["default"], page.url


def test_a_link_to_a_base_opens_it_after_the_login(tmp_path, docs_index, notes_index, capsys):
    """`?kb=handbook` in a fresh tab: the login keeps it, and the page,
    picker and address agree on it."""
    from playwright.sync_api import expect

    app, _db = local_accounts_app(
        tmp_path, docs_index, ("eddie", "editor", ["default", "handbook"])
    )
    shot = ARTIFACTS / "session-link.png"
    with app as url, browser_page(url, shot, "a link to a base, after the login", capsys) as page:
        shutil.copytree(notes_index, tmp_path / "indexes" / "handbook")
        page.goto(f"{url}/?kb=handbook")
        sidebar = log_in_as(page, "eddie")
        picker = sidebar.get_by_role("combobox", name="Knowledge base")
        expect(picker).to_have_value("handbook", timeout=30_000)
        main = page.get_by_test_id("stMain")
        expect(main.get_by_text("Knowledge base handbook").first).to_be_visible(timeout=180_000)
        assert parse_qs(urlparse(page.url).query).get("kb") == ["handbook"], page.url
