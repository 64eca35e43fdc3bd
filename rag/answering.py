"""Two-stage answering: a fast, concurrent screen of the retrieved passages,
then a deep read of the passages it kept, streamed with citations.

    (rewrite)   a follow-up becomes a standalone query: condense(...)
    retrieve -> screen(...)  reasoning_effort=low,  one request per passage
                             (or small group), all in flight at once
                             (rag/screening.py)
             -> read(...)    reasoning_effort=high, kept passages only; in the
                             extractive style it may only quote them
                             (rag/extractive.py)

`stream_answer` yields events as each stage finishes; `answer` is the same
path, consumed to the end.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from rag import citations, extractive, followup, prompts
from rag.embedding import Embedder
from rag.errors import LLMError, PromptTooLong, QuestionTooLong
from rag.knowledge_base import KnowledgeBase
from rag.llm import ChatModel, Completion, Delta, Request, complete, require_content
from rag.screening import keep, screen
from rag.settings import Effort, Settings
from rag.types import Answer, Citation, Hit, Usage, Verdict

# Characters per token when estimating prompt size before sending it; low on
# purpose (over-estimating only drops a passage a little early).
CHARS_PER_TOKEN = 3.0


# -- events ------------------------------------------------------------------------


@dataclass(frozen=True)
class Rewritten:
    """A follow-up turned into the standalone query that was searched
    (`kept` False: the rewrite lost the question's meaning, so the question
    was searched as asked)."""

    query: str
    seconds: float
    kept: bool = True


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
class Finished:
    answer: Answer


Event = Rewritten | Retrieved | Screened | Delta | Notice | Finished


# -- stage 2: read ------------------------------------------------------------------


def lost_in_the_middle(strongest_first: Sequence[Hit]) -> list[Hit]:
    """Order passages so the strongest sit at the start and the end of the
    context, where models read most reliably (Liu et al., 2023):
    1 2 3 4 5 -> 1 3 5 4 2."""
    front = list(strongest_first[0::2])
    back = list(strongest_first[1::2])
    return front + back[::-1]


def fit_to_budget(
    question: str,
    strongest_first: Sequence[Hit],
    budget_tokens: int,
    conversation: Sequence[tuple[str, str]] = (),
) -> list[Hit]:
    """Drop the weakest passages until the prompt's estimated size fits."""
    kept = list(strongest_first)
    while kept:
        messages = prompts.read_messages(question, lost_in_the_middle(kept), conversation)
        if sum(len(m["content"]) for m in messages) / CHARS_PER_TOKEN <= budget_tokens:
            break
        kept.pop()
    return kept


_LOWER_EFFORT: dict[str, Effort] = {"high": "medium", "medium": "low"}


def read(
    question: str,
    strongest_first: Sequence[Hit],
    model: ChatModel,
    settings: Settings,
    embedder: Embedder | None = None,
    conversation: Sequence[tuple[str, str]] = (),
) -> Iterator[Delta | Notice | tuple[Completion | None, list[Hit]]]:
    """Stream the deep read; finally yield the completion and the passages
    (in prompt order) that its citation numbers refer to. In the extractive
    style (which needs the `embedder`) the completion is None when no
    sentence is close enough to the question to quote.

    Handled on the way: a prompt the server finds too long loses its weakest
    passage and is sent again; reasoning that uses up every token (content
    null) is retried at the next lower effort.
    """
    answer_tokens = read_token_limit(settings)
    budget = settings.llm_context_tokens - answer_tokens - 64
    kept = fit_to_budget(question, strongest_first, budget, conversation)
    effort: Effort = settings.read_effort
    while kept:
        ordered = lost_in_the_middle(kept)
        extra = {}
        if settings.answer_style == "extractive":
            if embedder is None:
                raise ValueError("an extractive answer needs the embedder")
            chosen = extractive.candidates(
                question,
                ordered,
                embedder,
                settings.extract_sentences,
                settings.extract_min_similarity,
            )
            if not chosen:
                yield None, ordered
                return
            extra = extractive.request_extra(chosen)
        request = Request(
            messages=prompts.read_messages(question, ordered, conversation),
            effort=effort,
            max_tokens=answer_tokens,
            extra=extra,
        )
        completion: Completion | None = None
        try:
            for event in model.stream(request):
                if isinstance(event, Completion):
                    completion = event
                else:
                    yield event
        except PromptTooLong:
            if len(kept) == 1:
                raise
            kept.pop()
            yield Notice("The prompt was too long for the model; dropped the weakest passage.")
            continue
        assert completion is not None
        if completion.content is None and effort in _LOWER_EFFORT:
            effort = _LOWER_EFFORT[effort]
            yield Notice(
                f"Reasoning used all {answer_tokens} tokens without an answer; "
                f"trying again with reasoning effort {effort}."
            )
            continue
        yield completion, ordered
        return
    raise PromptTooLong(
        f"Not even one passage fits the model's context window ({settings.llm_context_tokens} "
        f"tokens, RAG_LLM_CONTEXT_TOKENS, of which {answer_tokens} are kept for the answer)."
    )


def question_limit(settings: Settings) -> int:
    """Estimated tokens a question may take: the deep read's prompt budget
    less its fixed text and room for one passage of the chunk size."""
    budget = settings.llm_context_tokens - read_token_limit(settings) - 64
    fixed = sum(len(m["content"]) for m in prompts.read_messages("", [])) / CHARS_PER_TOKEN
    return max(0, int(budget - fixed - settings.chunk_tokens))


def check_question(question: str, settings: Settings) -> None:
    """Raise QuestionTooLong before any work when `question` cannot fit."""
    tokens, limit = math.ceil(len(question) / CHARS_PER_TOKEN), question_limit(settings)
    if tokens > limit:
        raise QuestionTooLong(
            f"Your question is too long for this model ({tokens} tokens, at most {limit}); "
            "please shorten it."
        )


def read_token_limit(settings: Settings) -> int:
    """Tokens the deep read may generate: RAG_READ_MAX_TOKENS, but never
    more than half the context window, so that a small model (2,048 tokens
    on CPU) still gets passages to read instead of an error."""
    return max(64, min(settings.read_max_tokens, settings.llm_context_tokens // 2))


_CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


def resolve_citations(text: str, ordered: Sequence[Hit]) -> tuple[str, list[Citation], int]:
    """Map [n] markers to passages, renumbered 1, 2, 3... in order of first
    use in the answer (a reader never sees [1] and [3] without [2]).
    Markers that match no passage are removed from the text and counted, so
    a reader never follows a dead reference. (Whether passage n could
    support its sentence: `citations.unsupported`.)"""
    cited: dict[int, Citation] = {}  # prompt number -> citation with its new number
    dropped = 0

    def fix(match: re.Match[str]) -> str:
        nonlocal dropped
        good = []
        for part in match.group(1).split(","):
            n = int(part)
            if 1 <= n <= len(ordered):
                cited.setdefault(n, Citation(len(cited) + 1, ordered[n - 1]))
                good.append(cited[n].n)
            else:
                dropped += 1
        return "".join(f"[{n}]" for n in good)

    cleaned = _CITATION.sub(fix, text)
    return cleaned, list(cited.values()), dropped


# -- the whole question -------------------------------------------------------------


def stream_answer(
    question: str,
    kb: KnowledgeBase,
    model: ChatModel,
    settings: Settings,
    history: Sequence[tuple[str, str]] = (),
) -> Iterator[Event]:
    """Rewrite (follow-ups only), retrieve, screen, read; yield each stage's
    result as it is ready. `history` holds the conversation's earlier
    (role, text) turns: with it, a question that refers to them is first
    turned into a standalone query (`rag.followup`), which is searched,
    screened against and answered; the deep read also sees the end of the
    conversation. A question too long to fit raises QuestionTooLong first."""
    check_question(question, settings)
    result = Answer(question=question, text="")
    query = question
    if history and followup.needs_context(question):
        started = time.perf_counter()
        query, result.usage["rewrite"] = condense(history, question, model, settings)
        kept = followup.plausible_rewrite(question, query, history)
        query = query if kept else question
        result.timings["rewrite"] = time.perf_counter() - started
        result.search_query = query
        yield Rewritten(query, result.timings["rewrite"], kept)
        if not kept:
            note = "The rewrite of the follow-up lost its meaning; searched for it as asked."
            result.notes.append(note)
            yield Notice(note)
    started = time.perf_counter()
    hits = kb.search(query, k=settings.screen_k, mode=settings.search_mode)
    result.hits = hits
    result.timings["retrieve"] = time.perf_counter() - started
    yield Retrieved(hits, result.timings["retrieve"])

    started = time.perf_counter()
    if settings.screen and hits:
        # The screen judges against the standalone query: "and its rings?"
        # alone says nothing about which passage matters.
        verdicts, usage = screen(query, hits, model, settings)
        result.usage["screen"] = usage
    else:
        verdicts = [Verdict(hit=h, relevant=True, reason="screen off", score=0.0) for h in hits]
    result.verdicts = verdicts
    result.kept = keep(verdicts, settings)
    result.timings["screen"] = time.perf_counter() - started
    yield Screened(
        verdicts, result.kept, result.timings["screen"], result.usage.get("screen", Usage())
    )

    started = time.perf_counter()
    if not result.kept:
        result.found = False
        result.text = prompts.text("not_found.txt")
        result.timings["read"] = 0.0
        yield Finished(result)
        return
    completion: Completion | None = None
    ordered: list[Hit] = []
    embedder = kb.embedder if settings.answer_style == "extractive" else None
    for event in read(query, result.kept, model, settings, embedder, history):
        if isinstance(event, tuple):
            completion, ordered = event
        else:
            if isinstance(event, Notice):
                result.notes.append(event.text)
            yield event
    result.timings["read"] = time.perf_counter() - started
    if completion is None:  # extractive, and nothing close enough to quote
        result.found = False
        result.text = prompts.text("not_found.txt")
        result.notes.append(
            "No sentence of the kept passages is close enough to the question to quote "
            f"(RAG_EXTRACT_MIN_SIMILARITY {settings.extract_min_similarity})."
        )
        yield Finished(result)
        return
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
    result.text, result.citations, result.dropped_citations = resolve_citations(text, ordered)
    cited_hits = [c.hit for c in result.citations]  # [n] is now cited_hits[n - 1]
    result.notes.extend(u.note() for u in citations.unsupported(result.text, cited_hits))
    result.kept = ordered
    yield Finished(result)


def answer(
    question: str,
    kb: KnowledgeBase,
    model: ChatModel,
    settings: Settings,
    history: Sequence[tuple[str, str]] = (),
) -> Answer:
    """`stream_answer`, run to the end."""
    for event in stream_answer(question, kb, model, settings, history):
        if isinstance(event, Finished):
            return event.answer
    raise LLMError("answering ended without a result")


def condense(
    history: Sequence[tuple[str, str]], question: str, model: ChatModel, settings: Settings
) -> tuple[str, Usage]:
    """Turn a follow-up ("and its rings?") into a standalone search query;
    returns it with the tokens the rewrite cost."""
    if not history:
        return question, Usage()
    request = Request(
        messages=prompts.condense_messages(history[-6:], question),
        effort="low",
        max_tokens=settings.screen_max_tokens,
    )
    completion = complete(model, request)
    rewritten = require_content(completion, "question rewrite").strip()
    return (rewritten.splitlines()[0].strip() if rewritten else question), completion.usage


def answer_to_dict(result: Answer) -> dict[str, object]:
    """The JSON shape of `rag ask --json`."""
    usage = {stage: u.to_dict() for stage, u in result.usage.items()}
    usage["total"] = sum(result.usage.values(), Usage()).to_dict()
    return {
        "question": result.question,
        "search_query": result.search_query or result.question,
        "answer": result.text,
        "found": result.found,
        "citations": [c.to_dict() for c in result.citations],
        "dropped_citations": result.dropped_citations,
        "verdicts": [
            {
                "chunk_id": v.hit.chunk_id,
                "source": v.hit.source,
                "page": v.hit.page,
                "relevant": v.relevant,
                "score": v.score,
                "reason": v.reason,
                "valid": v.valid,
                "error": v.error,
            }
            for v in result.verdicts
        ],
        "timings": {k: round(v, 4) for k, v in result.timings.items()},
        "notes": result.notes,
        "usage": usage,
        "reasoning": result.reasoning,
    }


__all__ = [
    "Event", "Finished", "Notice", "Retrieved", "Rewritten", "Screened", "answer",
    "answer_to_dict", "check_question", "condense", "keep", "lost_in_the_middle", "read",
    "resolve_citations", "screen", "stream_answer",
]  # fmt: skip
