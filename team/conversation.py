"""A conversation and its turns, as the app database keeps them
(team/appdb/conversations.py: one list per user and knowledge base).

A turn is stored as JSON with what is needed to draw it again: the
question, the answer, its citations with their passage text (so a citation
still opens after its document is gone), notes, verdicts, timings, tokens,
or the error the turn ended with. Never pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from rag.filters import Filters
from rag.types import Answer, Chunk, Citation, Hit, Usage, Verdict

FORMAT = 1


@dataclass
class Turn:
    """One question and what came of it: an answer, the passages shown
    instead of one (`answer.text` empty), an error, or both of the last two."""

    question: str
    answer: Answer | None = None
    error: str = ""
    warning: str = ""  # why passages are shown instead of an answer
    filters: Filters | None = None  # the documents the question searched, if narrowed

    def to_json(self) -> str:
        body = {"format": FORMAT, "question": self.question, "error": self.error}
        body["warning"] = self.warning
        body["filters"] = None if self.filters is None else _filters_to_dict(self.filters)
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
            filters=_filters_from(body.get("filters")),
        )


@dataclass
class Conversation:
    id: int
    kb: str
    started: float
    turns: list[Turn] = field(default_factory=list)
    title: str = ""  # the first question until renamed
    user: str = ""

    def history(self) -> list[tuple[str, str]]:
        """(role, text) pairs of the answered turns, for a follow-up's rewrite."""
        pairs = []
        for turn in self.turns:
            if turn.answer is not None and turn.answer.text:
                pairs += [("user", turn.question), ("assistant", turn.answer.text)]
        return pairs


@dataclass(frozen=True)
class ConversationInfo:
    """A line of a user's conversation list."""

    id: int
    kb: str
    title: str
    started: float
    updated: float
    turns: int


def _filters_to_dict(filters: Filters) -> dict[str, Any]:
    return {
        "path_prefix": filters.path_prefix, "types": list(filters.types),
        "tags": list(filters.tags), "after": filters.after, "before": filters.before,
    }  # fmt: skip


def _filters_from(d: dict[str, Any] | None) -> Filters | None:
    """A turn's filters (None in turns kept before they were recorded)."""
    if not d:
        return None
    return Filters(
        str(d.get("path_prefix", "")), tuple(d.get("types", ())), tuple(d.get("tags", ())),
        d.get("after"), d.get("before"),
    )  # fmt: skip


# -- an Answer as JSON and back ------------------------------------------------------


def _hit(hit: Hit) -> dict[str, Any]:
    return {**hit.to_dict(), "ordinal": hit.chunk.ordinal}


def _hit_from(d: dict[str, Any]) -> Hit:
    text = str(d.get("text", ""))
    chunk = Chunk(
        text=text, source=str(d["source"]), start=0, end=len(text), page=d.get("page"),
        ordinal=int(d.get("ordinal", 0)), id=int(d["chunk_id"]),
        locator=str(d.get("locator") or ""),
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
