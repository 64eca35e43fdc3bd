"""A new user's first steps in a real headless Chromium (issue 17): create
a knowledge base, upload a note, ask what it answers, reload, and look at
the page on a phone-sized screen. Screenshots at 1400 px and 400 px in
test-artifacts/browser/. The LLM is tests/misbehaving_server.py in its
well-behaved mode: a real HTTP server with a fixed cited answer."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from misbehaving_server import MODEL, misbehaving_server
from test_browser import ARTIFACTS, ask, browser_page, streamlit_app

pytestmark = [pytest.mark.browser]

NOTE = "# Larch Creek pump station\n\nThe Larch Creek pump was installed in 1987.\n"
QUESTION = "When was the Larch Creek pump installed?"
ANSWER = "The Larch Creek pump was installed in 1987 [1]."


def settled(page) -> None:
    """Wait for the page's script run to end: until then the previous run's
    widgets are still on the page (a second uploader, say). An empty
    placeholder may stay marked stale after a login's run: it shows nothing."""
    from playwright.sync_api import expect

    page.wait_for_timeout(500)
    expect(page.locator("[data-testid='stStatusWidget']")).to_have_count(0, timeout=120_000)
    stale = page.locator("[data-stale='true']:not(:has(> [data-testid='stEmpty']))")
    expect(stale).to_have_count(0, timeout=10_000)


def test_create_upload_ask_reload_and_a_phone_screen(tmp_path, docs_index, capsys):
    from playwright.sync_api import expect

    note = tmp_path / "larch-pump.md"
    note.write_text(NOTE, encoding="utf-8")
    with misbehaving_server() as server:
        server.answer_with(ANSWER)
        llm = SimpleNamespace(base_url=server.url("ok"), served_model_name=MODEL)
        app = streamlit_app(tmp_path, docs_index, llm, RAG_LLM_RETRIES="0")
        shot = ARTIFACTS / "flow-400px.png"
        with app as url, browser_page(url, shot, "the flow at 400 px", capsys) as page:
            sidebar = page.locator("[data-testid='stSidebar']")
            main = page.locator("[data-testid='stMain']")
            # create "larch": one explicit action, after which it is selected
            sidebar.get_by_text("New knowledge base").click()
            sidebar.get_by_label("Name").fill("larch")
            sidebar.get_by_role("button", name="Create").click()
            picker = sidebar.get_by_role("combobox", name="Knowledge base")
            expect(picker).to_have_value("larch", timeout=30_000)

            # upload the note in Manage
            settled(page)
            page.get_by_role("tab", name="Manage").click()
            main.locator("input[type='file']").set_input_files(str(note))
            main.get_by_role("button", name="Ingest").click()
            expect(main.get_by_text("Added 1, updated 0")).to_be_visible(timeout=180_000)
            # the page ran again after the ingest, on the tab the user was on
            manage = page.get_by_role("tab", name="Manage")
            expect(manage).to_have_attribute("aria-selected", "true")

            # ask in Ask: the question box is there, the answer cites the note
            page.get_by_role("tab", name="Ask").click()
            ask(page, QUESTION)
            expect(page.get_by_text("Answered", exact=True).last).to_be_visible(timeout=120_000)
            expect(main.get_by_text(ANSWER)).to_be_visible()
            expect(main.locator("summary", has_text="[1] ")).to_contain_text("larch-pump.md")
            expect(main.get_by_text("Conversation in larch · 1 question")).to_be_visible()
            page.wait_for_timeout(1_000)
            page.screenshot(path=str(ARTIFACTS / "flow-answer-1400px.png"), full_page=True)

            # a reload: the same base, the conversation still there
            page.reload()
            expect(main.get_by_text(QUESTION, exact=True)).to_be_visible(timeout=60_000)
            expect(main.get_by_text(ANSWER)).to_be_visible()
            expect(picker).to_have_value("larch")
            page.wait_for_timeout(1_000)
            page.screenshot(path=str(ARTIFACTS / "flow-reloaded-1400px.png"), full_page=True)

            # a phone: the sidebar folds away, the main area names the base
            page.set_viewport_size({"width": 400, "height": 900})
            page.wait_for_timeout(1_000)
            expect(sidebar).not_to_be_in_viewport()
            expect(main.get_by_text("Knowledge base larch")).to_be_in_viewport()
