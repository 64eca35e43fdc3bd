"""The whole question, one stage after another, each in its own module:

    rewrite    a follow-up becomes a standalone question   rag/answering/rewriting.py
    retrieve   hybrid search                               rag/knowledge_base.py
    screen     a fast, concurrent verdict per passage      rag/answering/screening.py
    read       the deep read of the kept passages          rag/answering/reading.py
    cite       [n] markers resolved and checked            rag/answering/citations.py

`stream_answer` yields one typed event (rag/answering/events.py) as each stage
finishes, and the deep read's text as it streams; `answer` is the same path,
consumed to the end.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator, Sequence
from functools import partial

from rag import tracing
from rag.answering import citations, followup, prompts
from rag.answering.events import Event, Finished, Notice, Read, Retrieved, Rewritten, Screened
from rag.answering.reading import check_question, read, read_token_limit
from rag.answering.rewriting import condense
from rag.answering.screening import SCREEN_OFF, keep, screen
from rag.errors import LLMError
from rag.filters import Filters
from rag.knowledge_base import KnowledgeBase
from rag.lexical import terms
from rag.llm import ChatModel, Completion, Delta, require_content
from rag.settings import Settings
from rag.types import Answer, Usage, Verdict


def stream_answer(
    question: str,
    kb: KnowledgeBase,
    model: ChatModel,
    settings: Settings,
    history: Sequence[tuple[str, str]] = (),
    filters: Filters | None = None,
) -> Iterator[Event]:
    """Rewrite (follow-ups only), retrieve, screen, read, cite; yield each
    stage's result as it is ready. `history` holds the conversation's earlier
    (role, text) turns: with it, a question that refers to them is first
    turned into a standalone query (`rag.answering.followup`), which is searched,
    screened against and answered; the deep read also sees the end of the
    conversation. `filters` scope the search (`KnowledgeBase.search`). A
    question too long to fit raises QuestionTooLong first.

    Each question is counted and timed (rag/telemetry.py) and, when the
    OTEL_* variables ask for it, traced (rag/tracing.py), here once for the
    app, the API, MCP and the CLI."""
    watch = tracing.Question(question, kb.root.name)
    try:
        for event in _stages(question, kb, watch.model(model), settings, history, filters, watch):
            if isinstance(event, Finished):
                watch.finish(event.answer)
            yield event
    except BaseException as exc:  # GeneratorExit too: the client left
        watch.fail(exc)
        raise


def _stages(
    question: str, kb: KnowledgeBase, model: ChatModel, settings: Settings,
    history: Sequence[tuple[str, str]], filters: Filters | None, watch: tracing.Question,
) -> Iterator[Event]:  # fmt: skip
    check_question(question, settings)
    result = Answer(question=question, text="")
    query = question
    if history and followup.needs_context(question):
        query = yield from _follow_up(question, history, result, model, settings, watch)
    with _timed(result, "retrieve", watch):
        result.hits = kb.search(
            query, k=settings.screen_k, mode=settings.search_mode, filters=filters
        )
    yield Retrieved(result.hits, result.timings["retrieve"])
    with _timed(result, "screen", watch):
        _screen(query, result, model, settings)
    yield Screened(
        result.verdicts, result.kept, result.timings["screen"], result.usage.get("screen", Usage())
    )
    if not result.kept:
        result.timings["read"] = 0.0
        yield Finished(_not_found(result))
        return
    done: Read | None = None
    with _timed(result, "read", watch):
        embedder = kb.embedder if settings.answer_style == "extractive" else None
        known = partial(knows, kb)
        for event in read(query, result.kept, model, settings, embedder, history, question, known):
            if isinstance(event, Read):
                done = event
                continue
            if isinstance(event, Notice):
                result.notes.append(event.text)
            yield event
    assert done is not None, "read always ends with a Read event"
    yield Finished(_cite(result, done, settings))


def knows(kb: KnowledgeBase, word: str) -> bool:
    """Whether any passage of `kb` holds `word` (as BM25 analyses it): a
    lookup in the store's BM25 vocabulary, not a search per word."""
    snapshot = kb.snapshot()
    return any(snapshot.has_term(term) for term in terms(word))


def answer(
    question: str,
    kb: KnowledgeBase,
    model: ChatModel,
    settings: Settings,
    history: Sequence[tuple[str, str]] = (),
    filters: Filters | None = None,
) -> Answer:
    """`stream_answer`, run to the end."""
    for event in stream_answer(question, kb, model, settings, history, filters):
        if isinstance(event, Finished):
            return event.answer
    raise LLMError("answering ended without a result")


class _timed:
    """Adds the seconds its block took to `result.timings[stage]`, and tells
    `watch` (the stage's histogram and span)."""

    def __init__(self, result: Answer, stage: str, watch: tracing.Question) -> None:
        self.result, self.stage, self.watch = result, stage, watch

    def __enter__(self) -> None:
        self.watch.start(self.stage)
        self.started = time.perf_counter()

    def __exit__(self, _type: object, error: BaseException | None, _tb: object) -> None:
        seconds = self.result.timings[self.stage] = time.perf_counter() - self.started
        self.watch.end(self.stage, seconds, error)


def _follow_up(
    question: str,
    history: Sequence[tuple[str, str]],
    result: Answer,
    model: ChatModel,
    settings: Settings,
    watch: tracing.Question,
) -> Generator[Event, None, str]:
    """Yield how a follow-up is searched; return the query. The small model
    cannot rewrite (it answers instead, or drops the subject), so with
    RAG_FOLLOWUP=join the previous question's words are joined to it, by
    rule; a model rewrite that lost the question's meaning falls back to the
    same rule."""
    stage = "follow-up" if settings.followup == "join" else "rewrite"
    if settings.followup == "join":
        with _timed(result, stage, watch):
            query = followup.joined(question, history)
    else:
        with _timed(result, stage, watch):
            query, result.usage["rewrite"] = condense(history, question, model, settings)
        if not followup.plausible_rewrite(question, query, history):
            query = followup.joined(question, history)
    result.search_query = query
    yield Rewritten(query, result.timings[stage])
    return query


def _screen(query: str, result: Answer, model: ChatModel, settings: Settings) -> None:
    """The screen's verdicts and what is kept. It judges against the
    standalone query: "and its rings?" alone says nothing about which
    passage matters."""
    if settings.screen and result.hits:
        result.verdicts, result.usage["screen"] = screen(query, result.hits, model, settings)
    else:
        result.verdicts = [
            Verdict(hit=h, relevant=True, reason=SCREEN_OFF, score=0.0) for h in result.hits
        ]
    result.kept = keep(result.verdicts, settings)


def _not_found(result: Answer, why: str = "") -> Answer:
    result.found = False
    result.text = prompts.text("not_found.txt")
    if why:
        result.notes.append(why)
    return result


def _cite(result: Answer, done: Read, settings: Settings) -> Answer:
    """The finished answer: the read's text with its citations resolved and
    checked, and notes on anything the user should know."""
    completion: Completion | None = done.completion
    if completion is None:  # extractive, and nothing close enough to quote
        return _not_found(
            result,
            "Nothing in the passages found answers the question closely enough to quote "
            f"(RAG_EXTRACT_MIN_SUPPORT {settings.extract_min_support}).",
        )
    if completion.first_token:
        result.timings["read_first_token"] = completion.first_token - completion.started
    result.usage["read"] = completion.usage
    result.reasoning = completion.reasoning
    text = require_content(completion, "answer")
    if completion.finish_reason == "length":
        result.notes.append(
            f"The answer was cut off at the token limit ({read_token_limit(settings)}, "
            "RAG_READ_MAX_TOKENS)."
        )
    elif completion.finish_reason is None:
        result.notes.append(
            "The LLM server ended the answer without saying it was finished; it may be incomplete."
        )
    result.text, result.citations, result.dropped_citations = citations.resolve_citations(
        text, done.ordered
    )
    cited_hits = [c.hit for c in result.citations]  # [n] is now cited_hits[n - 1]
    result.notes.extend(u.note() for u in citations.unsupported(result.text, cited_hits))
    result.kept = done.ordered
    return result


__all__ = [
    "Delta", "Event", "Finished", "Notice", "Read", "Retrieved", "Rewritten", "Screened",
    "answer", "check_question", "stream_answer",
]  # fmt: skip
