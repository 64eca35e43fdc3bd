"""End to end in a real headless Chromium: start the app, ask, wait for the
cited answer, open the source, save a screenshot.

Twice: with the real vLLM server running the scripted tiny gpt-oss
(deterministic output through vLLM's real harmony parsing: the gpt-oss
path, reasoning kept apart), and as `make run` serves it without a GPU
(SmolLM2-135M, whose answers quote the passages they cite).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.llm]

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "browser"


def chromium() -> str:
    path = (
        os.environ.get("KBQA_CHROMIUM")
        or shutil.which("chromium")
        or shutil.which("chromium-browser")
    )
    if not path:
        pytest.skip("NO CHROMIUM — browser test skipped; `make test` installs Debian's chromium")
    return path


@contextlib.contextmanager
def streamlit_app(tmp_path: Path, docs_index: Path, server, *, args=(), **settings: str):
    """The app in its own process on a free port, over a copy of the sample
    knowledge base, answering with `server`, with Streamlit's `args`
    (--secrets.files ...); yields its URL."""
    from serving.launch import free_port

    root = tmp_path / "indexes"
    shutil.copytree(docs_index, root / "default")
    port = free_port()
    env = {
        **os.environ,
        "RAG_INDEXES_ROOT": str(root), "RAG_INDEX": str(root / "default"),
        "RAG_LLM_URL": server.base_url, "RAG_LLM_MODEL": server.served_model_name,
        **settings,
    }  # fmt: skip
    log = open(tmp_path / "streamlit.log", "wb")  # noqa: SIM115 - closed below
    app = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "streamlit_app.py"),
         "--server.port", str(port), "--server.headless", "true",
         "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false", *args],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    try:
        yield url
    finally:
        app.terminate()
        app.wait(timeout=20)
        log.close()


@pytest.fixture
def app_url(tmp_path, docs_index, tiny_gpt_oss_server):
    with streamlit_app(
        tmp_path, docs_index, tiny_gpt_oss_server,
        RAG_LLM_CONTEXT_TOKENS="2048", RAG_SCREEN_K="4", RAG_KEEP_MAX="3",
        RAG_READ_MAX_TOKENS="200",
    ) as url:  # fmt: skip
        yield url


@pytest.fixture
def make_run_url(tmp_path, docs_index, llm_server):
    """The app as `make run` starts it on a machine without a GPU: SmolLM2
    on the vLLM CPU build, with serving.run's CPU profile."""
    from serving.run import CPU_PROFILE

    with streamlit_app(tmp_path, docs_index, llm_server, **CPU_PROFILE) as url:
        yield url


# True once no CSS transition or animation that ends is running (an expander
# opening, the sidebar folding away); endless ones (a spinner) never end.
_STILL = """() => document.getAnimations().every(
  a => a.playState !== 'running' || a.effect?.getComputedTiming().iterations === Infinity)"""


def still(page, timeout: float = 30_000) -> None:
    """Wait until the page is still enough for a screenshot: the app's script
    run has ended (Streamlit's own `data-test-script-state`) and nothing is
    moving. A page that is not the app (a login provider's) is only waited
    on for the latter."""
    from playwright.sync_api import expect

    app = page.locator("[data-testid='stApp']")
    if app.count():
        expect(app).to_have_attribute("data-test-script-state", "notRunning", timeout=timeout)
    page.wait_for_function(_STILL, timeout=timeout)


def ask(page, question: str) -> None:
    box = page.get_by_placeholder("Ask a question about your documents")
    box.wait_for(timeout=60_000)
    box.fill(question)
    box.press("Enter")


@contextlib.contextmanager
def browser_page(url: str, shot: Path, what: str, capsys):
    """A Chromium page on `url`; when the block ends, a full-page screenshot
    in `shot`, whose path the test prints."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.goto(url)
        yield page
        still(page)  # the last expander has finished opening
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 10_000
    with capsys.disabled():
        print(f"\n[browser] screenshot of {what}: {shot}")


def test_ask_see_cited_answer_open_source(app_url, capsys):
    from playwright.sync_api import expect

    shot = ARTIFACTS / "cited-answer.png"
    with browser_page(app_url, shot, "the cited answer with its source open", capsys) as page:
        ask(page, "How do I serve gpt-oss-20b on two GPUs?")
        expect(page.get_by_text("Answered", exact=True).last).to_be_visible(timeout=240_000)
        expect(
            page.get_by_text("The knowledge base answers this in the first passage [1].")
        ).to_be_visible()
        summary = page.locator("summary", has_text="[1] ")
        expander = page.locator("[data-testid='stExpander']", has=summary)
        expander.locator("summary").click()
        expect(expander.get_by_text("page", exact=False).first).to_be_visible()
        image = expander.locator("img").first
        expect(image).to_be_visible(timeout=30_000)
        image.scroll_into_view_if_needed()


def test_make_run_profile_gives_a_cited_answer_in_the_browser(make_run_url, capsys):
    from playwright.sync_api import expect

    shot = ARTIFACTS / "make-run-cited-answer.png"
    what = "make run's cited answer (CPU profile)"
    with browser_page(make_run_url, shot, what, capsys) as page:
        ask(page, "How are broken files reported during ingestion?")
        expect(page.get_by_text("Answered", exact=True).last).to_be_visible(timeout=300_000)
        # the stages caption ("Stages — retrieve …"), not the feedback help's `rag eval --stages`
        expect(page.get_by_text(re.compile(r"^Stages — "))).to_be_visible()
        summary = page.locator("summary", has_text=re.compile(r"\[\d+\] ")).first
        expect(summary).to_be_visible()
        expander = page.locator("[data-testid='stExpander']", has=summary)
        summary.click()
        # the quoted sentence, in bold inside its passage
        expect(expander.locator("strong").first).to_be_visible(timeout=30_000)
