"""Streamlit front end: a thin view over `rag`."""

from __future__ import annotations

import streamlit as st

from rag import KnowledgeBase, Settings
from rag.errors import RagError


@st.cache_resource
def open_kb(path: str) -> KnowledgeBase:
    return KnowledgeBase.open(path)


def main() -> None:
    st.set_page_config(page_title="Knowledge base search", page_icon="🔎")
    settings = Settings()
    st.title("Knowledge base search")
    try:
        kb = open_kb(str(settings.index))
    except RagError as exc:
        st.error(str(exc))
        return
    query = st.text_input("Search", placeholder="Ask about your documents")
    if not query:
        return
    for rank, hit in enumerate(kb.search(query, k=settings.k), start=1):
        page = f", page {hit.page}" if hit.page else ""
        with st.container(border=True):
            st.markdown(f"**{rank}.** `{hit.source}`{page} · score {hit.score:.4f}")
            st.text(hit.text)


main()
