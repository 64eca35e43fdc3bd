"""The on-disk shape of an index folder, and the rules that make writes atomic.

    indexes/<name>/
      CURRENT            the name of the published generation, e.g. "g00000007"
      g00000007/         an immutable generation:
        manifest.json      format version, embedding model, chunking, counts
        chunks.sqlite      documents, chunks and their analysed BM25 terms
        bm25/              the BM25 index (numpy arrays + JSON), built at publish
        vectors.faiss      the vectors, keyed by chunk id
      .staging-*/        a generation being written (never read)
      .lock              held by the one process allowed to write

A writer builds a whole new generation aside, fsyncs it, renames it into
place and only then swaps CURRENT (write-temp-then-rename). A crash at any
moment therefore leaves CURRENT naming a complete generation. Readers never
lock: a published generation never changes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rag.errors import IndexBusy, IndexCorrupt, IndexIncompatible, IndexMissing

FORMAT = "kbqa-index"
FORMAT_VERSION = 2
DB_FILE = "chunks.sqlite"
VECTORS_FILE = "vectors.faiss"
BM25_DIR = "bm25"
MANIFEST_FILE = "manifest.json"
CURRENT_FILE = "CURRENT"
_GEN = re.compile(r"^g(\d{8})$")


@dataclass(frozen=True)
class IndexParams:
    """What must agree between an index and the code that extends it."""

    model_id: str
    dimension: int
    chunk_tokens: int
    chunk_overlap: int
    analyzer: str


@dataclass(frozen=True)
class Manifest:
    params: IndexParams
    generation: int
    created_at: float
    updated_at: float
    documents: int = 0
    chunks: int = 0
    file_sizes: dict[str, int] = field(default_factory=dict)
    # SHA-256 of every file: damage that keeps a file's size (a few bytes
    # overwritten in place) would otherwise give other results silently.
    file_sha256: dict[str, str] = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: Path) -> Manifest:
        try:
            raw = json.loads(text)
            if raw.get("format") != FORMAT:
                raise IndexIncompatible(
                    f"{where} is not a kbqa index (format {raw.get('format')!r})."
                )
            if raw.get("format_version") != FORMAT_VERSION:
                raise IndexIncompatible(
                    f"The index at {where} has format version {raw.get('format_version')}; "
                    f"this version of kbqa reads version {FORMAT_VERSION}. Rebuild it: "
                    f"ingest DOCS --index {where.parent} --rebuild"
                )
            raw["params"] = IndexParams(**raw["params"])
            for name in ("file_sizes", "file_sha256"):
                if not isinstance(raw.get(name, {}), dict):
                    raise TypeError(f"{name} is not a mapping")
            return cls(**raw)
        except (ValueError, KeyError, TypeError) as exc:
            raise IndexCorrupt(f"The manifest at {where} is unreadable ({exc}).") from exc


def generation_name(number: int) -> str:
    return f"g{number:08d}"


def generation_number(name: str) -> int | None:
    match = _GEN.match(name)
    return int(match.group(1)) if match else None


def current_generation(root: Path) -> str | None:
    try:
        name = (root / CURRENT_FILE).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise IndexCorrupt(f"{root / CURRENT_FILE} is unreadable ({exc}).") from exc
    if generation_number(name) is None:
        raise IndexCorrupt(f"{root / CURRENT_FILE} names no generation ({name[:40]!r}).")
    return name


def require_generation(root: Path) -> str:
    name = current_generation(root)
    if name is None:
        raise IndexMissing(f"No index at {root}. Build one with: ingest PATH... --index {root}")
    return name


def read_manifest(gen_dir: Path, verify: bool = True) -> Manifest:
    """The generation's manifest; with `verify`, its files checked against
    it (sizes and SHA-256: reads every byte)."""
    path = gen_dir / MANIFEST_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise IndexCorrupt(f"{path} is missing: the index is damaged.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise IndexCorrupt(f"{path} is unreadable: the index is damaged ({exc}).") from None
    manifest = Manifest.from_json(text, gen_dir)
    if not verify:
        return manifest
    rebuild = f"Rebuild it with ingest PATH... --index {gen_dir.parent} --rebuild"
    for name, size in manifest.file_sizes.items():
        actual = (gen_dir / name).stat().st_size if (gen_dir / name).exists() else -1
        if actual != size:
            raise IndexCorrupt(
                f"{gen_dir / name} is {'missing' if actual < 0 else f'{actual} bytes'}, "
                f"the manifest says {size}: the index is damaged. {rebuild}"
            )
    for name, digest in manifest.file_sha256.items():
        if file_digest(gen_dir / name) != digest:
            raise IndexCorrupt(
                f"{gen_dir / name} does not match its checksum in the manifest: "
                f"the index is damaged. {rebuild}"
            )
    return manifest


def file_digest(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(root: Path, staging: Path, number: int) -> Path:
    """Make a fully written staging folder the current generation."""
    # Deepest first: every file and folder is on disk before the rename.
    for child in sorted(staging.rglob("*"), key=lambda p: -len(p.parts)):
        fsync_path(child)
    fsync_path(staging)
    final = root / generation_name(number)
    os.rename(staging, final)
    tmp = root / f".CURRENT.{os.getpid()}"
    with open(tmp, "w", encoding="ascii") as fh:
        fh.write(generation_name(number) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, root / CURRENT_FILE)
    fsync_path(root)
    return final


def sweep(root: Path, keep: int = 2) -> None:
    """Remove leftovers of crashed writers and all but the newest `keep`
    published generations. Only called while holding the write lock."""
    current = current_generation(root)
    current_no = generation_number(current) if current else -1
    assert current_no is not None
    for child in root.iterdir():
        number = generation_number(child.name)
        stale_staging = child.name.startswith(".staging-") or child.name.startswith(".CURRENT.")
        # A generation newer than CURRENT was renamed into place by a writer
        # that died before swapping CURRENT: it was never published.
        orphan = number is not None and (number > current_no or number <= current_no - keep)
        if stale_staging or orphan:
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)


@contextmanager
def write_lock(root: Path, timeout: float = 0.0) -> Iterator[None]:
    """One writer per index. A second one waits up to `timeout` seconds, then
    fails with a message instead of corrupting anything."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise IndexBusy(
                        f"Another ingest is writing to {root}; try again when it "
                        "finishes (or pass a longer --wait)."
                    ) from None
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)  # closing releases the lock
