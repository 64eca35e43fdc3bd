"""The local store's generations: documents and chunks in SQLite, vectors
in FAISS, the BM25 index in bm25s's array files (`rag.lexical`), one
immutable generation at a time (see `rag.layout`).

`Snapshot` reads a published generation (a `rag.store.Snapshot`);
`rag.store.local.writer.StoreWriter` builds the next one; `rag.store.local.store.LocalStore`
ties them together. Callers outside the local store use `rag.store`.
"""

from __future__ import annotations

import json
import sqlite3
import urllib.parse
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from rag import layout, lexical
from rag.errors import IndexCorrupt, IndexMissing
from rag.filters import Filters
from rag.layout import IndexParams
from rag.store import DocumentRecord, StoreStats
from rag.store.shared import assemble
from rag.types import Chunk

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,
    content_hash TEXT NOT NULL,
    kind TEXT NOT NULL,
    title TEXT NOT NULL DEFAULT '',
    size INTEGER NOT NULL DEFAULT 0,
    mtime REAL NOT NULL DEFAULT 0,
    pages INTEGER,
    ingested_at REAL NOT NULL,
    ocr INTEGER NOT NULL DEFAULT 0  -- ingested with --ocr (a rebuild does it again)
);
CREATE INDEX IF NOT EXISTS documents_hash ON documents(content_hash);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    doc_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    ordinal INTEGER NOT NULL,
    text TEXT NOT NULL,
    page INTEGER,
    start INTEGER NOT NULL,
    "end" INTEGER NOT NULL,
    terms TEXT NOT NULL  -- analysed BM25 terms, space-separated (rag.lexical)
);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc_id);
"""

# Columns added to `documents` since format version 2, with the value an
# index written before them reads as. Additive, so no format change: older
# code ignores them, and this code adds them to the next generation it writes.
ADDED_COLUMNS = {
    "ocr": "INTEGER NOT NULL DEFAULT 0",
    "tags": "TEXT NOT NULL DEFAULT '[]'",  # JSON list of the user's tags (scoped search)
}
# Columns added to `chunks` the same way: a table passage's locator
# ('sheet "2025", rows 14-22'), "" for running text and in older generations.
ADDED_CHUNK_COLUMNS = {"locator": "TEXT NOT NULL DEFAULT ''"}

_CHUNK_COLUMNS = 'c.id, c.text, d.path, c.start, c."end", c.page, d.title, c.ordinal'


def _chunk_columns(db: sqlite3.Connection) -> str:
    """`_CHUNK_COLUMNS` and the locator (read as "" from a generation written before it)."""
    locator = "c.locator" if "locator" in _columns(db, "chunks") else "''"
    return f"{_CHUNK_COLUMNS}, {locator}"


def _record(row: tuple[Any, ...]) -> DocumentRecord:
    id_, path, content_hash, kind, title, size, mtime, pages, ingested_at, chunks, ocr, tags = row
    return DocumentRecord(
        id_, path, content_hash, kind, title, size, mtime, pages, ingested_at, chunks, bool(ocr),
        tuple(json.loads(tags)),
    )  # fmt: skip


def _chunk_from_row(row: tuple[Any, ...]) -> Chunk:
    cid, text, path, start, end, page, title, ordinal, locator = row
    return Chunk(
        id=cid,
        text=text,
        source=path,
        start=start,
        end=end,
        page=page,
        title=title,
        ordinal=ordinal,
        locator=locator,
    )


class Tables:
    """Queries shared by the reader and the writer (`db`: the generation's
    SQLite database)."""

    db: sqlite3.Connection

    def chunks(self, ids: Iterable[int]) -> dict[int, Chunk]:
        wanted = list(dict.fromkeys(int(i) for i in ids))
        found: dict[int, Chunk] = {}
        for start in range(0, len(wanted), 500):
            part = wanted[start : start + 500]
            marks = ",".join("?" * len(part))
            rows = self.db.execute(
                f"SELECT {_chunk_columns(self.db)} FROM chunks c "
                f"JOIN documents d ON d.id = c.doc_id WHERE c.id IN ({marks})",
                part,
            )
            found.update((int(r[0]), _chunk_from_row(r)) for r in rows)
        return found

    def document_chunks(self, path: str) -> list[Chunk]:
        rows = self.db.execute(
            f"SELECT {_chunk_columns(self.db)} FROM chunks c JOIN documents d "
            "ON d.id = c.doc_id WHERE d.path = ? ORDER BY c.ordinal",
            (path,),
        )
        return [_chunk_from_row(r) for r in rows]

    def context(self, chunk: Chunk, neighbours: int = 1) -> tuple[str, str, str]:
        """(text before, the chunk, text after) from the neighbouring chunks
        of the same document (and page), rebuilt from their offsets."""
        rows = self.db.execute(
            'SELECT c.text, c.start, c."end", c.page FROM chunks c JOIN documents d '
            "ON d.id = c.doc_id WHERE d.path = ? AND c.ordinal BETWEEN ? AND ? ORDER BY c.start",
            (chunk.source, chunk.ordinal - neighbours, chunk.ordinal + neighbours),
        ).fetchall()
        # A table part's text starts with its repeated header: only the rest is at `start`.
        pieces = [
            (start, text[len(text) - (end - start) :])
            for text, start, end, page in rows
            if page == chunk.page
        ]
        before = assemble(pieces, min((s for s, _ in pieces), default=chunk.start), chunk.start)
        last = max((s + len(t) for s, t in pieces), default=chunk.end)
        return before, chunk.text, assemble(pieces, chunk.end, last)

    def documents(self) -> list[DocumentRecord]:
        return self._documents_where("1", None)

    def document(self, path: str) -> DocumentRecord | None:
        return next((d for d in self._documents_where("d.path = ?", path)), None)

    def document_with_hash(self, content_hash: str) -> DocumentRecord | None:
        return next((d for d in self._documents_where("d.content_hash = ?", content_hash)), None)

    def _documents_where(self, clause: str, value: str | None) -> list[DocumentRecord]:
        """Documents matching `clause` (one `?` for `value`); all when `value` is None."""
        # A generation written before an added column reads it as its default.
        have = _columns(self.db, "documents")
        ocr = "d.ocr" if "ocr" in have else "0"
        tags = "d.tags" if "tags" in have else "'[]'"
        rows = self.db.execute(
            "SELECT d.id, d.path, d.content_hash, d.kind, d.title, d.size, d.mtime, d.pages, "
            f"d.ingested_at, (SELECT count(*) FROM chunks c WHERE c.doc_id = d.id), {ocr}, {tags} "
            f"FROM documents d WHERE {clause} "
            + ("ORDER BY d.path" if value is None else "LIMIT 1"),
            () if value is None else (value,),
        )
        return [_record(r) for r in rows]

    def count(self, table: str) -> int:
        return int(self.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def create_schema(db: sqlite3.Connection) -> None:
    """Create the tables, or bring a copied older generation's up to date."""
    db.executescript(SCHEMA)
    have = _columns(db, "documents")
    for name, definition in ADDED_COLUMNS.items():
        if name not in have:
            db.execute(f"ALTER TABLE documents ADD COLUMN {name} {definition}")
    have = _columns(db, "chunks")
    for name, definition in ADDED_CHUNK_COLUMNS.items():
        if name not in have:
            db.execute(f"ALTER TABLE chunks ADD COLUMN {name} {definition}")


def _connect_immutable(db_path: Path) -> sqlite3.Connection:
    # immutable=1: no locks, no journal files; a published generation never changes.
    uri = f"file:{urllib.parse.quote(str(db_path.resolve()))}?immutable=1"
    try:
        db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        db.execute("SELECT count(*) FROM documents").fetchone()
    except sqlite3.DatabaseError as exc:
        raise IndexCorrupt(f"{db_path} is unreadable: the index is damaged ({exc}).") from exc
    return db


def published_documents(root: Path) -> dict[str, DocumentRecord]:
    """The documents of the current generation by path (none when there is
    no index yet), read without loading its vectors."""
    name = layout.current_generation(root)
    if name is None:
        return {}
    tables = Tables()
    db_path = root / name / layout.DB_FILE
    tables.db = _connect_immutable(db_path)
    try:
        return {d.path: d for d in tables.documents()}
    except sqlite3.DatabaseError as exc:
        raise IndexCorrupt(f"{db_path} is unreadable: the index is damaged ({exc}).") from exc
    finally:
        tables.db.close()


def read_vectors(path: Path) -> faiss.IndexIDMap2:
    try:
        vectors = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise IndexCorrupt(f"{path} is unreadable: the index is damaged ({exc}).") from exc
    if not isinstance(vectors, faiss.IndexIDMap2):
        raise IndexCorrupt(
            f"{path} holds a {type(vectors).__name__}, not vectors keyed by chunk id: "
            "the index is damaged."
        )
    return vectors


def _half_precision_copy(vectors: faiss.IndexIDMap2) -> faiss.IndexIDMap2:
    """The same vectors and ids, stored as float16 for searching.

    A single query over a flat index is bound by memory bandwidth, so half
    the bytes is nearly half the time (bench/query.py compares the FAISS
    index types, with their recall against exact search). float16 keeps
    about three significant digits, inside the noise of the embedding itself.
    """
    inner = faiss.downcast_index(vectors.index)
    if not isinstance(inner, faiss.IndexFlat) or vectors.ntotal == 0:
        return vectors
    copy = faiss.IndexIDMap2(
        faiss.IndexScalarQuantizer(vectors.d, faiss.ScalarQuantizer.QT_fp16, inner.metric_type)
    )
    copy.add_with_ids(inner.reconstruct_n(0, inner.ntotal), faiss.vector_to_array(vectors.id_map))
    return copy


def _dense(vectors: faiss.Index, query: np.ndarray, k: int) -> list[tuple[int, float]]:
    if vectors.ntotal == 0:
        return []
    scores, ids = vectors.search(query.reshape(1, -1).astype(np.float32), min(k, vectors.ntotal))
    return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]


class Snapshot(Tables):
    """A published generation, opened read-only. Never changes under you.

    `db`, `vectors` and `lexical` are this store's own: callers use what
    `rag.store.Snapshot` declares."""

    def __init__(self, root: Path, name: str, dense_precision: str = "float16") -> None:
        self.root = root
        self.name = name  # the generation's folder
        gen_dir = root / name
        self.manifest = layout.read_manifest(gen_dir)
        self.db = _connect_immutable(gen_dir / layout.DB_FILE)
        self.vectors: faiss.Index = read_vectors(gen_dir / layout.VECTORS_FILE)
        try:
            self.lexical = lexical.LexicalIndex(gen_dir / layout.BM25_DIR)
        except Exception as exc:  # numpy and bm25s raise many kinds on a damaged file
            raise IndexCorrupt(
                f"{gen_dir / layout.BM25_DIR} is unreadable: the index is damaged ({exc})."
            ) from exc
        if not self.vectors.ntotal == len(self.lexical.ids) == self.manifest.chunks:
            raise IndexCorrupt(
                f"{gen_dir} holds {self.vectors.ntotal} vectors and {len(self.lexical.ids)} BM25 "
                f"entries but {self.manifest.chunks} chunks: the index is damaged."
            )
        # The vectors as written, for `vectors_of`; a float16 search copy is not.
        self._exact: faiss.Index | None = self.vectors
        if dense_precision == "float16":
            self.vectors = _half_precision_copy(self.vectors)
            self._exact = self._exact if self.vectors is self._exact else None
        # The chunk ids each recent filter allows (a generation never changes).
        self.allowed = lru_cache(maxsize=16)(self._allowed)

    def _allowed(self, filters: Filters) -> np.ndarray:
        """The ids of the chunks of the documents `filters` matches, sorted."""
        docs = [d.id for d in self.documents() if filters.matches(d)]
        ids: list[int] = []
        for start in range(0, len(docs), 500):
            part = docs[start : start + 500]
            marks = ",".join("?" * len(part))
            rows = self.db.execute(f"SELECT id FROM chunks WHERE doc_id IN ({marks})", part)
            ids.extend(r[0] for r in rows)
        return np.sort(np.asarray(ids, dtype=np.int64))

    @property
    def generation(self) -> int:
        return self.manifest.generation

    @property
    def params(self) -> IndexParams:
        return self.manifest.params

    def stats(self) -> StoreStats:
        params = self.manifest.params
        files = (f for f in (self.root / self.name).rglob("*") if f.is_file())
        return StoreStats(
            index=str(self.root),
            store="local",
            generation=self.manifest.generation,
            documents=self.count("documents"),
            chunks=self.count("chunks"),
            vectors=int(self.vectors.ntotal),
            model=params.model_id,
            dimension=params.dimension,
            chunk_tokens=params.chunk_tokens,
            chunk_overlap=params.chunk_overlap,
            disk_bytes=sum(f.stat().st_size for f in files),
            updated_at=self.manifest.updated_at,
        )

    def dense(
        self, query: np.ndarray, k: int, filters: Filters | None = None
    ) -> list[tuple[int, float]]:
        if not filters:
            return _dense(self.vectors, query, k)
        allowed = self.allowed(filters)
        if not len(allowed) or k <= 0:
            return []
        # FAISS skips the other ids while it scans: the top k of the allowed.
        selector = faiss.IDSelectorBatch(allowed)  # referenced here until the search ends
        params = faiss.SearchParameters()
        params.sel = selector
        scores, ids = self.vectors.search(
            query.reshape(1, -1).astype(np.float32), min(k, len(allowed)), params=params
        )
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]

    def dense_scores(self, query: np.ndarray, ids: Sequence[int]) -> dict[int, float]:
        """Exact inner products of `query` with the stored vectors of `ids`."""
        if not ids:
            return {}
        # One C++ loop over the id map, not one Python call per id.
        vectors = self.vectors.reconstruct_batch(np.asarray(ids, dtype=np.int64))
        return dict(zip(ids, (vectors @ query).tolist(), strict=True))

    def vectors_of(self, ids: Sequence[int]) -> np.ndarray:
        """The stored vectors of `ids`, as written (float32)."""
        if self._exact is None:
            # Searching keeps only a float16 copy: read the generation's file
            # again, once. A reader that outlived two publishes finds it swept.
            path = self.root / self.name / layout.VECTORS_FILE
            if not path.exists():
                raise IndexMissing(
                    f"{self.root / self.name} was replaced while it was being read "
                    "(an ingest published twice meanwhile); try again."
                )
            self._exact = read_vectors(path)
        if not len(ids):
            return np.zeros((0, self.manifest.params.dimension), dtype=np.float32)
        try:
            return self._exact.reconstruct_batch(np.asarray(ids, dtype=np.int64))
        except RuntimeError as exc:
            raise IndexCorrupt(
                f"{self.root / self.name} lacks a vector asked for ({exc})."
            ) from exc

    def bm25(
        self, query: str, k: int, also: Sequence[int] = (), filters: Filters | None = None
    ) -> tuple[list[tuple[int, float]], dict[int, float]]:
        """See `rag.lexical.LexicalIndex.rank`."""
        allowed = self.allowed(filters) if filters else None
        try:
            return self.lexical.rank(query, k, also, allowed)
        except (IndexError, ValueError) as exc:  # same-size damage the manifest cannot see
            raise IndexCorrupt(
                f"{self.root / self.name / layout.BM25_DIR} is damaged ({exc})."
            ) from exc

    def has_term(self, term: str) -> bool:
        return self.lexical.has_term(term)

    def close(self) -> None:
        self.allowed.cache_clear()
        self._exact = None
        self.db.close()
