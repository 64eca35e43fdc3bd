"""The gpt-oss path on the real vLLM server: a tiny random-weight gpt-oss
whose output each request scripts (serving/scripted_logits.py), so vLLM's
real harmony parsing decides what lands in `reasoning` and in `content`.

`Scripted` wraps the real client and only adds the script to each request;
everything else (HTTP, streaming, structured output, our parsing) is real.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest

from rag.answering import prompts
from rag.answering.events import Notice
from rag.answering.pipeline import answer, stream_answer
from rag.answering.profiles import SMALL_MODEL_CONTEXT
from rag.answering.screening import screen
from rag.knowledge_base import KnowledgeBase
from rag.llm import Completion, Delta, OpenAIChat, Request, complete
from rag.settings import Settings

pytestmark = pytest.mark.llm

Script = Callable[[Request], dict[str, str]]


class Scripted:
    def __init__(self, inner: OpenAIChat, script: Script) -> None:
        self.inner = inner
        self.script = script
        self.requests: list[Request] = []

    def stream(self, request: Request) -> Iterator[Delta | Completion]:
        self.requests.append(request)
        scripted = replace(request, extra={"vllm_xargs": self.script(request)})
        return self.inner.stream(scripted)


def is_screen(request: Request) -> bool:
    return request.response_format is not None


def passage_ids(request: Request) -> list[int]:
    schema = request.response_format["json_schema"]["schema"]  # type: ignore[index]
    return schema["properties"]["verdicts"]["items"]["properties"]["id"]["enum"]


def verdicts(request: Request, relevant: bool) -> dict[str, str]:
    body = {"verdicts": [{"id": i, "score": 3 if relevant else 0, "relevant": relevant,
                          "reason": "scripted"} for i in passage_ids(request)]}  # fmt: skip
    return {"reasoning": "Check the passage.", "final": json.dumps(body), "constrain": "json"}


@pytest.fixture(scope="module")
def settings(tiny_gpt_oss_server) -> Settings:
    return Settings(
        llm_url=tiny_gpt_oss_server.base_url,
        llm_model=tiny_gpt_oss_server.served_model_name,
        llm_context_tokens=SMALL_MODEL_CONTEXT,  # served like the small CPU model
        llm_retries=0,
        screen_k=3,
        keep_max=2,
        read_max_tokens=300,
    )


@pytest.fixture(scope="module")
def chat(settings) -> OpenAIChat:
    return OpenAIChat(settings)


@pytest.fixture(scope="module")
def kb(built_index, embedder):
    return KnowledgeBase.open(built_index, embedder)


def test_reasoning_and_content_come_back_apart(chat):
    request = Request(
        messages=[{"role": "user", "content": "hi"}], effort="high", max_tokens=200,
        extra={"vllm_xargs": {"reasoning": "The user greets me.", "final": "Hello there."}},
    )  # fmt: skip
    completion = complete(chat, request)
    assert completion.reasoning == "The user greets me."
    assert completion.content == "Hello there."
    events = list(chat.stream(request))
    streamed = {
        channel: "".join(e.text for e in events if isinstance(e, Delta) and e.channel == channel)
        for channel in ("reasoning", "content")
    }
    assert streamed == {"reasoning": "The user greets me.", "content": "Hello there."}
    assert isinstance(events[-1], Completion) and events[-1].usage.completion_tokens > 0


def test_screen_reads_structured_verdicts_on_the_gpt_oss_path(kb, chat, settings):
    model = Scripted(chat, lambda r: verdicts(r, relevant=True))
    hits = kb.search("largest planet", k=3)
    found, usage = screen("largest planet", hits, model, settings)
    assert [(v.valid, v.relevant, v.score, v.reason) for v in found] == [
        (True, True, 3.0, "scripted")
    ] * 3
    assert all(r.effort == "low" for r in model.requests)
    assert usage.completion_tokens > 0


def test_nothing_relevant_means_saying_so_without_a_deep_read(kb, chat, settings):
    model = Scripted(chat, lambda r: verdicts(r, relevant=False))
    result = answer("What is the boiling point of mercury?", kb, model, settings)
    assert not result.found and "does not contain" in result.text
    assert result.citations == [] and "read" not in result.usage
    assert all(is_screen(r) for r in model.requests)  # stage 2 never ran


def test_deep_read_streams_reasoning_apart_and_resolves_citations(kb, chat, settings):
    def script(request: Request) -> dict[str, str]:
        if is_screen(request):
            return verdicts(request, relevant=True)
        return {
            "reasoning": "Passage 1 names Jupiter.",
            "final": "Jupiter is the largest [1]. See also [7].",
        }

    model = Scripted(chat, script)
    events = list(stream_answer("Which planet is the largest?", kb, model, settings))
    result = events[-1].answer
    reasoning = "".join(e.text for e in events if isinstance(e, Delta) and e.channel == "reasoning")
    assert reasoning == result.reasoning == "Passage 1 names Jupiter."
    assert "Passage 1" not in result.text
    assert result.text == "Jupiter is the largest [1]. See also ."
    assert [c.n for c in result.citations] == [1] and result.dropped_citations == 1
    assert result.citations[0].hit == result.kept[0]
    read = [r for r in model.requests if not is_screen(r)]
    assert [r.effort for r in read] == ["high"]


def test_a_claim_pinned_on_a_passage_that_does_not_say_it_gets_a_note(kb, chat, settings):
    def script(request: Request) -> dict[str, str]:
        if is_screen(request):
            return verdicts(request, relevant=True)
        return {"final": "Jupiter is the largest planet [1]. Black tea is fully oxidised [1]."}

    result = answer("Which planet is the largest?", kb, Scripted(chat, script), settings)
    assert "Jupiter" in result.kept[0].text and "tea" not in result.kept[0].text
    assert [c.n for c in result.citations] == [1]
    assert result.notes == [
        "[1] is cited for sentence 2 of the answer, which shares no words with passage 1."
    ]


def test_reasoning_that_uses_every_token_is_retried_at_lower_effort(kb, chat, settings):
    def script(request: Request) -> dict[str, str]:
        if is_screen(request):
            return verdicts(request, relevant=True)
        if request.effort == "high":  # thinks past max_tokens: content stays null
            return {"reasoning": "hmm " * 400, "final": "never reached"}
        return {"reasoning": "short", "final": "Jupiter [1]."}

    model = Scripted(chat, script)
    events = list(stream_answer("Which planet is the largest?", kb, model, settings))
    result = events[-1].answer
    assert result.text == "Jupiter [1]."
    assert [r.effort for r in model.requests if not is_screen(r)] == ["high", "medium"]
    assert any(isinstance(e, Notice) and "effort medium" in e.text for e in events)


def test_malformed_verdict_json_fails_open_and_is_recorded(kb, chat, settings):
    model = Scripted(chat, lambda r: {"final": '{"verdicts": "not a list"}', "constrain": "json"})
    hits = kb.search("largest planet", k=2)
    found, _ = screen("largest planet", hits, model, settings)
    assert [v.relevant for v in found] == [True, True]  # kept: fail open
    assert all(not v.valid and v.error for v in found)


def test_a_follow_up_is_screened_and_read_as_its_standalone_question(kb, chat, settings):
    # The rewrite, the screen and the read all go through the real server;
    # the script only chooses what the model says.
    standalone = "What is the storm on Jupiter?"
    history = [
        ("user", "Which planet is the largest?"),
        ("assistant", "Jupiter is the largest planet [1]."),
    ]

    def script(request: Request) -> dict[str, str]:
        if is_screen(request):
            return verdicts(request, relevant=True)
        if request.messages[0]["content"] == prompts.text("condense_system.txt"):
            return {"reasoning": "Resolve 'its'.", "final": standalone}
        return {"reasoning": "Passage 1.", "final": "The Great Red Spot [1]."}

    follow_up = "And what about its storm?"  # meaningless alone
    model = Scripted(chat, script)
    on_screen = settings.model_copy(update={"screen": True})
    result = answer(follow_up, kb, model, on_screen, history)
    assert result.search_query == standalone
    screens = [r for r in model.requests if is_screen(r)]
    reads = [r for r in model.requests[1:] if not is_screen(r)]
    assert screens and reads
    for request in screens + reads:
        user = request.messages[-1]["content"]
        assert f"Question: {standalone}" in user, user[-300:]
        assert f"Question: {follow_up}" not in user
    # The deep read also sees the conversation, to answer in context.
    read_prompt = reads[-1].messages[-1]["content"]
    assert "user: Which planet is the largest?" in read_prompt
    assert "assistant: Jupiter is the largest planet [1]." in read_prompt
