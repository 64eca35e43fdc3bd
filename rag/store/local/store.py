"""The local store (the default): a knowledge base as files in its index
folder, FAISS + SQLite + bm25s, one immutable generation at a time
(`rag.layout`). `rag.store.local.generations.Snapshot` reads a generation, `rag.store.local.writer`
writes the next one; this ties them into a `rag.store.Store`.
"""

from __future__ import annotations

import os
from collections.abc import Hashable
from contextlib import AbstractContextManager
from pathlib import Path

import faiss

from rag import layout
from rag.layout import IndexParams
from rag.settings import Settings
from rag.store import DocumentRecord, Published, Snapshot, Store, StoreWriter
from rag.store.local.generations import Snapshot as LocalSnapshot
from rag.store.local.generations import published_documents
from rag.store.local.writer import open_writer


class LocalStore:
    """The knowledge base in the folder `root` (see `rag.store.Store`)."""

    uri = "local"

    def __init__(self, root: Path, uri: str, settings: Settings) -> None:
        self.root = Path(root)
        self.dense_precision = settings.dense_precision

    def exists(self) -> bool:
        return layout.current_generation(self.root) is not None

    def stamp(self) -> Hashable:
        """CURRENT's inode and mtime: publishing replaces the file."""
        try:
            st = os.stat(self.root / layout.CURRENT_FILE)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns)

    def snapshot(self) -> Snapshot:
        # Opened to search. One query at a time gains nothing from FAISS's
        # OpenMP threads, and after each search they spin, taking the cores
        # from the next query's embedding (bench/query.py measures both).
        # Process-wide; set here, not for writers.
        faiss.omp_set_num_threads(1)
        # CURRENT may be swapped between reading it and opening the files,
        # and the old generation swept: retry on the newer name.
        for _attempt in range(5):
            name = layout.require_generation(self.root)
            try:
                return LocalSnapshot(self.root, name, self.dense_precision)
            except FileNotFoundError:
                continue
        return LocalSnapshot(self.root, layout.require_generation(self.root), self.dense_precision)

    def published(self) -> Published | None:
        name = layout.current_generation(self.root)
        if name is None:
            return None
        # Not verified here: a writer verifies the files it builds on.
        manifest = layout.read_manifest(self.root / name, verify=False)
        return Published(manifest.generation, manifest.params)

    def published_documents(self) -> dict[str, DocumentRecord]:
        return published_documents(self.root)

    def writer(
        self,
        params: IndexParams,
        *,
        rebuild: bool = False,
        allow_drop: bool = False,
        lock_timeout: float = 0.0,
    ) -> AbstractContextManager[StoreWriter]:
        return open_writer(
            self.root, params, rebuild=rebuild, allow_drop=allow_drop, lock_timeout=lock_timeout
        )

    def drop(self) -> None:
        # Its rows are the files of its folder, which the caller removes;
        # the lock refuses to while a writer works there.
        with layout.write_lock(self.root):
            pass


def _conforms(store: LocalStore) -> Store:
    return store  # mypy checks that the local store is a `Store`
