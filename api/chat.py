"""`POST /v1/chat/completions`, OpenAI-compatible: `model` names the
knowledge base, the last message is the question and the earlier user and
assistant turns are the conversation a follow-up is rewritten against (as
in the app). The answer is the app's: `[n]` markers in `content`, the
passages they cite in `citations` on the message (on the last chunk when
streaming), the model's reasoning where vLLM puts it, and the verdicts,
timings and notes beside them. System messages are ignored: the prompts
are ours (rag/answering/prompts)."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from api.errors import ApiError, from_rag_error, sse_event
from api.feedback import remember, remembering
from api.knowledge import SearchFilters, scope
from api.service import Requester, public, service
from rag.answering.events import Finished, Screened
from rag.answering.pipeline import answer, check_question, stream_answer
from rag.errors import RagError
from rag.llm import Delta
from rag.settings import Settings
from rag.types import Answer
from team.sources import SourceNames

router = APIRouter(tags=["chat"])


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str = ""


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content if p.type == "text")
        return self.content or ""


class ChatRequest(BaseModel):
    """OpenAI's request; fields we do not use (temperature, n, tools...) are
    accepted and ignored: the knowledge base's settings decide."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(description="the knowledge base to answer from (GET /v1/models)")
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    filters: SearchFilters | None = Field(
        None, description="scope the search as POST /v1/search's `filters` (extra body)"
    )


def conversation(
    messages: Sequence[ChatMessage], settings: Settings
) -> tuple[str, list[tuple[str, str]]]:
    """The question (the last message, a user's) and the earlier user and
    assistant turns, each within its bound."""
    if len(messages) > settings.api_max_messages:
        raise ApiError(
            400, f"At most {settings.api_max_messages} messages per request "
            "(RAG_API_MAX_MESSAGES).", code="too_many_messages",
        )  # fmt: skip
    if messages[-1].role != "user":
        raise ApiError(400, "The last message must be the user's question.", code="invalid_request")
    # An earlier answer may be longer than a question: room for a cited answer.
    bounds = {"user": settings.max_question_chars, "assistant": 8 * settings.max_question_chars}
    turns: list[tuple[str, str]] = []
    for number, message in enumerate(messages, start=1):
        text = message.text()
        if message.role in bounds and len(text) > bounds[message.role]:
            raise ApiError(
                400, f"Message {number} ({message.role}) is longer than {bounds[message.role]} "
                "characters (RAG_MAX_QUESTION_CHARS).", code="message_too_long",
            )  # fmt: skip
        if message.role in bounds and text.strip():
            turns.append((message.role, text))
    question = messages[-1].text().strip()
    if not question:
        raise ApiError(400, "The question is empty.", code="invalid_request")
    check_question(question, settings)
    return question, turns[:-1]


@router.post("/v1/chat/completions", summary="Answer from a knowledge base, with citations")
def chat_completions(body: ChatRequest, access: Requester, request: Request) -> Any:
    svc = service(request)
    kb = svc.open(access, body.model)
    question, history = conversation(body.messages, svc.settings)
    filters = scope(body.filters, kb)
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if body.stream:
        events = stream_answer(question, kb, svc.chat, svc.settings, history, filters)
        events = remembering(events, svc, access, body.model, completion_id)  # POST /v1/feedback
        shown = SourceNames.of(kb)
        chunks = _chunks(events, completion_id, created, body.model, shown, svc.settings)
        return StreamingResponse(chunks, media_type="text/event-stream")
    result = answer(question, kb, svc.chat, svc.settings, history, filters)
    remember(svc, access, body.model, completion_id, result)  # for POST /v1/feedback
    message: dict[str, object] = {
        "role": "assistant",
        "content": result.text,
        "citations": _citations(result),
    }
    message |= _reasoning(result.reasoning)
    completion = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": body.model,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
        "usage": result.total_usage().to_dict(),
        **_details(result),
    }
    return public(completion, SourceNames.of(kb))


def _citations(result: Answer) -> list[dict[str, object]]:
    return [c.to_dict() for c in result.citations]


def _reasoning(text: str) -> dict[str, object]:
    # vLLM's field, under its current name and the one older clients read.
    return {"reasoning": text, "reasoning_content": text} if text else {}


def _details(result: Answer) -> dict[str, object]:
    """What the app shows beside an answer; extra fields OpenAI's clients keep."""
    full = result.to_dict()
    keys = ("found", "search_query", "verdicts", "timings", "notes", "dropped_citations")
    return {key: full[key] for key in keys} | {"usage_by_stage": full["usage"]}


def _chunks(
    events: Iterator[Any], completion_id: str, created: int, model: str, names: SourceNames,
    settings: Settings,
) -> Iterator[str]:  # fmt: skip
    """The answer as OpenAI's server-sent chunks: content deltas with their
    [n] markers already numbered as in the final answer, then a last chunk
    with the citations, verdicts, timings and usage, then `[DONE]`. An error
    after the first byte arrives as an error event (OpenAI's client raises it)."""

    def chunk(delta: dict[str, object], finish: str | None = None, **extra: object) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        data = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                "model": model, "choices": [choice], **extra}  # fmt: skip
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    markers, streamed, reading = CitationStream(), "", False
    try:
        for event in events:
            if isinstance(event, Screened):  # the passages the read's [n] may cite
                markers.passages = len(event.kept)
            elif isinstance(event, Delta) and event.channel == "reasoning":
                yield chunk(_reasoning(event.text))
            elif isinstance(event, Delta):
                reading = True
                text = markers.feed(event.text)
                streamed += text
                if text:
                    yield chunk({"content": text})
            elif isinstance(event, Finished):
                last = _last(chunk, event.answer, streamed, markers if reading else None, names)
                yield from last
    except RagError as exc:
        yield sse_event(from_rag_error(exc, settings))
        return
    yield "data: [DONE]\n\n"


def _last(
    chunk: Any, result: Answer, streamed: str, markers: CitationStream | None,
    names: SourceNames,
) -> Iterator[str]:  # fmt: skip
    """The rest of the answer (all of it when nothing was streamed: "not
    found"), then the chunk with the citations. Should the streamed text
    still differ from the answer (the read dropped a passage after the screen
    kept it), `final_content` carries the answer the citations refer to."""
    rest = markers.flush() if markers is not None else result.text
    if rest:
        yield chunk({"content": rest})
    extra = _details(result) | {"usage": result.total_usage().to_dict()}
    if streamed + rest != result.text:
        extra["final_content"] = result.text
    yield chunk({"citations": public(_citations(result), names)}, "stop", **public(extra, names))


_OPEN_MARKER = re.compile(r"\[[\d\s,]*$")  # what may still become a [n] or [n, m] marker
_MARKER = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


class CitationStream:
    """Renumbers the [n] markers of a streamed answer as they pass, exactly as
    `rag.answering.citations.resolve_citations` renumbers the finished one (in order of
    first use; numbers with no passage dropped), so the streamed text is the
    final answer's. A possible marker split across deltas is held back until
    it closes. Passage numbers are checked against `passages` when known;
    otherwise every number is kept."""

    def __init__(self, passages: int | None = None) -> None:
        self.passages = passages
        self.numbers: dict[int, int] = {}  # prompt number -> number in the answer
        self._held = ""

    def feed(self, text: str) -> str:
        text = self._held + text
        tail = _OPEN_MARKER.search(text)
        cut = tail.start() if tail else len(text)
        self._held = text[cut:]
        return _MARKER.sub(self._renumber, text[:cut])

    def flush(self) -> str:
        text, self._held = self._held, ""
        return _MARKER.sub(self._renumber, text)

    def _renumber(self, match: re.Match[str]) -> str:
        out = []
        for part in match.group(1).split(","):
            n = int(part)
            if self.passages is None or 1 <= n <= self.passages:
                out.append(self.numbers.setdefault(n, len(self.numbers) + 1))
        return "".join(f"[{n}]" for n in out)
