"""LLM faults a real vLLM cannot be made to produce on purpose, against a
real HTTP server that misbehaves (tests/misbehaving_server.py): slowness,
hangs, HTTP 5xx, broken or truncated streams, a proxy's HTML page.

Each fault must end in a clear outcome: a bounded retry, fail-open for the
screen, or one `LLMError` message; never a hang or a traceback. (Server
down, a prompt over the context, null content and malformed verdict JSON
run against the real vLLM server: test_answering_llm.py, test_gpt_oss_path.py.)
"""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner
from misbehaving_server import ANSWER, MODEL, misbehaving_server

from cli.rag_main import main as rag_main
from rag.answering.pipeline import answer
from rag.errors import LLMError, LLMTimeout, LLMUnreachable, PromptTooLong
from rag.knowledge_base import KnowledgeBase
from rag.llm import Completion, Delta, OpenAIChat, Request, complete
from rag.settings import Settings

pytestmark = pytest.mark.timeout(120)  # a hang fails the test instead of the run

TIMEOUT = 1.0  # RAG_LLM_TIMEOUT for these tests
QUESTION = "Which planet is the largest?"
HI = Request(messages=[{"role": "user", "content": "hi"}], effort="low", max_tokens=50)


@pytest.fixture(scope="module")
def server():
    with misbehaving_server() as running:
        yield running


@pytest.fixture(scope="module")
def kb(built_index, embedder):
    return KnowledgeBase.open(built_index, embedder)


def settings_for(url: str, **extra: object) -> Settings:
    values: dict[str, object] = {
        "llm_url": url,
        "llm_model": MODEL,
        "llm_timeout": TIMEOUT,
        "llm_connect_timeout": TIMEOUT,
        "llm_retries": 1,
        "llm_context_tokens": 4096,
        "screen_k": 3,
        "keep_max": 2,
        "read_max_tokens": 200,
    }
    values.update(extra)
    return Settings(**values)  # type: ignore[arg-type]


def chat_for(server, fault: str, only: str = "all", **extra: object) -> OpenAIChat:
    return OpenAIChat(settings_for(server.url(fault, only), **extra))


def test_the_well_behaved_mode_answers(server):
    completion = complete(chat_for(server, "ok"), HI)
    assert completion.content == ANSWER and completion.finish_reason == "stop"


def test_a_silent_server_times_out_after_bounded_retries(server):
    chat = chat_for(server, "slow")
    started = time.monotonic()
    with pytest.raises(LLMTimeout, match=r"did not answer in time .*tried 2 time"):
        complete(chat, HI)
    # One request plus one retry, then a clear error: bounded, never a hang
    # (two timeouts and a 0.5 s pause, with slack for a loaded machine).
    assert server.log.count("slow") == 2
    assert time.monotonic() - started < 2 * TIMEOUT + 0.5 + 10


def test_a_stream_that_stalls_after_text_is_a_timeout_without_a_retry(server):
    chat = chat_for(server, "hang-mid-stream")
    before = server.log.count("hang-mid-stream")
    seen: list[str] = []
    with pytest.raises(LLMTimeout):
        for event in chat.stream(HI):
            if isinstance(event, Delta):
                seen.append(event.text)
    # Text already shown is never repeated by a retry.
    assert seen == ["The answer"]
    assert server.log.count("hang-mid-stream") == before + 1


def test_http_500_is_retried_once_then_reported(server):
    with pytest.raises(LLMError, match="HTTP 500 internal server error"):
        complete(chat_for(server, "http-500"), HI)
    assert server.log.count("http-500") == 2


def test_a_transient_503_is_retried_and_the_answer_arrives(server):
    completion = complete(chat_for(server, "flaky"), HI)
    assert completion.content == ANSWER
    assert server.log.count("flaky") == 2


def test_http_400_context_too_long_is_prompt_too_long(server):
    with pytest.raises(PromptTooLong, match="maximum context length"):
        complete(chat_for(server, "context-400"), HI)


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("malformed-sse", "malformed response"),
        ("wrong-shape", "malformed response"),
        ("error-event", "engine died"),
        ("cut-off", "dropped the connection while answering"),
        ("html-page", "without a single chat-completion event"),
    ],
)
def test_broken_streams_are_one_clear_llm_error(server, fault, message):
    with pytest.raises(LLMError, match=message) as caught:
        complete(chat_for(server, fault), HI)
    # The server was reached: never blamed on an unreachable server.
    assert not isinstance(caught.value, LLMUnreachable)
    # Not retried once output began or was garbage; a dropped connection is
    # retried once (another replica may answer), and cut off again here.
    assert server.log.count(fault) == (2 if fault == "cut-off" else 1)


def test_an_answer_cut_off_mid_stream_is_resumed_without_repeating_text(server):
    # A replica behind vllm-router dies mid-answer: the retry (on another
    # replica) says the same words again, and the caller sees each once.
    chat = chat_for(server, "cut-off-once")
    before = server.log.count("cut-off-once")
    seen = [event.text for event in chat.stream(HI) if isinstance(event, Delta)]
    assert "".join(seen) == ANSWER
    assert seen[:2] == [ANSWER[:8], ANSWER[8:16]]
    assert server.log.count("cut-off-once") == before + 2


def test_a_stream_that_ends_early_is_returned_with_no_finish_reason(server):
    completion = complete(chat_for(server, "ends-early"), HI)
    assert isinstance(completion, Completion)
    assert (completion.content, completion.finish_reason) == ("The answer is", None)


# -- what answering makes of them ----------------------------------------------------


@pytest.mark.parametrize("fault", ["slow", "malformed-sse", "http-500", "html-page"])
def test_a_failing_screen_fails_open_and_the_answer_still_comes(server, kb, fault):
    settings = settings_for(server.url(fault, only="screen"))
    result = answer(QUESTION, kb, OpenAIChat(settings), settings)
    assert len(result.verdicts) == settings.screen_k
    assert all(not v.valid and v.relevant for v in result.verdicts)
    assert all(v.error.startswith("screen request failed") for v in result.verdicts)
    # no verdict: retrieval alone decides, and never drops its first passage
    best = result.hits[0].score
    by_retrieval = [h for h in result.hits if h.score >= settings.keep_min * best]
    kept = {h.chunk_id for h in by_retrieval[: settings.keep_max]}
    assert {h.chunk_id for h in result.kept} == kept and result.hits[0].chunk_id in kept
    assert result.text == ANSWER and [c.n for c in result.citations] == [1]


def test_an_answer_that_ends_early_carries_a_note(server, kb):
    settings = settings_for(server.url("ends-early", only="read"))
    result = answer(QUESTION, kb, OpenAIChat(settings), settings)
    assert result.text == "The answer is"
    assert any("may be incomplete" in note for note in result.notes)


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("slow", "did not answer in time"),
        ("hang-mid-stream", "did not answer in time"),
        ("http-500", "HTTP 500"),
        ("context-400", "Not even one passage fits|does not fit"),
        ("malformed-sse", "malformed response"),
        ("cut-off", "dropped the connection"),
        ("html-page", "OpenAI-compatible"),
    ],
)
def test_rag_ask_turns_a_failing_deep_read_into_one_line(
    server, built_index, monkeypatch, fault, message
):
    for key, value in settings_for(server.url(fault, only="read")).model_dump().items():
        if key.startswith(("llm_", "screen_k", "keep_max", "read_max")):
            monkeypatch.setenv(f"RAG_{key.upper()}", str(value))
    result = CliRunner().invoke(rag_main, ["ask", QUESTION, "--index", str(built_index)])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and any(m in last for m in message.split("|")), last
