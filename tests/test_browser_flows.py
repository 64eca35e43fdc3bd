"""A new user's first steps in a real headless Chromium (issue 17): create
a knowledge base, upload a note, ask what it answers, reload, and look at
the page on a phone-sized screen. Screenshots at 1400 px and 400 px in
test-artifacts/browser/. The LLM is the real vLLM server with the tiny
scripted gpt-oss, whose default script answers with a fixed cited sentence."""

from __future__ import annotations

import pytest
from test_browser import ARTIFACTS, ask, browser_page, still, streamlit_app

pytestmark = [pytest.mark.browser]

NOTE = "# Larch Creek pump station\n\nThe Larch Creek pump was installed in 1987.\n"
QUESTION = "When was the Larch Creek pump installed?"
# What the tiny gpt-oss says to any unscripted question (serving/scripted_logits.py).
ANSWER = "The knowledge base answers this in the first passage [1]."


def settled(page) -> None:
    """Wait for the page's script run to end: until then the previous run's
    widgets are still on the page (a second uploader, say). Streamlit marks
    the run on its root element from the moment a widget asks for one. An
    empty placeholder may stay marked stale after a login's run: it shows
    nothing."""
    from playwright.sync_api import expect

    app = page.locator("[data-testid='stApp']")
    expect(app).to_have_attribute("data-test-script-state", "notRunning", timeout=120_000)
    expect(page.locator("[data-testid='stStatusWidget']")).to_have_count(0, timeout=120_000)
    stale = page.locator("[data-stale='true']:not(:has(> [data-testid='stEmpty']))")
    expect(stale).to_have_count(0, timeout=10_000)


def test_create_upload_ask_reload_and_a_phone_screen(
    tmp_path, docs_index, capsys, tiny_gpt_oss_server
):
    from playwright.sync_api import expect

    note = tmp_path / "larch-pump.md"
    note.write_text(NOTE, encoding="utf-8")
    app = streamlit_app(
        tmp_path, docs_index, tiny_gpt_oss_server, RAG_LLM_RETRIES="0",
        RAG_LLM_CONTEXT_TOKENS="2048", RAG_SCREEN_K="4", RAG_KEEP_MAX="3",
        RAG_READ_MAX_TOKENS="200",
    )  # fmt: skip
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
        still(page)
        page.screenshot(path=str(ARTIFACTS / "flow-answer-1400px.png"), full_page=True)

        # a reload: the same base, the conversation still there
        page.reload()
        expect(main.get_by_text(QUESTION, exact=True)).to_be_visible(timeout=60_000)
        expect(main.get_by_text(ANSWER)).to_be_visible()
        expect(picker).to_have_value("larch")
        still(page)
        page.screenshot(path=str(ARTIFACTS / "flow-reloaded-1400px.png"), full_page=True)

        # a phone: the sidebar folds away, the main area names the base
        page.set_viewport_size({"width": 400, "height": 900})
        expect(sidebar).not_to_be_in_viewport()
        expect(main.get_by_text("Knowledge base larch")).to_be_in_viewport()
