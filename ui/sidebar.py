"""The sidebar: which knowledge base (and creating one, through the core
service), and per-question tuning. Slots are left for what is only known once the page's actions are
done (the base's summary, the "New conversation" button)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from core.service import KnowledgeService
from rag.errors import RagError
from rag.settings import Settings
from rag.store import StoreStats
from team.access import Access, Action
from ui.messages import ago, plural

EFFORTS = ["low", "medium", "high"]


@dataclass
class Sidebar:
    kb_dir: Path
    settings: Settings
    summary: DeltaGenerator  # for `kb_summary`, once this run's actions are done
    conversation: DeltaGenerator  # for the "New conversation" button
    notice: str = ""  # why the base shown is not the one the address asked for


def _ask_to_create() -> None:
    st.session_state["create_kb"] = True


# The one source of truth for the base this session shows: the address, the
# picker, the page and the question all read it (`chosen_kb`).
_CHOSEN = "kb"
_PICKER = "kb-picker"  # + a number, new each time code (not the visitor) moves the picker
_PICKS = "kb-picks"  # how many times it did
_OWNER = "kb-owner"  # the user whose choices this session holds
NOT_AVAILABLE = "The knowledge base “{name}” is not available to you; showing “{shown}”."


def _choose(name: str | None) -> None:
    """Makes `name` the base shown, from code: the picker is drawn afresh
    (a widget's own state would keep the previous value in the browser)."""
    st.session_state[_CHOSEN] = name
    st.session_state[_PICKS] = st.session_state.get(_PICKS, 0) + 1


def forget_chosen() -> None:
    """The base shown is gone (deleted): the next run shows the default or
    the first one left, and the address no longer names it."""
    _choose(None)
    st.query_params.pop("kb", None)


def _picked(key: str) -> None:
    st.session_state[_CHOSEN] = st.session_state.get(key)


def for_user(user: str) -> None:
    """A change of user in this browser session starts from nothing the
    previous one picked: the base, the address's ?kb=, the open
    conversations. (A link's ?kb= in a fresh tab is kept for the login.)"""
    owner = st.session_state.get(_OWNER)
    if owner == user:
        return
    if owner is not None:
        for key in list(st.session_state):
            if key == _CHOSEN or str(key).startswith("open-conversation:"):
                del st.session_state[key]
        st.query_params.pop("kb", None)
    st.session_state[_OWNER] = user
    st.session_state.pop(_CHOSEN, None)


def _create(svc: KnowledgeService, access: Access) -> None:
    """What the Create button asked for, done before the picker is drawn, so
    the new base is selected in the picker of this very run. Not in the
    button's callback: that would act with the previous run's access."""
    if not st.session_state.pop("create_kb", False):
        return
    name = st.session_state.get("new_kb", "").strip()
    try:
        svc.create(access, name)
    except (ValueError, OSError, RagError) as exc:
        st.session_state["create_error"] = str(exc)
        return
    _choose(name)
    st.session_state["new_kb"] = ""
    st.session_state["new_kb_open"] = False  # done: the form folds away
    st.session_state["created_kb"] = name


def chosen_kb(svc: KnowledgeService, base: Settings, access: Access) -> tuple[str | None, str]:
    """The base this session shows, among those the user may read, and a
    notice when the address asked for one they may not."""
    names = svc.names(access)
    chosen = st.session_state.get(_CHOSEN)
    notice = ""
    if chosen not in names:
        # A reload or a link starts a new session: the address names the base.
        asked = st.query_params.get("kb")
        wanted = [asked, base.index.name, *names]
        chosen = next((n for n in wanted if n in names), None)
        if asked and asked not in names:
            notice = NOT_AVAILABLE.format(name=asked, shown=chosen or "none")
        _choose(chosen)
    if chosen and st.query_params.get("kb") != chosen:
        st.query_params["kb"] = chosen
    return chosen, notice


def pick_knowledge_base(svc: KnowledgeService, base: Settings, access: Access) -> tuple[Path, str]:
    st.header("Knowledge base")
    for_user(access.user.name)
    _create(svc, access)
    choice, notice = chosen_kb(svc, base, access)
    names = svc.names(access)
    key = f"{_PICKER}-{st.session_state.get(_PICKS, 0)}"
    st.selectbox(
        "Knowledge base", names, index=names.index(choice) if choice in names else None,
        key=key, on_change=_picked, args=(key,),
        placeholder="none yet: add documents in Manage",
    )  # fmt: skip
    created = st.session_state.pop("created_kb", None)
    if created:
        st.success(f"Created knowledge base “{created}”.")
    if access.role_allows(Action.WRITE):  # svc.create asks about the name
        st.session_state.setdefault("new_kb_open", not names)
        with st.expander("New knowledge base", key="new_kb_open", on_change="rerun"):
            st.text_input("Name", key="new_kb", placeholder="e.g. contracts")
            st.button("Create", on_click=_ask_to_create)
            problem = st.session_state.pop("create_error", None)
            if problem:
                st.error(problem)
    # With no knowledge base yet, the first upload creates the default one.
    return svc.root / (choice or svc.default_name), notice


def sidebar(svc: KnowledgeService, base: Settings, access: Access) -> Sidebar:
    with st.sidebar:
        kb_dir, notice = pick_knowledge_base(svc, base, access)
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
    return Sidebar(kb_dir, tuned, summary, conversation, notice)


def summary_line(stats: StoreStats | None) -> str:
    if stats is None:
        return "no documents yet: add some in the **Manage** tab"
    return f"{plural(stats.documents, 'document')} · {plural(stats.chunks, 'passage')}"


def synced_line(synced_at: float | None, now: float) -> str:
    """When the base was last synced with its folders (`ingest --watch`)."""
    if synced_at is None:
        return ""
    return "Last synced " + ago(max(now - synced_at, 0.0))


def kb_stats(svc: KnowledgeService, access: Access, name: str) -> StoreStats | None:
    """The base's numbers from the service (None while it has no index yet,
    or it cannot be opened: the Ask tab says why)."""
    try:
        return svc.stats(access, name) if svc.has_index(access, name) else None
    except RagError:
        return None


def kb_summary(stats: StoreStats | None, synced_at: float | None = None) -> None:
    line = summary_line(stats)
    st.caption(line[0].upper() + line[1:] if stats is None else line)
    synced = synced_line(synced_at, time.time())
    if synced:
        st.caption(synced)
