"""Our answering logic with an in-process scripted model (tests/scripted_chat.py):
screening, keeping, reading, citations, notes, the retry at lower effort and
follow-ups, in `make test-fast`. The same behaviour through the real vLLM
server, whose harmony parsing splits reasoning from content, is tested in
tests/test_gpt_oss_path.py and tests/test_answering_llm.py."""

from __future__ import annotations

import json

import pytest
from scripted_chat import Reply, ScriptedChat, is_screen, verdicts

from rag.answering import prompts
from rag.answering.events import Finished, Notice, Retrieved, Screened
from rag.answering.pipeline import answer, stream_answer
from rag.answering.profiles import SMALL_MODEL_CONTEXT
from rag.answering.screening import screen
from rag.knowledge_base import KnowledgeBase
from rag.llm import Delta, Request
from rag.settings import Settings

QUESTION = "Which planet is the largest?"


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings(
        llm_context_tokens=SMALL_MODEL_CONTEXT,
        llm_retries=0,
        screen_k=3,
        keep_max=2,
        read_max_tokens=300,
    )


@pytest.fixture(scope="module")
def kb(built_index, embedder):
    return KnowledgeBase.open(built_index, embedder)


def relevant_then(final: str, reasoning: str = "Passage 1 says so."):
    """Every passage relevant; the read answers `final`."""

    def script(request: Request) -> Reply:
        return verdicts(request, relevant=True) if is_screen(request) else Reply(reasoning, final)

    return script


def test_the_screen_reads_one_verdict_per_passage_at_low_effort(kb, settings):
    model = ScriptedChat(lambda r: verdicts(r, relevant=True))
    hits = kb.search("largest planet", k=3)
    found, usage = screen("largest planet", hits, model, settings)
    assert [v.hit.chunk_id for v in found] == [h.chunk_id for h in hits]
    assert [(v.valid, v.relevant, v.score, v.reason) for v in found] == [
        (True, True, 3.0, "scripted")
    ] * 3
    assert all(r.effort == "low" for r in model.requests)
    assert usage.completion_tokens > 0


def test_a_grouped_screen_sends_one_request_per_group(kb, settings):
    model = ScriptedChat(lambda r: verdicts(r, relevant=True))
    hits = kb.search(QUESTION, k=4)
    found, _ = screen(QUESTION, hits, model, settings.model_copy(update={"screen_group": 2}))
    assert [v.hit.chunk_id for v in found] == [h.chunk_id for h in hits]
    assert len(model.requests) == 2


def test_nothing_relevant_means_saying_so_without_a_deep_read(kb, settings):
    model = ScriptedChat(lambda r: verdicts(r, relevant=False))
    result = answer("What is the boiling point of mercury?", kb, model, settings)
    assert not result.found and "does not contain" in result.text
    assert result.citations == [] and "read" not in result.usage
    assert all(is_screen(r) for r in model.requests)  # stage 2 never ran


def test_the_stages_stream_in_order_and_the_reasoning_stays_apart(kb, settings):
    model = ScriptedChat(relevant_then("Jupiter is the largest [1]. See also [7]."))
    events = list(stream_answer(QUESTION, kb, model, settings))
    assert isinstance(events[0], Retrieved) and len(events[0].hits) == settings.screen_k
    assert isinstance(events[1], Screened) and len(events[1].verdicts) == settings.screen_k
    assert isinstance(events[-1], Finished)
    result = events[-1].answer
    reasoning = "".join(e.text for e in events if isinstance(e, Delta) and e.channel == "reasoning")
    content = "".join(e.text for e in events if isinstance(e, Delta) and e.channel == "content")
    assert reasoning == result.reasoning == "Passage 1 says so."
    assert content == "Jupiter is the largest [1]. See also [7]."
    assert result.text == "Jupiter is the largest [1]. See also ."  # [7] was never shown
    assert [c.n for c in result.citations] == [1] and result.dropped_citations == 1
    assert result.citations[0].hit == result.kept[0]
    assert 0 < len(result.kept) <= settings.keep_max
    assert set(result.timings) >= {"retrieve", "screen", "read"}
    assert [r.effort for r in model.requests if not is_screen(r)] == ["high"]


def test_a_claim_pinned_on_a_passage_that_does_not_say_it_gets_a_note(kb, settings):
    script = relevant_then("Jupiter is the largest planet [1]. Black tea is fully oxidised [1].")
    result = answer(QUESTION, kb, ScriptedChat(script), settings)
    assert "Jupiter" in result.kept[0].text and "tea" not in result.kept[0].text
    assert [c.n for c in result.citations] == [1]
    assert result.notes == [
        "[1] is cited for sentence 2 of the answer, which shares no words with passage 1."
    ]


def test_reasoning_that_uses_every_token_is_retried_at_lower_effort(kb, settings):
    def script(request: Request) -> Reply:
        if is_screen(request):
            return verdicts(request, relevant=True)
        if request.effort == "high":  # thinks past max_tokens: content stays None
            return Reply("hmm " * 400, "never reached")
        return Reply("short", "Jupiter [1].")

    model = ScriptedChat(script)
    events = list(stream_answer(QUESTION, kb, model, settings))
    assert events[-1].answer.text == "Jupiter [1]."
    assert [r.effort for r in model.requests if not is_screen(r)] == ["high", "medium"]
    assert any(isinstance(e, Notice) and "effort medium" in e.text for e in events)


def test_malformed_verdict_json_fails_open_and_is_recorded(kb, settings):
    model = ScriptedChat(lambda r: Reply("", json.dumps({"verdicts": "not a list"})))
    found, _ = screen("largest planet", kb.search("largest planet", k=2), model, settings)
    assert [v.relevant for v in found] == [True, True]  # kept: fail open
    assert all(not v.valid and v.error for v in found)


def test_screen_off_skips_stage_one(kb, settings):
    model = ScriptedChat(relevant_then("Jupiter [1]."))
    result = answer(QUESTION, kb, model, settings.model_copy(update={"screen": False}))
    assert "screen" not in result.usage
    assert all(v.reason == "screen off" for v in result.verdicts)
    assert not [r for r in model.requests if is_screen(r)]
    assert result.text == "Jupiter [1]."


def test_a_follow_up_is_screened_and_read_as_its_standalone_question(kb, settings):
    standalone = "What is the storm on Jupiter?"
    history = [("user", QUESTION), ("assistant", "Jupiter is the largest planet [1].")]

    def script(request: Request) -> Reply:
        if is_screen(request):
            return verdicts(request, relevant=True)
        if request.messages[0]["content"] == prompts.text("condense_system.txt"):
            return Reply("Resolve 'its'.", standalone)
        return Reply("Passage 1.", "The Great Red Spot [1].")

    follow_up = "And what about its storm?"  # meaningless alone
    model = ScriptedChat(script)
    on = settings.model_copy(update={"screen": True, "followup": "rewrite"})
    result = answer(follow_up, kb, model, on, history)
    assert result.search_query == standalone
    screens = [r for r in model.requests if is_screen(r)]
    reads = [r for r in model.requests[1:] if not is_screen(r)]
    assert screens and reads
    for request in screens + reads:
        user = request.messages[-1]["content"]
        assert f"Question: {standalone}" in user, user[-300:]
        assert f"Question: {follow_up}" not in user
    read_prompt = reads[-1].messages[-1]["content"]  # the read sees the conversation
    assert "user: Which planet is the largest?" in read_prompt
    assert "assistant: Jupiter is the largest planet [1]." in read_prompt


def test_a_standalone_question_after_a_conversation_is_not_rewritten(kb, settings):
    history = [("user", QUESTION), ("assistant", "Jupiter is the largest planet [1].")]
    model = ScriptedChat(relevant_then("Saturn has many moons [1]."))
    on = settings.model_copy(update={"followup": "rewrite"})
    answer("How many moons does Saturn have?", kb, model, on, history)
    condense = prompts.text("condense_system.txt")
    assert not [r for r in model.requests if r.messages[0]["content"] == condense]
