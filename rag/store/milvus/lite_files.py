"""Milvus Lite's data folder, as a killed process leaves it, mended before
Milvus Lite opens it; and who holds the folder's lock.

Milvus Lite 3.2.2 keeps one folder per database file; each collection in it
has a manifest, WAL files and segments with their index files. Two kinds of
leftovers of a SIGKILL make it misread the folder (both found by
tests/test_milvus_store.py's kill loop); `mend` removes them, under Milvus
Lite's own lock on the folder, and does nothing while any process holds it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
from pathlib import Path

import numpy as np


def mend(lite: Path) -> None:
    """Remove what a killed Milvus Lite process left in the folder `lite`
    that Milvus Lite would misread (nothing while the folder is open)."""
    fd = _lock_lite(lite)
    if fd is None:
        return
    try:
        _drop_flushed_wals(lite)
        _drop_torn_index_files(lite)
    finally:
        os.close(fd)  # releases the lock


# Milvus Lite 3.2.2 flushes a collection's WAL into segments, saves its
# manifest (engine/flush.py, step 5) and only then deletes that WAL
# (step 6). A process killed between the two leaves
# COLLECTION/wal/wal_{data,delta}_NNNNNN.arrow files already in segments;
# on open, recovery (engine/recovery.py) replays every WAL file present, and
# the replayed rows tie with their segment copies on `_seq`, which
# search/bitmap.py keeps both of: duplicate rows, wrong counts. The manifest
# names the WAL still to flush (`active_wal_number`); the numbers below it are
# in segments, so they are deleted here, before Milvus Lite opens the folder,
# under its LOCK flock (not at all if another process holds it).
_WAL_FILE = re.compile(r"^wal_(?:data|delta)_(\d+)\.arrow$")


def _drop_flushed_wals(lite: Path) -> None:
    """Delete the WAL files of `lite`'s collections that their manifest says
    are flushed (the caller holds the folder's lock)."""
    for manifest in _collections(lite, "manifest.json"):
        try:
            active = json.loads(manifest.read_text())["active_wal_number"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # Milvus Lite falls back to manifest.json.prev: leave it be
        wal = manifest.parent / "wal"
        if not isinstance(active, int) or not wal.is_dir():
            continue
        for file in wal.iterdir():
            match = _WAL_FILE.match(file.name)
            if match and int(match.group(1)) < active:
                file.unlink()


def _drop_torn_index_files(lite: Path) -> None:
    """Delete the FLAT index files of `lite` that a killed process left half
    written. Milvus Lite 3.2.2 writes a segment's index file in a background
    thread, straight to its name (storage/segment.py build_or_load_index,
    index/brute_force.py save: np.save); a torn one fails every later load of
    its collection ("No data left in file"), a missing one is built again."""
    for file in _collections(lite, "partitions/*/indexes/*.flat.idx"):
        try:
            np.load(file, mmap_mode="r", allow_pickle=False)  # reads the header only
        except (OSError, ValueError, EOFError):  # short header, or data past the end
            file.unlink()


def _lock_lite(lite: Path) -> int | None:
    """A descriptor holding Milvus Lite's own lock on the folder `lite` (its
    flock on `lite`/LOCK), or None: never opened, or open in a process (this
    one included), which `connect` then reports."""
    try:
        fd = os.open(lite / "LOCK", os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _collections(lite: Path, pattern: str) -> list[Path]:
    """`pattern` in each collection folder of Milvus Lite's folder `lite`."""
    return [*lite.glob(f"collections/*/{pattern}"),
            *lite.glob(f"databases/*/collections/*/{pattern}")]  # fmt: skip


class _LockErrors(logging.Filter):
    """Drops Milvus Lite's logged traceback of a lock held by another
    process: `connect` reports that as `IndexBusy`, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        while error is not None:
            if type(error).__name__ == "DataDirLockedError":
                return False
            error = error.__cause__ or error.__context__
        return True


def quiet_about_the_lock() -> None:
    logger = logging.getLogger("milvus_lite.server_manager")
    if not any(isinstance(f, _LockErrors) for f in logger.filters):
        logger.addFilter(_LockErrors())


def locked(lite: Path) -> bool:
    """Whether another process holds Milvus Lite's lock on the folder `lite`
    (its advisory flock on `lite`/LOCK, held while the process has it open)."""
    if not (lite / "LOCK").exists():
        return False
    fd = _lock_lite(lite)
    if fd is not None:
        os.close(fd)  # closing releases the lock taken to ask
    return fd is None
