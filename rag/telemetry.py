"""The numbers an operator scrapes (Prometheus' format, prometheus-client):
one registry per process, holding every metric object, recorded into from
the few places that see the events once for all edges.

    answering (rag/answering/pipeline.py)    questions, each stage's seconds, tokens, refusals
    team/library.py               ingest reports of uploads and rebuilds
    api/health.py           HTTP requests by route and status, rate-limited
    open knowledge bases            cache hits and misses

`rag serve` shows the registry at GET /metrics; the Streamlit app on its own
port when RAG_APP_METRICS_PORT is set (`serve_metrics`). Traces are in
rag/tracing.py. No label carries a knowledge base's, user's or file's name:
a scrape tells how the service runs, not what it holds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sized
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

if TYPE_CHECKING:
    from rag.types import Answer

log = logging.getLogger("kbqa.telemetry")

# From a cached search to a long reasoning read on a busy GPU.
SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# The stages whose seconds `Answer.timings` holds, as the histogram names them.
STAGES = {
    "rewrite": "rewrite",
    "follow-up": "follow_up",  # RAG_FOLLOWUP=join: the question joined by rule
    "retrieve": "retrieve",
    "screen": "screen",
    "read": "read",
    "read_first_token": "first_token",
}


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    request_seconds: Histogram
    rate_limited: Counter
    questions: Counter
    question_errors: Counter
    stage_seconds: Histogram
    tokens: Counter
    refusals: Counter
    ingest_files: Counter
    ingest_chunks: Counter
    ingest_failures: Counter
    cache: Counter


def _build() -> Metrics:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)

    def counter(name: str, text: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(name, text, labels, namespace="kbqa", registry=registry)

    def histogram(name: str, text: str, labels: tuple[str, ...]) -> Histogram:
        return Histogram(name, text, labels, namespace="kbqa", registry=registry, buckets=SECONDS)

    return Metrics(
        registry=registry,
        requests=counter(
            "http_requests",
            "HTTP requests by route template, method and status",
            ("route", "method", "status"),
        ),
        request_seconds=histogram(
            "http_request_seconds", "HTTP request duration to the last byte", ("route",)
        ),
        rate_limited=counter(
            "rate_limited", "Requests refused by the per-key rate limit (429)", ("route",)
        ),
        questions=counter(
            "questions",
            "Questions by outcome: answered, refused (not in the knowledge "
            "base), error, abandoned (the client left)",
            ("outcome",),
        ),
        question_errors=counter("question_errors", "Failed questions by error", ("error",)),
        stage_seconds=histogram(
            "stage_seconds",
            "Seconds of each answering stage (first_token: from the "
            "read's request to its first answer token)",
            ("stage",),
        ),
        tokens=counter("llm_tokens", "LLM tokens by stage and kind", ("stage", "kind")),
        refusals=counter(
            "refusals",
            "Answers 'not in the knowledge base', by why: the screen kept no "
            "passage, or no sentence was close enough to quote",
            ("reason",),
        ),
        ingest_files=counter(
            "ingest_files",
            "Files of ingests started by uploads and rebuilds, by outcome",
            ("outcome",),
        ),
        ingest_chunks=counter(
            "ingest_chunks",
            "Chunks written by ingests: embedded, or copied unchanged",
            ("how",),
        ),
        ingest_failures=counter("ingest_failures", "Files an ingest could not read"),
        cache=counter("cache_lookups", "Lookups of the open knowledge bases", ("cache", "result")),
    )


_metrics: Metrics | None = None
_lock = threading.RLock()  # serve_metrics builds the metrics under it


def metrics() -> Metrics:
    """This process's metrics, created on first use."""
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = _build()
        return _metrics


def scrape() -> tuple[bytes, str]:
    """The registry in Prometheus' text format, and its content type."""
    return generate_latest(metrics().registry), CONTENT_TYPE_LATEST


def record_answer(answer: Answer) -> None:
    """A finished question: its outcome, first token and tokens (each
    stage's seconds are recorded as the stage ends: rag/tracing.py)."""
    m = metrics()
    if "read_first_token" in answer.timings:
        m.stage_seconds.labels("first_token").observe(answer.timings["read_first_token"])
    for stage, usage in answer.usage.items():
        m.tokens.labels(stage, "prompt").inc(usage.prompt_tokens)
        m.tokens.labels(stage, "completion").inc(usage.completion_tokens)
    if answer.found:
        m.questions.labels("answered").inc()
        return
    m.questions.labels("refused").inc()
    m.refusals.labels("nothing_kept" if not answer.kept else "nothing_to_quote").inc()


def record_failure(error: BaseException) -> None:
    """A question that ended without an answer: an error, or a client gone."""
    m = metrics()
    if isinstance(error, GeneratorExit):
        m.questions.labels("abandoned").inc()
        return
    m.questions.labels("error").inc()
    m.question_errors.labels(type(error).__name__).inc()


class IngestCounts(Protocol):
    """What `record_ingest` reads of an ingest's report (ingest's
    `IngestReport`; the library never imports ingestion)."""

    @property
    def added(self) -> int: ...
    @property
    def updated(self) -> int: ...
    @property
    def unchanged(self) -> int: ...
    @property
    def deleted(self) -> int: ...
    @property
    def failed(self) -> Sized: ...
    @property
    def skipped(self) -> Sized: ...
    @property
    def chunks_embedded(self) -> int: ...
    @property
    def chunks_copied(self) -> int: ...


def record_ingest(report: IngestCounts) -> None:
    m = metrics()
    for outcome in ("added", "updated", "unchanged", "deleted"):
        m.ingest_files.labels(outcome).inc(getattr(report, outcome))
    m.ingest_files.labels("failed").inc(len(report.failed))
    m.ingest_files.labels("skipped").inc(len(report.skipped))
    m.ingest_failures.inc(len(report.failed))
    m.ingest_chunks.labels("embedded").inc(report.chunks_embedded)
    m.ingest_chunks.labels("copied").inc(report.chunks_copied)


def record_cache(cache: str, hit: bool) -> None:
    metrics().cache.labels(cache, "hit" if hit else "miss").inc()


_served: dict[int, object] = {}


def serve_metrics(port: int) -> None:
    """Serve this process's metrics at http://127.0.0.1:`port`/metrics, once
    per process (the Streamlit app calls it on every run). Loopback only: the
    app's port has no login of its own; scrape it from the same host, or
    through a proxy that authenticates. 0: off."""
    if not port:
        return
    with _lock:
        if port in _served:
            return
        try:
            _served[port] = start_http_server(port, addr="127.0.0.1", registry=metrics().registry)
        except OSError as exc:
            _served[port] = None  # say it once, not on every rerun
            log.warning("metrics port %s (RAG_APP_METRICS_PORT) not served: %s", port, exc)
