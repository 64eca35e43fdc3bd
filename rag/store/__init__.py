"""The `Store` seam: where a knowledge base keeps its chunks, vectors and
BM25 index, and how a batch of changes becomes visible at once.

Two implementations: the local store (FAISS + SQLite + bm25s files in the
index folder, `rag.store.local`: `store` over `generations` / `writer`, the
default) and Milvus (`rag.store.milvus`: Milvus Lite in a local file, or a
cluster by URI).
Callers (`KnowledgeBase`, answering, the app, `rag eval`, the benchmarks,
ingestion) use only what is declared here; `open_store` picks the
implementation from what the index folder records: its `store.json`
(`{"store": URI, "id": ID}`, without credentials), which a non-local store
writes before it first writes (`record_store`); no record means the local
store. ID is the knowledge base's identity: random, written once, kept when
the folder is renamed; a store shared by several bases (one Milvus) keeps
each base's rows apart by it, never by the folder's name.

Three roles:
- `Store`: one knowledge base's storage. Hands out the current `Snapshot`
  and opens the one `StoreWriter` allowed at a time.
- `Snapshot`: one published state, read-only; it never changes under a
  reader, whatever a writer does meanwhile (the Milvus store guarantees it
  while the snapshot is the current or the previous state; a long-lived
  reader takes a new snapshot when the store's `stamp` changes).
- `StoreWriter`: builds the next state; nothing it does is visible until it
  publishes (at the end, or at a checkpoint of an incremental ingest), and a
  writer killed at any moment leaves the previous state current and whole.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import secrets
import urllib.parse
from collections.abc import Hashable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from rag import layout
from rag.errors import IndexCorrupt, IndexIncompatible, StoreUnknown
from rag.layout import IndexParams
from rag.settings import Settings
from rag.types import Chunk

if TYPE_CHECKING:
    from rag.filters import Filters

Scored = list[tuple[int, float]]  # (chunk id, score), best first

STORE_RECORD = "store.json"
# A knowledge base's identity, as `new_identity` makes it: it goes into
# collection names, so nothing else is accepted from the record.
_IDENTITY = re.compile(r"[0-9a-f]{16,32}")

# URI scheme -> "module:Name" of the store for it, built as
# Name(root, uri, settings). Imported on use: a knowledge base loads only
# its own store's engine client.
STORES: dict[str, str] = {
    "local": "rag.store.local.store:LocalStore",
    "milvus-lite": "rag.store.milvus.store:open_milvus",
    "milvus": "rag.store.milvus.store:open_milvus",
    "milvus+tls": "rag.store.milvus.store:open_milvus",
    "https": "rag.store.milvus.store:open_milvus",  # a Milvus cluster over TLS
}


@dataclass(frozen=True)
class DocumentRecord:
    id: int
    path: str
    content_hash: str
    kind: str
    title: str
    size: int
    mtime: float
    pages: int | None
    ingested_at: float
    chunks: int = 0
    ocr: bool = False  # ingested with OCR of pages without a text layer
    tags: tuple[str, ...] = ()  # the user's (`ingest --tag`), as `rag.filters.tags_of` keeps them


@dataclass(frozen=True)
class DocumentEntry:
    """What `StoreWriter.put` stores about a document beside its chunks and
    vectors (the writer adds its id, chunk count and ingestion time)."""

    path: str
    content_hash: str
    kind: str
    title: str = ""
    size: int = 0
    mtime: float = 0.0
    pages: int | None = None
    ocr: bool = False  # parsed with OCR, so a rebuild parses it so again
    tags: tuple[str, ...] = ()  # the user's, as `rag.filters.tags_of` returns them

    @classmethod
    def of(cls, record: DocumentRecord) -> DocumentEntry:
        """A stored document's entry, to store it again (copied, re-tagged)."""
        return cls(record.path, record.content_hash, record.kind, record.title, record.size,
                   record.mtime, record.pages, record.ocr, record.tags)  # fmt: skip


@dataclass(frozen=True)
class Published:
    """What the current state is: its number and the parameters it was built with."""

    generation: int
    params: IndexParams


@dataclass(frozen=True)
class StoreStats:
    """What `rag stats` and the app show about a knowledge base."""

    index: str  # the index folder
    store: str  # "local", or the Milvus URI without credentials
    generation: int
    documents: int
    chunks: int
    vectors: int
    model: str
    dimension: int
    chunk_tokens: int
    chunk_overlap: int
    disk_bytes: int | None  # None where the engine does not say
    updated_at: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class Snapshot(Protocol):
    """One published state of a knowledge base."""

    @property
    def generation(self) -> int: ...

    @property
    def params(self) -> IndexParams: ...

    def dense(self, query: np.ndarray, k: int, filters: Filters | None = None) -> Scored:
        """The `k` nearest chunks by inner product with the unit `query`
        (among the chunks of documents `filters` matches, when given)."""
        ...

    def dense_scores(self, query: np.ndarray, ids: Sequence[int]) -> dict[int, float]:
        """Exact inner products of `query` with the stored vectors of `ids`."""
        ...

    def bm25(
        self, query: str, k: int, also: Sequence[int] = (), filters: Filters | None = None
    ) -> tuple[Scored, dict[int, float]]:
        """The `k` best chunks by BM25 (score > 0; among the chunks of
        documents `filters` matches, when given), and the BM25 scores of
        those and of the chunks in `also` (0 where no query term matched)."""
        ...

    def has_term(self, term: str) -> bool:
        """Whether some chunk holds the analysed BM25 `term` (one of
        `rag.lexical.terms`): a vocabulary lookup, not a search."""
        ...

    def chunks(self, ids: Iterable[int]) -> dict[int, Chunk]: ...

    def vectors_of(self, ids: Sequence[int]) -> np.ndarray:
        """The stored vectors of `ids`, in that order, exactly as written
        (float32; to copy chunks to another store without embedding them
        again). `IndexCorrupt` for an id this state lacks."""
        ...

    def document_chunks(self, path: str) -> list[Chunk]:
        """The chunks of the document at `path`, in document order."""
        ...

    def context(self, chunk: Chunk, neighbours: int = 1) -> tuple[str, str, str]:
        """(text before, the chunk, text after) from its neighbours on the same page."""
        ...

    def documents(self) -> list[DocumentRecord]:
        """Every document, by path."""
        ...

    def document(self, path: str) -> DocumentRecord | None: ...

    def document_with_hash(self, content_hash: str) -> DocumentRecord | None: ...

    def stats(self) -> StoreStats: ...

    def close(self) -> None: ...


class StoreWriter(Protocol):
    """Builds the next state. Reads (`document`, `document_chunks`, ...) see
    the state being built, including this writer's own changes."""

    params: IndexParams
    rebuild: bool
    changed: bool

    def put(self, entry: DocumentEntry, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        """Add a document, replacing any earlier version stored at `entry.path`."""
        ...

    def delete(self, path: str) -> bool:
        """Remove a document and its chunks; False if there was none."""
        ...

    def stored_vectors(self, chunks: Sequence[Chunk]) -> np.ndarray:
        """The vectors of stored chunks (to copy a document without embedding it again)."""
        ...

    def paths(self) -> list[str]: ...

    def earlier(self, path: str) -> DocumentRecord | None:
        """The record this write replaces at `path` (a rebuild: in the state it replaces)."""
        ...

    def document(self, path: str) -> DocumentRecord | None: ...

    def document_with_hash(self, content_hash: str) -> DocumentRecord | None: ...

    def document_chunks(self, path: str) -> list[Chunk]: ...

    def checkpoint(self) -> int | None:
        """Publish what is done so far and go on writing; None for a rebuild,
        which publishes only when complete."""
        ...


class Store(Protocol):
    """One knowledge base's storage."""

    @property
    def uri(self) -> str:
        """ "local", or the engine's URI without credentials."""
        ...

    def exists(self) -> bool:
        """Whether anything was ever published."""
        ...

    def stamp(self) -> Hashable:
        """Changes whenever a new state is published (cheap: called per search)."""
        ...

    def snapshot(self) -> Snapshot:
        """The current published state (raises `IndexMissing` when there is none)."""
        ...

    def published(self) -> Published | None:
        """The current state's generation and parameters, without opening
        it (None before the first publish)."""
        ...

    def published_documents(self) -> dict[str, DocumentRecord]:
        """The current state's documents by path, without loading vectors
        (none before the first publish; `IndexCorrupt` when unreadable)."""
        ...

    def writer(
        self,
        params: IndexParams,
        *,
        rebuild: bool = False,
        allow_drop: bool = False,
        lock_timeout: float = 0.0,
    ) -> AbstractContextManager[StoreWriter]:
        """Hold the one-writer lock, build the next state and publish it on
        success (if anything changed); discard it on any error."""
        ...

    def drop(self) -> None:
        """Remove this knowledge base's rows from the engine that keeps them,
        under the one-writer lock (`IndexBusy` while a writer works). The
        index folder is the caller's to remove."""
        ...


def scheme(uri: str) -> str:
    """ "local" for "local", "milvus-lite" for "milvus-lite:///m.db"."""
    return uri.partition("://")[0] if "://" in uri else uri


def public_uri(uri: str) -> str:
    """`uri` without user name or password, fit to write down or show."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port is not None else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _record(root: Path) -> dict[str, object] | None:
    path = root / STORE_RECORD
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise IndexCorrupt(f"{path} is unreadable ({exc}).") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("store"), str):
        raise IndexCorrupt(f"{path} names no store.")
    return raw


def recorded_store(root: Path) -> str | None:
    """The store the index folder at `root` records; "local" for a folder
    with a local index and no record (all indexes written before the
    record existed); None for a folder with neither (a new knowledge base)."""
    raw = _record(root)
    if raw is None:
        return "local" if (root / layout.CURRENT_FILE).exists() else None
    return str(raw["store"])


def valid_identity(identity: str) -> bool:
    return bool(_IDENTITY.fullmatch(identity))


def new_identity() -> str:
    return secrets.token_hex(8)


def recorded_identity(root: Path) -> str | None:
    """The identity of the knowledge base at `root`; None where its folder
    records none (a new base, or one recorded before identities existed)."""
    raw = _record(root)
    if raw is None or "id" not in raw:
        return None
    identity = raw["id"]
    if not isinstance(identity, str) or not valid_identity(identity):
        raise IndexCorrupt(
            f"{root / STORE_RECORD} records a malformed knowledge base id ({str(identity)[:40]!r})."
        )
    return identity


def record_store(root: Path, uri: str, identity: str | None = None) -> None:
    """Record in the index folder which store holds this knowledge base
    (without credentials), and its identity. A non-local store calls it
    before it first writes, so that `--index` alone finds it, and a writer
    killed before its first publish is followed by one of the same identity
    (which clears what it left)."""
    root.mkdir(parents=True, exist_ok=True)
    record = {"store": public_uri(uri)} | ({"id": identity} if identity else {})
    tmp = root / f".{STORE_RECORD}.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, root / STORE_RECORD)
    layout.fsync_path(root)


def open_store(root: Path, settings: Settings) -> Store:
    """The store of the knowledge base at `root`: the one its folder
    records, else (a new one) `settings.store`. A store named explicitly
    (`--store`, `RAG_STORE`) that is not the recorded one is an error."""
    root = Path(root)
    recorded = recorded_store(root)
    asked = public_uri(settings.store) if "store" in settings.model_fields_set else None
    if recorded is not None and asked is not None and asked != recorded:
        raise IndexIncompatible(
            f"The knowledge base at {root} is kept in the store {recorded!r}, not {asked!r}. "
            f"Open it without --store or RAG_STORE, or build one in {asked!r} in another "
            f"folder: ingest PATH... --index OTHER --store {asked}"
        )
    uri = recorded or settings.store
    target = STORES.get(scheme(uri))
    if target is None:
        raise StoreUnknown(
            f"No store handles {scheme(uri)!r} (in {public_uri(uri)!r}); "
            f"known: {', '.join(sorted(STORES))}."
        )
    module, _, name = target.partition(":")
    store: Store = getattr(importlib.import_module(module), name)(root, uri, settings)
    return store


def replaced_documents(store: Store) -> dict[str, DocumentRecord]:
    """The documents a rebuild replaces, by path. A damaged index has none
    to lose: a rebuild is how it is repaired."""
    try:
        return store.published_documents()
    except IndexCorrupt:
        return {}
