"""Known answers on the real CPU server: SmolLM2 with the small-model
profile (rag/answering/profiles.py), as `make run` and `rag ask` use it. The answer
quotes the sentence that answers the question and cites its document, even
where the small model's screen judges badly; and `rag ask` answers right
after `make llm`, with no setting but the server's address."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from builders import KNOWN_ANSWERS, UNANSWERED
from click.testing import CliRunner

from cli.rag_main import main as rag_main
from rag.answering.pipeline import answer
from rag.answering.profiles import SMALL_MODEL, SMALL_MODEL_PROFILE, discover, small_model
from rag.knowledge_base import KnowledgeBase
from rag.llm import OpenAIChat
from rag.settings import Settings

pytestmark = pytest.mark.llm


@pytest.fixture
def no_rag_env(monkeypatch):
    """A shell with no RAG_ variable set but the server's address."""
    import os

    for key in [k for k in os.environ if k.startswith("RAG_")]:
        monkeypatch.delenv(key)
    return monkeypatch


def quoted_with_citation(text: str) -> dict[str, int]:
    """sentence -> the passage number cited right after it."""
    return {q.strip(): int(n) for q, n in re.findall(r"(\S.*?) \[(\d+)\](?= |$)", text)}


@pytest.mark.parametrize(("question", "sentence", "source"), KNOWN_ANSWERS)
def test_the_answer_quotes_the_sentence_that_answers_and_cites_its_document(
    question, sentence, source, notes_index, embedder, llm_server
):
    settings = small_model(llm_url=llm_server.base_url, llm_model=llm_server.served_model_name)
    kb = KnowledgeBase.open(notes_index, embedder)
    result = answer(question, kb, OpenAIChat(settings), settings)
    assert result.found, result.notes
    quotes = quoted_with_citation(result.text)
    assert sentence in quotes, f"{result.text!r} does not quote {sentence!r}"
    cited = {c.n: c.hit for c in result.citations}[quotes[sentence]]
    assert Path(cited.source).name == source and sentence in " ".join(cited.text.split())


@pytest.mark.parametrize("question", UNANSWERED)
def test_a_question_the_notes_do_not_answer_is_not_found(
    question, notes_index, embedder, llm_server
):
    settings = small_model(llm_url=llm_server.base_url, llm_model=llm_server.served_model_name)
    kb = KnowledgeBase.open(notes_index, embedder)
    result = answer(question, kb, OpenAIChat(settings), settings)
    assert not result.found and not result.citations, result.text


def test_discover_takes_the_served_model_its_context_and_the_small_model_profile(
    no_rag_env, llm_server
):
    found = discover(Settings(llm_url=llm_server.base_url))
    assert found.llm_model == llm_server.served_model_name == SMALL_MODEL
    assert found.llm_context_tokens == 2048  # the server's max_model_len
    for name, value in SMALL_MODEL_PROFILE.items():
        assert getattr(found, name) == value, name


def test_what_the_user_set_wins_over_discovery(no_rag_env, llm_server):
    no_rag_env.setenv("RAG_LLM_CONTEXT_TOKENS", "1024")
    no_rag_env.setenv("RAG_KEEP_MAX", "2")
    found = discover(Settings(llm_url=llm_server.base_url))
    assert (found.llm_context_tokens, found.keep_max) == (1024, 2)
    assert found.answer_style == SMALL_MODEL_PROFILE["answer_style"]
    named = discover(Settings(llm_url=llm_server.base_url, llm_model="gpt-oss-20b"))
    assert named.llm_model == "gpt-oss-20b" and named.answer_style == Settings().answer_style


def test_rag_ask_right_after_make_llm_answers_with_a_citation(no_rag_env, llm_server, docs_index):
    # `make llm` serves SmolLM2 at the default address; this server's port
    # differs, so only RAG_LLM_URL is set.
    no_rag_env.setenv("RAG_LLM_URL", llm_server.base_url)
    question = "How are broken files reported during ingestion?"
    result = CliRunner().invoke(rag_main, ["ask", question, "--index", str(docs_index), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["found"] and out["citations"], out
    assert "encrypted" in out["answer"], "quotes a sentence on reported files"
    quotes = quoted_with_citation(out["answer"])
    assert quotes and " ".join(f"{q} [{n}]" for q, n in quotes.items()) == out["answer"]
    assert len(out["verdicts"]) == SMALL_MODEL_PROFILE["screen_k"]


def test_rag_ask_prints_the_answer_with_the_citation_numbers_it_lists(
    no_rag_env, llm_server, docs_index
):
    # The streamed text carries the model's passage numbers; citations are
    # renumbered in order of first use when the answer is complete, so the
    # text printed last must use the numbers listed under it.
    no_rag_env.setenv("RAG_LLM_URL", llm_server.base_url)
    question = "How are broken files reported during ingestion?"
    result = CliRunner().invoke(rag_main, ["ask", question, "--index", str(docs_index)])
    assert result.exit_code == 0, result.output
    body, _, listing = result.stdout.rstrip().rpartition("\n\n")
    final = body.rsplit("With its citations resolved:\n", 1)[-1]
    listed = re.findall(r"^\[(\d+)\] ", listing, flags=re.MULTILINE)
    assert listed and set(re.findall(r"\[(\d+)\]", final)) == set(listed), result.stdout
