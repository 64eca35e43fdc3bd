"""`kb.as_retriever()` honours LangChain's whole retriever contract: every
argument a LangChain caller may pass, at construction and at invoke time,
sync and async, takes effect or is refused; none is silently ignored."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.runnables import RunnableLambda
from pydantic import ValidationError

from rag.knowledge_base import KnowledgeBase

QUERY = "Great Red Spot storm"


@pytest.fixture(scope="module")
def kb(built_index, embedder):
    return KnowledgeBase.open(built_index, embedder)


class Recorder(BaseCallbackHandler):
    """Keeps what LangChain's callback manager reports about retriever runs."""

    def __init__(self) -> None:
        self.starts: list[dict[str, Any]] = []
        self.ends: list[int] = []
        self.errors: list[BaseException] = []

    def on_retriever_start(self, serialized, query, **kwargs):
        self.starts.append({"query": query, **kwargs})

    def on_retriever_end(self, documents, **kwargs):
        self.ends.append(len(documents))

    def on_retriever_error(self, error, **kwargs):
        self.errors.append(error)


def ids(documents) -> list[int]:
    return [d.metadata["chunk_id"] for d in documents]


def test_documents_carry_the_passage_and_its_place(kb):
    docs = kb.as_retriever(k=2).invoke(QUERY)
    assert len(docs) == 2
    assert "Jupiter" in docs[0].page_content
    assert docs[0].metadata["source"].endswith("astronomy.pdf") and docs[0].metadata["page"] == 2
    assert {"score", "chunk_id"} <= set(docs[0].metadata)


@pytest.mark.parametrize("mode", ["hybrid", "dense", "bm25"])
def test_k_and_mode_at_construction_are_the_search_arguments(kb, mode):
    docs = kb.as_retriever(k=3, mode=mode).invoke(QUERY)
    assert ids(docs) == [h.chunk_id for h in kb.search(QUERY, k=3, mode=mode)]


def test_search_kwargs_set_k_and_mode_as_vector_store_retrievers_do(kb):
    docs = kb.as_retriever(search_kwargs={"k": 1, "mode": "bm25"}).invoke(QUERY)
    assert ids(docs) == [h.chunk_id for h in kb.search(QUERY, k=1, mode="bm25")]


def test_k_and_mode_at_invoke_time_override_the_retrievers(kb):
    retriever = kb.as_retriever(k=5)
    assert len(retriever.invoke(QUERY, k=1)) == 1
    assert ids(retriever.invoke(QUERY, mode="dense", k=2)) == [
        h.chunk_id for h in kb.search(QUERY, k=2, mode="dense")
    ]
    assert len(retriever.invoke(QUERY)) == 5, "an invoke argument must not stick"


@pytest.mark.parametrize(
    "arguments",
    [{"top_k": 3}, {"search_type": "mmr"}, {"filter": {"source": "x"}}, {"score_threshold": 0.5}],
)
def test_arguments_it_cannot_honour_are_refused_not_ignored(kb, arguments):
    with pytest.raises(TypeError, match=next(iter(arguments))):
        kb.as_retriever().invoke(QUERY, **arguments)
    with pytest.raises(ValidationError):
        kb.as_retriever(**arguments)
    with pytest.raises(TypeError, match=next(iter(arguments))):
        kb.as_retriever(search_kwargs=arguments)


@pytest.mark.parametrize("bad", [{"k": 0}, {"k": -1}, {"mode": "magic"}])
def test_bad_values_are_refused_at_construction_and_at_invoke(kb, bad):
    with pytest.raises((ValueError, ValidationError)):
        kb.as_retriever(**bad)
    with pytest.raises(ValueError):
        kb.as_retriever().invoke(QUERY, **bad)


def test_config_callbacks_tags_metadata_and_run_name_reach_the_handlers(kb):
    recorder = Recorder()
    retriever = kb.as_retriever(k=2, tags=["kb-tag"], metadata={"team": "docs"})
    retriever.invoke(
        QUERY,
        config={
            "callbacks": [recorder],
            "tags": ["call-tag"],
            "metadata": {"request": "r1"},
            "run_name": "kb-search",
        },
    )
    assert recorder.ends == [2] and not recorder.errors
    start = recorder.starts[0]
    assert start["query"] == QUERY and start["name"] == "kb-search"
    assert {"kb-tag", "call-tag"} <= set(start["tags"])
    assert start["metadata"]["team"] == "docs" and start["metadata"]["request"] == "r1"


def test_a_failing_search_is_reported_to_the_callbacks(kb):
    recorder = Recorder()
    with pytest.raises(ValueError):
        kb.as_retriever().invoke(QUERY, config={"callbacks": [recorder]}, mode="magic")
    assert len(recorder.errors) == 1


def test_async_invoke_and_batch_give_the_sync_results(kb):
    retriever = kb.as_retriever(k=3)
    sync = ids(retriever.invoke(QUERY, k=2, mode="dense"))

    async def run():
        recorder = Recorder()
        one = await retriever.ainvoke(QUERY, config={"callbacks": [recorder]}, k=2, mode="dense")
        many = await retriever.abatch([QUERY, "Pompeii eruption"])
        return one, many, recorder

    one, many, recorder = asyncio.run(run())
    assert ids(one) == sync and recorder.ends == [2]
    assert [len(d) for d in many] == [3, 3]
    assert [ids(d) for d in retriever.batch([QUERY, "Pompeii eruption"])] == [ids(d) for d in many]


def test_it_composes_in_a_chain(kb):
    chain = kb.as_retriever(k=1) | RunnableLambda(lambda docs: docs[0].metadata["source"])
    assert chain.invoke(QUERY).endswith("astronomy.pdf")
