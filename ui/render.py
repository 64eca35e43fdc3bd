"""Drawing answers, stages and sources with Streamlit.

Document and model text is never rendered as HTML. It goes through
`st.markdown` only after `escape` (document text: every Markdown character
escaped) or `defuse` (model text: formatting kept, but links and images
neutralised, so a poisoned document cannot make the page fetch a URL).
"""

from __future__ import annotations

import re
from pathlib import Path

import streamlit as st

from rag.answering import answer_to_dict
from rag.knowledge_base import KnowledgeBase
from rag.types import Answer, Citation, Hit, Verdict
from ui import pages

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~:$=^])")
_BLANK_LINES = re.compile(r"\n[ \t]*\n\s*")


def escape(text: str) -> str:
    """Document text as literal Markdown: nothing in it is formatting."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text).replace("\n", "  \n")


def defuse(text: str) -> str:
    """Model text keeps its formatting; images, links and raw HTML do not
    survive. Citation markers like [1] are untouched."""
    text = text.replace("<", "&lt;")
    text = re.sub(r"!\[", r"!\\[", text)
    return re.sub(r"\]\(", r"]\\(", text)


def location(hit: Hit) -> str:
    page = f", page {hit.page}" if hit.page is not None else ""
    return f"{Path(hit.source).name}{page}"


def verdict_rows(verdicts: list[Verdict], kept: list[Hit]) -> list[dict[str, object]]:
    kept_ids = {h.chunk_id for h in kept}
    return [
        {
            "#": rank,
            "kept": v.hit.chunk_id in kept_ids,
            "score": v.score,
            "source": location(v.hit),
            "reason": v.reason if v.valid else f"{v.reason} ({v.error})",
            "retrieval": round(v.hit.score, 4),
        }
        for rank, v in enumerate(verdicts, start=1)
    ]


def stage_summary(result: Answer) -> str:
    timings = " · ".join(f"{k} {v:.2f} s" for k, v in result.timings.items())
    usage = answer_to_dict(result)["usage"]
    total = usage["total"]["total_tokens"] if isinstance(usage, dict) else 0
    return f"{timings} · {total} tokens"


def stages(result: Answer) -> None:
    """Retrieval, screen verdicts, timings and tokens of one answer."""
    with st.expander(f"Stages — {stage_summary(result)}", expanded=False):
        st.caption(f"Retrieved {len(result.hits)} passages; the screen kept {len(result.kept)}.")
        if result.verdicts:
            st.dataframe(verdict_rows(result.verdicts, result.kept), hide_index=True)
        usage = answer_to_dict(result)["usage"]
        st.json({"timings_s": result.timings, "usage": usage}, expanded=False)


def reasoning(text: str) -> None:
    if text:
        with st.expander("Model reasoning", expanded=False):
            st.markdown(escape(text))


def citations(kb: KnowledgeBase, items: list[Citation], answer: str = "") -> None:
    for citation in items:
        with st.expander(f"[{citation.n}] {location(citation.hit)}"):
            passage(kb, citation.hit, quoted(answer, citation.n))


def quoted(answer: str, n: int) -> list[str]:
    """The sentences of `answer` that carry the marker [n]."""
    return [m.strip() for m in re.findall(rf"([^\[\]]+?)\s*(?:\[\d+\])*\[{n}\]", answer)]


def passage(kb: KnowledgeBase, hit: Hit, quotes: list[str] | None = None) -> None:
    """The passage in its surrounding text, the passage highlighted (and in
    bold the sentences the answer quotes from it, as an extractive answer
    does), and for a PDF the page itself, to check the claim at its source."""
    st.caption(hit.source)
    snapshot = kb.snapshot()
    # A stored conversation's citation: its chunk may be gone (or its id
    # reused by a rebuild), then the text it had when cited is shown.
    current = snapshot.chunks([hit.chunk_id]).get(hit.chunk_id)
    if current is None or current.text != hit.text:
        st.caption("This passage is no longer in the knowledge base; as it was when cited:")
        st.markdown(escape(hit.text))
        return
    before, span, after = snapshot.context(current, neighbours=1)
    st.markdown(
        (escape(before) + " " if before else "")
        + highlighted(span, quotes or [])
        + (" " + escape(after) if after else "")
    )
    if hit.page is not None and hit.source.lower().endswith(".pdf"):
        shown = page_image(hit.source, hit.page)
        if shown.png is not None:
            st.image(shown.png, caption=f"{Path(hit.source).name}, page {hit.page}")
        else:
            st.caption(shown.problem)


def highlighted(span: str, quotes: list[str]) -> str:
    """`span` as Markdown on an orange background, quotes in bold. The
    background is one directive, which a blank line would end half-way (its
    closing bracket then shows as text), so blank lines inside the span
    become plain line breaks."""
    one_paragraph = _BLANK_LINES.sub("\n", span)
    return f":orange-background[{_embolden(one_paragraph, quotes)}]"


def _embolden(span: str, quotes: list[str]) -> str:
    """`span` escaped, with each verbatim quote (line breaks in the source
    do not matter) in bold."""
    marks = []
    for quote in quotes:
        words = quote.split()
        if len(words) >= 3:
            found = re.search(r"\s+".join(map(re.escape, words)), span)
            if found:
                marks.append(found.span())
    out, at = [], 0
    for start, end in sorted(marks):
        if start >= at:
            out += [escape(span[at:start]), "**", escape(" ".join(span[start:end].split())), "**"]
            at = end
    return "".join(out) + escape(span[at:])


# cache_resource: the same immutable result for every session, never pickled.
@st.cache_resource(show_spinner="Rendering the page…", max_entries=64)
def _render(path: str, page: int, mtime: float) -> pages.PageImage:
    return pages.render_page(path, page)


def page_image(path: str, page: int) -> pages.PageImage:
    """The page drawn in a capped worker (see `ui.pages`), or why not; a
    file changed since is drawn again."""
    try:
        mtime = Path(path).stat().st_mtime
    except OSError:
        return pages.PageImage(None, pages.MISSING)
    return _render(path, page, mtime)


def hits_only(kb: KnowledgeBase, hits: list[Hit]) -> None:
    """Retrieval-only results, for when the LLM is unavailable."""
    for rank, hit in enumerate(hits, start=1):
        with st.expander(f"{rank}. {location(hit)} · score {hit.score:.4f}", expanded=rank <= 3):
            passage(kb, hit)


def notes(result: Answer) -> None:
    for note in result.notes:
        st.info(note)
