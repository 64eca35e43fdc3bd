"""`KnowledgeBase`: open an index and search it (hybrid, dense or BM25).

A long-lived `KnowledgeBase` (the app keeps one per index) notices when an
ingest publishes a new state and switches to it between searches, so every
search sees one consistent state, old or new. Storage is reached only
through the `rag.store` seam: the same code searches every store.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag import fusion
from rag.embedding import Embedder, load_embedder
from rag.filters import Filters
from rag.settings import SEARCH_MODES, Settings
from rag.store import DocumentRecord, Snapshot, StoreStats, open_store
from rag.types import Hit

if TYPE_CHECKING:
    from langchain_core.retrievers import BaseRetriever

MODES = SEARCH_MODES  # the `SearchMode` literal's values, for callers that list them


class KnowledgeBase:
    def __init__(
        self, root: Path, embedder: Embedder | None = None, settings: Settings | None = None
    ) -> None:
        settings = settings or Settings()
        self.root = Path(root)
        self._embedder = embedder
        # How deep each side is read before fusion: deeper than k, so a
        # passage ranked modestly by both sides can still win.
        self.depth = settings.fusion_depth
        self.fusion = settings.fusion
        self.alpha = settings.fusion_alpha
        self.precision = settings.embed_precision
        self.store = open_store(self.root, settings)
        self._lock = threading.Lock()
        self._stamp: Hashable = self.store.stamp()
        self._snapshot = self.store.snapshot()

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        embedder: Embedder | None = None,
        settings: Settings | None = None,
    ) -> KnowledgeBase:
        """Open the index folder at `path` (e.g. `indexes/default`)."""
        return cls(Path(path), embedder, settings)

    def snapshot(self) -> Snapshot:
        """The newest published state (reopened if an ingest published)."""
        with self._lock:
            stamp = self.store.stamp()
            if stamp != self._stamp:
                # Read before opening: a publish in between is seen next time.
                # The old one is not closed here: a search in another thread
                # may still be reading it. It is freed when the last one lets go.
                self._snapshot = self.store.snapshot()
                self._stamp = stamp
            return self._snapshot

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            model_id = self.snapshot().params.model_id
            self._embedder = load_embedder(model_id, self.precision)
        return self._embedder

    def warm_up(self) -> None:
        """Load the embedding model and embed one query, so that the first
        real search does not pay for it."""
        self.embedder.embed_batch(["warm up"], kind="query")

    # -- search --------------------------------------------------------------

    def search(
        self, query: str, k: int = 8, mode: str = "hybrid", filters: Filters | None = None
    ) -> list[Hit]:
        """The `k` best passages for `query`, best first; with `filters`,
        the `k` best of the documents they match (the store applies them
        before taking the top k). Raises `NothingMatches` when the filters
        match no document."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if not query.strip():
            return []
        snap = self.snapshot()
        filters = filters or None  # an empty Filters is no filter
        depth = max(k, self.depth)
        vector = self.embedder.embed_batch([query], kind="query")[0] if mode != "bm25" else None
        dense = snap.dense(vector, depth, filters) if vector is not None else []
        also = [cid for cid, _ in dense] if mode == "hybrid" else []
        bm25, bm25_scores = snap.bm25(query, depth, also, filters) if mode != "dense" else ([], {})
        # Nothing found may mean nothing to search: say which.
        if filters and not dense and not bm25:
            matching = any(filters.matches(d) for d in snap.documents())
            if not matching:
                raise filters.nothing_matches()
        candidates = dict(dense)  # cosine per chunk, for each hit
        if mode == "hybrid":
            # Every candidate gets both exact scores, so a passage found by
            # one side alone is still weighed by the other.
            assert vector is not None
            lexical_only = [i for i, _ in bm25 if i not in candidates]
            candidates.update(snap.dense_scores(vector, lexical_only))
            if self.fusion == "rrf":
                ranked = fusion.rrf([bm25, dense])[:k]
            else:
                ranked = fusion.convex(candidates, bm25_scores, alpha=self.alpha)[:k]
        else:
            ranked = (dense or bm25)[:k]
        dense_rank = {cid: r for r, (cid, _) in enumerate(dense, start=1)}
        bm25_rank = {cid: r for r, (cid, _) in enumerate(bm25, start=1)}
        chunks = snap.chunks(cid for cid, _ in ranked)
        return [
            Hit(chunks[cid], score, dense_rank.get(cid), bm25_rank.get(cid), candidates.get(cid))
            for cid, score in ranked
            if cid in chunks
        ]

    # -- inspection ----------------------------------------------------------

    def documents(self) -> list[DocumentRecord]:
        return self.snapshot().documents()

    def stats(self) -> StoreStats:
        return self.snapshot().stats()

    def as_retriever(self, **kwargs: Any) -> BaseRetriever:
        """A LangChain retriever over this knowledge base. Takes what
        `KnowledgeBaseRetriever` takes: `k`, `mode`, `search_kwargs`, `tags`,
        `metadata`; anything else is an error."""
        from rag.langchain import KnowledgeBaseRetriever

        return KnowledgeBaseRetriever(kb=self, **kwargs)

    def close(self) -> None:
        self._snapshot.close()
