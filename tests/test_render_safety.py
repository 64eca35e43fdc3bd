"""Model and document text on the page: parsed in linear time, capped, and
never able to produce a link, an image or HTML (issue 14, findings 2 and 3).

The Markdown checks here parse what the app hands to `st.markdown` with
markdown-it (CommonMark, GFM tables) and then apply the two regular
expressions Streamlit's frontend uses to turn bare URLs and e-mail addresses
into links (mdast-util-gfm-autolink-literal, run over decoded text). The
real page in Chromium is checked in tests/test_browser_safety.py.
"""

from __future__ import annotations

import gc
import multiprocessing
import re
import time

import pytest
from builders import HOSTILE_MARKDOWN

# -- linear time ---------------------------------------------------------------------

ADVERSARIAL = {
    "50k spaces": "A claim" + " " * 50_000 + "[2]",
    "50k newlines": "A claim" + "\n" * 50_000 + "[2]",
    "200k chars, no marker": "word " * 40_000,
    "nested brackets": "[" * 25_000 + "1" + "]" * 25_000 + " end [1]",
    "20k markers": "Claim [1][2] " * 2_000 + "[1]" * 14_000,
    "repeated words": "a " * 9_000 + "b [1]",
}
# Generous: the linear code takes milliseconds, the old regexes minutes.
BOUND_S = 2.0


def _render_answer(answer: str, queue: multiprocessing.Queue) -> None:
    from ui.safe_text import defuse, highlighted, quoted

    started = time.perf_counter()
    defuse(answer)
    for n in (1, 2):
        highlighted("a " * 5_000 + "Claim.", quoted(answer, n))
    queue.put(time.perf_counter() - started)


def _frozen(target, *args) -> None:
    # The forked child shares the pytest process's heap (models, servers'
    # clients: millions of objects); its first full collection would walk
    # and so copy all of it, a second on a busy machine. Collect only what
    # the child makes.
    gc.freeze()
    target(*args)


def seconds_in_child(target, *args, limit: float = 15.0) -> float:
    """Run `target(*args, queue)` in a forked process and return the seconds
    it reports; a regex cannot be interrupted, so a runaway child is killed
    after `limit` seconds and the test fails."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_frozen, args=(target, *args, queue))
    child.start()
    child.join(limit)
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail(f"still parsing after {limit:.0f} s (super-linear)")
    assert child.exitcode == 0, f"the child failed (exit code {child.exitcode})"
    return queue.get(timeout=5)


@pytest.mark.parametrize("answer", ADVERSARIAL.values(), ids=ADVERSARIAL.keys())
def test_an_adversarial_answer_renders_in_linear_time(answer):
    # quotes, highlighting and the Markdown of one answer, as each rerun
    # draws every past turn
    seconds = seconds_in_child(_render_answer, answer)
    assert seconds < BOUND_S, f"{seconds:.2f} s"


def _resolve(answer: str, queue: multiprocessing.Queue) -> None:
    from rag.answering.citations import resolve_citations

    started = time.perf_counter()
    resolve_citations(answer, [])
    queue.put(time.perf_counter() - started)


@pytest.mark.parametrize(
    "answer",
    ["[1" + ",1" * 50_000, "[1" + " " * 100_000, "[" * 100_000, "[1" * 50_000, "x" * 200_000],
    ids=["unclosed list", "unclosed spaces", "brackets", "unclosed markers", "no marker"],
)
def test_citation_markers_are_resolved_in_linear_time(answer):
    seconds = seconds_in_child(_resolve, answer)
    assert seconds < BOUND_S, f"{seconds:.2f} s"


def test_model_text_over_the_cap_is_cut_with_a_visible_note():
    from ui.safe_text import MAX_MODEL_CHARS, defuse

    shown = defuse("All fine. " * 10_000)
    assert len(shown) < MAX_MODEL_CHARS + 100
    assert shown.endswith("… (cut)")
    assert defuse("All fine.") == "All fine."


# -- no links, images or HTML ------------------------------------------------------------

# Streamlit's frontend (react-markdown + remark-gfm) links these in text nodes.
_URL_LITERAL = re.compile(r"(https?://|www(?=\.))([-.\w]+)", re.IGNORECASE | re.ASCII)
_EMAIL_LITERAL = re.compile(r"([-.\w+]+)@([-\w]+(?:\.[-\w]+)+)", re.ASCII)
_LIVE = {"link_open", "image", "html_inline", "html_block"}


def live_parts(markdown: str) -> tuple[list[str], str]:
    """What in `markdown` would link, load or be HTML, and its visible text."""
    from markdown_it import MarkdownIt

    parser = MarkdownIt("commonmark").enable(["table", "strikethrough"])
    live, visible = [], []
    stack = parser.parse(markdown)
    while stack:
        token = stack.pop(0)
        if token.type in _LIVE:
            live.append(f"{token.type}: {token.attrs or token.content}")
        if token.children:
            stack[:0] = token.children
        elif token.type == "text":
            visible.append(token.content)
            live += [f"autolink: {m[0]}" for m in _URL_LITERAL.finditer(token.content)]
            live += [f"e-mail: {m[0]}" for m in _EMAIL_LITERAL.finditer(token.content)]
        elif token.type in ("code_inline", "fence", "code_block"):
            visible.append(token.content)
    return live, "".join(visible).replace("\u2060", "")


@pytest.mark.parametrize("payload", HOSTILE_MARKDOWN)
def test_model_text_cannot_link_load_or_inject_html(payload):
    from ui.safe_text import defuse

    live, visible = live_parts(defuse(payload))
    assert not live
    assert "evil.example" in visible or "data:" in visible, "the payload is shown, not dropped"


@pytest.mark.parametrize("payload", HOSTILE_MARKDOWN)
def test_document_text_cannot_link_load_or_inject_html(payload):
    from ui.safe_text import escape, highlighted

    for shown in (escape(payload), highlighted(payload, [payload])):
        live, visible = live_parts(shown)
        assert not live, shown
        assert "evil.example" in visible or "data:" in visible


@pytest.mark.parametrize("payload", HOSTILE_MARKDOWN)
def test_file_names_in_captions_and_labels_cannot_link_load_or_inject_html(payload):
    from ui.safe_text import plain

    name = " ".join(payload.split())  # a name or a path is one line
    live, visible = live_parts(plain(name))
    assert not live
    assert "evil.example" in visible or "data:" in visible


def test_answer_formatting_and_citation_markers_survive():
    from ui.safe_text import defuse

    answer = (
        "**Two GPUs** [1]:\n\n1. Run `vllm serve openai/gpt-oss-20b --port 8000`.\n"
        "2. Query http://localhost:8000/v1 [2].\n\n```bash\ncurl http://localhost:8000/v1\n```"
    )
    shown = defuse(answer)
    assert "[1]" in shown and "[2]" in shown
    from markdown_it import MarkdownIt

    html = MarkdownIt("commonmark").render(shown).replace("\u2060", "")
    assert "<strong>Two GPUs</strong>" in html
    assert "<ol>" in html and html.count("<li>") == 2
    assert "<code>vllm serve openai/gpt-oss-20b --port 8000</code>" in html
    assert "Query http://localhost:8000/v1 [2]." in html
    assert '<code class="language-bash">curl http://localhost:8000/v1\n</code>' in html


def test_quotes_are_found_between_markers_in_one_pass():
    from ui.safe_text import quoted

    answer = "See [note] first claim. [1] Second claim [2] [1] Third [3][1]. Tail [1"
    assert quoted(answer, 1) == ["first claim.", "Second claim", "Third"]
    assert quoted(answer, 2) == ["Second claim"]
    assert quoted(answer, 4) == []


def _sentences(text: str, queue: multiprocessing.Queue) -> None:
    from rag.answering.extractive import sentences

    started = time.perf_counter()
    sentences(text)
    queue.put(time.perf_counter() - started)


def test_passage_sentences_are_split_in_linear_time():
    # each abbreviation-like piece ("a.") joins the one before it: checking
    # the whole grown sentence again each time was quadratic
    seconds = seconds_in_child(_sentences, "a. " * 20_000)
    assert seconds < BOUND_S, f"{seconds:.2f} s"
