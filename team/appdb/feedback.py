"""Thumbs up or down on an answer, per user (issue 34, part 4).

An answer is remembered when it is given (the API's completion id, or the
app's turn), with its question, text, citations, the screen's verdicts and
the passages retrieval found, so that a vote later names only an id: a vote
on an id this user was not given is refused exactly like one that does not
exist. The answers a user never voted on are kept bounded (the newest
`REMEMBERED` per user); a voted one stays, it is the team's test set.
Votes are audited ("feedback", the knowledge base, "<id> up|down").
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, delete, select, update

from rag.errors import RagError
from rag.types import Answer, Hit
from team.appdb.audit import AuditLog
from team.appdb.schema import answer_feedback
from team.conversation import Turn, _hit, _hit_from

REMEMBERED = 200  # unvoted answers kept per user: enough to vote on a recent one
MAX_COMMENT_CHARS = 2000
MAX_ID_CHARS = 64
VOTES = {"up": 1, "down": -1}


class FeedbackMissing(RagError):
    """No answer with this id was given to this user (or it was forgotten)."""


@dataclass(frozen=True)
class FeedbackEntry:
    answer_id: str
    user: str
    kb: str
    answered: float
    turn: Turn  # the question and the answer, its citations and verdicts
    retrieved: list[Hit] = field(default_factory=list)  # with their text
    vote: str = ""  # "up", "down", "" before a vote
    comment: str = ""
    voted: float | None = None


def clean_comment(comment: str) -> str:
    """A comment as kept: control characters out (newlines and tabs stay),
    at most MAX_COMMENT_CHARS; longer is refused, never cut silently."""
    if len(comment) > MAX_COMMENT_CHARS:
        raise RagError(f"A feedback comment is limited to {MAX_COMMENT_CHARS} characters.")
    return "".join(c for c in comment if c.isprintable() or c in "\n\t").strip()


class Feedback:
    def __init__(self, engine: Engine, audit: AuditLog, clock: Callable[[], float]) -> None:
        self.engine = engine
        self.audit = audit
        self.clock = clock

    def remember(self, user: str, kb: str, answer_id: str, answer: Answer) -> None:
        """Keeps what was answered under `answer_id` for `user`; forgets that
        user's oldest unvoted answers beyond REMEMBERED."""
        body = {
            "turn": json.loads(Turn(answer.question, answer=answer).to_json()),
            "retrieved": [_hit(h) for h in answer.hits],
        }
        with self.engine.begin() as conn:
            conn.execute(
                answer_feedback.insert().values(
                    answer_id=answer_id[:MAX_ID_CHARS], username=user, kb=kb,
                    answered=self.clock(), question=answer.question, data=json.dumps(body),
                )
            )  # fmt: skip
            c = answer_feedback.c
            stale = (
                select(c.answer_id)
                .where(c.username == user, c.vote.is_(None))
                .order_by(c.answered.desc(), c.answer_id)
                .offset(REMEMBERED)
            )
            old = list(conn.execute(stale).scalars())
            if old:
                conn.execute(delete(answer_feedback).where(c.answer_id.in_(old)))

    def given(self, user: str, answer_id: str) -> FeedbackEntry | None:
        """The user's answer `answer_id` and their vote, if it is theirs."""
        c = answer_feedback.c
        query = select(answer_feedback).where(c.answer_id == answer_id, c.username == user)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else _entry(row)

    def vote(self, user: str, answer_id: str, vote: str, comment: str = "") -> FeedbackEntry:
        """Records (or changes) the user's vote on an answer they were given."""
        if vote not in VOTES:
            raise RagError(f"A vote is 'up' or 'down', not {vote[:20]!r}.")
        comment = clean_comment(comment)
        entry = self.given(user, answer_id)
        if entry is None:
            raise FeedbackMissing(f"No answer {answer_id[:MAX_ID_CHARS]!r} was given to you.")
        now = self.clock()
        c = answer_feedback.c
        with self.engine.begin() as conn:
            conn.execute(
                update(answer_feedback)
                .where(c.answer_id == answer_id, c.username == user)
                .values(vote=VOTES[vote], comment=comment, voted=now)
            )
        self.audit.record(user, "feedback", entry.kb, f"{entry.answer_id} {vote}")
        return FeedbackEntry(**{**entry.__dict__, "vote": vote, "comment": comment, "voted": now})

    def voted(
        self, kb: str, vote: str | None = None, limit: int | None = None
    ) -> list[FeedbackEntry]:
        """The voted answers in `kb` of every user (only `vote`'s if given), newest first."""
        c = answer_feedback.c
        query = select(answer_feedback).where(c.kb == kb, c.vote.is_not(None))
        if vote is not None:
            query = query.where(c.vote == VOTES[vote])
        query = query.order_by(c.voted.desc(), c.answer_id).limit(limit)
        with self.engine.connect() as conn:
            return [_entry(row) for row in conn.execute(query)]


def _entry(row: Any) -> FeedbackEntry:
    body = json.loads(row.data)
    names = {v: k for k, v in VOTES.items()}
    return FeedbackEntry(
        answer_id=row.answer_id, user=row.username, kb=row.kb, answered=row.answered,
        turn=Turn.from_json(json.dumps(body["turn"])),
        retrieved=[_hit_from(h) for h in body.get("retrieved", [])],
        vote=names.get(row.vote, ""), comment=row.comment or "", voted=row.voted,
    )  # fmt: skip
