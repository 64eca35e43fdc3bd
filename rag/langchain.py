"""A LangChain retriever over a `KnowledgeBase`, for users who build chains.

Each LangChain `Document` carries the passage text and, in its metadata, the
same fields as a `Hit`: source, page, score and chunk_id.
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever


class KnowledgeBaseRetriever(BaseRetriever):
    kb: Any  # rag.KnowledgeBase; typed loosely so pydantic does not inspect it
    k: int = 8
    mode: str = "hybrid"

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        return [
            Document(
                page_content=hit.text,
                metadata={
                    "source": hit.source,
                    "page": hit.page,
                    "score": hit.score,
                    "chunk_id": hit.chunk_id,
                },
            )
            for hit in self.kb.search(query, k=self.k, mode=self.mode)
        ]
