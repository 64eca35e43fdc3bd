"""Conversations that survive a reload and a restart of the app.

One local history until the app has accounts: a small SQLite file beside
the indexes (`<indexes_root>/.app/conversations.sqlite`, never inside an
index folder, which ingestion owns), one conversation list per knowledge
base. A turn is stored as JSON with what is needed to draw it again: the
question, the answer, its citations with their passage text (so a citation
still opens after its document is gone), notes, verdicts, timings, tokens,
or the error the turn ended with. Never pickle. No Streamlit here.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.settings import Settings
from rag.types import Answer, Chunk, Citation, Hit, Usage, Verdict

FORMAT = 1


def store_path(settings: Settings) -> Path:
    return settings.indexes_root / ".app" / "conversations.sqlite"


@dataclass
class Turn:
    """One question and what came of it: an answer, the passages shown
    instead of one (`answer.text` empty), an error, or both of the last two."""

    question: str
    answer: Answer | None = None
    error: str = ""
    warning: str = ""  # why passages are shown instead of an answer

    def to_json(self) -> str:
        body = {"format": FORMAT, "question": self.question, "error": self.error}
        body["warning"] = self.warning
        body["answer"] = None if self.answer is None else _answer_to_dict(self.answer)
        return json.dumps(body, ensure_ascii=False)

    @classmethod
    def from_json(cls, data: str) -> Turn:
        body = json.loads(data)
        answer = body.get("answer")
        return cls(
            question=str(body["question"]),
            answer=None if answer is None else _answer_from_dict(answer),
            error=str(body.get("error", "")),
            warning=str(body.get("warning", "")),
        )


@dataclass
class Conversation:
    id: int
    kb: str
    started: float
    turns: list[Turn] = field(default_factory=list)

    def history(self) -> list[tuple[str, str]]:
        """(role, text) pairs of the answered turns, for a follow-up's rewrite."""
        pairs = []
        for turn in self.turns:
            if turn.answer is not None and turn.answer.text:
                pairs += [("user", turn.question), ("assistant", turn.answer.text)]
        return pairs


class ConversationStore:
    """The conversations of each knowledge base, newest last. Opened per
    use: SQLite connections do not cross Streamlit's script threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(
                "CREATE TABLE IF NOT EXISTS conversations ("
                " id INTEGER PRIMARY KEY, kb TEXT NOT NULL, started REAL NOT NULL);"
                "CREATE TABLE IF NOT EXISTS turns ("
                " id INTEGER PRIMARY KEY, conversation INTEGER NOT NULL"
                " REFERENCES conversations(id), data TEXT NOT NULL);"
                "CREATE INDEX IF NOT EXISTS turns_by_conversation ON turns(conversation);"
            )

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=10)) as db, db:
            yield db

    def current(self, kb: str) -> Conversation:
        """The knowledge base's latest conversation (a new, empty one if none)."""
        with self._connect() as db:
            row = db.execute(
                "SELECT id, started FROM conversations WHERE kb = ? ORDER BY id DESC LIMIT 1",
                (kb,),
            ).fetchone()
            if row is None:
                return self.start(kb)
            rows = db.execute(
                "SELECT data FROM turns WHERE conversation = ? ORDER BY id", (row[0],)
            ).fetchall()
        return Conversation(row[0], kb, row[1], [Turn.from_json(r[0]) for r in rows])

    def start(self, kb: str) -> Conversation:
        """A new conversation, which becomes the knowledge base's current one."""
        started = time.time()
        with self._connect() as db:
            cursor = db.execute(
                "INSERT INTO conversations (kb, started) VALUES (?, ?)", (kb, started)
            )
        assert cursor.lastrowid is not None
        return Conversation(cursor.lastrowid, kb, started)

    def add(self, conversation: Conversation, turn: Turn) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT INTO turns (conversation, data) VALUES (?, ?)",
                (conversation.id, turn.to_json()),
            )
        conversation.turns.append(turn)


# -- an Answer as JSON and back ------------------------------------------------------


def _hit(hit: Hit) -> dict[str, Any]:
    return {**hit.to_dict(), "ordinal": hit.chunk.ordinal}


def _hit_from(d: dict[str, Any]) -> Hit:
    text = str(d.get("text", ""))
    chunk = Chunk(
        text=text, source=str(d["source"]), start=0, end=len(text), page=d.get("page"),
        ordinal=int(d.get("ordinal", 0)), id=int(d["chunk_id"]),
    )  # fmt: skip
    return Hit(chunk, float(d.get("score", 0.0)))


def _answer_to_dict(answer: Answer) -> dict[str, Any]:
    return {
        "question": answer.question,
        "text": answer.text,
        "search_query": answer.search_query,
        "citations": [{"n": c.n, **_hit(c.hit)} for c in answer.citations],
        "reasoning": answer.reasoning,
        "hits": [_hit(h) for h in answer.hits] if not answer.text else [],
        "verdicts": [
            {
                **_hit(v.hit),
                "text": "",
                "relevant": v.relevant,
                "reason": v.reason,
                "verdict_score": v.score,
                "valid": v.valid,
                "error": v.error,
            }
            for v in answer.verdicts
        ],
        "kept": [h.chunk_id for h in answer.kept],
        "retrieved": len(answer.hits),
        "timings": answer.timings,
        "usage": {
            stage: [u.prompt_tokens, u.completion_tokens] for stage, u in answer.usage.items()
        },
        "found": answer.found,
        "notes": answer.notes,
    }


def _answer_from_dict(d: dict[str, Any]) -> Answer:
    verdicts = [
        Verdict(
            hit=_hit_from(v), relevant=bool(v["relevant"]), reason=str(v["reason"]),
            score=float(v["verdict_score"]), valid=bool(v["valid"]), error=str(v["error"]),
        )
        for v in d.get("verdicts", [])
    ]  # fmt: skip
    by_id = {v.hit.chunk_id: v.hit for v in verdicts}
    hits = [_hit_from(h) for h in d.get("hits", [])]
    # Only the count of retrieved passages is shown for an answered turn.
    hits = hits or [v.hit for v in verdicts][: int(d.get("retrieved", 0))]
    return Answer(
        question=str(d["question"]),
        text=str(d["text"]),
        search_query=str(d.get("search_query", "")),
        citations=[Citation(int(c["n"]), _hit_from(c)) for c in d.get("citations", [])],
        reasoning=str(d.get("reasoning", "")),
        hits=hits,
        verdicts=verdicts,
        kept=[by_id[i] for i in d.get("kept", []) if i in by_id],
        timings={str(k): float(v) for k, v in d.get("timings", {}).items()},
        usage={str(k): Usage(int(p), int(c)) for k, (p, c) in d.get("usage", {}).items()},
        found=bool(d.get("found", True)),
        notes=[str(n) for n in d.get("notes", [])],
    )
