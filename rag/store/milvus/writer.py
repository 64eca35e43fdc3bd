"""Writing a knowledge base in Milvus: `MilvusWriter` builds the next
generation of rows beside the published one and commits it with one meta
row (how, in `rag.store.milvus.store`)."""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from rag import lexical
from rag.errors import BadDocument
from rag.layout import IndexParams
from rag.store import DocumentEntry, DocumentRecord, replaced_documents
from rag.store.milvus import schema as ms
from rag.store.milvus.reader import Reader, document_record
from rag.store.shared import check_compatible, check_rebuild
from rag.types import Chunk

if TYPE_CHECKING:
    from rag.store.milvus.store import MilvusStore


class MilvusWriter(Reader):
    """Builds generation `number` (= published + 1). Use through `MilvusStore.writer`."""

    def __init__(
        self,
        store: MilvusStore,
        params: IndexParams,
        rebuild: bool = False,
        allow_drop: bool = False,
    ) -> None:
        self.prefix = store.claim()  # before anything is written under it
        meta = store.current()
        self.root, self.params = store.root, params
        self.rebuild, self.allow_drop = rebuild, allow_drop
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
            self.chunks_name, self.docs_name = ms.names(self.prefix, number)
            ms.create_pair(self.client, self.prefix, number, params.dimension)
        self.changed = rebuild
        # This generation's documents, read once and kept by put and delete:
        # Milvus Lite scans every row per query, so a query per file would
        # make an ingest quadratic in the size of the knowledge base.
        self._docs: dict[str, DocumentRecord] = {}
        self._born: dict[int, int] = {}  # document id -> the generation that wrote it
        self._by_hash: dict[str, set[str]] = defaultdict(set)
        for row in self._rows(self.docs_name, "", self.doc_fields):
            self._remember(document_record(row), int(row["gen_from"]))

    def _remember(self, record: DocumentRecord, gen_from: int) -> None:
        self._docs[record.path] = record
        self._born[record.id] = gen_from
        self._by_hash[record.content_hash].add(record.path)

    def _forget(self, path: str) -> DocumentRecord | None:
        record = self._docs.pop(path, None)
        if record is not None:
            self._by_hash[record.content_hash].discard(path)
        return record

    def documents(self) -> list[DocumentRecord]:
        return sorted(self._docs.values(), key=lambda d: d.path)

    def document(self, path: str) -> DocumentRecord | None:
        return self._docs.get(path)

    def document_with_hash(self, content_hash: str) -> DocumentRecord | None:
        paths = self._by_hash.get(content_hash)
        return self._docs[min(paths)] if paths else None

    def clean(self) -> None:
        """Remove what unpublished generations left (a writer killed or
        failed), and what no reader of the current or the previous
        generation can need."""
        prefix, published = self.prefix, self.published
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
        record = self._forget(path)
        if record is None:
            return False
        chunks = self._rows(self.chunks_name, f"doc_id == {record.id}", ["id"])
        ids = [int(r["id"]) for r in chunks]
        if self._born.pop(record.id) == self.number:  # written by this generation: gone for good
            if ids:
                self.client.delete(self.chunks_name, ids=ids)
            self.client.delete(self.docs_name, ids=[record.id])
        else:  # published: hidden from this generation on
            self._mark(self.chunks_name, ids, self.number)
            self._mark(self.docs_name, [record.id], self.number)
        self.changed = True
        return True

    def put(self, entry: DocumentEntry, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        """Add a document, replacing any earlier version stored at `entry.path`."""
        path, title, kind, mtime, tags = (
            entry.path,
            entry.title,
            entry.kind,
            entry.mtime,
            entry.tags,
        )
        if len(chunks) != len(vectors):
            raise ValueError("one vector per chunk")
        terms = [" ".join(lexical.terms(chunk.indexed_text)) for chunk in chunks]
        _check_sizes(path, title, chunks, terms)
        self.changed = True
        self.delete(path)
        doc_id, *ids = self._take(len(chunks) + 1)
        common = {"path": path, "title": title, "path_key": ms.path_key(path),
                  "gen_from": self.number, "gen_to": ms.ALIVE}  # fmt: skip
        scoped = {"kind": kind, "mtime": mtime, "tags": list(tags)}  # on every row (schema 2)
        vectors = np.asarray(vectors, dtype=np.float32)
        rows = [
            {**common, **scoped, "id": cid, "vector": vectors[ordinal].tolist(), "doc_id": doc_id,
             "terms": terms[ordinal], "text": chunk.text,
             "page": -1 if chunk.page is None else chunk.page, "start": chunk.start,
             "end": chunk.end, "ordinal": ordinal,
             "locator": chunk.locator}
            for ordinal, (cid, chunk) in enumerate(zip(ids, chunks, strict=True))
        ]  # fmt: skip
        for start in range(0, len(rows), 256):
            self.client.insert(self.chunks_name, rows[start : start + 256])
        record = DocumentRecord(
            id=doc_id, path=path, content_hash=entry.content_hash, kind=kind, title=title,
            size=entry.size, mtime=mtime, pages=entry.pages, ingested_at=time.time(),
            chunks=len(chunks), ocr=entry.ocr, tags=tuple(tags),
        )  # fmt: skip
        self.client.insert(self.docs_name, [{
            **common, **scoped, "id": doc_id, "vector": ms.DUMMY,
            "content_hash": entry.content_hash, "size": entry.size,
            "pages": -1 if entry.pages is None else entry.pages,
            "ingested_at": record.ingested_at, "chunks": len(chunks), "ocr": entry.ocr,
        }])  # fmt: skip
        self._remember(record, self.number)

    def stored_vectors(self, chunks: Sequence[Chunk]) -> np.ndarray:
        ids = [int(c.id) for c in chunks if c.id is not None]
        return self._vectors(ids, self.params.dimension)

    def paths(self) -> list[str]:
        return sorted(self._docs)

    def earlier(self, path: str) -> DocumentRecord | None:
        return self.previous.get(path) if self.rebuild else self.document(path)

    def publish(self) -> int:
        """Commit: one meta row names generation `number` (and its collections)."""
        if self.rebuild:
            check_rebuild(self.root, self.paths(), self.previous, self.allow_drop)
        meta = ms.Meta(
            generation=self.number, epoch=self.epoch, next_id=self.next_id,
            documents=self.count("documents"), chunks=self.count("chunks"), params=self.params,
            created_at=self.created_at, updated_at=time.time(), schema=ms.SCHEMA_VERSION,
        )  # fmt: skip
        # Sealed segments are searched through their index; Milvus Lite's
        # memtable is scanned row by row in Python.
        self.client.flush(self.chunks_name)
        name = f"{self.prefix}_meta"
        if not self.client.has_collection(name):
            ms.create_meta(self.client, self.prefix)
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


def _check_sizes(path: str, title: str, chunks: Sequence[Chunk], terms: list[str]) -> None:
    """Refuse, before writing anything, a document with a text Milvus would
    refuse mid-write (a VARCHAR holds at most 65,535 bytes)."""
    texts = [("path", path), ("title", title)]
    for n, (chunk, analysed) in enumerate(zip(chunks, terms, strict=True), 1):
        texts += [(f"passage {n}", t) for t in (chunk.text, chunk.locator, analysed)]
    for what, text in texts:
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > ms.TEXT_BYTES:
            raise BadDocument(
                f"its {what} is {size:,} bytes long; the Milvus store holds at most "
                f"{ms.TEXT_BYTES:,} bytes a field"
            )
