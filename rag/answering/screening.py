"""Stage 1, the fast screen: every retrieved passage judged at reasoning
effort low, all requests in flight at once, each verdict schema-valid JSON
(which passages matter, with a score and a reason). A verdict that cannot
be had leaves its passage to retrieval's judgement, and `keep` blends
each verdict with the retrieval score, so that a small model's unsure or
failed screen never drops what retrieval ranked far ahead.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from pydantic import BaseModel, Field, ValidationError

from rag.answering import prompts
from rag.errors import LLMError, LLMUnreachable
from rag.llm import ChatModel, Completion, Request, complete, require_content
from rag.settings import Settings
from rag.types import Hit, Usage, Verdict

# The score shown for a verdict we could not parse; `keep` ignores it (the
# passage is judged by retrieval alone).
FAIL_OPEN_SCORE = 1.5
# The reason on every verdict when the screen does not run (RAG_SCREEN=false).
SCREEN_OFF = "screen off"


def summary(verdicts: Sequence[Verdict], kept: Sequence[Hit]) -> str:
    """What the screen did, in a few words: "the screen kept 3 of 6", or,
    when it did not run, "screen off: top 3 of 6" (nothing was judged, so
    nothing is said to be kept)."""
    if verdicts and all(v.reason == SCREEN_OFF for v in verdicts):
        return f"screen off: top {len(kept)} of {len(verdicts)}"
    return f"the screen kept {len(kept)} of {len(verdicts)}"


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
        reason="no usable verdict: retrieval decides",
        score=FAIL_OPEN_SCORE,
        valid=False,
        error=error,
        started=completion.started if completion else 0.0,
        finished=completion.finished if completion else 0.0,
    )


def keep(verdicts: Sequence[Verdict], settings: Settings) -> list[Hit]:
    """The passages kept for the deep read, strongest first.

    The verdict is one signal, not a veto: each passage's verdict score (0-3,
    as a fraction) and its retrieval score (as a fraction of the best one
    retrieved) are blended with RAG_SCREEN_WEIGHT, and passages reaching
    RAG_KEEP_MIN are kept, at most RAG_KEEP_MAX. A passage without a usable
    verdict is judged by retrieval alone. A sure "not relevant" (score 0)
    drops a passage unless it is retrieval's first and FAR_AHEAD of the
    second: so when the screen finds nothing relevant among close candidates
    the answer is "not in the knowledge base", while a small model's wrong
    verdict cannot drop the passage retrieval clearly preferred. With the
    default weight (0.5) and bar (0.5), an unsure verdict (1 of 3) drops none
    within 2/3 of the best score. With the screen off, retrieval's first
    RAG_KEEP_MAX are kept.
    """
    if not settings.screen:
        return [v.hit for v in verdicts[: settings.keep_max]]
    scores = [v.hit.score for v in verdicts]
    retrieval = _relative_scores(scores)
    weight = settings.screen_weight
    blended = []
    for rank, (verdict, share) in enumerate(zip(verdicts, retrieval, strict=True)):
        if verdict.valid and verdict.score == 0 and not (rank == 0 and _far_ahead(scores)):
            continue
        judged = verdict.score / 3 if verdict.valid else share
        blended.append((weight * judged + (1 - weight) * share, verdict.hit))
    # sorted() is stable: retrieval order breaks ties
    ranked = sorted((pair for pair in blended if pair[0] >= settings.keep_min), key=lambda p: -p[0])
    return [hit for _, hit in ranked[: settings.keep_max]]


# Retrieval's first passage is "far ahead" when its score is at least this
# many times the second's (the Larch Creek case: 1.00 against 0.26).
FAR_AHEAD = 2.0


def _far_ahead(scores: Sequence[float]) -> bool:
    if len(scores) < 2:
        return bool(scores) and scores[0] > 0
    return scores[0] > 0 and scores[0] >= FAR_AHEAD * max(scores[1], 0.0)


def _relative_scores(scores: Sequence[float]) -> list[float]:
    """Each retrieval score as a fraction of the best. Fused scores are
    already 0-1 (convex fusion normalises each side); where the best is not
    positive the scores say nothing, and every passage counts as the best."""
    best = max(scores, default=0.0)
    if best <= 0:
        return [1.0] * len(scores)
    return [max(score, 0.0) / best for score in scores]
