"""Stage 0, the rewrite: a follow-up ("and its rings?") becomes a standalone
question, which is then searched, screened against and answered."""

from __future__ import annotations

from collections.abc import Sequence

from rag.answering import prompts
from rag.llm import ChatModel, Request, complete, require_content
from rag.settings import Settings
from rag.types import Usage

# The rewrite sees the last turns of the conversation only.
HISTORY_TURNS = 6


def condense(
    history: Sequence[tuple[str, str]], question: str, model: ChatModel, settings: Settings
) -> tuple[str, Usage]:
    """The standalone form of `question` given the conversation's earlier
    (role, text) turns, with the tokens the rewrite cost. No conversation,
    no request."""
    if not history:
        return question, Usage()
    request = Request(
        messages=prompts.condense_messages(history[-HISTORY_TURNS:], question),
        effort="low",
        max_tokens=settings.rewrite_max_tokens,
    )
    completion = complete(model, request)
    rewritten = require_content(completion, "question rewrite").strip()
    return (rewritten.splitlines()[0].strip() if rewritten else question), completion.usage
