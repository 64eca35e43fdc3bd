"""Monitoring (issue 34, part 3): `GET /metrics` of `rag serve` parsed with
prometheus-client's own parser after real requests, `/healthz` and
`/readyz`, the app's metrics port, and OpenTelemetry spans of a question
read from the SDK's in-memory exporter (and, with the standard OTEL_*
variables, sent by the real OTLP exporter to a listening collector)."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import httpx
import pytest
from api_server import QUESTION, Server, accounts, offline_settings, serve
from prometheus_client.parser import text_string_to_metric_families

from rag.settings import Settings
from serving.launch import free_port

ROOT = Path(__file__).resolve().parent.parent
# No passage sentence is this close to any question: the extractive read
# quotes nothing and asks no LLM, so a whole question runs offline.
# A support no quote reaches: every question is refused without asking an LLM.
OFFLINE_ANSWERS = {"answer_style": "extractive", "screen": False, "extract_min_support": 4.0}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, by name and labels, through prometheus-client's parser."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 if none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def scrape(server: Server, user: str = "ada") -> Samples:
    reply = server.http(user).get("/metrics")
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain")
    return parse(reply.text)


@pytest.fixture
def offline(tmp_path, docs_index) -> Iterator[Server]:
    """`rag serve` with no LLM behind it, answering offline (OFFLINE_ANSWERS)."""
    settings = offline_settings(tmp_path, docs_index).model_copy(
        update={**OFFLINE_ANSWERS, "api_burst": 3, "api_requests_per_minute": 1}
    )
    keys = accounts(settings)
    with serve(settings) as url:
        yield Server(url, settings, keys)


# -- /metrics ----------------------------------------------------------------------------


def test_a_scrape_counts_requests_by_route_and_status_and_the_rate_limited(offline):
    before = scrape(offline)
    search = {"knowledge_base": "default", "query": "broken files", "k": 3}
    with offline.http("rex") as rex:
        statuses = [rex.post("/v1/search", json=search).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    bad = httpx.get(offline.url + "/v1/models", headers={"Authorization": "Bearer kbqa-nope"})
    assert bad.status_code == 401
    after = scrape(offline)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    route = {"route": "/v1/search", "method": "POST"}
    assert delta("kbqa_http_requests_total", **route, status="200") == 3
    assert delta("kbqa_http_requests_total", **route, status="429") == 1
    assert delta("kbqa_http_requests_total", route="/v1/models", status="401") == 1
    assert delta("kbqa_rate_limited_total", route="/v1/search") == 1
    assert delta("kbqa_http_request_seconds_count", route="/v1/search") == 4
    # Opened once, then served from the open knowledge bases.
    assert delta("kbqa_cache_lookups_total", cache="knowledge_base", result="hit") >= 2


def test_metrics_need_a_key_like_every_other_route(offline):
    assert httpx.get(offline.url + "/metrics").status_code == 401
    assert offline.http("rex").get("/metrics").status_code == 200


def test_a_question_records_its_stages_and_the_refusal(offline):
    before = scrape(offline)
    reply = offline.http("rex").post(
        "/v1/chat/completions",
        json={"model": "default", "messages": [{"role": "user", "content": QUESTION}]},
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["found"] is False  # quoted nothing: no LLM was asked
    after = scrape(offline)
    for stage in ("retrieve", "screen", "read"):
        count = "kbqa_stage_seconds_count"
        assert value(after, count, stage=stage) - value(before, count, stage=stage) == 1, stage
        assert value(after, "kbqa_stage_seconds_sum", stage=stage) > 0 or stage != "retrieve"
    refused = ("kbqa_questions_total", {"outcome": "refused"})
    assert value(after, refused[0], **refused[1]) - value(before, refused[0], **refused[1]) == 1
    assert value(after, "kbqa_refusals_total") - value(before, "kbqa_refusals_total") == 1


def test_an_upload_counts_files_chunks_and_failures(offline):
    before = scrape(offline)
    files = [
        ("files", ("notes.md", b"# Notes\n\nThe ferry leaves at nine from pier four.\n")),
        ("files", ("broken.pdf", b"%PDF-1.7 this is not a PDF at all")),
    ]
    reply = offline.http("eve").post("/v1/knowledge-bases/default/documents", files=files)
    assert reply.status_code == 200, reply.text
    after = scrape(offline)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("kbqa_ingest_files_total", outcome="added") == 1
    assert delta("kbqa_ingest_failures_total") == 1
    assert delta("kbqa_ingest_chunks_total", how="embedded") >= 1


# -- /healthz and /readyz ------------------------------------------------------------------


def test_healthz_is_alive_and_readyz_names_the_dependency_that_is_down(offline):
    alive = httpx.get(offline.url + "/healthz")  # a load balancer sends no key
    assert alive.status_code == 200 and alive.json() == {"status": "ok"}
    ready = httpx.get(offline.url + "/readyz")
    assert ready.status_code == 503
    assert ready.json() == {
        "status": "not ready",
        "checks": {"app_db": "ok", "stores": "ok", "llm": "down"},
    }
    # By name only: no URL, port or folder of the server.
    port = offline.settings.llm_url.rsplit(":", 1)[1].split("/")[0]
    assert port not in ready.text and str(offline.settings.indexes_root) not in ready.text


@pytest.mark.llm
def test_readyz_is_ready_when_the_llm_answers(tmp_path, docs_index, llm_settings):
    settings = offline_settings(tmp_path, docs_index).model_copy(
        update={"llm_url": llm_settings.llm_url, "llm_model": llm_settings.llm_model}
    )
    with serve(settings) as url:
        ready = httpx.get(url + "/readyz", timeout=30)
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"app_db": "ok", "stores": "ok", "llm": "ok"}


# -- traces --------------------------------------------------------------------------------


@pytest.fixture
def spans():
    """Spans of the questions asked meanwhile, from the SDK's in-memory exporter."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from rag import tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    try:
        yield exporter
    finally:
        tracing.use(None)
        provider.shutdown()


def test_a_question_is_one_trace_with_a_span_per_stage(spans, docs_index):
    from rag.answering.pipeline import answer
    from rag.knowledge_base import KnowledgeBase
    from rag.llm import OpenAIChat

    settings = Settings(llm_url=f"http://127.0.0.1:{free_port()}/v1", **OFFLINE_ANSWERS)
    kb = KnowledgeBase.open(docs_index, settings=settings)
    try:
        result = answer(QUESTION, kb, OpenAIChat(settings), settings)
    finally:
        kb.close()
    assert result.found is False
    finished = {s.name: s for s in spans.get_finished_spans()}
    assert {"question", "retrieve", "screen", "read"} <= set(finished)
    root = finished["question"]
    assert root.parent is None and root.attributes["kbqa.outcome"] == "refused"
    for stage in ("retrieve", "screen", "read"):
        assert finished[stage].parent.span_id == root.context.span_id, stage
        assert finished[stage].context.trace_id == root.context.trace_id
    assert QUESTION not in str(root.attributes), "the question's text stays out of traces"


@pytest.mark.llm
def test_the_llm_calls_are_children_of_their_stage(spans, docs_index, llm_settings):
    from rag.answering.pipeline import answer
    from rag.knowledge_base import KnowledgeBase
    from rag.llm import OpenAIChat

    settings = llm_settings.model_copy(update={"screen": True, "screen_k": 2})
    kb = KnowledgeBase.open(docs_index, settings=settings)
    try:
        answer(QUESTION, kb, OpenAIChat(settings), settings)
    finally:
        kb.close()
    finished = spans.get_finished_spans()
    by_id = {s.context.span_id: s for s in finished}
    llm = [s for s in finished if s.name == "llm chat"]
    parents = [by_id[s.parent.span_id].name for s in llm]
    assert parents.count("screen") == 2 and "read" in parents, parents
    assert all(s.attributes["gen_ai.usage.output_tokens"] > 0 for s in llm)


class _Collector(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver: keeps the bodies POSTed to /v1/traces."""

    bodies: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.bodies.append(self.rfile.read(length))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _ask_offline(docs_index: Path, env: dict[str, str]) -> str:
    script = (
        "import sys\n"
        "from rag.answering.pipeline import answer\n"
        "from rag.knowledge_base import KnowledgeBase\n"
        "from rag.llm import OpenAIChat\n"
        "from rag.settings import Settings\n"
        f"s = Settings(llm_url='http://127.0.0.1:{free_port()}/v1', **{OFFLINE_ANSWERS!r})\n"
        f"kb = KnowledgeBase.open({str(docs_index)!r}, settings=s)\n"
        f"print(answer({QUESTION!r}, kb, OpenAIChat(s), s).found)\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_traces_go_to_the_otlp_endpoint_the_otel_variables_name(docs_index):
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env |= {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.server_port}",
        "OTEL_SERVICE_NAME": "kbqa-test",
    }
    try:
        _ask_offline(docs_index, env)
    finally:
        collector.shutdown()
    names, services = set(), set()
    for body in _Collector.bodies:
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            services.add(attrs.get("service.name"))
            names |= {s.name for scope in resource_spans.scope_spans for s in scope.spans}
    assert {"question", "retrieve", "screen", "read"} <= names
    assert services == {"kbqa-test"}


def test_without_otel_variables_opentelemetry_is_never_imported(docs_index):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = _ask_offline(docs_index, env)
    assert out.splitlines() == ["False", "[]"]


# -- the app's metrics port ------------------------------------------------------------------


@pytest.mark.llm
def test_the_app_serves_its_questions_on_its_metrics_port(app_env, llm_server):
    from streamlit.testing.v1 import AppTest

    port = free_port()
    app_env.setenv("RAG_APP_METRICS_PORT", str(port))
    app_env.setenv("RAG_LLM_URL", llm_server.base_url)
    app_env.setenv("RAG_LLM_MODEL", llm_server.served_model_name)
    for key, val in OFFLINE_ANSWERS.items():
        app_env.setenv(f"RAG_{key.upper()}", str(val))
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=240).run()
    before = parse(httpx.get(f"http://127.0.0.1:{port}/metrics").text)
    at.chat_input[0].set_value(QUESTION).run()
    assert not at.exception
    after = parse(httpx.get(f"http://127.0.0.1:{port}/metrics").text)
    name, labels = "kbqa_questions_total", {"outcome": "refused"}
    assert value(after, name, **labels) - value(before, name, **labels) == 1
    assert value(after, "kbqa_stage_seconds_count", stage="retrieve") >= 1


def test_the_app_metrics_port_is_off_by_default_and_serves_a_scrape_when_set(app_env):
    from streamlit.testing.v1 import AppTest

    app_env.setenv("RAG_LLM_URL", f"http://127.0.0.1:{free_port()}/v1")
    assert Settings().app_metrics_port == 0
    port = free_port()
    app_env.setenv("RAG_APP_METRICS_PORT", str(port))
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=240).run()
    assert not at.exception
    families = {f.name for f in text_string_to_metric_families(
        httpx.get(f"http://127.0.0.1:{port}/metrics").text
    )}  # fmt: skip
    assert {"kbqa_questions", "kbqa_stage_seconds", "kbqa_ingest_files"} <= families


def test_a_follow_up_joined_by_rule_is_counted_as_its_own_stage(tmp_path, docs_index):
    """RAG_FOLLOWUP=join (the small model's profile) times the joining as the
    stage "follow-up"; every stage name has its metric label."""
    from rag import telemetry
    from rag.answering.pipeline import answer
    from rag.knowledge_base import KnowledgeBase
    from rag.llm import OpenAIChat

    settings = offline_settings(tmp_path, docs_index).model_copy(
        update={**OFFLINE_ANSWERS, "followup": "join"}
    )
    registry = telemetry.metrics().registry

    def joined() -> float:
        sample = registry.get_sample_value("kbqa_stage_seconds_count", {"stage": "follow_up"})
        return sample or 0.0

    before = joined()
    kb = KnowledgeBase.open(docs_index)
    history = [("user", QUESTION), ("assistant", "They are reported by name, with the reason.")]
    result = answer("And where is that shown?", kb, OpenAIChat(settings), settings, history)
    assert "follow-up" in result.timings and result.search_query != "And where is that shown?"
    assert joined() - before == 1
