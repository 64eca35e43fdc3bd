"""`POST /v1/feedback`: thumbs up or down on an answer, naming the
completion's id. The chat route remembers each answer it gives under its
completion id, for the key's user (`remember`, `remembering`); a vote on an
id that user was not given is a 404, like one that never existed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from api.errors import ApiError
from api.service import Requester, Service, service
from rag.answering.events import Finished
from rag.types import Answer
from team.access import Access, Action
from team.appdb.feedback import MAX_COMMENT_CHARS, MAX_ID_CHARS, FeedbackMissing

router = APIRouter(tags=["feedback"])


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(max_length=MAX_ID_CHARS, description="the completion's `id`")
    vote: Literal["up", "down"]
    comment: str = Field("", max_length=MAX_COMMENT_CHARS, description="optional, plain text")


def remember(svc: Service, access: Access, kb: str, completion_id: str, result: Answer) -> None:
    svc.db.feedback.remember(access.user.name, kb, completion_id, result)


def remembering(
    events: Iterator[Any], svc: Service, access: Access, kb: str, completion_id: str
) -> Iterator[Any]:
    """The streamed events, remembering the finished answer as it passes."""
    for event in events:
        if isinstance(event, Finished):
            remember(svc, access, kb, completion_id, event.answer)
        yield event


@router.post("/v1/feedback", summary="Thumbs up or down on an answer, with a comment")
def feedback(body: FeedbackRequest, access: Requester, request: Request) -> dict[str, object]:
    svc = service(request)
    entry = svc.db.feedback.given(access.user.name, body.id)
    # Read access to its knowledge base is asked again: a revoked grant holds at once.
    if entry is None or not access.allows(Action.READ, entry.kb):
        raise ApiError(404, f"No answer {body.id!r} was given to this key's user.",
                       code="answer_not_found")  # fmt: skip
    try:
        entry = svc.db.feedback.vote(access.user.name, body.id, body.vote, body.comment)
    except FeedbackMissing as exc:
        raise ApiError(404, str(exc), code="answer_not_found") from exc
    return {"object": "feedback", "id": entry.answer_id, "vote": entry.vote, "model": entry.kb}
