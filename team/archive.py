"""The backup archive: one tar, zstd- or gzip-compressed, holding one
generation of a knowledge base as the local store writes it (`rag.layout`)
and a small JSON header.

    kbqa-backup.json           format, version, generation, embedding model, counts
    generation/manifest.json   the generation's manifest: size and SHA-256 of each file
    generation/chunks.sqlite   documents (with their tags) and chunks
    generation/vectors.faiss   the vectors
    generation/bm25/...        the BM25 index
    synced.json                when the base was last synced (if it ever was)

Reading trusts nothing in it. The header comes first and is checked; then
every member must be a regular file (no link, no device) under a plain
relative name (no absolute path, no '..') that the manifest lists; each is
written to a path built here, never by tarfile's extract, so a hostile
archive cannot write outside the folder it is unpacked into; at the end
every file is checked against the manifest's SHA-256.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from io import BytesIO
from pathlib import Path
from typing import IO

import zstandard

from rag import layout
from rag.errors import BadArchive, RagError
from rag.layout import IndexParams, Manifest

FORMAT = "kbqa-backup"
FORMAT_VERSION = 1
HEADER = "kbqa-backup.json"
GENERATION = "generation"
SYNCED = "synced.json"  # rag.synced.SYNC_RECORD
SUFFIXES = {".tar.zst": "zst", ".tzst": "zst", ".tar.gz": "gz", ".tgz": "gz"}
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_GZIP_MAGIC = b"\x1f\x8b"
_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_SMALL = 16 << 20  # the most a header, manifest or sync record may hold


@dataclass(frozen=True)
class Header:
    """What an archive holds, readable without unpacking the rest."""

    generation: int
    params: IndexParams  # the embedding model and chunking it was built with
    documents: int
    chunks: int
    source_store: str  # where it was backed up from: "local" or a Milvus URI
    created_at: float
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes, where: Path) -> Header:
        try:
            raw = json.loads(data.decode("utf-8"))
            if not isinstance(raw, dict) or raw.get("format") != FORMAT:
                raise BadArchive(f"{where} is not a kbqa backup (its header names no kbqa format).")
            if raw.get("format_version") != FORMAT_VERSION:
                raise BadArchive(
                    f"{where} is a kbqa backup of format version {raw.get('format_version')!r}; "
                    f"this version of kbqa reads version {FORMAT_VERSION}."
                )
            raw["params"] = IndexParams(**raw["params"])
            header = cls(**raw)
            if not all(isinstance(n, int) and n >= 0 for n in (header.generation, header.chunks)):
                raise TypeError("generation and chunks must be counts")
            return header
        except (ValueError, KeyError, TypeError) as exc:
            raise BadArchive(f"The header of {where} is unreadable ({exc}).") from exc


def compression(out: Path) -> str:
    """ "zst" or "gz", from the archive's name."""
    for suffix, kind in SUFFIXES.items():
        if out.name.endswith(suffix):
            return kind
    raise RagError(
        f"Name the backup {out.name}.tar.zst (zstd) or .tar.gz (gzip): "
        f"{out} has neither suffix ({', '.join(SUFFIXES)})."
    )


# -- writing -------------------------------------------------------------------------------


def check_target(out: Path, force: bool) -> str:
    """Refuse a name without a known suffix, or one taken (unless `force`);
    the compression its suffix names."""
    kind = compression(out)
    if out.exists() and not force:
        raise RagError(f"{out} exists; choose another name, or pass --force to replace it.")
    return kind


@contextmanager
def writing(out: Path, force: bool = False) -> Iterator[tarfile.TarFile]:
    """A tar stream to `out`, compressed as its name says, written aside
    (owner-only: it holds every passage) and renamed into place on success."""
    kind = check_target(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with open(fd, "wb") as raw:
            if kind == "zst":
                with (
                    zstandard.ZstdCompressor(level=3, threads=-1).stream_writer(
                        raw, closefd=False
                    ) as zw,
                    tarfile.open(fileobj=zw, mode="w|", format=tarfile.PAX_FORMAT) as tar,
                ):  # type: ignore[call-overload]
                    yield tar
            else:
                with (
                    gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz,
                    tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar,
                ):
                    yield tar
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out)
        layout.fsync_path(out.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    add_file(tar, name, BytesIO(data), len(data))


class _Hashing:
    """A file read through, hashed on the way."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh, self.sha = fh, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self.sha.update(data)
        return data


def add_file(tar: tarfile.TarFile, name: str, fh: IO[bytes], size: int) -> str:
    """Add `size` bytes of `fh` as the regular file `name`; their SHA-256."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, int(time.time())
    reader = _Hashing(fh)
    tar.addfile(info, reader)  # type: ignore[arg-type]
    return reader.sha.hexdigest()


# -- reading -------------------------------------------------------------------------------


@contextmanager
def _reading(archive: Path) -> Iterator[tarfile.TarFile]:
    """The archive's members as a stream, decompressed as its first bytes say."""
    try:
        fh = open(archive, "rb")  # noqa: SIM115 - closed by the `with` below
    except OSError as exc:
        raise BadArchive(f"Cannot read {archive} ({exc.strerror}).") from None
    with fh:
        magic = fh.read(4)
        fh.seek(0)
        try:
            if magic.startswith(_ZSTD_MAGIC):
                with (
                    zstandard.ZstdDecompressor().stream_reader(fh) as zr,
                    tarfile.open(fileobj=zr, mode="r|") as tar,
                ):
                    yield tar
            elif magic.startswith(_GZIP_MAGIC):
                with tarfile.open(fileobj=fh, mode="r|gz") as tar:
                    yield tar
            else:
                raise BadArchive(f"{archive} is not a kbqa backup (neither zstd nor gzip).")
        except (tarfile.TarError, zstandard.ZstdError, EOFError, OSError) as exc:
            raise BadArchive(f"{archive} is damaged ({exc}).") from exc


def _parts(archive: Path, name: str) -> list[str]:
    """`name` split into plain parts, or `BadArchive` for any name that
    could reach outside the folder (absolute, '..', odd characters)."""
    parts = name.split("/")
    if name.startswith("/") or len(parts) > 3 or not all(_PART.match(p) for p in parts):
        raise BadArchive(f"{archive} holds a member named {name!r}: refused, nothing restored.")
    return parts


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"a symbolic link to {member.linkname!r}"
    if member.islnk():
        return f"a hard link to {member.linkname!r}"
    return "a folder" if member.isdir() else "a device or other special file"


class _Unpacking:
    """The checks and writes of `unpack`, member by member."""

    def __init__(self, archive: Path, folder: Path) -> None:
        self.archive, self.folder = archive, folder
        self.header: Header | None = None
        self.manifest: Manifest | None = None
        self.seen: set[str] = set()

    def refuse(self, why: str) -> BadArchive:
        return BadArchive(f"{self.archive}: {why}; nothing restored.")

    def member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        parts = _parts(self.archive, member.name)
        if not member.isreg():
            raise self.refuse(f"{member.name!r} is {_kind(member)}, not a file")
        if member.name in self.seen:
            raise self.refuse(f"{member.name!r} appears twice")
        self.seen.add(member.name)
        if self.header is None and member.name != HEADER:
            raise self.refuse(f"it starts with {member.name!r}, not its header {HEADER}")
        data = tar.extractfile(member)
        assert data is not None  # a regular file
        if member.name in (HEADER, SYNCED) or parts[1:] == [layout.MANIFEST_FILE]:
            if member.size > _SMALL:
                raise self.refuse(f"{member.name!r} is {member.size:,} bytes")
            self.small(member.name, data.read())
            return
        if parts[0] != GENERATION or len(parts) < 2:
            raise self.refuse(f"{member.name!r} is not part of a backup")
        if self.manifest is None:
            raise self.refuse(f"{member.name!r} comes before the manifest")
        relative = "/".join(parts[1:])
        if self.manifest.file_sizes.get(relative) != member.size:
            raise self.refuse(f"{member.name!r} is not a file its manifest lists at that size")
        if self.write(parts, data) != self.manifest.file_sha256.get(relative):
            raise self.refuse(
                f"{member.name!r} does not match its checksum: the archive is damaged"
            )

    def small(self, name: str, data: bytes) -> None:
        if name == HEADER:
            self.header = Header.from_json(data, self.archive)
            return
        if name != SYNCED:
            text = data.decode("utf-8", "replace")
            self.manifest = Manifest.from_json(text, self.folder / GENERATION)
        self.write(name.split("/"), BytesIO(data))

    def write(self, parts: list[str], data: IO[bytes]) -> str:
        """Write `data` to the file `parts` names under the folder; its SHA-256."""
        path = self.folder.joinpath(*parts)
        # Belt and braces: the parts are plain names, so this holds by construction.
        if not path.resolve().is_relative_to(self.folder.resolve()):
            raise self.refuse(f"{'/'.join(parts)!r} would land outside {self.folder}")
        path.parent.mkdir(parents=True, exist_ok=True)
        sha = hashlib.sha256()
        with open(path, "xb") as out:  # "x": never through something already there
            while chunk := data.read(1 << 20):
                sha.update(chunk)
                out.write(chunk)
        return sha.hexdigest()

    def finish(self) -> tuple[Header, Manifest]:
        header, manifest = self.header, self.manifest
        if header is None or manifest is None:
            raise self.refuse("it holds no header or no manifest")
        missing = [n for n in manifest.file_sizes if f"{GENERATION}/{n}" not in self.seen]
        missing += [
            n for n in (layout.DB_FILE, layout.VECTORS_FILE) if n not in manifest.file_sizes
        ]
        if missing:
            raise self.refuse(f"it lacks {', '.join(sorted(missing))}")
        if (header.params, header.chunks) != (manifest.params, manifest.chunks):
            raise self.refuse("its header and its manifest disagree")
        return header, manifest


def unpack(archive: Path, folder: Path) -> tuple[Header, Manifest]:
    """Unpack `archive` into the new folder `folder` (GENERATION/ and
    perhaps SYNCED), checking every member and every file's SHA-256.
    Raises `BadArchive`, having written nothing outside `folder`."""
    folder.mkdir(parents=True)
    unpacking = _Unpacking(archive, folder)
    with _reading(archive) as tar:
        for member in tar:
            unpacking.member(tar, member)
    return unpacking.finish()


def read_header(archive: Path) -> Header:
    """The header alone (the first member)."""
    with _reading(archive) as tar:
        member = tar.next()
        if member is None or member.name != HEADER or not member.isreg():
            raise BadArchive(f"{archive} does not start with a kbqa backup header.")
        data = tar.extractfile(member)
        assert data is not None
        return Header.from_json(data.read(_SMALL), archive)
