"""Backups and restores of a knowledge base, and of the app database.

`backup_index` writes one archive (`team.archive`) of the published state:
- the local store: the current generation's own files, which are never
  changed once published. They are all opened first and read through those
  handles, so an ingest that publishes and sweeps meanwhile cannot tear
  them; each is checked against the manifest's SHA-256 on the way.
- any other store (Milvus): its current `Snapshot` (which never changes
  under a reader) copied through the seam into a local generation aside,
  then archived the same way. One archive format for every store.

`restore` unpacks and checks an archive, then publishes it as the next
generation of a local store (under the write lock, as a writer publishes),
or copies it into the store the folder records or `--to-store` names.

`backup_app_db` copies the app's SQLite database with SQLite's online
backup API (consistent while the app writes); PostgreSQL is `pg_dump`'s.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from rag import layout
from rag.errors import IndexBusy, IndexCorrupt, RagError
from rag.layout import Manifest
from rag.settings import Settings
from rag.store import Store, open_store
from rag.store.copying import copy, open_target
from rag.synced import SYNC_RECORD
from team import archive
from team.archive import GENERATION, HEADER, SYNCED, Header


def close(store: Store) -> None:
    getattr(store, "close", lambda: None)()  # Milvus Lite lets go of its file


# -- backup --------------------------------------------------------------------------------


@contextmanager
def held_generation(root: Path) -> Iterator[tuple[Manifest, bytes, dict[str, IO[bytes]]]]:
    """The current generation's manifest (parsed and as bytes) and every
    file it lists, opened. Open handles outlive a sweep that removes the
    files, so what is read through them is the whole generation."""
    for _attempt in range(10):
        name = layout.require_generation(root)
        with ExitStack() as stack:
            try:
                raw = stack.enter_context(open(root / name / layout.MANIFEST_FILE, "rb")).read()
                manifest = Manifest.from_json(raw.decode("utf-8", "replace"), root / name)
                files: dict[str, IO[bytes]] = {
                    rel: stack.enter_context(open(root / name / rel, "rb"))
                    for rel in manifest.file_sizes
                }
            except FileNotFoundError:  # swept between reading CURRENT and opening: again
                continue
            yield manifest, raw, files
            return
    raise IndexBusy(f"{root} changed too often to be backed up; try again.")


def _write_local(
    root: Path, out: Path, force: bool, source_store: str, generation: int | None = None
) -> Header:
    """Archive the current local generation of `root` (the `generation`
    number it had in `source_store`, when it was copied from there)."""
    with held_generation(root) as (manifest, raw_manifest, files):
        header = Header(
            generation=manifest.generation if generation is None else generation,
            params=manifest.params, documents=manifest.documents, chunks=manifest.chunks,
            source_store=source_store, created_at=time.time(),
        )  # fmt: skip
        with archive.writing(out, force) as tar:
            archive.add_bytes(tar, HEADER, header.to_json())
            archive.add_bytes(tar, f"{GENERATION}/{layout.MANIFEST_FILE}", raw_manifest)
            for rel, fh in sorted(files.items()):
                size = manifest.file_sizes[rel]
                if os.fstat(fh.fileno()).st_size != size:
                    raise IndexCorrupt(f"{root}: {rel} is not the size its manifest says.")
                if archive.add_file(tar, f"{GENERATION}/{rel}", fh, size) != (
                    manifest.file_sha256.get(rel)
                ):
                    raise IndexCorrupt(
                        f"{root}: {rel} does not match its checksum: the index is damaged, "
                        "and a backup of it would be too. Nothing was written."
                    )
            synced = root / SYNC_RECORD
            if synced.is_file():
                archive.add_bytes(tar, SYNCED, synced.read_bytes())
    return header


def backup_index(root: Path, out: Path, settings: Settings, force: bool = False) -> Header:
    """One archive at `out` of the knowledge base at `root` as published
    now, whatever an ingest does meanwhile."""
    archive.check_target(out, force)  # before any work
    store = open_store(root, settings)
    try:
        if store.uri == "local":
            return _write_local(root, out, force, "local")
        snap = store.snapshot()
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".kbqa-backup-", dir=out.parent) as tmp:
            local = open_target(Path(tmp), "local", settings)
            try:
                copy(snap, local)
            finally:
                snap.close()
            synced = root / SYNC_RECORD
            if synced.is_file():
                shutil.copyfile(synced, Path(tmp) / SYNC_RECORD)
            return _write_local(Path(tmp), out, force, store.uri, snap.generation)
    finally:
        close(store)


# -- restore -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Restored:
    header: Header
    generation: int  # its number in the target
    store: str  # the target's URI


def restore(
    archive_path: Path,
    root: Path,
    settings: Settings,
    force: bool = False,
) -> Restored:
    """Bring the knowledge base in `archive_path` back into the folder
    `root`, kept in the store the folder records or, for a new one,
    `settings.store`. A base already there is replaced only with `force`."""
    created = _first_missing(root)
    target = open_store(root, settings)
    try:
        if target.exists() and not force:
            raise RagError(
                f"{root} holds a knowledge base already; restore into another folder, "
                "or pass --force to replace it (readers switch to the restored one)."
            )
        if target.uri == "local":
            return _restore_local(archive_path, root)
        return _restore_through_seam(archive_path, root, target, settings)
    except BaseException:
        if created is not None:  # leave no half-made folder behind (a lock, a store record)
            shutil.rmtree(created, ignore_errors=True)
        raise
    finally:
        close(target)


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of `path` that does not exist yet (None: it does)."""
    missing = None
    for folder in [path.absolute(), *path.absolute().parents]:
        if folder.exists():
            return missing
        missing = folder
    return missing


def _restore_local(archive_path: Path, root: Path) -> Restored:
    """Unpack beside the live generations, then publish as a writer does.
    The write lock keeps an ingest (and its sweep) out meanwhile."""
    with layout.write_lock(root):
        layout.sweep(root)
        staging = root / f".staging-restore-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            header, manifest = archive.unpack(archive_path, staging)
            current = layout.current_generation(root)
            after = layout.generation_number(current) if current else 0
            number = max(header.generation, (after or 0) + 1)
            if number != manifest.generation:
                renumbered = dataclasses.replace(manifest, generation=number)
                path = staging / GENERATION / layout.MANIFEST_FILE
                path.write_text(renumbered.to_json(), encoding="utf-8")
            layout.publish(root, staging / GENERATION, number)
            if (staging / SYNCED).is_file():
                os.replace(staging / SYNCED, root / SYNC_RECORD)
            layout.sweep(root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return Restored(header, number, "local")


def _restore_through_seam(
    archive_path: Path, root: Path, target: Store, settings: Settings
) -> Restored:
    """Unpack into a private local store aside, then copy it into `target`."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".kbqa-restore-", dir=root.parent) as tmp:
        folder = Path(tmp) / "kb"
        header = _restore_local(archive_path, folder).header
        local = open_store(folder, settings.model_copy(update={"store": "local"}))
        snap = local.snapshot()
        try:
            copy(snap, target, replace=target.exists())
        finally:
            snap.close()
        if (folder / SYNC_RECORD).is_file():
            shutil.copyfile(folder / SYNC_RECORD, root / SYNC_RECORD)
    published = target.published()
    return Restored(header, published.generation if published else 0, target.uri)


# -- the app database ----------------------------------------------------------------------


def backup_app_db(settings: Settings, out: Path, force: bool = False) -> Path:
    """Copy the app database (SQLite) to `out`, consistent while the app
    writes to it; checked with SQLite's integrity check. The database file."""
    from team.appdb import app_db_url  # its driver only when asked for

    url = app_db_url(settings)
    if url.get_backend_name() != "sqlite" or not url.database:
        raise RagError(
            "The app database is PostgreSQL (RAG_APP_DB): back it up with pg_dump, e.g. "
            "pg_dump --format=custom --file app.dump 'postgresql://USER@HOST/DB' "
            "(see the README, Backups and moving a knowledge base)."
        )
    source = Path(url.database)
    if not source.is_file():
        raise RagError(f"No app database at {source} (RAG_APP_DB); nothing to back up.")
    if out.exists() and not force:
        raise RagError(f"{out} exists; choose another name, or pass --force to replace it.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # owner-only
    try:
        src, dst = sqlite3.connect(source), sqlite3.connect(tmp)
        try:
            src.backup(dst)  # the online backup API: pages copied under SQLite's locks
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            verdict = dst.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            src.close()
            dst.close()
        if verdict != "ok":
            raise RagError(f"The copy of {source} fails SQLite's integrity check ({verdict}).")
        layout.fsync_path(tmp)
        os.replace(tmp, out)
        layout.fsync_path(out.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out
