"""When a knowledge base was last brought in line with its folders.

`ingest --watch` (after its catch-up and after each batch it applies) and
`ingest --sync` write `synced.json` in the index folder, whatever store holds
the chunks; the app shows it as "Last synced 2 minutes ago". A small file of
its own rather than a manifest field: a sync that finds nothing to change
publishes no generation, yet it is a sync."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from rag import layout

SYNC_RECORD = "synced.json"


@dataclass(frozen=True)
class SyncRecord:
    at: float  # seconds since the epoch
    folders: tuple[str, ...]  # the folders the index was synced against


def record_sync(root: Path, at: float, folders: list[str]) -> None:
    """Write the record atomically (write aside, then rename)."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{SYNC_RECORD}.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps({"synced_at": at, "folders": folders}) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, root / SYNC_RECORD)
    layout.fsync_path(root)


def last_sync(root: Path) -> SyncRecord | None:
    """The last sync of the index at `root`; None if it was never synced or
    the record is unreadable (it only informs: the index does not need it)."""
    try:
        raw = json.loads((root / SYNC_RECORD).read_text(encoding="utf-8"))
        folders = raw.get("folders", [])
        if not isinstance(folders, list) or not all(isinstance(f, str) for f in folders):
            folders = []
        return SyncRecord(at=float(raw["synced_at"]), folders=tuple(folders))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
