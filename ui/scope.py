"""The Ask tab's "Filters" expander: which documents a question searches
(`rag.filters.Filters`), picked from what the knowledge base holds."""

from __future__ import annotations

import datetime as dt
import os

import streamlit as st

from rag.filters import Filters
from rag.knowledge_base import KnowledgeBase
from team.sources import SourceNames


def filter_controls(kb: KnowledgeBase, names: SourceNames) -> Filters | None:
    """The filters the visitor set (None: none), and a warning in the
    expander when they match no document. Folders are offered as visitors
    see them (`SourceNames`), never as the server's paths."""
    documents = kb.documents()
    folders: dict[str, str] = {}  # as shown -> the stored prefix
    for doc in documents:
        shown = os.path.dirname(names.show(doc.path))
        folders.setdefault(shown or ".", os.path.dirname(doc.path) + os.sep)
    kinds = sorted({d.kind for d in documents})
    tags = sorted({t for d in documents for t in d.tags})
    with st.expander("Filters"):
        left, right = st.columns(2)
        folder = left.selectbox("Folder", sorted(folders), index=None, placeholder="any")
        types = right.multiselect("Types", kinds, placeholder="any")
        chosen = left.multiselect(
            "Tags (any of)", tags, disabled=not tags,
            placeholder="any" if tags else "none: no document has tags yet",
            help=None if tags else "Tags come with documents ingested with --tag.",
        )  # fmt: skip
        after = right.date_input("Modified on or after", value=None)
        before = right.date_input("Modified before", value=None)
        if isinstance(after, dt.date) and isinstance(before, dt.date) and after >= before:
            st.warning("“Modified on or after” must be earlier than “Modified before”.")
            return None
        filters = Filters.parse(
            folders[folder] if folder else None, types, chosen,
            after.isoformat() if isinstance(after, dt.date) else None,
            before.isoformat() if isinstance(before, dt.date) else None,
        )  # fmt: skip
        if not filters:
            return None
        matching = sum(filters.matches(d) for d in documents)
        if not matching:
            st.warning("No document matches these filters: questions would search nothing.")
        else:
            st.caption(f"Questions search {matching} of {len(documents)} documents.")
    return filters
