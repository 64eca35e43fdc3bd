"""Thumbs up or down under each answer in the app, and the admins'
Feedback tab: the down-voted answers with their stages (team/appdb/feedback.py
keeps them). An app answer's id is its conversation, its place in it and a
digest of its text, so a vote can only name a turn of the user's own."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import streamlit as st

from rag.errors import RagError
from team.access import Access, Action
from team.appdb import AppDB
from team.appdb.feedback import MAX_COMMENT_CHARS, FeedbackEntry
from team.conversation import Conversation, Turn
from ui import render
from ui.safe_text import defuse

SHOWN = 50  # down-voted answers on the Feedback tab, newest first


def answer_id(conversation: Conversation, n: int, turn: Turn) -> str:
    text = turn.answer.text if turn.answer is not None else ""
    digest = hashlib.sha256(f"{turn.question}\0{text}".encode()).hexdigest()[:12]
    return f"app-{conversation.id}-{n}-{digest}"


def remember(db: AppDB, access: Access, conversation: Conversation, n: int, turn: Turn) -> None:
    """Keeps a just-given answer, with all the passages retrieval found."""
    if turn.answer is not None and turn.answer.text:
        key = answer_id(conversation, n, turn)
        if db.feedback.given(access.user.name, key) is None:
            db.feedback.remember(access.user.name, conversation.kb, key, turn.answer)


def thumbs(db: AppDB, access: Access, conversation: Conversation, n: int, turn: Turn) -> None:
    """👍 / 👎 and an optional comment under an answered turn."""
    if turn.answer is None or not turn.answer.text:
        return
    key = answer_id(conversation, n, turn)
    up, down, comment = st.columns([1, 1, 10], vertical_alignment="bottom")
    text = comment.text_input(
        "Comment", key=f"fb-comment-{key}", max_chars=MAX_COMMENT_CHARS,
        placeholder="What was wrong or right? (optional)", label_visibility="collapsed",
    )  # fmt: skip
    vote = "up" if up.button("👍", key=f"fb-up-{key}", help="A good answer") else ""
    vote = "down" if down.button("👎", key=f"fb-down-{key}", help="A wrong answer") else vote
    if vote:
        remember(db, access, conversation, n, turn)  # an answer from before this feature
        try:
            db.feedback.vote(access.user.name, key, vote, text)
        except RagError as exc:
            st.error(str(exc))
            return
    given = db.feedback.given(access.user.name, key)
    if given is not None and given.vote:
        st.caption(f"Your feedback: {'👍' if given.vote == 'up' else '👎'} — thank you.")


def views(access: Access) -> list[str]:
    return ["Feedback"] if access.allows(Action.ADMIN) else []


def feedback_tab(access: Access, db: AppDB, kb: str) -> None:
    """The down-voted answers in `kb`, newest first, each with its stages."""
    access.require(Action.ADMIN)
    entries = db.feedback.voted(kb, vote="down", limit=SHOWN)
    st.caption(
        f"The newest {len(entries)} down-voted answers in this knowledge base. "
        "`rag feedback export` turns them into a question set for `rag eval --stages`."
    )
    for entry in entries:
        with st.container(border=True):
            _entry(entry)


def _entry(entry: FeedbackEntry) -> None:
    when = datetime.fromtimestamp(entry.voted or entry.answered, UTC).strftime("%Y-%m-%d %H:%M UTC")
    st.caption(f"👎 by {render.plain(entry.user)}, {when}")
    # st.text: the question and the comment are a user's, shown literally.
    st.text(f"Question: {entry.turn.question}")
    if entry.comment:
        st.text(f"Comment: {entry.comment}")
    result = entry.turn.answer
    if result is None:
        return
    st.markdown(defuse(result.text))
    kept = {h.chunk_id for h in result.kept}
    cited = {c.hit.chunk_id for c in result.citations}
    st.caption(f"Retrieval found {len(entry.retrieved)} passages; the screen kept {len(kept)}.")
    st.dataframe(
        [
            {"#": rank, "source": render.location(hit), "retrieval": round(hit.score, 4),
             "kept": hit.chunk_id in kept, "cited": hit.chunk_id in cited, "text": hit.text[:300]}
            for rank, hit in enumerate(entry.retrieved, start=1)
        ],
        hide_index=True,
    )  # fmt: skip
    if result.verdicts:
        st.caption("The screen's verdicts:")
        st.dataframe(render.verdict_rows(result.verdicts, result.kept), hide_index=True)
