"""Conversations that survive a reload and a restart of the app: one user's,
in the app database (rag/appdb), one list per knowledge base; and a
conversation exported as Markdown. No Streamlit here."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime

from rag.filters import Filters
from team.access import LOCAL_USER
from team.appdb import AppDB
from team.conversation import FORMAT, Conversation, ConversationInfo, Turn
from team.sources import SourceNames
from ui.messages import for_user
from ui.safe_text import defuse

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


def to_markdown(conversation: Conversation, names: SourceNames | None = None) -> str:
    """The conversation as a Markdown document: each question, the filters
    it searched with, its answer (formatting kept, no links, images or
    HTML) and the passages it cites, quoted whole; errors and warnings as
    they were shown. Paths as the app shows them (`names`: relative to the
    knowledge base), never the server's."""
    started = datetime.fromtimestamp(conversation.started, UTC).strftime("%Y-%m-%d %H:%M UTC")
    title = conversation.title or "Conversation"
    out = [
        f"# {_text(' '.join(title.split()))}",
        "",
        f"Knowledge base {_code(conversation.kb)}, started {started}.",
    ]
    for n, turn in enumerate(conversation.turns, start=1):
        out += ["", f"## Question {n}", "", _text(turn.question)]
        if turn.filters:
            out += ["", f"Filters: {filters_line(turn.filters, names)}."]
        for note in (turn.error, turn.warning):
            if note:
                out += ["", f"> {_text(for_user(note))}"]
        answer = turn.answer
        if answer is None:
            continue
        if answer.text:
            out += ["", "### Answer", "", _text(answer.text)]
            cited = [(c.n, c.hit) for c in answer.citations]
        else:
            cited = list(enumerate(answer.hits, start=1))
            out += ["", "### Passages found"] if cited else []
        for number, hit in cited:
            shown = names.show(hit.source) if names else os.path.basename(hit.source)
            page = "" if hit.page is None else f", page {hit.page}"
            where = f", {_text(hit.locator)}" if hit.locator else ""
            out += ["", f"**[{number}]** {_code(shown)}{page}{where}", "", _quoted(hit.text)]
    return "\n".join(out) + "\n"


def filters_line(filters: Filters, names: SourceNames | None = None) -> str:
    """What a question searched, in words: "folder `uploads`; types md; ..."."""
    parts = []
    if filters.path_prefix:
        folder = names.show_folder(filters.path_prefix) if names else "…"
        parts.append(f"folder {_code(folder)}")
    if filters.types:
        parts.append("types " + ", ".join(filters.types))
    if filters.tags:
        parts.append("tags " + ", ".join(_text(t) for t in filters.tags))
    for label, when in (("modified on or after", filters.after), ("before", filters.before)):
        if when is not None:
            parts.append(f"{label} {datetime.fromtimestamp(when, UTC):%Y-%m-%d}")
    return "; ".join(parts)


def _text(text: str) -> str:
    return defuse(text, for_file=True)


def _code(text: str) -> str:
    """A name or path verbatim, in a code span longer than any backtick run in it."""
    one_line = " ".join(text.split())
    longest = max((len(m) for m in _BACKTICKS.findall(one_line)), default=0)
    ticks = "`" * (longest + 1)
    pad = " " if one_line.startswith("`") or one_line.endswith("`") else ""
    return f"{ticks}{pad}{one_line}{pad}{ticks}"


def _quoted(text: str) -> str:
    """Passage text verbatim in a fence longer than any run of backticks in it."""
    longest = max((len(m) for m in _BACKTICKS.findall(text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"
