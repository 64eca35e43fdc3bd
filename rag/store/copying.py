"""Copying a knowledge base from one store to another without embedding it
again (`rag copy`, `rag restore --to-store`, the benchmarks), and checking
that the copy answers as the original does.

Everything goes through the `rag.store` seam: the documents, chunks and
stored vectors of one published `Snapshot` are put into the target's
`StoreWriter`, which publishes them at once. Chunk ids and ingest times are
the target's own; texts, offsets, pages, titles, tags and vectors are the
original's. The check runs the same searches on both (`verify`) and
compares the top results passage by passage.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rag.embedding import Embedder
from rag.errors import BadDocument, IndexCorrupt
from rag.knowledge_base import KnowledgeBase
from rag.settings import Settings
from rag.store import Snapshot, Store, open_store
from rag.types import Hit

PROBE_WORDS = 12  # words of a passage that make a probe query
SCORE_TOLERANCE = 1e-4  # float32 sums in another order: equal below this


@dataclass(frozen=True)
class Copied:
    documents: int
    chunks: int
    seconds: float  # publishing included


def copy(snap: Snapshot, target: Store, *, replace: bool = False) -> Copied:
    """Every document of `snap`, with its stored vectors, into `target` in
    one writer. `replace`: rebuild a target that holds a base already
    (its documents are dropped), else add to it."""
    started = time.perf_counter()
    documents = snap.documents()
    chunks = 0
    with target.writer(snap.params, rebuild=replace, allow_drop=replace) as writing:
        for doc in documents:
            stored = snap.document_chunks(doc.path)
            if len(stored) != doc.chunks:
                # A Milvus snapshot's rows go two publishes after it stops being current.
                raise IndexCorrupt(
                    f"{doc.path}: {len(stored)} passages read, its record says {doc.chunks}: "
                    "the knowledge base changed under the copy. Nothing was copied; try again."
                )
            try:
                writing.put(
                    path=doc.path, content_hash=doc.content_hash, kind=doc.kind,
                    title=doc.title, size=doc.size, mtime=doc.mtime, pages=doc.pages,
                    chunks=stored, vectors=snap.vectors_of([int(c.id or 0) for c in stored]),
                    ocr=doc.ocr, tags=doc.tags,
                )  # fmt: skip
            except BadDocument as exc:
                raise BadDocument(f"{doc.path} cannot be copied to {target.uri}: {exc}") from exc
            chunks += len(stored)
    return Copied(len(documents), chunks, time.perf_counter() - started)


def probe_queries(snap: Snapshot, count: int = 20) -> list[str]:
    """`count` search queries drawn from the base itself: the first words
    of passages spread evenly over its documents (the same ones every run)."""
    documents = snap.documents()
    per_doc = max(1, -(-count // max(1, len(documents))))
    queries: list[str] = []
    for doc in documents:
        stored = snap.document_chunks(doc.path)
        step = max(1, len(stored) // per_doc)
        for chunk in stored[::step][:per_doc]:
            words = chunk.text.split()[:PROBE_WORDS]
            if words and " ".join(words) not in queries:
                queries.append(" ".join(words))
    if len(queries) <= count:
        return queries
    spacing = len(queries) / count
    return [queries[int(i * spacing)] for i in range(count)]


def _key(hit: Hit) -> tuple[str, int, int, int | None, str]:
    """A passage, as two stores that number chunks differently both name it."""
    chunk = hit.chunk
    return (chunk.source, chunk.start, chunk.end, chunk.page, chunk.text)


def _name(hit: Hit) -> str:
    page = f", page {hit.page}" if hit.page is not None else ""
    return f"{Path(hit.source).name}{page} #{hit.chunk.ordinal}"


def difference(a: Sequence[Hit], b: Sequence[Hit], tol: float = SCORE_TOLERANCE) -> str:
    """How two result lists differ ("" when they are the same): the same
    passages with the same scores in the same order; passages whose scores
    tie may swap places, and a tie at the cut-off may let in either one."""
    if len(a) != len(b):
        return f"{len(a)} results against {len(b)}"
    for rank, (x, y) in enumerate(zip(a, b, strict=True), start=1):
        if abs(x.score - y.score) > tol:
            return (
                f"rank {rank}: {_name(x)} scores {x.score:.4f} in the original, "
                f"{_name(y)} {y.score:.4f} in the copy"
            )
    last = a[-1].score if a else 0.0
    for mine, theirs, where in ((a, b, "copy"), (b, a, "original")):
        scores = {_key(h): h.score for h in theirs}
        for rank, hit in enumerate(mine, start=1):
            other = scores.get(_key(hit))
            if other is None and abs(hit.score - last) > tol:
                return f"rank {rank}: {_name(hit)} is missing from the {where}"
            if other is not None and abs(other - hit.score) > tol:
                return f"{_name(hit)} scores {hit.score:.4f} and {other:.4f}"
    return ""


@dataclass(frozen=True)
class Probe:
    query: str
    top: str  # the first result, named
    difference: str  # "" when both gave the same results


def verify(
    original: Path,
    copied: Path,
    settings: Settings,
    queries: Sequence[str],
    k: int = 10,
    embedder: Embedder | None = None,
) -> list[Probe]:
    """Search `queries` (hybrid, top `k`) in both knowledge bases and
    compare the results. Both search their float32 vectors, so what is
    compared is what is stored, not the search precision."""
    exact = unpinned(settings.model_copy(update={"dense_precision": "float32"}))
    first = KnowledgeBase.open(original, embedder, exact)
    second = KnowledgeBase.open(copied, embedder or first.embedder, exact)
    try:
        probes = []
        for query in queries:
            a, b = first.search(query, k=k), second.search(query, k=k)
            probes.append(Probe(query, _name(a[0]) if a else "", difference(a, b)))
        return probes
    finally:
        for kb in (first, second):
            kb.close()
            getattr(kb.store, "close", lambda: None)()


def unpinned(settings: Settings) -> Settings:
    """`settings` naming no store: each folder's record says which holds it."""
    loose = settings.model_copy()
    loose.__pydantic_fields_set__.discard("store")
    return loose


def open_target(root: Path, uri: str, settings: Settings) -> Store:
    """The store `uri` for the knowledge base folder `root`."""
    return open_store(root, settings.model_copy(update={"store": uri}))
