"""The `Ingestor`, which owns one index write (chunk, embed in buffered
batches, store, checkpoint), and the seam of embedding done elsewhere
(`RemoteEmbedding`). The records it fills are in `ingest.records`;
`ingest.pipeline` drives it and is the public entry."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from ingest.batching import EMBED_BUFFER, Batching, batching_of, slices_of
from ingest.chunking import Chunker
from ingest.embed_process import warm_up
from ingest.records import Failure, IngestReport, Progress, ProgressFn, noop, timed
from rag.embedding import Embedder, Precision, load_embedder, load_token_counter
from rag.errors import BadDocument, ModelMissing
from rag.settings import Settings
from rag.store import DocumentEntry, StoreWriter
from rag.types import Chunk, Document

# Embeds slices (of texts, or of token ids), yielding (slice number,
# vectors) once each, in any order.
EmbedSlices = Callable[[list[list[str]]], Iterator[tuple[int, np.ndarray]]]
EmbedIdSlices = Callable[[list[list[np.ndarray]]], Iterator[tuple[int, np.ndarray]]]
Slices = Iterator[tuple[int, np.ndarray]]


class RemoteEmbedding(Protocol):
    """Embedding done elsewhere (`ingest.distributed.RayEngine`'s actors,
    `ingest.embed_process.EmbeddingProcess`)."""

    # Embeds slices as soon as they are sent, so a flush may be stored while
    # the next one embeds (`Ingestor._flush`).
    embeds_ahead: bool

    def prepare(self) -> None:
        """The ingest found its first file to parse: start loading the model
        if it loads apart from the parsing."""
        ...

    def batching(self) -> Batching:
        """Asked at the first flush (the model may load meanwhile)."""
        ...

    def embed_slices(self, slices: list[list[str]]) -> Iterator[tuple[int, np.ndarray]]:
        """An `EmbedSlices`: each slice's vectors once, in any order."""
        ...

    def embed_id_slices(self, slices: list[list[np.ndarray]]) -> Iterator[tuple[int, np.ndarray]]:
        """The same for slices of token ids (`TokenCounter.encode`)."""
        ...


@dataclass
class _Pending:
    document: Document
    chunks: list[Chunk]
    size: int
    mtime: float
    existed: bool
    ocr: bool
    token_ids: list[np.ndarray] | None = None  # tokenized where it was split


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
        progress: ProgressFn = noop,
        remote: RemoteEmbedding | None = None,
    ) -> None:
        self.writer = writer
        # The tags every document written gets; None keeps each one's own.
        self.tags: tuple[str, ...] | None = None
        self.settings = settings
        self.report = report
        self._embedder = embedder
        self._loading: Future[Embedder] | None = None  # `start_loading`
        self._chunker: Chunker | None = None
        self._pending: list[_Pending] = []
        # A flush embedded, stored while the next one embeds (`_flush`).
        self._held: tuple[list[_Pending], np.ndarray] | None = None
        self._in_flight: dict[str, str] = {}  # content hash -> path, until flushed
        self._copies: list[tuple[str, str, int, float]] = []
        self._copied: Counter[str] = Counter()  # content hashes copied to a new path
        self._progress = progress
        self._remote = remote
        self._batching: Batching | None = None  # where the model runs: `batching`
        self._buffered = 0  # chunks in `_pending`
        self._last_publish = time.monotonic()
        self.planned = 0  # documents this run means to parse: the bar's shares
        self._settled = 0  # of those, stored or failed
        self._found = 0  # chunks split in this run

    def settle(self) -> None:
        """Count a planned document as done without embedding (it failed, or
        was unchanged)."""
        self._settled += 1

    def fraction(self, partial: float = 0.0) -> float:
        """The planned work done, with `partial` documents' worth embedded."""
        return min((self._settled + partial) / self.planned, 1.0) if self.planned else 0.0

    def start_loading(self) -> None:
        """Start loading the model in a background thread, once, when this
        process will embed: it loads while files are scanned and parsed,
        and `embedder` joins it when the first chunks are to be embedded."""
        if self._embedder is not None or self._loading is not None:
            return
        if self._remote is not None:  # embedded elsewhere: it loads its own model
            self._remote.prepare()
            return
        s = self.settings
        loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder-load")
        self._loading = loader.submit(_warm, s.embedding_model, s.embed_precision, s.embed_device)
        loader.shutdown(wait=False)

    @property
    def embedder(self) -> Embedder:
        """This process's model, loaded (or waited for: the "model" phase)."""
        if self._embedder is None:
            with timed(self.report, "model"):
                if self._loading is None:
                    s = self.settings
                    self._embedder = _warm(s.embedding_model, s.embed_precision, s.embed_device)
                else:  # its error (a model missing) is raised here
                    self._embedder = self._loading.result()
        return self._embedder

    @property
    def chunker(self) -> Chunker:
        """Splits documents that come unsplit; counts with the model's
        tokenizer alone where the model runs elsewhere."""
        if self._chunker is None:
            counter: Any = None
            if self._remote is not None:
                with suppress(ModelMissing):  # no fast tokenizer: the model's own counts
                    counter = load_token_counter(self.settings.embedding_model)
            counter = counter or self.embedder
            self._chunker = Chunker(
                counter.count_tokens,
                self.settings.chunk_tokens,
                self.settings.chunk_overlap,
                counter.max_tokens,
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

    def tags_for(self, path: str) -> tuple[str, ...]:
        """The tags to store with the document at `path`: this run's, else
        those it had (in the state a rebuild replaces, too)."""
        if self.tags is not None:
            return self.tags
        earlier = self.writer.earlier(path)
        return earlier.tags if earlier else ()

    def retag(self, path: str) -> bool:
        """Give an unchanged document this run's tags, re-using its chunks
        and vectors; False when it has them already (or none were given)."""
        record = self.writer.document(path)
        if self.tags is None or record is None or record.tags == self.tags:
            return False
        chunks = self.writer.document_chunks(path)
        vectors = self.writer.stored_vectors(chunks)
        entry = replace(DocumentEntry.of(record), tags=self.tags)
        self.writer.put(entry, [replace(c, id=None) for c in chunks], vectors)
        self.report.updated += 1
        return True

    def copy(self, path: str, content_hash: str, size: int, mtime: float) -> None:
        """Store `path` as a copy of already-ingested identical content."""
        # Stored after the content it copies, and after a flush held back,
        # as it would be were that flush stored already (`_flush`).
        if content_hash in self._in_flight or self._held is not None:
            self._copies.append((path, content_hash, size, mtime))
            return
        source = self.writer.document_with_hash(content_hash)
        assert source is not None
        chunks = self.writer.document_chunks(source.path)
        vectors = self.writer.stored_vectors(chunks)
        existed = self.writer.document(path) is not None
        entry = replace(DocumentEntry.of(source), path=path, content_hash=content_hash,
                        size=size, mtime=mtime, tags=self.tags_for(path))  # fmt: skip
        self.writer.put(entry, [replace(c, source=path, id=None) for c in chunks], vectors)
        self._count(existed)
        self._copied[content_hash] += 1
        self.report.chunks_copied += len(chunks)

    def add(
        self,
        document: Document,
        size: int = 0,
        mtime: float = 0.0,
        ocr: bool = False,
        chunks: list[Chunk] | None = None,
        token_ids: list[np.ndarray] | None = None,
    ) -> None:
        """Buffer a loaded document (`ocr`: it was loaded with OCR) for
        embedding, split here unless its `chunks` come with it (split where
        it was parsed, by the same chunker, with their `token_ids`)."""
        if chunks is None:
            chunker = self.chunker
            self.batching()  # the wait for a model is its own phase
            with timed(self.report, "chunk"):
                chunks = chunker.split(document)
                token_ids = self._tokenize(chunks)
        existed = self.writer.document(document.path) is not None
        self._pending.append(_Pending(document, chunks, size, mtime, existed, ocr, token_ids))
        self._found += len(chunks)
        self._in_flight[document.content_hash] = document.path
        self.report.pages += len(document.pages)
        # A part left out (a message's unreadable attachment), by name: the
        # rest of the document is stored.
        self.report.failed += [Failure(document.path, note) for note in document.notes]
        self._buffered += len(chunks)
        # Below the smaller buffer, where the model runs does not matter
        # yet: it goes on loading while more files are parsed.
        if self._batching is None and self._buffered < EMBED_BUFFER:
            return
        if self._buffered >= self.buffer_size:
            self._flush(hold=True)

    @property
    def buffer_size(self) -> int:
        """Chunks to gather before a flush embeds and stores them."""
        return self.batching().buffer

    def batching(self) -> Batching:
        """How flushes are cut: for the remote model, else for this process's
        (the first call waits for the model: timed as "model")."""
        if self._batching is None:
            if self._remote is not None:
                with timed(self.report, "model"):
                    self._batching = self._remote.batching()
            else:
                self._batching = batching_of(self.embedder)
        return self._batching

    def flush(self) -> None:
        """Embed and store everything buffered (and a flush held back), then
        maybe publish a checkpoint."""
        self._flush(hold=False)

    def _flush(self, hold: bool) -> None:
        """Embed the buffered documents, storing the flush held back (if any)
        while they embed; then store them, or with `hold` (and a model in a
        child process, which embeds as soon as it is sent) hold them back to
        store while the next flush embeds. Documents are stored in order."""
        if self._buffered:
            self.batching()  # the wait for the model, before "embed" is timed
        pending, self._pending, self._buffered = self._pending, [], 0
        texts = [c.indexed_text for p in pending for c in p.chunks]
        with timed(self.report, "embed"):
            slices, batches = self._send(pending, texts)
        held, self._held = self._held, None
        if held is not None:
            with timed(self.report, "write"):
                self._store(*held)
        with timed(self.report, "embed"):
            vectors = self._collect(pending, texts, slices, batches)
        if hold and self._remote is not None and self._remote.embeds_ahead:
            self._held = (pending, vectors)
        else:
            with timed(self.report, "write"):
                self._store(pending, vectors)

    def _store(self, pending: list[_Pending], vectors: np.ndarray) -> None:
        row = 0
        for p in pending:
            doc = p.document
            try:
                entry = DocumentEntry(
                    path=doc.path, content_hash=doc.content_hash, kind=doc.kind,
                    title=p.chunks[0].title if p.chunks else doc.title,  # as clipped
                    size=p.size, mtime=p.mtime, pages=len(doc.pages) or None, ocr=p.ocr,
                    tags=self.tags_for(doc.path),
                )  # fmt: skip
                self.writer.put(entry, p.chunks, vectors[row : row + len(p.chunks)])
                self._count(p.existed)
            except BadDocument as exc:  # the store refused it (e.g. over a field's size)
                self.report.failed.append(Failure(doc.path, str(exc)))
            row += len(p.chunks)
            self.settle()
        self.report.chunks_embedded += row
        if pending:
            self._tell(self.report.chunks_embedded, pending[-1].document.path)
        for p in pending:
            self._in_flight.pop(p.document.content_hash, None)
        # Copies of content now stored; those of a flush still embedding wait.
        ready = [c for c in self._copies if c[1] not in self._in_flight]
        self._copies = [c for c in self._copies if c[1] in self._in_flight]
        for path, digest, size, mtime in ready:
            self.copy(path, digest, size, mtime)
        if time.monotonic() - self._last_publish > self.settings.checkpoint_seconds:
            number = self.writer.checkpoint()  # None in a rebuild: it publishes once, at the end
            if number is not None:
                self.report.generation = number
            self._last_publish = time.monotonic()

    def _tokenize(self, chunks: list[Chunk]) -> list[np.ndarray] | None:
        """Token ids of chunks split here, in one batch call, when the model
        embeds ids (so both ways in, files and in-memory documents, embed
        the same way)."""
        if not self.batching().takes_ids:
            return None
        try:
            counter = load_token_counter(self.settings.embedding_model)
        except ModelMissing:
            return None
        return counter.encode([c.indexed_text for c in chunks])

    def _pending_ids(self, pending: list[_Pending]) -> list[np.ndarray] | None:
        """The chunks' token ids when every one came tokenized and the model
        takes ids (here or remote); else None."""
        if not any(p.chunks for p in pending):
            return None  # nothing to embed: no model is loaded to tell
        if not self.batching().takes_ids:
            return None
        if any(p.token_ids is None and p.chunks for p in pending):
            return None
        return [ids for p in pending for ids in (p.token_ids or [])]

    def _send(self, pending: list[_Pending], texts: list[str]) -> tuple[list[list[int]], Slices]:
        """The rows of `texts` in slices (longest first), handed to whoever
        embeds them: a child process starts at once, this process and Ray
        as the slices are asked for (`_collect`)."""
        if not texts:
            return [], iter(())
        ids = self._pending_ids(pending)
        slices = slices_of(texts, ids, self.batching())
        remote = self._remote
        if ids is not None:
            embed_ids = remote.embed_id_slices if remote else self._embed_ids
            return slices, embed_ids([[ids[i] for i in rows] for rows in slices])
        embed = remote.embed_slices if remote else self._embed_here
        return slices, embed([[texts[i] for i in rows] for rows in slices])

    def _collect(
        self, pending: list[_Pending], texts: list[str], slices: list[list[int]], batches: Slices
    ) -> np.ndarray:
        """The documents' vectors, in order, as each slice comes back;
        progress after each slice but the last (`_store` reports that one
        once the documents are stored). Each slice must come back exactly
        once, whoever embeds it."""
        if not texts:
            return np.zeros((0, 0), np.float32)
        owner = [k for k, p in enumerate(pending) for _ in p.chunks]
        embedded = [0] * len(pending)
        vectors: np.ndarray | None = None
        returned: set[int] = set()
        for number, part in batches:
            rows = slices[number]
            if number in returned or len(part) != len(rows):
                raise RuntimeError(f"embedding slice {number} came back twice or cut short")
            returned.add(number)
            if vectors is None:
                vectors = np.empty((len(texts), part.shape[1]), np.float32)
            vectors[rows] = part
            for i in rows:
                embedded[owner[i]] += 1
            if len(returned) < len(slices):
                shares = zip(embedded, pending, strict=True)
                partial = sum(n / len(p.chunks) for n, p in shares if n)
                done = self.report.chunks_embedded + sum(embedded)
                self._tell(done, pending[owner[rows[-1]]].document.path, partial)
        if vectors is None or len(returned) != len(slices):
            raise RuntimeError(f"{len(slices) - len(returned)} embedding slices never came back")
        return vectors

    def _embed_here(self, slices: list[list[str]]) -> Iterator[tuple[int, np.ndarray]]:
        """The default `EmbedSlices`: this process's model, in order."""
        for number, texts in enumerate(slices):
            yield number, self.embedder.embed_batch(texts)

    def _embed_ids(self, slices: list[list[np.ndarray]]) -> Iterator[tuple[int, np.ndarray]]:
        """Pre-tokenized slices, each one batch of this process's model."""
        embed = self.embedder.embed_token_ids  # type: ignore[attr-defined]
        for number, ids in enumerate(slices):
            yield number, embed(ids)

    def _tell(self, done: int, path: str, partial: float = 0.0) -> None:
        """Progress in chunks embedded (of those found so far)."""
        self._progress(Progress("embed", done, self._found, path, done, self.fraction(partial)))

    def tell_read(self, done: int, total: int, path: str) -> None:
        """Progress in files read: `done` of `total` parsed (or failed)."""
        chunks = self.report.chunks_embedded
        self._progress(Progress("ingest", done, total, path, chunks, self.fraction()))

    def delete(self, path: str) -> bool:
        record = self.writer.document(path)
        deleted = self.writer.delete(path)
        self.report.deleted += deleted
        if deleted and record is not None and self._copied[record.content_hash] > 0:
            self._copied[record.content_hash] -= 1
            self.report.renamed += 1
        return deleted

    def _count(self, existed: bool) -> None:
        if existed:
            self.report.updated += 1
        else:
            self.report.added += 1


def _warm(model: str, precision: Precision, device: str) -> Embedder:
    """The model loaded and warmed up (`warm_up`), as the child process does."""
    embedder = load_embedder(model, precision, device)
    warm_up(embedder)
    return embedder
