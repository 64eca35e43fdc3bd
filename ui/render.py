"""Drawing answers, stages and sources with Streamlit.

Document and model text is never rendered as HTML, and nothing in it can
become a link or an image: it goes through `st.markdown` only after
`escape` (document text: every Markdown character escaped), `defuse`
(model text: formatting kept, capped) or `plain` (names in captions and
labels); see ui/safe_text.py. Sources are shown by `SourceNames`, relative
to the knowledge base, never as the server's absolute paths. A passage or
page is drawn only for a user the session's `Access` lets read its base.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from rag.answering import screening
from rag.knowledge_base import KnowledgeBase
from rag.types import Answer, Citation, Hit, Verdict
from team.access import Access, Action
from team.sources import SourceNames, _under
from ui import pages
from ui.safe_text import MAX_MODEL_CHARS, _embolden, cut, defuse, escape, highlighted, plain, quoted

__all__ = [
    "MAX_MODEL_CHARS",
    "SourceNames",
    "_embolden",
    "_under",
    "defuse",
    "escape",
    "highlighted",
    "plain",
    "quoted",
]


def location(hit: Hit, names: SourceNames | None = None) -> str:
    """Where a passage is, as plain text (not Markdown)."""
    page = f", page {hit.page}" if hit.page is not None else ""
    where = f", {hit.locator}" if hit.locator else ""  # a table's sheet or number, and rows
    return f"{names.show(hit.source) if names else Path(hit.source).name}{page}{where}"


def verdict_rows(verdicts: list[Verdict], kept: list[Hit]) -> list[dict[str, object]]:
    kept_ids = {h.chunk_id for h in kept}
    # With the screen off nothing was judged: the top passages were read.
    column = "kept" if screening.summary(verdicts, kept).startswith("the screen") else "read"
    return [
        {
            "#": rank,
            column: v.hit.chunk_id in kept_ids,
            "score": v.score,
            "source": location(v.hit),
            "reason": v.reason if v.valid else f"{v.reason} ({v.error})",
            "retrieval": round(v.hit.score, 4),
        }
        for rank, v in enumerate(verdicts, start=1)
    ]


def stage_summary(result: Answer) -> str:
    timings = " · ".join(f"{k} {v:.2f} s" for k, v in result.timings.items())
    return f"{timings} · {result.total_usage().to_dict()['total_tokens']} tokens"


def stage_rows(result: Answer) -> list[dict[str, object]]:
    """Each stage's time and tokens, in the order they ran, and the total."""
    usage = {stage: u.to_dict() for stage, u in result.usage.items()}
    usage["total"] = result.total_usage().to_dict()
    names = list(dict.fromkeys([*result.timings, *result.usage, "total"]))
    total_s = sum(result.timings.values())
    return [
        {
            "stage": name,
            "seconds": round(total_s if name == "total" else result.timings.get(name, 0.0), 3),
            "prompt tokens": usage.get(name, {}).get("prompt_tokens", 0),
            "completion tokens": usage.get(name, {}).get("completion_tokens", 0),
        }
        for name in names
    ]


def stages(result: Answer) -> None:
    """Retrieval, screen verdicts, timings and tokens of one answer."""
    with st.expander(f"Stages — {stage_summary(result)}", expanded=False):
        said = screening.summary(result.verdicts, result.kept)
        st.caption(f"Retrieved {len(result.hits)} passages; {said}.")
        if result.verdicts:
            st.dataframe(verdict_rows(result.verdicts, result.kept), hide_index=True)
        st.dataframe(stage_rows(result), hide_index=True)


def reasoning(text: str) -> None:
    if text:
        with st.expander("Model reasoning", expanded=False):
            shown, was_cut = cut(text)
            st.markdown(escape(shown) + ("  \n… (cut)" if was_cut else ""))


def citations(
    access: Access, kb: KnowledgeBase, names: SourceNames, items: list[Citation],
    answer: str = "",
) -> None:  # fmt: skip
    for citation in items:
        with st.expander(f"[{citation.n}] {plain(location(citation.hit, names))}"):
            passage(access, kb, names, citation.hit, quoted(answer, citation.n))


def passage(
    access: Access, kb: KnowledgeBase, names: SourceNames, hit: Hit,
    quotes: list[str] | None = None,
) -> None:  # fmt: skip
    """The passage in its surrounding text, the passage highlighted (and in
    bold the sentences the answer quotes from it, as an extractive answer
    does), and for a PDF the page itself, to check the claim at its source."""
    access.require(Action.READ, kb.root.name)
    st.caption(plain(names.show(hit.source)))
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
            st.image(shown.png, caption=plain(location(hit, names)))
        else:
            st.caption(shown.problem)


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


def hits_only(access: Access, kb: KnowledgeBase, names: SourceNames, hits: list[Hit]) -> None:
    """Retrieval-only results, for when the LLM is unavailable."""
    for rank, hit in enumerate(hits, start=1):
        label = f"{rank}. {plain(location(hit, names))} · score {hit.score:.4f}"
        with st.expander(label, expanded=rank <= 3):
            passage(access, kb, names, hit)


def notes(result: Answer) -> None:
    for note in result.notes:
        st.info(note)
