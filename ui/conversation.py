"""Conversations that survive a reload and a restart of the app: one user's,
in the app database (rag/appdb), one list per knowledge base; and a
conversation exported as Markdown. No Streamlit here."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from rag.access import LOCAL_USER
from rag.appdb import AppDB
from rag.conversation import FORMAT, Conversation, ConversationInfo, Turn
from ui.messages import for_user
from ui.safe_text import defuse, plain

__all__ = ["FORMAT", "Conversation", "ConversationInfo", "ConversationStore", "Turn", "to_markdown"]


class ConversationStore:
    """The conversations of `user` (a name: LOCAL_USER's without a login)."""

    def __init__(self, db: AppDB, user: str = LOCAL_USER.name) -> None:
        self.conversations = db.conversations
        self.user = user

    def current(self, kb: str) -> Conversation:
        """The knowledge base's latest conversation (a new, empty one if none)."""
        return self.conversations.current(self.user, kb)

    def start(self, kb: str) -> Conversation:
        """A new conversation, which becomes the knowledge base's current one."""
        return self.conversations.start(self.user, kb)

    def add(self, conversation: Conversation, turn: Turn) -> None:
        self.conversations.add(conversation, turn)

    def list(self, kb: str) -> list[ConversationInfo]:
        return self.conversations.list(self.user, kb)

    def open(self, conversation_id: int) -> Conversation:
        return self.conversations.open(self.user, conversation_id)

    def rename(self, conversation_id: int, title: str) -> None:
        self.conversations.rename(self.user, conversation_id, title)

    def delete(self, conversation_id: int) -> None:
        self.conversations.delete(self.user, conversation_id)


_BACKTICKS = re.compile(r"`+")


def to_markdown(conversation: Conversation) -> str:
    """The conversation as a Markdown document: each question, its answer
    (formatting kept, no links, images or HTML) and the passages it cites,
    quoted whole; errors and warnings as they were shown."""
    started = datetime.fromtimestamp(conversation.started, UTC).strftime("%Y-%m-%d %H:%M UTC")
    title = conversation.title or "Conversation"
    out = [
        f"# {plain(title)}",
        "",
        f"Knowledge base *{plain(conversation.kb)}*, started {started}.",
    ]
    for n, turn in enumerate(conversation.turns, start=1):
        out += ["", f"## Question {n}", "", defuse(turn.question)]
        for note in (turn.error, turn.warning):
            if note:
                out += ["", f"> {defuse(for_user(note))}"]
        answer = turn.answer
        if answer is None:
            continue
        if answer.text:
            out += ["", "### Answer", "", defuse(answer.text)]
            cited = [(c.n, c.hit) for c in answer.citations]
        else:
            cited = list(enumerate(answer.hits, start=1))
            out += ["", "### Passages found"] if cited else []
        for number, hit in cited:
            page = "" if hit.page is None else f", page {hit.page}"
            where = plain(f", {hit.locator}") if hit.locator else ""
            out += ["", f"**[{number}]** {plain(hit.source)}{page}{where}", "", _quoted(hit.text)]
    return "\n".join(out) + "\n"


def _quoted(text: str) -> str:
    """Passage text verbatim in a fence longer than any run of backticks in it."""
    longest = max((len(m) for m in _BACKTICKS.findall(text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"
