"""Each user's conversations, per knowledge base. Every call names the user,
and every query is bounded by that name: a conversation of another user is
answered exactly like one that does not exist."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Row, delete, func, select, update

from rag.errors import RagError
from team.appdb.schema import conversations, turns
from team.conversation import Conversation, ConversationInfo, Turn

TITLE_CHARS = 80


class ConversationMissing(RagError):
    pass


class Conversations:
    def __init__(self, engine: Engine, clock: Callable[[], float]) -> None:
        self.engine = engine
        self.clock = clock

    def current(self, user: str, kb: str) -> Conversation:
        """The user's conversation in `kb` used last (a new, empty one if none)."""
        query = (
            select(conversations.c.id)
            .where(conversations.c.username == user, conversations.c.kb == kb)
            .order_by(conversations.c.updated.desc(), conversations.c.id.desc())
            .limit(1)
        )
        with self.engine.connect() as conn:
            found = conn.execute(query).scalar()
        return self.start(user, kb) if found is None else self.open(user, found)

    def start(self, user: str, kb: str) -> Conversation:
        """A new conversation, which becomes the user's current one in `kb`."""
        now = self.clock()
        with self.engine.begin() as conn:
            row = conn.execute(
                conversations.insert()
                .values(username=user, kb=kb, title="", started=now, updated=now)
                .returning(conversations.c.id)
            ).scalar_one()
        return Conversation(row, kb, now, user=user)

    def add(self, conversation: Conversation, turn: Turn) -> None:
        """Appends `turn`; the first question becomes the title of an untitled one."""
        values: dict[str, object] = {"updated": self.clock()}
        if not conversation.turns and not conversation.title:
            values["title"] = conversation.title = _title(turn.question)
        with self.engine.begin() as conn:
            self._owned(conn, conversation.user, conversation.id)
            conn.execute(turns.insert().values(conversation=conversation.id, data=turn.to_json()))
            conn.execute(
                update(conversations).where(conversations.c.id == conversation.id).values(**values)
            )
        conversation.turns.append(turn)

    def list(self, user: str, kb: str) -> list[ConversationInfo]:
        """The user's conversations in `kb` that have a turn, last used first."""
        count = func.count(turns.c.id)
        c = conversations.c
        query = (
            select(c.id, c.kb, c.title, c.started, c.updated, count.label("turns"))
            .join(turns, turns.c.conversation == c.id)
            .where(c.username == user, c.kb == kb)
            .group_by(c.id, c.kb, c.title, c.started, c.updated)
            .order_by(c.updated.desc(), c.id.desc())
        )
        with self.engine.connect() as conn:
            return [ConversationInfo(*row) for row in conn.execute(query)]

    def open(self, user: str, conversation_id: int) -> Conversation:
        """One of the user's conversations, with its turns."""
        with self.engine.connect() as conn:
            row = self._owned(conn, user, conversation_id)
            data = conn.execute(
                select(turns.c.data).where(turns.c.conversation == row.id).order_by(turns.c.id)
            ).scalars()
            loaded = [Turn.from_json(d) for d in data]
        return Conversation(row.id, row.kb, row.started, loaded, row.title, user)

    def rename(self, user: str, conversation_id: int, title: str) -> None:
        with self.engine.begin() as conn:
            self._owned(conn, user, conversation_id)
            conn.execute(
                update(conversations)
                .where(conversations.c.id == conversation_id)
                .values(title=" ".join(title.split())[: TITLE_CHARS * 2])
            )

    def delete(self, user: str, conversation_id: int) -> None:
        with self.engine.begin() as conn:
            self._owned(conn, user, conversation_id)
            conn.execute(delete(turns).where(turns.c.conversation == conversation_id))
            conn.execute(delete(conversations).where(conversations.c.id == conversation_id))

    @staticmethod
    def _owned(conn: Connection, user: str, conversation_id: int) -> Row[Any]:
        row = conn.execute(
            select(conversations).where(
                conversations.c.id == conversation_id, conversations.c.username == user
            )
        ).first()
        if row is None:
            raise ConversationMissing("No such conversation: it may have been deleted.")
        return row

    def import_legacy(self, path: Path, user: str) -> int:
        """Copies the conversations the app kept before it had accounts (one
        SQLite file, the same turn JSON) to `user`; how many."""
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as old:
            rows = old.execute("SELECT id, kb, started FROM conversations ORDER BY id").fetchall()
            for old_id, kb, started in rows:
                query = "SELECT data FROM turns WHERE conversation = ? ORDER BY id"
                data = [r[0] for r in old.execute(query, (old_id,))]
                title = _title(Turn.from_json(data[0]).question) if data else ""
                with self.engine.begin() as conn:
                    new_id = conn.execute(
                        conversations.insert()
                        .values(username=user, kb=kb, title=title, started=started, updated=started)
                        .returning(conversations.c.id)
                    ).scalar_one()
                    for d in data:
                        conn.execute(turns.insert().values(conversation=new_id, data=d))
        return len(rows)


def _title(question: str) -> str:
    words = " ".join(question.split())
    return words if len(words) <= TITLE_CHARS else words[: TITLE_CHARS - 1] + "…"
