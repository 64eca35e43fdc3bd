"""Stage 2, the deep read: the kept passages, fitted to the context window
and ordered so the strongest sit where models read best, streamed at
reasoning effort high; in the extractive style the model may only quote
them (rag/answering/extractive.py)."""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any

from rag.answering import extractive, prompts
from rag.answering.events import Notice, Read
from rag.embedding import Embedder
from rag.errors import PromptTooLong, QuestionTooLong
from rag.llm import ChatModel, Completion, Delta, Request
from rag.settings import Effort, Settings
from rag.types import Hit

# Characters per token when estimating prompt size before sending it; low on
# purpose (over-estimating only drops a passage a little early).
CHARS_PER_TOKEN = 3.0


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
    asked: str | None = None,
    known: Callable[[str], bool] | None = None,
) -> Iterator[Delta | Notice | Read]:
    """Stream the deep read of `question` (standalone) over the kept
    passages; end with a `Read` event: the completion and the passages (in
    prompt order) that its citation numbers refer to. In the extractive
    style (which needs the `embedder`, and `known`: whether the base holds a
    word) the completion is None when no quote has the support to answer.
    `conversation` holds the earlier (role, text) turns; `asked` the follow-up
    as the user wrote it, when `question` is it joined to them.

    Handled on the way: a prompt the server finds too long loses its weakest
    passage and is sent again; reasoning that uses up every token (content
    null) is retried at the next lower effort."""
    answer_tokens = read_token_limit(settings)
    budget = settings.llm_context_tokens - answer_tokens - 64
    kept = fit_to_budget(question, strongest_first, budget, conversation)
    effort: Effort = settings.read_effort
    while kept:
        ordered = lost_in_the_middle(kept)
        extra = _extractive_grammar(
            question, ordered, settings, embedder, conversation, asked, known
        )
        if extra is None:  # extractive, and nothing close enough to quote
            yield Read(None, ordered)
            return
        request = Request(
            messages=prompts.read_messages(question, ordered, conversation),
            effort=effort,
            max_tokens=answer_tokens,
            extra=extra,
        )
        try:
            completion = yield from _streamed(model, request)
        except PromptTooLong:
            if len(kept) == 1:
                raise
            kept.pop()
            yield Notice("The prompt was too long for the model; dropped the weakest passage.")
            continue
        if completion.content is None and effort in _LOWER_EFFORT:
            effort = _LOWER_EFFORT[effort]
            yield Notice(
                f"Reasoning used all {answer_tokens} tokens without an answer; "
                f"trying again with reasoning effort {effort}."
            )
            continue
        yield Read(completion, ordered)
        return
    raise PromptTooLong(
        f"Not even one passage fits the model's context window ({settings.llm_context_tokens} "
        f"tokens, RAG_LLM_CONTEXT_TOKENS, of which {answer_tokens} are kept for the answer)."
    )


def _streamed(model: ChatModel, request: Request) -> Generator[Delta, None, Completion]:
    """Pass the model's deltas on; return its one `Completion`."""
    completion: Completion | None = None
    for event in model.stream(request):
        if isinstance(event, Completion):
            completion = event
        else:
            yield event
    assert completion is not None
    return completion


def _extractive_grammar(
    question: str,
    ordered: Sequence[Hit],
    settings: Settings,
    embedder: Embedder | None,
    conversation: Sequence[tuple[str, str]] = (),
    asked: str | None = None,
    known: Callable[[str], bool] | None = None,
) -> dict[str, Any] | None:
    """The request's extra fields: in the extractive style, the grammar that
    lets the model only quote the closest sentences (None: none is close
    enough); nothing extra in the generative style."""
    if settings.answer_style != "extractive":
        return {}
    if embedder is None:
        raise ValueError("an extractive answer needs the embedder")
    said = [text for role, text in conversation if role == "assistant"]
    limit, floor = settings.extract_sentences, settings.extract_min_support
    chosen = extractive.candidates(question, ordered, embedder, limit, floor, said, asked, known)
    return extractive.request_extra(chosen) if chosen else None


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
