"""One question's telemetry: its metrics (rag/telemetry.py) always, and an
OpenTelemetry trace when the standard OTEL_* variables ask for one.

A trace is a `question` span with one child per stage (`rewrite`,
`retrieve`, `screen`, `read`) and one `llm chat` span per LLM request as a
child of its stage. It is off unless OTEL_EXPORTER_OTLP_ENDPOINT,
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_TRACES_EXPORTER (otlp, console)
is set and OTEL_SDK_DISABLED is not true; off, the SDK is never imported.
The OTLP exporter (HTTP/protobuf) and the SDK read the other OTEL_*
variables themselves (headers, sampler, OTEL_SERVICE_NAME...).

Parents are passed explicitly rather than through OpenTelemetry's current
context: the stages run inside a generator that the API resumes on a
different worker thread each time, and the screen's requests run on a
thread pool of their own. Spans carry sizes and outcomes, never the
question's or the answer's text.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from rag import telemetry
from rag.llm import ChatModel, Completion, Delta, Request
from rag.types import Answer

_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")

_lock = threading.Lock()
_chosen: Any = None  # a TracerProvider given by `use`
_from_env: Any = None
_env_read = False


def enabled(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the OTEL_* variables in `env` ask for traces."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters == "none":
        return False
    return bool(exporters) or any(env.get(name, "").strip() for name in _ENDPOINTS)


def use(provider: Any) -> None:
    """Trace into `provider` (an SDK TracerProvider: an in-memory exporter in
    tests, a program's own provider); None: back to the environment's."""
    global _chosen
    with _lock:
        _chosen = provider


def tracer() -> Any:
    """The tracer of this process, or None when tracing is off."""
    global _from_env, _env_read
    with _lock:
        if _chosen is not None:
            return _chosen.get_tracer("kbqa")
        if not _env_read:
            _env_read = True
            _from_env = _environment_provider() if enabled() else None
        return _from_env.get_tracer("kbqa") if _from_env is not None else None


def _environment_provider() -> Any:
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "kbqa"}))
    provider = TracerProvider(resource=resource)  # flushed at exit
    names = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",")
    for name in {n.strip() for n in names} - {"none", ""}:
        if name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        else:  # otlp: OTLP over HTTP/protobuf, configured by OTEL_EXPORTER_OTLP_*
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


class Question:
    """Records one question as its stages run. `start`/`end` bracket a
    stage; `finish` or `fail` ends the question."""

    def __init__(self, question: str, knowledge_base: str) -> None:
        self._tracer = tracer()
        self._root: Any = None
        self._stage: Any = None
        self._done = False
        if self._tracer is not None:
            attributes: dict[str, str | int] = {"kbqa.question.chars": len(question)}
            if knowledge_base:
                attributes["kbqa.knowledge_base"] = knowledge_base
            self._root = self._tracer.start_span("question", attributes=attributes)

    def model(self, model: ChatModel) -> ChatModel:
        """`model`, with a span per request when tracing."""
        return model if self._root is None else _TracedModel(model, self)

    def start(self, stage: str) -> None:
        if self._root is not None:
            self._stage = self._tracer.start_span(stage, context=self._context(self._root))

    def end(self, stage: str, seconds: float, error: BaseException | None) -> None:
        label = telemetry.STAGES.get(stage, stage.replace("-", "_"))
        telemetry.metrics().stage_seconds.labels(label).observe(seconds)
        if self._stage is not None:
            _close(self._stage, error)
            self._stage = None

    def finish(self, answer: Answer) -> None:
        self._done = True
        telemetry.record_answer(answer)
        if self._root is not None:
            self._root.set_attribute("kbqa.outcome", "answered" if answer.found else "refused")
            self._root.set_attribute("kbqa.citations", len(answer.citations))
            _close(self._root, None)

    def fail(self, error: BaseException) -> None:
        """Unless finished: a caller that stops at the answer (`answer()`)
        closes the generator after it, which is no failure."""
        if self._done:
            return
        self._done = True
        telemetry.record_failure(error)
        if self._root is not None:
            abandoned = isinstance(error, GeneratorExit)
            self._root.set_attribute("kbqa.outcome", "abandoned" if abandoned else "error")
            _close(self._root, None if abandoned else error)

    def parent(self) -> Any:
        """The context a request's span hangs from: its stage, else the question."""
        return self._context(self._stage if self._stage is not None else self._root)

    @staticmethod
    def _context(span: Any) -> Any:
        from opentelemetry import trace

        return trace.set_span_in_context(span)


def _close(span: Any, error: BaseException | None) -> None:
    if error is not None and not isinstance(error, GeneratorExit):
        from opentelemetry.trace import Status, StatusCode

        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
    span.end()


class _TracedModel:
    """A `ChatModel` whose every request is an `llm chat` span under the
    question's current stage, with its tokens and finish reason."""

    def __init__(self, model: ChatModel, question: Question) -> None:
        self.inner, self.question = model, question

    def stream(self, request: Request) -> Iterator[Delta | Completion]:
        attributes = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": str(getattr(self.inner, "model", "")),
            "gen_ai.request.max_tokens": request.max_tokens,
            "kbqa.reasoning_effort": request.effort,
        }
        tracer = self.question._tracer
        span = tracer.start_span("llm chat", context=self.question.parent(), attributes=attributes)
        started, error = time.time(), None
        try:
            for event in self.inner.stream(request):
                if isinstance(event, Completion):
                    _describe(span, event, started)
                yield event
        except BaseException as exc:
            error = exc
            raise
        finally:
            _close(span, error)


def _describe(span: Any, completion: Completion, started: float) -> None:
    span.set_attribute("gen_ai.usage.input_tokens", completion.usage.prompt_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", completion.usage.completion_tokens)
    span.set_attribute("gen_ai.response.finish_reasons", [completion.finish_reason or ""])
    if completion.first_token:
        span.set_attribute("kbqa.first_token_seconds", completion.first_token - started)
