"""The `Ingestor`, which owns one index write (chunk, embed in buffered
batches, store, checkpoint), and the records an ingest reports: the
`IngestReport` and the `Progress` events. `ingest.pipeline` drives it and
is the public entry."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from ingest.chunking import Chunker
from rag.embedding import Embedder, load_embedder
from rag.settings import Settings
from rag.types import Chunk, Document
from rag.writer import StoreWriter

# Embed chunks of several small documents together: sentence-transformers
# sorts a call's texts by length, so bigger calls waste less padding.
EMBED_BUFFER = 256


@dataclass
class Failure:
    path: str
    error: str


@dataclass
class IngestReport:
    index: str
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    failed: list[Failure] = field(default_factory=list)
    skipped: list[Failure] = field(default_factory=list)
    chunks_embedded: int = 0
    chunks_copied: int = 0
    pages: int = 0
    seconds: float = 0.0
    generation: int | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Progress:
    stage: str  # "scan": hashing files; "ingest": parsing, chunking, embedding
    done: int
    total: int
    path: str = ""
    chunks: int = 0


ProgressFn = Callable[[Progress], None]


def noop(_: Progress) -> None:
    pass


@dataclass
class _Pending:
    document: Document
    chunks: list[Chunk]
    size: int
    mtime: float
    existed: bool
    ocr: bool


class Ingestor:
    """Owns one index write: chunk, embed in buffered batches, store,
    checkpoint (except in a rebuild). Driven by `ingest_paths` (files) and
    `ingest_documents` (in-memory documents, e.g. `rag eval`'s BEIR corpora)."""

    def __init__(
        self,
        writer: StoreWriter,
        settings: Settings,
        report: IngestReport,
        embedder: Embedder | None = None,
        on_chunks: Callable[[int], None] | None = None,
    ) -> None:
        self.writer = writer
        self.settings = settings
        self.report = report
        self._embedder = embedder
        self._chunker: Chunker | None = None
        self._pending: list[_Pending] = []
        self._in_flight: dict[str, str] = {}  # content hash -> path, until flushed
        self._copies: list[tuple[str, str, int, float]] = []
        self._on_chunks = on_chunks or (lambda n: None)
        self._last_publish = time.monotonic()

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = load_embedder(
                self.settings.embedding_model, self.settings.embed_precision
            )
        return self._embedder

    @property
    def chunker(self) -> Chunker:
        if self._chunker is None:
            e = self.embedder
            self._chunker = Chunker(
                e.count_tokens,
                self.settings.chunk_tokens,
                self.settings.chunk_overlap,
                e.max_tokens,
            )
        return self._chunker

    def status(self, path: str, content_hash: str) -> str:
        """'unchanged', 'copy' (same content stored elsewhere) or 'new'."""
        record = self.writer.document(path)
        if record is not None and record.content_hash == content_hash:
            return "unchanged"
        if content_hash in self._in_flight or self.writer.document_with_hash(content_hash):
            return "copy"
        return "new"

    def copy(self, path: str, content_hash: str, size: int, mtime: float) -> None:
        """Store `path` as a copy of already-ingested identical content."""
        if content_hash in self._in_flight:
            self._copies.append((path, content_hash, size, mtime))
            return
        source = self.writer.document_with_hash(content_hash)
        assert source is not None
        chunks = self.writer.document_chunks(source.path)
        vectors = self.writer.stored_vectors(chunks)
        existed = self.writer.document(path) is not None
        self.writer.put(
            path=path, content_hash=content_hash, kind=source.kind, title=source.title,
            size=size, mtime=mtime, pages=source.pages, ocr=source.ocr,
            chunks=[replace(c, source=path, id=None) for c in chunks], vectors=vectors,
        )  # fmt: skip
        self._count(existed)
        self.report.chunks_copied += len(chunks)

    def add(self, document: Document, size: int = 0, mtime: float = 0.0, ocr: bool = False) -> None:
        """Buffer a loaded document (`ocr`: it was loaded with OCR) for embedding."""
        chunks = self.chunker.split(document)
        existed = self.writer.document(document.path) is not None
        self._pending.append(_Pending(document, chunks, size, mtime, existed, ocr))
        self._in_flight[document.content_hash] = document.path
        self.report.pages += len(document.pages)
        if sum(len(p.chunks) for p in self._pending) >= EMBED_BUFFER:
            self.flush()

    def flush(self) -> None:
        """Embed and store everything buffered, then maybe publish a checkpoint."""
        texts = [c.indexed_text for p in self._pending for c in p.chunks]
        vectors = self.embedder.embed_batch(texts) if texts else np.zeros((0, 0), np.float32)
        row = 0
        for p in self._pending:
            doc = p.document
            self.writer.put(
                path=doc.path, content_hash=doc.content_hash, kind=doc.kind,
                title=p.chunks[0].title if p.chunks else doc.title,  # as clipped for the prefix
                size=p.size, mtime=p.mtime, pages=len(doc.pages) or None, ocr=p.ocr,
                chunks=p.chunks, vectors=vectors[row : row + len(p.chunks)],
            )  # fmt: skip
            row += len(p.chunks)
            self._count(p.existed)
        self.report.chunks_embedded += len(texts)
        self._on_chunks(len(texts))
        self._pending.clear()
        self._in_flight.clear()
        copies, self._copies = self._copies, []
        for path, digest, size, mtime in copies:
            self.copy(path, digest, size, mtime)
        if time.monotonic() - self._last_publish > self.settings.checkpoint_seconds:
            number = self.writer.checkpoint()  # None in a rebuild: it publishes once, at the end
            if number is not None:
                self.report.generation = number
            self._last_publish = time.monotonic()

    def delete(self, path: str) -> bool:
        deleted = self.writer.delete(path)
        self.report.deleted += deleted
        return deleted

    def _count(self, existed: bool) -> None:
        if existed:
            self.report.updated += 1
        else:
            self.report.added += 1
