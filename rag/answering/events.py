"""What `rag.answering.pipeline.stream_answer` yields as each stage finishes: one
small typed event per stage (plus the LLM's `Delta`s while the deep read
streams). The app and the CLI draw from these; nothing else is yielded."""

from __future__ import annotations

from dataclasses import dataclass

from rag.llm import Completion, Delta
from rag.types import Answer, Hit, Usage, Verdict


@dataclass(frozen=True)
class Rewritten:
    """A follow-up turned into the standalone query that was searched
    (rag/answering/pipeline.py `_follow_up`)."""

    query: str
    seconds: float


@dataclass(frozen=True)
class Retrieved:
    hits: list[Hit]
    seconds: float


@dataclass(frozen=True)
class Screened:
    verdicts: list[Verdict]
    kept: list[Hit]
    seconds: float
    usage: Usage


@dataclass(frozen=True)
class Notice:
    """Something the user should know about the run (a retry, a cut)."""

    text: str


@dataclass(frozen=True)
class Read:
    """The deep read's end: its completion (None when an extractive answer
    found nothing close enough to quote) and the passages, in prompt order,
    that its citation numbers refer to."""

    completion: Completion | None
    ordered: list[Hit]


@dataclass(frozen=True)
class Finished:
    answer: Answer


Event = Rewritten | Retrieved | Screened | Delta | Notice | Finished
