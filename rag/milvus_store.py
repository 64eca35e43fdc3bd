"""The Milvus store: a knowledge base's chunks, vectors and BM25 terms in
Milvus (Milvus Lite in a local file, or a cluster by URI), behind the
`rag.storage` seam.

How a batch of changes becomes visible at once (MVCC rows, see
`rag.milvus_schema`): a writer tags what it adds with its generation W
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

import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pymilvus import MilvusClient

from rag import layout, lexical
from rag import milvus_schema as ms
from rag.errors import IndexMissing
from rag.filters import Filters
from rag.layout import IndexParams
from rag.settings import Settings
from rag.storage import (
    DocumentRecord,
    Published,
    Store,
    StoreStats,
    check_compatible,
    check_rebuild,
    record_store,
    recorded_store,
    replaced_documents,
)
from rag.types import Chunk

Bm25Engine = Literal["ours", "milvus"]
TOP_K_MAX = 16384  # the most results Milvus returns per search


class MilvusStore:
    """One knowledge base in Milvus. `root` is its index folder (the writer's lock)."""

    def __init__(
        self,
        target: ms.Target,
        root: Path,
        token: str | None = None,
        bm25: Bm25Engine | None = None,
    ) -> None:
        self.target, self.root = target, root
        self._token = token  # kept in memory only
        self.bm25_engine: Bm25Engine = bm25 or ("ours" if target.lite_path else "milvus")
        self._client: MilvusClient | None = None
        self._loaded: set[str] = set()

    @property
    def uri(self) -> str:
        return self.target.uri

    @property
    def client(self) -> MilvusClient:
        if self._client is None:
            self._client = ms.connect(self.target, self._token)
        return self._client

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
        name = f"{self.target.prefix}_meta"
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
        reader = ms.Reader(self, meta.epoch, meta.generation, meta.next_id, meta.schema)
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

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
            self._loaded.clear()
        ms.release(self.target)


class MilvusSnapshot(ms.Reader):
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


class MilvusWriter(ms.Reader):
    """Builds generation `number` (= published + 1). Use through `MilvusStore.writer`."""

    def __init__(
        self,
        store: MilvusStore,
        params: IndexParams,
        rebuild: bool = False,
        allow_drop: bool = False,
    ) -> None:
        meta = store.current()
        self.root, self.params, self.rebuild, self.allow_drop = (
            store.root,
            params,
            rebuild,
            allow_drop,
        )
        self.published = meta.generation if meta else 0
        self.created_at = meta.created_at if meta and not rebuild else time.time()
        if meta and not rebuild:
            meta.check_schema(store.root, store.uri)
            check_compatible(store.root, meta.params, params)
        # What a rebuild replaces, read under the lock: nothing can change it.
        self.previous = replaced_documents(store) if rebuild else {}
        number = self.published + 1
        super().__init__(
            store, meta.epoch if meta else number, number, meta.next_id if meta else 1,
            ms.SCHEMA_VERSION,  # an older pair is refused above, or replaced below
        )  # fmt: skip
        self.clean()
        if rebuild or meta is None:
            self.epoch = number
            self.chunks_name, self.docs_name = ms.names(store.target.prefix, number)
            ms.create_pair(self.client, store.target.prefix, number, params.dimension)
        self.changed = rebuild

    def clean(self) -> None:
        """Remove what unpublished generations left (a writer killed or
        failed), and what no reader of the current or the previous
        generation can need."""
        prefix, published = self.store.target.prefix, self.published
        metas = self.store.metas()
        keep = {m.epoch for m in metas if m.generation >= published - 1}
        pattern = re.compile(rf"^{prefix}_(chunks|docs)_(\d+)$")
        for name in self.client.list_collections():
            match = pattern.match(name)
            if match and int(match.group(2)) not in keep:
                self.client.drop_collection(name)
                self.store._loaded.discard(name)
        old = [m.generation for m in metas if m.generation < published - 1]
        if old:
            self.client.delete(f"{prefix}_meta", ids=old)
        current = next((m for m in metas if m.generation == published), None)
        if current is None:
            return
        for name in ms.names(prefix, current.epoch):
            self.store.collection(name)
            self.client.delete(name, filter=f"gen_from > {published}")
            self.client.delete(name, filter=f"gen_to <= {published - 1}")
            marked = f"gen_to > {published} and gen_to < {ms.ALIVE}"
            upper = current.next_id if self.store.upper_bound_needed else None
            rows = ms.query_all(self.client, name, marked, ["id"], upper)
            self._mark(name, [int(r["id"]) for r in rows], ms.ALIVE)

    def _mark(self, name: str, ids: list[int], gen_to: int) -> None:
        for start in range(0, len(ids), 1000):
            rows = [{"id": i, "gen_to": gen_to} for i in ids[start : start + 1000]]
            self.client.upsert(name, rows, partial_update=True)

    def _take(self, n: int) -> list[int]:
        ids = list(range(self.next_id, self.next_id + n))
        self.next_id += n
        return ids

    def delete(self, path: str) -> bool:
        """Remove a document and its chunks; False if there was none."""
        key = ms.literal(ms.path_key(path))
        docs = self._rows(self.docs_name, f"path_key == {key}", ["gen_from"])
        for doc in docs:
            chunks = self._rows(self.chunks_name, f"doc_id == {int(doc['id'])}", ["id"])
            ids = [int(r["id"]) for r in chunks]
            if int(doc["gen_from"]) == self.number:  # written by this generation: gone for good
                if ids:
                    self.client.delete(self.chunks_name, ids=ids)
                self.client.delete(self.docs_name, ids=[int(doc["id"])])
            else:  # published: hidden from this generation on
                self._mark(self.chunks_name, ids, self.number)
                self._mark(self.docs_name, [int(doc["id"])], self.number)
        self.changed = self.changed or bool(docs)
        return bool(docs)

    def put(
        self,
        *,
        path: str,
        content_hash: str,
        kind: str,
        title: str,
        size: int,
        mtime: float,
        pages: int | None,
        chunks: Sequence[Chunk],
        vectors: np.ndarray,
        ocr: bool = False,
        tags: Sequence[str] = (),
    ) -> None:
        """Add a document, replacing any earlier version stored at `path`."""
        if len(chunks) != len(vectors):
            raise ValueError("one vector per chunk")
        self.changed = True
        self.delete(path)
        doc_id, *ids = self._take(len(chunks) + 1)
        common = {"path": path, "title": title, "path_key": ms.path_key(path),
                  "gen_from": self.number, "gen_to": ms.ALIVE}  # fmt: skip
        scoped = {"kind": kind, "mtime": mtime, "tags": list(tags)}  # on every row (schema 2)
        vectors = np.asarray(vectors, dtype=np.float32)
        rows = [
            {**common, **scoped, "id": cid, "vector": vectors[ordinal].tolist(), "doc_id": doc_id,
             "terms": " ".join(lexical.terms(chunk.indexed_text)), "text": chunk.text,
             "page": -1 if chunk.page is None else chunk.page, "start": chunk.start,
             "end": chunk.end, "ordinal": ordinal,
             "locator": chunk.locator}
            for ordinal, (cid, chunk) in enumerate(zip(ids, chunks, strict=True))
        ]  # fmt: skip
        for start in range(0, len(rows), 256):
            self.client.insert(self.chunks_name, rows[start : start + 256])
        self.client.insert(self.docs_name, [{
            **common, **scoped, "id": doc_id, "vector": ms.DUMMY, "content_hash": content_hash,
            "size": size, "pages": -1 if pages is None else pages,
            "ingested_at": time.time(), "chunks": len(chunks), "ocr": ocr,
        }])  # fmt: skip

    def stored_vectors(self, chunks: Sequence[Chunk]) -> np.ndarray:
        ids = [int(c.id) for c in chunks if c.id is not None]
        return self._vectors(ids, self.params.dimension)

    def paths(self) -> list[str]:
        return [d.path for d in self.documents()]

    def earlier(self, path: str) -> DocumentRecord | None:
        return self.previous.get(path) if self.rebuild else self.document(path)

    def publish(self) -> int:
        """Commit: one meta row names generation `number` (and its collections)."""
        if self.rebuild:
            check_rebuild(self.root, self.paths(), self.previous, self.allow_drop)
        if recorded_store(self.root) is None:  # so that --index alone finds this store
            record_store(self.root, self.store.uri)
        meta = ms.Meta(
            generation=self.number, epoch=self.epoch, next_id=self.next_id,
            documents=self.count("documents"), chunks=self.count("chunks"), params=self.params,
            created_at=self.created_at, updated_at=time.time(), schema=ms.SCHEMA_VERSION,
        )  # fmt: skip
        # Sealed segments are searched through their index; Milvus Lite's
        # memtable is scanned row by row in Python.
        self.client.flush(self.chunks_name)
        name = f"{self.store.target.prefix}_meta"
        if not self.client.has_collection(name):
            ms.create_meta(self.client, self.store.target.prefix)
        self.client.insert(self.store.collection(name), [
            {"id": meta.generation, "vector": ms.DUMMY, "record": meta.to_json()}
        ])  # fmt: skip
        self.published, self.number, self.changed = meta.generation, meta.generation + 1, False
        self.clean()
        return meta.generation

    def checkpoint(self) -> int | None:
        """Publish what is done so far and go on writing; None for a rebuild."""
        if self.rebuild:
            return None
        return self.publish() if self.changed else self.published


def open_milvus(root: Path, uri: str, settings: Settings) -> MilvusStore:
    """The knowledge base at `uri` whose index folder is `root` (as
    `rag.storage.STORES` builds a store). A cluster's token is
    `settings.milvus_token` (RAG_MILVUS_TOKEN), kept in memory only."""
    token = settings.milvus_token
    return MilvusStore(ms.parse_uri(uri), Path(root), token.get_secret_value() if token else None)


def _conforms(store: MilvusStore) -> Store:
    return store  # mypy checks that the Milvus store is a `Store`
