"""Reading a knowledge base in Milvus: `Reader`, the queries of one
generation of one collection pair, which the snapshot and the writer share;
and `MilvusSnapshot`, one published generation as the `rag.store` seam
reads it (dense and BM25 search, exact scores, chunks, documents, stats).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rag import lexical
from rag.errors import IndexCorrupt
from rag.filters import Filters
from rag.layout import IndexParams
from rag.store import DocumentRecord, StoreStats
from rag.store.milvus import schema as ms
from rag.store.shared import assemble
from rag.types import Chunk

if TYPE_CHECKING:
    from rag.store.milvus.store import MilvusStore

TOP_K_MAX = 16384  # the most results Milvus returns per search


class Reader:
    """Queries of one generation `number` of one collection pair."""

    def __init__(
        self, store: MilvusStore, epoch: int, number: int, next_id: int, schema: int
    ) -> None:
        self.store, self.client = store, store.client
        self.epoch, self.number, self.next_id = epoch, number, next_id
        self.schema = schema
        self.chunk_fields = ms.CHUNK_FIELDS + (["locator"] if schema >= 2 else [])
        self.chunks_name, self.docs_name = store.names(epoch)
        # A schema-1 pair is still listed (what a rebuild replaces): without tags.
        self.doc_fields = ms.DOC_FIELDS + (["tags"] if schema >= 2 else [])

    def _rows(self, name: str, where: str, fields: list[str]) -> list[dict[str, Any]]:
        upper = self.next_id if self.store.upper_bound_needed else None
        clause = ms.visible(self.number) + (f" and ({where})" if where else "")
        return ms.query_all(self.client, self.store.collection(name), clause, fields, upper)

    def _chunk_rows(self, where: str) -> list[Chunk]:
        rows = self._rows(self.chunks_name, where, self.chunk_fields)
        return [chunk_of(r) for r in rows]

    def chunks(self, ids: Iterable[int]) -> dict[int, Chunk]:
        wanted = list(dict.fromkeys(int(i) for i in ids))
        found: dict[int, Chunk] = {}
        for start in range(0, len(wanted), 1000):
            for chunk in self._chunk_rows(f"id in {ms.id_list(wanted[start : start + 1000])}"):
                found[int(chunk.id or 0)] = chunk
        return found

    def document_chunks(self, path: str) -> list[Chunk]:
        chunks = self._chunk_rows(f"path_key == {ms.literal(ms.path_key(path))}")
        return sorted(chunks, key=lambda c: c.ordinal)

    def context(self, chunk: Chunk, neighbours: int = 1) -> tuple[str, str, str]:
        """(text before, the chunk, text after) from its neighbours on the same page."""
        low, high = chunk.ordinal - neighbours, chunk.ordinal + neighbours
        rows = self._chunk_rows(
            f"path_key == {ms.literal(ms.path_key(chunk.source))} "
            f"and ordinal >= {low} and ordinal <= {high}"
        )
        pieces = [(c.start, c.document_part) for c in rows if c.page == chunk.page]
        first = min((s for s, _ in pieces), default=chunk.start)
        last = max((s + len(t) for s, t in pieces), default=chunk.end)
        before = assemble(pieces, first, chunk.start)
        return before, chunk.text, assemble(pieces, chunk.end, last)

    def _documents(self, where: str) -> list[DocumentRecord]:
        rows = self._rows(self.docs_name, where, self.doc_fields)
        return sorted((document_record(r) for r in rows), key=lambda d: d.path)

    def documents(self) -> list[DocumentRecord]:
        return self._documents("")

    def document(self, path: str) -> DocumentRecord | None:
        found = self._documents(f"path_key == {ms.literal(ms.path_key(path))}")
        return found[0] if found else None

    def document_with_hash(self, content_hash: str) -> DocumentRecord | None:
        found = self._documents(f"content_hash == {ms.literal(content_hash)}")
        return found[0] if found else None

    def count(self, table: str) -> int:
        name = self.docs_name if table == "documents" else self.chunks_name
        return ms.count(self.client, self.store.collection(name), ms.visible(self.number))

    def _vectors(self, ids: Sequence[int], dimension: int) -> np.ndarray:
        by_id: dict[int, list[float]] = {}
        for start in range(0, len(ids), 1000):
            part = [int(i) for i in ids[start : start + 1000]]
            for row in self._rows(self.chunks_name, f"id in {ms.id_list(part)}", ["vector"]):
                by_id[int(row["id"])] = row["vector"]
        vectors = [by_id[int(i)] for i in ids]  # KeyError: an id this generation lacks
        return np.asarray(vectors, dtype=np.float32).reshape(len(ids), dimension)


def chunk_of(row: dict[str, Any]) -> Chunk:
    page = int(row["page"])
    return Chunk(
        id=int(row["id"]), text=row["text"], source=row["path"], start=int(row["start"]),
        end=int(row["end"]), page=None if page < 0 else page, title=row["title"],
        ordinal=int(row["ordinal"]), locator=str(row.get("locator") or ""),
    )  # fmt: skip


def document_record(row: dict[str, Any]) -> DocumentRecord:
    pages = int(row["pages"])
    return DocumentRecord(
        id=int(row["id"]), path=row["path"], content_hash=row["content_hash"], kind=row["kind"],
        title=row["title"], size=int(row["size"]), mtime=float(row["mtime"]),
        pages=None if pages < 0 else pages, ingested_at=float(row["ingested_at"]),
        chunks=int(row["chunks"]), ocr=bool(row["ocr"]), tags=tuple(row.get("tags") or ()),
    )  # fmt: skip


class MilvusSnapshot(Reader):
    """One published generation; it answers as that generation while writers work."""

    def __init__(self, store: MilvusStore, meta: ms.Meta) -> None:
        super().__init__(store, meta.epoch, meta.generation, meta.next_id, meta.schema)
        self.meta = meta
        self._lexical: lexical.LexicalIndex | None = None
        self._folder: tempfile.TemporaryDirectory[str] | None = None
        # The chunk ids each recent filter allows, for our BM25 (a generation never changes).
        self.allowed = lru_cache(maxsize=16)(self._allowed)

    @property
    def generation(self) -> int:
        return self.meta.generation

    @property
    def params(self) -> IndexParams:
        return self.meta.params

    def _search(self, data: Any, field: str, k: int, where: str = "") -> list[tuple[int, float]]:
        clause = ms.visible(self.number) + (f" and ({where})" if where else "")
        metric = "IP" if field == "vector" else "BM25"
        hits = self.client.search(
            self.store.collection(self.chunks_name), data=[data], anns_field=field,
            limit=min(k, TOP_K_MAX), filter=clause, search_params={"metric_type": metric},
        )  # fmt: skip
        return [(int(h["id"]), float(h["distance"])) for h in hits[0]]

    def scope(self, filters: Filters | None) -> str:
        """`filters` as a filter expression over this generation's chunks."""
        if not filters:
            return ""
        if "\\" in filters.path_prefix:  # no LIKE pattern for it: by document id
            docs = [d.id for d in self.documents() if filters.matches(d)]
            return f"doc_id in {ms.id_list(docs)}"
        return ms.filter_expression(filters)

    def _allowed(self, filters: Filters) -> np.ndarray:
        rows = self._rows(self.chunks_name, self.scope(filters), ["id"])
        return np.sort(np.asarray([int(r["id"]) for r in rows], dtype=np.int64))

    def dense(
        self, query: np.ndarray, k: int, filters: Filters | None = None
    ) -> list[tuple[int, float]]:
        if k <= 0:
            return []
        vector = np.asarray(query, dtype=np.float32).tolist()
        return self._search(vector, "vector", k, self.scope(filters))

    def dense_scores(self, query: np.ndarray, ids: Sequence[int]) -> dict[int, float]:
        """Exact inner products, computed here from the stored vectors."""
        if not len(ids):
            return {}
        vectors = self._vectors(ids, self.meta.params.dimension)
        scores = vectors @ np.asarray(query, dtype=np.float32)
        return dict(zip((int(i) for i in ids), scores.tolist(), strict=True))

    def vectors_of(self, ids: Sequence[int]) -> np.ndarray:
        """The stored vectors of `ids`, as written (float32)."""
        try:
            return self._vectors(ids, self.meta.params.dimension)
        except KeyError as exc:
            raise IndexCorrupt(
                f"Generation {self.generation} in {self.store.uri} lacks the vector of chunk "
                f"{exc} (rows of a state two publishes old are cleaned away; try again)."
            ) from None

    def bm25(
        self, query: str, k: int, also: Sequence[int] = (), filters: Filters | None = None
    ) -> tuple[list[tuple[int, float]], dict[int, float]]:
        """The `k` best chunks by BM25 (score > 0; among those `filters`
        allows), and the scores of those and of `also` (0 where no query
        term matched)."""
        if self.store.bm25_engine == "ours":
            allowed = self.allowed(filters) if filters else None
            return self._lexical_index().rank(query, k, also, allowed)
        words = lexical.terms(query)
        if not words or k <= 0:
            return [], {int(i): 0.0 for i in also}
        text = " ".join(words)
        # Milvus's BM25 keeps (k1 + 1) in the numerator, which Lucene and
        # bm25s drop; Milvus Lite reports it as a negative distance.
        scale = 1.0 + lexical.K1
        found = self._search(text, "sparse", k, self.scope(filters))
        ranked = [(i, abs(d) / scale) for i, d in found if d != 0]
        lookup = dict(ranked)
        missing = list(dict.fromkeys(int(i) for i in also if int(i) not in lookup))
        for start in range(0, len(missing), 1000):
            part = missing[start : start + 1000]
            for cid, d in self._search(text, "sparse", len(part), f"id in {ms.id_list(part)}"):
                lookup[cid] = abs(d) / scale
        for cid in missing:
            lookup.setdefault(cid, 0.0)
        return ranked, lookup

    def has_term(self, term: str) -> bool:
        """In bm25s's vocabulary (Lite), else whether Milvus's full-text
        search of the term alone finds a chunk (its posting list, one lookup)."""
        if not term:
            return False
        if self.store.bm25_engine == "ours":
            return self._lexical_index().has_term(term)
        return any(d != 0 for _, d in self._search(term, "sparse", 1))

    def _lexical_index(self) -> lexical.LexicalIndex:
        """bm25s over this generation's stored terms, built on first use."""
        if self._lexical is None:
            rows = sorted(self._rows(self.chunks_name, "", ["terms"]), key=lambda r: int(r["id"]))
            self._folder = tempfile.TemporaryDirectory(prefix="kbqa-milvus-bm25-")
            folder = Path(self._folder.name) / "bm25"
            lexical.build(folder, [int(r["id"]) for r in rows], [r["terms"].split() for r in rows])
            self._lexical = lexical.LexicalIndex(folder)
        return self._lexical

    def stats(self) -> StoreStats:
        params, chunks = self.meta.params, self.count("chunks")
        lite = self.store.target.lite_path
        disk = sum(p.stat().st_size for p in lite.rglob("*") if p.is_file()) if lite else None
        return StoreStats(
            index=str(self.store.root), store=self.store.uri, generation=self.generation,
            documents=self.count("documents"), chunks=chunks, vectors=chunks,
            model=params.model_id, dimension=params.dimension, chunk_tokens=params.chunk_tokens,
            chunk_overlap=params.chunk_overlap, disk_bytes=disk, updated_at=self.meta.updated_at,
        )  # fmt: skip

    def close(self) -> None:
        self.allowed.cache_clear()
        self._lexical = None
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None
