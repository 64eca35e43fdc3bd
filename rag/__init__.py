"""Retrieval and answering over a knowledge base built by `ingest`.

from rag import KnowledgeBase
kb = KnowledgeBase.open("indexes/default")
hits = kb.search("how do I rebuild an index?", k=8)
"""

from rag.knowledge_base import KnowledgeBase
from rag.settings import Settings
from rag.types import Answer, Chunk, Citation, Document, Hit, Verdict

__all__ = ["Answer", "Chunk", "Citation", "Document", "Hit", "KnowledgeBase", "Settings", "Verdict"]
