"""Stage 1, the fast screen: every retrieved passage judged at reasoning
effort low, all requests in flight at once, each verdict schema-valid JSON
(which passages matter, with a score and a reason). A verdict that cannot
be had keeps its passage: the screen never loses an answer by failing.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from pydantic import BaseModel, Field, ValidationError

from rag import prompts
from rag.errors import LLMError, LLMUnreachable
from rag.llm import ChatModel, Completion, Request, complete, require_content
from rag.settings import Settings
from rag.types import Hit, Usage, Verdict

# A verdict we could not parse keeps its passage (fail open) with a middling
# score, so that valid strong verdicts still rank first.
FAIL_OPEN_SCORE = 1.5


class _VerdictJSON(BaseModel):
    id: int
    score: int = Field(ge=0, le=3)
    relevant: bool
    reason: str = ""


class _ScreenJSON(BaseModel):
    verdicts: list[_VerdictJSON]


def screen(
    question: str,
    hits: Sequence[Hit],
    model: ChatModel,
    settings: Settings,
    concurrency: int | None = None,
) -> tuple[list[Verdict], Usage]:
    """Judge every hit, all requests in flight at once (or `concurrency` at
    a time). Returns one verdict per hit, in order."""
    size = settings.screen_group
    groups = [list(hits[i : i + size]) for i in range(0, len(hits), size)]
    if not groups:
        return [], Usage()
    with ThreadPoolExecutor(max_workers=concurrency or len(groups)) as pool:
        futures = [
            pool.submit(_screen_group, question, group, start * size + 1, model, settings)
            for start, group in enumerate(groups)
        ]
        results = [f.result() for f in futures]
    verdicts = [v for group_verdicts, _ in results for v in group_verdicts]
    usage = sum((u for _, u in results), Usage())
    return verdicts, usage


def _screen_group(
    question: str, group: list[Hit], first_id: int, model: ChatModel, settings: Settings
) -> tuple[list[Verdict], Usage]:
    request = Request(
        messages=prompts.screen_messages(question, group, first_id),
        effort=settings.screen_effort,
        max_tokens=settings.screen_max_tokens,
        response_format={
            "type": "json_schema",
            "json_schema": {
                "name": "verdicts",
                "schema": prompts.screen_schema(range(first_id, first_id + len(group))),
            },
        },
    )
    try:
        completion = complete(model, request)
    except LLMUnreachable:
        raise
    except LLMError as exc:  # timeout, incomplete, rejected: keep the passages
        return [_fail_open(hit, f"screen request failed: {exc}") for hit in group], Usage()
    try:
        parsed = _ScreenJSON.model_validate_json(require_content(completion, "screen verdict"))
    except (ValidationError, LLMError, ValueError) as exc:
        reason = f"unreadable verdict: {str(exc).splitlines()[0][:200]}"
        return [_fail_open(hit, reason, completion) for hit in group], completion.usage
    by_id = {v.id: v for v in parsed.verdicts}
    verdicts = []
    for offset, hit in enumerate(group):
        found = by_id.get(first_id + offset)
        if found is None:
            verdicts.append(_fail_open(hit, "no verdict for this passage", completion))
            continue
        verdicts.append(
            Verdict(
                hit=hit,
                relevant=found.relevant,
                reason=found.reason.strip(),
                score=float(found.score),
                started=completion.started,
                finished=completion.finished,
            )
        )
    return verdicts, completion.usage


def _fail_open(hit: Hit, error: str, completion: Completion | None = None) -> Verdict:
    return Verdict(
        hit=hit,
        relevant=True,
        reason="kept: the screen gave no usable verdict",
        score=FAIL_OPEN_SCORE,
        valid=False,
        error=error,
        started=completion.started if completion else 0.0,
        finished=completion.finished if completion else 0.0,
    )


def keep(verdicts: Sequence[Verdict], limit: int) -> list[Hit]:
    """The relevant passages, strongest first: verdict score, then retrieval order."""
    ranked = sorted(
        (v for v in verdicts if v.relevant),
        key=lambda v: -v.score,  # sorted() is stable: retrieval order breaks ties
    )
    return [v.hit for v in ranked[:limit]]
