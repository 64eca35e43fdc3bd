"""The user's conversations in the sidebar (issue 19): those of the
knowledge base in use, last used first; one opens with its citations, and
the open one can be renamed, exported as Markdown or deleted.

Which conversation is open is the one thing kept in the browser session
(per knowledge base); the conversations themselves are in the app database,
each user's own (ui/conversation.py)."""

from __future__ import annotations

import re
from contextlib import suppress
from datetime import UTC, datetime

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from team.appdb import ConversationMissing
from team.sources import SourceNames
from ui.conversation import Conversation, ConversationStore, to_markdown
from ui.messages import plural
from ui.safe_text import plain

_OPEN = "open-conversation:"  # + knowledge base: the id of the conversation shown
_RENAMED = "conversation-renamed"  # the new title, confirmed on the next run


def shown(store: ConversationStore, kb: str) -> Conversation:
    """The conversation this session shows in `kb`: the one picked from the
    list, else the one used last (a new one if none)."""
    picked = st.session_state.get(_OPEN + kb)
    if isinstance(picked, int):
        try:
            return store.open(picked)
        except ConversationMissing:  # deleted in another tab
            st.session_state.pop(_OPEN + kb, None)
    return store.current(kb)


def panel(
    slot: DeltaGenerator, store: ConversationStore, kb: str, conversation: Conversation | None,
    names: SourceNames | None = None,
) -> None:  # fmt: skip
    """The sidebar's conversation controls, drawn once this run's question
    is in the conversation. The buttons act in callbacks, before the next
    run draws the page."""
    with slot:
        if conversation is not None and conversation.turns:
            st.button("New conversation", on_click=_start, args=(store, kb))
        listed = store.list(kb)
        if not listed:
            return
        st.subheader("Conversations")
        current = conversation.id if conversation is not None else None
        for info in listed:
            st.button(
                f"{plain(info.title or 'Untitled')} · {plural(info.turns, 'question')}",
                key=f"conversation-{info.id}", on_click=_open, args=(kb, info.id),
                type="primary" if info.id == current else "secondary",
            )  # fmt: skip
        if conversation is not None and conversation.turns:
            _open_one(store, kb, conversation, names)


def _open_one(
    store: ConversationStore, kb: str, conversation: Conversation, names: SourceNames | None
) -> None:
    with st.expander("This conversation"):
        key = f"title-{conversation.id}"
        st.text_input("Title", value=conversation.title, key=key, max_chars=160)
        st.button("Rename", on_click=_rename, args=(store, conversation.id, key))
        renamed = st.session_state.pop(_RENAMED, None)
        if renamed:
            st.success(f"Renamed to “{plain(renamed)}”.")
        st.download_button(
            "Export as Markdown", data=to_markdown(conversation, names),
            file_name=export_name(conversation), mime="text/markdown",
        )  # fmt: skip
        st.button("Delete this conversation", on_click=_delete, args=(store, kb, conversation.id))


def export_name(conversation: Conversation) -> str:
    """`<kb>-<date>-<title>.md`, in characters any file system takes."""
    day = datetime.fromtimestamp(conversation.started, UTC).strftime("%Y-%m-%d")
    title = re.sub(r"[^A-Za-z0-9]+", "-", conversation.title).strip("-")[:40] or "conversation"
    return f"{conversation.kb}-{day}-{title}.md"


def _start(store: ConversationStore, kb: str) -> None:
    st.session_state[_OPEN + kb] = store.start(kb).id


def _open(kb: str, conversation_id: int) -> None:
    st.session_state[_OPEN + kb] = conversation_id


def _rename(store: ConversationStore, conversation_id: int, key: str) -> None:
    title = str(st.session_state.get(key, "")).strip()
    if title:
        with suppress(ConversationMissing):  # deleted in another tab meanwhile
            store.rename(conversation_id, title)
            st.session_state[_RENAMED] = title


def _delete(store: ConversationStore, kb: str, conversation_id: int) -> None:
    with suppress(ConversationMissing):
        store.delete(conversation_id)
    st.session_state.pop(_OPEN + kb, None)
