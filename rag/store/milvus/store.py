"""The Milvus store: a knowledge base's chunks, vectors and BM25 terms in
Milvus (Milvus Lite in a local file, or a cluster by URI), behind the
`rag.store` seam. This module opens it and runs a writer under the
index folder's lock; `rag.store.milvus.reader` reads a generation,
`rag.store.milvus.writer` writes the next, `rag.store.milvus.schema` holds the shapes.

How a batch of changes becomes visible at once (MVCC rows, see
`rag.store.milvus.schema`): a writer tags what it adds with its generation W
(`gen_from = W`) and what it removes with `gen_to = W`; readers of
generation G filter every query by `gen_from <= G < gen_to`. The commit is
one row inserted into PREFIX_meta, the newest of which names the published
generation. A writer killed before that insert leaves rows no reader can
see; the next writer deletes them and undoes its `gen_to` marks. Rows stay
until no reader of the current or the previous generation can need them.
A rebuild writes a fresh collection pair, named by its meta row.

BM25: Milvus Lite 3.2.2 scores with per-segment statistics, and inside its
memtable with statistics of the filtered rows only, so its scores are not
BM25 over the published state (a scalar filter changes them). On Lite the
BM25 side is therefore bm25s over the stored terms (`rag.lexical`, as the
local store, built once per snapshot); on a cluster it is Milvus's own
full-text search (`bm25="milvus"` chooses it anywhere).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pymilvus import MilvusClient

from rag import layout
from rag.errors import IndexMissing
from rag.layout import IndexParams
from rag.settings import Settings
from rag.store import (
    STORE_RECORD,
    DocumentRecord,
    Published,
    Store,
    new_identity,
    record_store,
    recorded_identity,
)
from rag.store.milvus import schema as ms
from rag.store.milvus.reader import MilvusSnapshot, Reader
from rag.store.milvus.writer import MilvusWriter

log = logging.getLogger(__name__)

Bm25Engine = Literal["ours", "milvus"]


class MilvusStore:
    """One knowledge base in Milvus. `root` is its index folder (the writer's lock)."""

    def __init__(
        self,
        target: ms.Target,
        root: Path,
        token: str | None = None,
        bm25: Bm25Engine | None = None,
        insecure: bool = False,
    ) -> None:
        ms.check_transport(target, token, insecure)  # at once, not at the first query
        self.target, self.root = target, root
        self._token = token  # kept in memory only
        self._insecure = insecure
        self._prefix: str | None = None
        self.bm25_engine: Bm25Engine = bm25 or ("ours" if target.lite_path else "milvus")
        self._client: MilvusClient | None = None
        self._loaded: set[str] = set()

    @property
    def uri(self) -> str:
        return self.target.uri

    @property
    def client(self) -> MilvusClient:
        if self._client is None:
            self._client = ms.connect(self.target, self._token, self._insecure)
        return self._client

    @property
    def prefix(self) -> str | None:
        """The prefix of this base's collections, from the identity its
        folder records (so a renamed folder keeps its rows, and a new base
        under an old name has none of them); None while no writer has named
        it (a new base: nothing to read)."""
        if self._prefix is None and (self.root / STORE_RECORD).exists():
            self._prefix = ms.base_prefix(self.target, recorded_identity(self.root))
        return self._prefix

    def claim(self) -> str:
        """This base's prefix, naming it first when none is recorded. Under
        the write lock, before anything is written: a writer killed before
        its first publish is followed by one of the same name, which clears
        what it left."""
        prefix = self.prefix
        if prefix is None:
            identity = new_identity()
            record_store(self.root, self.uri, identity)
            prefix = self._prefix = ms.base_prefix(self.target, identity)
        return prefix

    def names(self, epoch: int) -> tuple[str, str]:
        """The chunk and document collections of `epoch` of this base."""
        prefix = self.prefix
        if prefix is None:
            raise IndexMissing(f"No index in {self.uri} for {self.root} yet.")
        return ms.names(prefix, epoch)

    def collection(self, name: str) -> str:
        """`name`, loaded (collections start released when Milvus reopens)."""
        if name not in self._loaded:
            self.client.load_collection(name)
            self._loaded.add(name)
        return name

    @property
    def upper_bound_needed(self) -> bool:
        return self.target.lite_path is None

    def metas(self) -> list[ms.Meta]:
        """The commit records kept, oldest first."""
        if self.prefix is None:
            return []
        name = f"{self.prefix}_meta"
        if not self.client.has_collection(name):
            return []
        rows = self.client.query(self.collection(name), filter="id >= 0", output_fields=["record"])
        return sorted((ms.Meta.from_json(r["record"]) for r in rows), key=lambda m: m.generation)

    def current(self) -> ms.Meta | None:
        metas = self.metas()
        return metas[-1] if metas else None

    def exists(self) -> bool:
        return self.current() is not None

    def stamp(self) -> tuple[str, int | None]:
        meta = self.current()
        return (self.uri, meta.generation if meta else None)

    def snapshot(self) -> MilvusSnapshot:
        meta = self.current()
        if meta is None:
            raise IndexMissing(
                f"No index in {self.uri}. Build one with: ingest PATH... --index {self.root}"
            )
        meta.check_schema(self.root, self.uri)
        return MilvusSnapshot(self, meta)

    def published(self) -> Published | None:
        meta = self.current()
        return Published(meta.generation, meta.params) if meta else None

    def published_documents(self) -> dict[str, DocumentRecord]:
        meta = self.current()
        if meta is None:
            return {}
        reader = Reader(self, meta.epoch, meta.generation, meta.next_id, meta.schema)
        return {d.path: d for d in reader.documents()}

    @contextmanager
    def writer(
        self,
        params: IndexParams,
        *,
        rebuild: bool = False,
        allow_drop: bool = False,
        lock_timeout: float = 0.0,
    ) -> Iterator[MilvusWriter]:
        """Hold the index folder's write lock, build the next generation,
        publish it on success (if anything changed), discard it on any error."""
        with layout.write_lock(self.root, lock_timeout):
            writer = MilvusWriter(self, params, rebuild=rebuild, allow_drop=allow_drop)
            try:
                yield writer
                if writer.changed:
                    writer.publish()
            except BaseException:
                writer.clean()  # a kill skips this: the next writer does it
                raise

    def drop(self) -> None:
        """Drop this base's collections (under the write lock). A base
        recorded before identities existed keeps them: other such bases in
        the same Milvus may share them."""
        with layout.write_lock(self.root):
            identity = recorded_identity(self.root)
            if identity is None:
                if self.prefix is not None:
                    log.warning("%s: %s_* may be other bases' too; kept", self.root, self.prefix)
                return
            prefix = ms.base_prefix(self.target, identity)
            for name in self.client.list_collections():
                if ms.own_collection(name, prefix):
                    self.client.drop_collection(name)
            self._loaded.clear()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
            self._loaded.clear()
        ms.release(self.target)


def open_milvus(root: Path, uri: str, settings: Settings) -> MilvusStore:
    """The knowledge base at `uri` whose index folder is `root` (as
    `rag.store.STORES` builds a store). A cluster's token is
    `settings.milvus_token` (RAG_MILVUS_TOKEN), kept in memory only, and
    sent in plain text to another machine only with RAG_MILVUS_INSECURE."""
    token = settings.milvus_token
    secret = token.get_secret_value() if token else None
    return MilvusStore(ms.parse_uri(uri), Path(root), secret, insecure=settings.milvus_insecure)


def _conforms(store: MilvusStore) -> Store:
    return store  # mypy checks that the Milvus store is a `Store`
