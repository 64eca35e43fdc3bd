"""Writing a local index: `StoreWriter` builds the next generation in a
staging folder and publishes it (see `rag.layout` for why that is atomic);
`open_writer` holds the one-writer lock around it. Callers reach both
through `rag.store` (`Store.writer`).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import faiss
import numpy as np

from rag import layout, lexical
from rag.errors import IndexCorrupt
from rag.layout import IndexParams, Manifest
from rag.store import DocumentEntry, DocumentRecord
from rag.store.local.generations import Tables, create_schema, published_documents, read_vectors
from rag.store.shared import check_compatible, check_rebuild
from rag.types import Chunk


def replaced_documents(root: Path) -> dict[str, DocumentRecord]:
    """The documents a rebuild of `root` replaces, by path. A generation
    whose database is unreadable has none to lose: a rebuild is how such an
    index is repaired."""
    try:
        return published_documents(root)
    except IndexCorrupt:
        return {}


class StoreWriter(Tables):
    """Builds the next generation in a staging folder (a
    `rag.store.StoreWriter`). Use through `open_writer`, which holds the
    lock and publishes.

    A rebuild starts from nothing and publishes once, when complete: never
    an empty index, and never one without documents of the generation it
    replaces unless `allow_drop`."""

    def __init__(
        self, root: Path, params: IndexParams, rebuild: bool = False, allow_drop: bool = False
    ) -> None:
        self.root = root
        self.params = params
        self.rebuild = rebuild
        self.allow_drop = allow_drop
        # What a rebuild replaces, read under the lock: nothing can change it.
        self.previous = replaced_documents(root) if rebuild else {}
        current = layout.current_generation(root)
        self.base_number = layout.generation_number(current) if current else 0
        assert self.base_number is not None
        self.created_at = time.time()
        self.vectors: faiss.Index
        if current and not rebuild:
            manifest = layout.read_manifest(root / current)
            check_compatible(root, manifest.params, params)
            self.created_at = manifest.created_at
            self.vectors = read_vectors(root / current / layout.VECTORS_FILE)
        else:
            self.vectors = faiss.IndexIDMap2(faiss.IndexFlatIP(params.dimension))
        self.number = self.base_number
        self.changed = rebuild
        self._source_db = None if (rebuild or not current) else root / current / layout.DB_FILE
        self._open_staging()

    def _open_staging(self) -> None:
        self.number += 1
        self.staging = self.root / f".staging-{layout.generation_name(self.number)}"
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir(parents=True)
        db_path = self.staging / layout.DB_FILE
        if self._source_db is not None:
            shutil.copyfile(self._source_db, db_path)
        self.db = sqlite3.connect(db_path, isolation_level=None)
        try:
            # The staging copy is thrown away on a crash, so it needs no
            # journal; durability comes from fsync + rename at publish time.
            self.db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;")
            self.db.execute("PRAGMA foreign_keys=ON")
            create_schema(self.db)
        except sqlite3.DatabaseError as exc:  # the published copy is not a database
            self.db.close()
            raise IndexCorrupt(
                f"{self._source_db}: not a readable SQLite database ({exc}); "
                "restore a backup or rebuild the index with `ingest --rebuild`"
            ) from None
        self.db.execute("BEGIN")

    # -- changes ------------------------------------------------------------

    def delete(self, path: str) -> bool:
        """Remove a document and its chunks; False if there was none."""
        ids = [
            r[0]
            for r in self.db.execute(
                "SELECT c.id FROM chunks c JOIN documents d ON d.id = c.doc_id WHERE d.path = ?",
                (path,),
            )
        ]
        if ids:
            self.vectors.remove_ids(np.asarray(ids, dtype=np.int64))  # type: ignore[arg-type]
        removed = self.db.execute("DELETE FROM documents WHERE path = ?", (path,)).rowcount > 0
        self.changed = self.changed or removed
        return removed

    def put(self, entry: DocumentEntry, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        """Add a document, replacing any earlier version stored at `entry.path`."""
        if len(chunks) != len(vectors):
            raise ValueError("one vector per chunk")
        self.changed = True
        self.delete(entry.path)
        e = entry
        row = (e.path, e.content_hash, e.kind, e.title, e.size, e.mtime, e.pages, time.time())
        doc_id = self.db.execute(
            "INSERT INTO documents (path, content_hash, kind, title, size, mtime, pages, "
            "ingested_at, ocr, tags) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*row, int(e.ocr), json.dumps(list(e.tags))),
        ).lastrowid
        ids = []
        for ordinal, chunk in enumerate(chunks):
            terms = " ".join(lexical.terms(chunk.indexed_text))
            cid = self.db.execute(
                'INSERT INTO chunks (doc_id, ordinal, text, page, start, "end", terms, locator) '
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (doc_id, ordinal, chunk.text, chunk.page, chunk.start, chunk.end, terms,
                 chunk.locator),
            ).lastrowid  # fmt: skip
            ids.append(cid)
        if ids:
            self.vectors.add_with_ids(
                np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64)
            )

    def stored_vectors(self, chunks: Sequence[Chunk]) -> np.ndarray:
        """The vectors of stored chunks (used to copy a document without
        embedding it again, e.g. when a file was renamed)."""
        if not chunks:
            return np.zeros((0, self.params.dimension), dtype=np.float32)
        ids = np.asarray([chunk.id for chunk in chunks], dtype=np.int64)
        return self.vectors.reconstruct_batch(ids)

    def paths(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT path FROM documents ORDER BY path")]

    def earlier(self, path: str) -> DocumentRecord | None:
        """The record this write replaces at `path`: in the generation a
        rebuild replaces, else in the one being extended."""
        return self.previous.get(path) if self.rebuild else self.document(path)

    # -- publishing ----------------------------------------------------------

    def publish(self) -> int:
        """Write the staging generation out and make it current."""
        if self.rebuild:
            check_rebuild(self.root, self.paths(), self.previous, self.allow_drop)
        self.db.execute("COMMIT")
        documents, chunks = self.count("documents"), self.count("chunks")
        if chunks != self.vectors.ntotal:
            raise IndexCorrupt(
                f"refusing to publish {chunks} chunks with {self.vectors.ntotal} vectors"
            )
        rows = self.db.execute("SELECT id, terms FROM chunks ORDER BY id").fetchall()
        self.db.close()
        lexical.build(
            self.staging / layout.BM25_DIR, [r[0] for r in rows], [r[1].split() for r in rows]
        )
        faiss.write_index(self.vectors, str(self.staging / layout.VECTORS_FILE))
        files = [path for path in sorted(self.staging.rglob("*")) if path.is_file()]
        sizes = {str(path.relative_to(self.staging)): path.stat().st_size for path in files}
        digests = {str(path.relative_to(self.staging)): layout.file_digest(path) for path in files}
        manifest = Manifest(
            params=self.params,
            generation=self.number,
            created_at=self.created_at,
            updated_at=time.time(),
            documents=documents,
            chunks=chunks,
            file_sizes=sizes,
            file_sha256=digests,
        )
        (self.staging / layout.MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
        final = layout.publish(self.root, self.staging, self.number)
        layout.sweep(self.root)
        self._source_db = final / layout.DB_FILE
        self.changed = False
        return self.number

    def checkpoint(self) -> int | None:
        """Publish what is done so far and keep writing into a fresh staging.
        A rebuild never does (None): until it is complete, the generation it
        replaces must stay current, and whole (the sweep after a second
        checkpoint would delete it)."""
        if self.rebuild:
            return None
        number = self.publish()
        self._open_staging()
        return number

    def abort(self) -> None:
        try:
            self.db.close()
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)


@contextmanager
def open_writer(
    root: Path,
    params: IndexParams,
    *,
    rebuild: bool = False,
    allow_drop: bool = False,
    lock_timeout: float = 0.0,
) -> Iterator[StoreWriter]:
    """Hold the index's write lock, build the next generation, publish it on
    success (if anything changed) and discard it on any error, or when the
    publication is refused."""
    with layout.write_lock(root, lock_timeout):
        layout.sweep(root)
        writer = StoreWriter(root, params, rebuild=rebuild, allow_drop=allow_drop)
        try:
            yield writer
            if writer.changed:
                writer.publish()
                return
        except BaseException:
            writer.abort()
            raise
        writer.abort()
