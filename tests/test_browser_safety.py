"""Hostile Markdown through the real page in headless Chromium (issue 14,
finding 3): as the answer and the follow-up's rewritten query (from a real
OpenAI-compatible HTTP server that returns the payloads), and as a
document's text and file name. The rendered DOM links, loads and embeds
nothing outside the app."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest
from builders import HOSTILE_MARKDOWN
from misbehaving_server import MODEL, misbehaving_server
from test_browser import ARTIFACTS, ask, browser_page, still, streamlit_app
from test_browser_flows import settled

from ingest.pipeline import ingest_paths
from rag.settings import Settings

pytestmark = [pytest.mark.browser]

HOSTILE_NAME = "www.evil.example ![i](https:evil.example) [l](mailto:me@evil.example).md"
# The rewrite keeps the first line only: the one-line payloads come first.
ONE_LINE = " ".join(p for p in HOSTILE_MARKDOWN if "\n" not in p)
ANSWER = ONE_LINE + "\n\n" + "\n\n".join(HOSTILE_MARKDOWN)

# Every element that can point somewhere, with where it points.
_POINTERS = """root => [...root.querySelectorAll('[href], [src], [srcset], [action], [data]')]
  .map(e => `${e.tagName} ${e.getAttribute('href') ?? e.getAttribute('src') ??
    e.getAttribute('srcset') ?? e.getAttribute('action') ?? e.getAttribute('data')}`)"""


@pytest.fixture
def hostile_index(tmp_path, docs_index, embedder):
    """The sample knowledge base plus a document made of the payloads, under
    a hostile file name."""
    index = tmp_path / "hostile" / "default"
    shutil.copytree(docs_index, index)
    folder = tmp_path / "hostile-docs"
    folder.mkdir()
    (folder / HOSTILE_NAME).write_text("\n\n".join(HOSTILE_MARKDOWN), encoding="utf-8")
    report = ingest_paths([str(folder)], Settings(index=index), embedder=embedder)
    assert not report.failed, report.failed
    return index


def test_hostile_markdown_links_loads_and_embeds_nothing(tmp_path, hostile_index, capsys):
    from playwright.sync_api import expect

    shot = ARTIFACTS / "hostile-markdown.png"
    with misbehaving_server() as server:
        server.answer_with(ANSWER)
        llm = SimpleNamespace(base_url=server.url("ok"), served_model_name=MODEL)
        app = streamlit_app(tmp_path, hostile_index, llm, RAG_SCREEN_K="4", RAG_KEEP_MAX="3")
        with app as url, browser_page(url, shot, "hostile Markdown", capsys) as page:
            ask(page, "Inline link, reference image, autolinks and raw HTML?")
            expect(page.get_by_text("Answered", exact=True).last).to_be_visible(timeout=180_000)
            ask(page, "And the bare URLs?")  # a follow-up: the rewrite is shown too
            # exact: the status's "Searched for: ..." may repeat the question
            expect(page.get_by_text("And the bare URLs?", exact=True)).to_be_visible()
            expect(page.get_by_text("Answered", exact=True).last).to_be_visible(timeout=180_000)
            settled(page)  # the run's stale elements go
            main = page.locator("[data-testid='stMain']")
            # open every passage, the stages and the rewrite's status
            main.evaluate("root => root.querySelectorAll('summary').forEach(s => s.click())")
            expect(main.locator("details:not([open])")).to_have_count(0)
            still(page)
            pointers = main.evaluate(_POINTERS)
            frames = main.locator("iframe, frame, script, object, embed").evaluate_all(
                "els => els.map(e => e.outerHTML.slice(0, 300))"
            )
            visible = main.inner_text().replace("\u2060", "")
    leaks = [p for p in pointers if not p.split(" ", 1)[1].startswith(("/media/", "#"))]
    assert not leaks
    assert not frames
    assert ONE_LINE.split(" ", 2)[2][:20] in visible, "the answer is on the page"
    assert "Searched for: " in visible, "the rewritten query is on the page"
    assert "www.evil.example ![i]" in visible, "the hostile file name is on the page"
    assert visible.count("https://evil.example/inline") >= 3, "answer, rewrite and passage"
