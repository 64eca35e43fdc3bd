"""The chat seam: `ChatModel.stream(messages, ...)` yields the reasoning and
answer deltas of one completion, then the `Completion` itself.

`OpenAIChat` talks to any OpenAI-compatible server (vLLM in production).
It passes `reasoning_effort` as the request field (vLLM writes it into the
gpt-oss harmony system message; a "Reasoning: low" line in our own prompt
would not set it) and keeps the model's reasoning (`reasoning`, or
`reasoning_content` on older vLLM) apart from its answer (`content`).
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from rag.errors import LLMError, LLMIncomplete, LLMTimeout, LLMUnreachable, PromptTooLong
from rag.settings import Effort, Settings
from rag.types import Usage

Message = dict[str, str]


@dataclass(frozen=True)
class Delta:
    channel: Literal["reasoning", "content"]
    text: str


@dataclass
class Completion:
    content: str | None
    reasoning: str
    finish_reason: str | None
    usage: Usage
    started: float  # time.time() when the request was sent
    finished: float
    first_token: float | None = None  # time.time() of the first content delta


@dataclass(frozen=True)
class Request:
    messages: Sequence[Message]
    effort: Effort
    max_tokens: int
    response_format: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. vllm_xargs in tests


class ChatModel(Protocol):
    def stream(self, request: Request) -> Iterator[Delta | Completion]:
        """Yield deltas as they arrive, then exactly one `Completion`."""
        ...


def complete(model: ChatModel, request: Request) -> Completion:
    """Run a request to the end and return its `Completion`."""
    for event in model.stream(request):
        if isinstance(event, Completion):
            return event
    raise LLMError("the LLM stream ended without a completion")


def require_content(completion: Completion, what: str) -> str:
    """The answer text, or `LLMIncomplete` when the model produced none
    (gpt-oss can spend `max_tokens` on reasoning and leave `content` null).
    A non-empty answer cut off by the limit is returned; callers flag it."""
    if completion.content is None:
        raise LLMIncomplete(
            f"The model stopped before finishing the {what} "
            f"(finish_reason={completion.finish_reason!r}, "
            f"{completion.usage.completion_tokens} tokens). Raise the token limit or lower "
            "the reasoning effort."
        )
    return completion.content


class OpenAIChat:
    def __init__(self, settings: Settings) -> None:
        import openai

        self.url = display_url(settings.llm_url)  # for messages: no credentials
        self.model = settings.llm_model
        self.temperature = settings.temperature
        self._retries = settings.llm_retries
        self._client = openai.OpenAI(
            base_url=settings.llm_url,
            api_key=settings.llm_api_key.get_secret_value(),
            timeout=openai.Timeout(settings.llm_timeout, connect=settings.llm_connect_timeout),
            max_retries=0,  # retries are ours, so each one is visible and bounded
        )

    def stream(self, request: Request) -> Iterator[Delta | Completion]:
        import openai

        # What the caller has already been given, per channel: a retry after a
        # dropped connection replays the answer past it (see `_after_shown`).
        shown: dict[str, str] = {"reasoning": "", "content": ""}
        for attempt in range(self._retries + 1):
            try:
                for event in _after_shown(self._stream_once(request), shown, self.url):
                    if isinstance(event, Delta):
                        shown[event.channel] += event.text
                    yield event
                return
            except openai.APITimeoutError:
                if any(shown.values()) or attempt == self._retries:
                    raise LLMTimeout(
                        f"The LLM server at {self.url} did not answer in time "
                        f"(RAG_LLM_TIMEOUT); tried {attempt + 1} time(s)."
                    ) from None
            except openai.APIConnectionError:
                # Behind vllm-router a replica that dies mid-answer drops the
                # connection; the retry lands on another replica.
                if any(shown.values()) and attempt == self._retries:
                    raise LLMError(
                        f"The LLM server at {self.url} dropped the connection while answering."
                    ) from None
                if attempt == self._retries:
                    raise LLMUnreachable(
                        f"Cannot reach the LLM server at {self.url}. Start it with `make llm`, "
                        "or point RAG_LLM_URL at a running OpenAI-compatible server."
                    ) from None
            except openai.BadRequestError as exc:
                raise _bad_request(exc) from None
            except openai.NotFoundError:
                raise LLMError(
                    f"The server at {self.url} does not serve a model named {self.model!r} "
                    "(RAG_LLM_MODEL)."
                ) from None
            except openai.APIStatusError as exc:
                if any(shown.values()) or attempt == self._retries or exc.status_code < 500:
                    raise LLMError(
                        f"The LLM server at {self.url} failed: HTTP {exc.status_code} "
                        f"{_message(exc)}"
                    ) from None
            except openai.APIError as exc:  # an error event in the middle of a stream
                if any(shown.values()) or attempt == self._retries:
                    raise LLMError(
                        f"The LLM server at {self.url} failed while answering: {_message(exc)}"
                    ) from None
            except (ValueError, TypeError, AttributeError) as exc:
                # Undecodable JSON, or JSON that is not a chat-completion chunk.
                raise LLMError(
                    f"The LLM server at {self.url} sent a malformed response "
                    f"({exc.__class__.__name__}: {str(exc)[:200]}); is it an OpenAI-compatible "
                    "server?"
                ) from None
            time.sleep(0.5 * (attempt + 1))

    def _stream_once(self, request: Request) -> Iterator[Delta | Completion]:
        started = time.time()
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": list(request.messages),
            "reasoning_effort": request.effort,
            "max_completion_tokens": request.max_tokens,
            "temperature": self.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.response_format is not None:
            kwargs["response_format"] = request.response_format
        if request.extra:
            kwargs["extra_body"] = request.extra
        content: list[str] = []
        reasoning: list[str] = []
        finish_reason = None
        usage = Usage()
        first_token = None
        received = 0
        for chunk in self._client.chat.completions.create(**kwargs):
            received += 1
            if chunk.usage is not None:
                usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
            for choice in chunk.choices:
                delta = choice.delta
                thought = getattr(delta, "reasoning", None) or getattr(
                    delta, "reasoning_content", None
                )
                if thought:
                    reasoning.append(thought)
                    yield Delta("reasoning", thought)
                if delta.content:
                    first_token = first_token or time.time()
                    content.append(delta.content)
                    yield Delta("content", delta.content)
                if choice.finish_reason:
                    finish_reason = choice.finish_reason
        if not received:  # e.g. a proxy's HTML page with status 200
            raise LLMError(
                f"The server at {self.url} answered without a single chat-completion event; "
                "is RAG_LLM_URL an OpenAI-compatible server?"
            )
        # Streams carry empty content deltas even when the model never got to
        # its answer; no text at all is the streaming form of `content: null`.
        yield Completion(
            content="".join(content) or None,
            reasoning="".join(reasoning),
            finish_reason=finish_reason,
            usage=usage,
            started=started,
            finished=time.time(),
            first_token=first_token,
        )


def _after_shown(
    events: Iterator[Delta | Completion], shown: Mapping[str, str], url: str
) -> Iterator[Delta | Completion]:
    """A retried stream, less the text the caller was already given.

    The caller never sees text twice: the retry must first say again what
    was shown (at temperature 0 every replica does), and only what follows
    is passed on. A retry that says something else is an error, not a
    second, different answer glued to the first.
    """
    pending = dict(shown)
    for event in events:
        if isinstance(event, Delta) and pending[event.channel]:
            left = pending[event.channel]
            overlap = min(len(left), len(event.text))
            if event.text[:overlap] != left[:overlap]:
                raise LLMError(
                    f"The LLM server at {url} dropped the connection while answering, "
                    "and its retry answered differently from the text already shown."
                )
            pending[event.channel] = left[overlap:]
            if event.text[overlap:]:
                yield Delta(event.channel, event.text[overlap:])
            continue
        if isinstance(event, Completion) and any(pending.values()):
            raise LLMError(
                f"The LLM server at {url} dropped the connection while answering, "
                "and its retry ended before the text already shown."
            )
        yield event


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        return str(body.get("message") or body.get("error") or body)
    return str(exc)


def _bad_request(exc: Any) -> LLMError:
    text = _message(exc)
    lowered = text.lower()
    if (
        "context length" in lowered
        or "too long" in lowered
        or "max_model_len" in lowered
        or ("maximum" in lowered and "token" in lowered)
    ):
        return PromptTooLong(f"The prompt does not fit the model's context: {text}")
    return LLMError(f"The LLM server rejected the request: {text}")


def display_url(url: str) -> str:
    """`url` as it may be shown to people: without user, password or query
    (where tokens hide), e.g. for `https://u:p@host/v1?key=k`, `https://host/v1`."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def served_models(settings: Settings) -> dict[str, int | None]:
    """The models the server at RAG_LLM_URL serves, in its order, each with
    its context length (vLLM's `max_model_len`; None where the server does not
    say). Empty when the server cannot be reached or answers with an error."""
    import openai

    client = openai.OpenAI(
        base_url=settings.llm_url,
        api_key=settings.llm_api_key.get_secret_value(),
        timeout=settings.llm_connect_timeout,
        max_retries=0,
    )
    try:
        cards = client.models.list().data
    except (openai.OpenAIError, ValueError, TypeError):
        return {}
    served: dict[str, int | None] = {}
    for card in cards:
        length = getattr(card, "max_model_len", None)
        served[str(card.id)] = length if isinstance(length, int) and length > 0 else None
    return served


def check_server(settings: Settings) -> str | None:
    """None if the server answers and serves the configured model, else a
    sentence saying what is wrong (for a banner, not an exception)."""
    import openai

    client = openai.OpenAI(
        base_url=settings.llm_url,
        api_key=settings.llm_api_key.get_secret_value(),
        timeout=3.0,
        max_retries=0,
    )
    url = display_url(settings.llm_url)
    try:
        served = [card.id for card in client.models.list().data]
    except openai.APIConnectionError:
        return f"The LLM server at {url} is not reachable."
    except openai.OpenAIError as exc:
        return f"The LLM server at {url} answered with an error: {exc}"
    if settings.llm_model not in served:
        return (
            f"The LLM server at {url} serves {', '.join(served) or 'no model'}, "
            f"not {settings.llm_model!r} (RAG_LLM_MODEL)."
        )
    return None
