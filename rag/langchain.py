"""A LangChain retriever over a `KnowledgeBase`, for users who build chains.

Each LangChain `Document` carries the passage text and, in its metadata, the
same fields as a `Hit`: source, page, score and chunk_id.

It honours the whole `BaseRetriever` contract: `tags`, `metadata` and the
search arguments at construction; a `config` (callbacks, tags, metadata,
run name) and the search arguments `k` and `mode` at `invoke` time, sync and
async. Anything it cannot honour is refused with an error, never ignored:
a chain that asks for `k=3` gets three passages or a clear failure.
"""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, model_validator

from rag.settings import SEARCH_MODES, SearchMode

# Arguments LangChain's own `invoke` reads and also hands on to the
# retriever; they are LangChain's business, not a search argument.
_LANGCHAIN_OWN = frozenset({"verbose"})


class KnowledgeBaseRetriever(BaseRetriever):
    # Unknown constructor arguments are errors (pydantic ignores them by default).
    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    kb: Any  # rag.KnowledgeBase; typed loosely so pydantic does not inspect it
    k: int = Field(8, ge=1, le=1000)
    mode: SearchMode = "hybrid"
    # The `VectorStoreRetriever` spelling, for code written against it:
    # `search_kwargs={"k": 4}` sets the same fields as `k=4`.
    search_kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _apply_search_kwargs(self) -> KnowledgeBaseRetriever:
        k, mode = _search_arguments(self.search_kwargs, self.k, self.mode)
        object.__setattr__(self, "k", k)
        object.__setattr__(self, "mode", mode)
        return self

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        k, mode = _search_arguments(kwargs, self.k, self.mode)
        return [_document(hit) for hit in self.kb.search(query, k=k, mode=mode)]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        # The search is CPU work (embedding, FAISS): off the event loop.
        k, mode = _search_arguments(kwargs, self.k, self.mode)
        hits = await asyncio.to_thread(self.kb.search, query, k, mode)
        return [_document(hit) for hit in hits]


def _search_arguments(given: dict[str, Any], k: int, mode: str) -> tuple[int, SearchMode]:
    """`k` and `mode` from a call's arguments over the retriever's own;
    anything else is refused."""
    unknown = set(given) - {"k", "mode"} - _LANGCHAIN_OWN
    if unknown:
        raise TypeError(
            f"KnowledgeBaseRetriever does not take {', '.join(sorted(unknown))}; "
            "it takes k and mode"
        )
    k = given.get("k", k)
    mode = given.get("mode", mode)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 1000:
        raise ValueError(f"k must be an integer from 1 to 1000, not {k!r}")
    if mode not in SEARCH_MODES:
        raise ValueError(f"mode must be one of {', '.join(SEARCH_MODES)}, not {mode!r}")
    return k, mode


def _document(hit: Any) -> Document:
    return Document(
        page_content=hit.text,
        metadata={
            "source": hit.source,
            "page": hit.page,
            "locator": hit.locator,
            "score": hit.score,
            "chunk_id": hit.chunk_id,
        },
    )
