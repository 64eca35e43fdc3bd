"""The sidebar: which knowledge base (and creating one), and per-question
tuning. Slots are left for what is only known once the page's actions are
done (the base's summary, the "New conversation" button)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from ingest import library
from rag.access import Access, Action
from rag.errors import RagError
from rag.settings import Settings
from rag.storage import StoreStats
from ui.messages import ago, plural

EFFORTS = ["low", "medium", "high"]


@dataclass
class Sidebar:
    kb_dir: Path
    settings: Settings
    summary: DeltaGenerator  # for `kb_summary`, once this run's actions are done
    conversation: DeltaGenerator  # for the "New conversation" button


def _ask_to_create() -> None:
    st.session_state["create_kb"] = True


def _create(root: Path, access: Access) -> None:
    """What the Create button asked for, done before the picker is drawn, so
    the new base is selected in the picker of this very run. Not in the
    button's callback: that would act with the previous run's access."""
    if not st.session_state.pop("create_kb", False):
        return
    name = st.session_state.get("new_kb", "").strip()
    try:
        library.create(access, root, name)
    except (ValueError, OSError, RagError) as exc:
        st.session_state["create_error"] = str(exc)
        return
    st.session_state["kb"] = name
    st.session_state["new_kb"] = ""


def pick_knowledge_base(base: Settings, access: Access) -> Path:
    st.header("Knowledge base")
    _create(base.indexes_root, access)
    names = library.readable_knowledge_bases(access, base.indexes_root)
    if st.session_state.get("kb") not in names:
        # A reload starts a new session: the page's address remembers the
        # base, so the user comes back to it (and to its conversation).
        wanted = [st.query_params.get("kb"), base.index.name, *names]
        st.session_state["kb"] = next((n for n in wanted if n in names), None)
    choice = st.selectbox(
        "Knowledge base", names, key="kb", placeholder="none yet: add documents in Manage"
    )
    if choice and st.query_params.get("kb") != choice:
        st.query_params["kb"] = choice
    if access.role_allows(Action.WRITE):  # library.create asks about the name
        with st.expander("New knowledge base", expanded=not names):
            st.text_input("Name", key="new_kb", placeholder="e.g. contracts")
            st.button("Create", on_click=_ask_to_create)
            problem = st.session_state.pop("create_error", None)
            if problem:
                st.error(problem)
    # With no knowledge base yet, the first upload creates the default one.
    return base.indexes_root / (choice or library.default_name(base))


def sidebar(base: Settings, access: Access) -> Sidebar:
    with st.sidebar:
        kb_dir = pick_knowledge_base(base, access)
        summary = st.container()
        conversation = st.container()
        st.header("Answering")
        k = st.slider("Passages to screen (k)", 2, 30, base.screen_k)
        screen_on = st.toggle("Fast screen", value=base.screen)
        screen_effort = st.selectbox(
            "Screen reasoning", EFFORTS, index=EFFORTS.index(base.screen_effort)
        )
        read_effort = st.selectbox(
            "Deep-read reasoning", EFFORTS, index=EFFORTS.index(base.read_effort)
        )
        keep_max = st.slider("Passages kept for the answer", 1, 12, base.keep_max)
    tuned = base.model_copy(
        update={
            "index": kb_dir, "screen_k": k, "screen": screen_on, "keep_max": keep_max,
            "screen_effort": screen_effort, "read_effort": read_effort,
        }
    )  # fmt: skip
    return Sidebar(kb_dir, tuned, summary, conversation)


def summary_line(stats: StoreStats | None) -> str:
    if stats is None:
        return "no documents yet: add some in the **Manage** tab"
    return f"{plural(stats.documents, 'document')} · {plural(stats.chunks, 'passage')}"


def synced_line(synced_at: float | None, now: float) -> str:
    """When the base was last synced with its folders (`ingest --watch`)."""
    if synced_at is None:
        return ""
    return "Last synced " + ago(max(now - synced_at, 0.0))


def kb_summary(stats: StoreStats | None, synced_at: float | None = None) -> None:
    line = summary_line(stats)
    st.caption(line[0].upper() + line[1:] if stats is None else line)
    synced = synced_line(synced_at, time.time())
    if synced:
        st.caption(synced)
