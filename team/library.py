"""Knowledge-base management under the core service (core/service.py),
which the app, the HTTP API and MCP call: list, create, upload, delete,
rebuild, and delete a whole knowledge base. Plain functions
over `ingest` and `rag`; no Streamlit here.

Each function that lists, opens or changes a knowledge base takes the
session's `Access` and asks it first, here and not only in the page that
offers the action: a session that forges a widget event still ends here.
Changes are kept in the audit trail."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ingest.loaders import KINDS
from ingest.pipeline import IngestOptions, IngestReport, ProgressFn, ingest_paths
from rag import layout, telemetry
from rag.errors import RagError, RebuildRefused
from rag.settings import Settings
from rag.store import STORE_RECORD, open_store
from rag.synced import last_sync
from team.access import KB_NAME_RULE, Access, Action, valid_kb_name

UPLOADS = "uploads"
_UNSAFE = re.compile(r"[^\w.\- ]+")


def list_knowledge_bases(root: Path) -> list[str]:
    """Folders under `root` that hold a published index (or record its
    store), or were created in the app and have none yet (their uploads
    folder marks them)."""
    if not root.is_dir():
        return []
    return sorted(
        p.name
        for p in root.iterdir()
        if valid_kb_name(p.name)
        and any((p / marker).exists() for marker in (layout.CURRENT_FILE, STORE_RECORD, UPLOADS))
    )


def readable_knowledge_bases(access: Access, root: Path) -> list[str]:
    """The knowledge bases under `root` that the user may read (what every
    edge lists, through core.service.KnowledgeService.names)."""
    return access.readable(list_knowledge_bases(root))


def last_synced(access: Access, kb_dir: Path) -> float | None:
    """When `ingest --watch` or `--sync` last brought the base in line with
    its folders (seconds since the epoch); None if never."""
    access.require(Action.READ, kb_dir.name)
    record = last_sync(kb_dir)
    return record.at if record else None


def create(access: Access, root: Path, name: str) -> Path:
    """A new, empty knowledge base `name` under `root` (ValueError when the
    name is not allowed); its index is written by the first upload."""
    if not valid_kb_name(name):
        raise ValueError(KB_NAME_RULE)
    access.require(Action.WRITE, name)
    kb_dir = root / name
    (kb_dir / UPLOADS).mkdir(parents=True, exist_ok=True)
    access.record("create", name)
    return kb_dir


def default_name(settings: Settings) -> str:
    """The knowledge base the first upload creates when there is none."""
    name = settings.index.name
    return name if valid_kb_name(name) else "default"


def safe_filename(name: str) -> str:
    """A file name that cannot leave the uploads folder: path parts dropped,
    Unicode normalised, anything unusual replaced, no leading dots."""
    base = unicodedata.normalize("NFKC", name).replace("\\", "/").split("/")[-1]
    stem, dot, suffix = base.rpartition(".")
    stem = _UNSAFE.sub("_", stem if dot else base).strip(" ._")[:100] or "upload"
    suffix = _UNSAFE.sub("", suffix).lower()[:10] if dot else ""
    return f"{stem}.{suffix}" if suffix else stem


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes


@dataclass
class SavedUploads:
    paths: list[str]  # every file to ingest, the unchanged ones included
    refused: list[tuple[str, str]]  # (name as uploaded, reason)
    # (name as uploaded, name saved under) where a different file had the name
    renamed: list[tuple[str, str]] = field(default_factory=list)
    # (name as uploaded, name of the file that already holds these bytes)
    unchanged: list[tuple[str, str]] = field(default_factory=list)


def save_uploads(
    access: Access, kb_dir: Path, uploads: Sequence[Upload], max_mb: float
) -> SavedUploads:
    """Write uploads under `<kb>/uploads/` with sanitized names, refusing
    types we cannot read and files over the size limit. A file never
    replaces a different one: the same bytes again are left as they are,
    different bytes under a taken name get a numbered name, `report (2).pdf`."""
    access.require(Action.WRITE, kb_dir.name)
    folder = (kb_dir / UPLOADS).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    saved = SavedUploads([], [])
    for upload in uploads:
        name = safe_filename(upload.name)
        if Path(name).suffix.lower() not in KINDS:
            saved.refused.append(
                (upload.name, f"unsupported type; allowed: {', '.join(sorted(KINDS))}")
            )
            continue
        if len(upload.data) > max_mb * 1024 * 1024:
            saved.refused.append((upload.name, too_large(max_mb)))
            continue
        target = (folder / name).resolve()
        if target.parent != folder:  # cannot happen after safe_filename; checked anyway
            saved.refused.append((upload.name, "unsafe file name"))
            continue
        path, fresh = _store(target, upload.data)
        if path is None:
            saved.refused.append((upload.name, f"too many files named like {name}"))
            continue
        if not fresh:
            saved.unchanged.append((upload.name, path.name))
        elif path.name != name:
            saved.renamed.append((upload.name, path.name))
        saved.paths.append(str(path))
    if saved.paths:
        access.record("upload", kb_dir.name, _names(saved.paths))
    return saved


def too_large(max_mb: float) -> str:
    """Why a file over the upload limit is refused (the API says it too)."""
    return f"larger than the {max_mb:g} MB upload limit"


def _names(paths: Sequence[str], shown: int = 10) -> str:
    """The files an audit entry is about: their names, the first few."""
    names = [Path(p).name for p in paths[:shown]]
    more = f" and {len(paths) - shown} more" if len(paths) > shown else ""
    return f"{len(paths)} file(s): " + ", ".join(names) + more


_MAX_VARIANTS = 1000


def _store(target: Path, data: bytes) -> tuple[Path | None, bool]:
    """Put `data` at `target` or the first free `stem (n).suffix`, unless one
    of those already holds the same bytes. Returns (where it is, whether it
    was written now). The name is claimed with a hard link, which fails
    rather than replace a file that another upload wrote meanwhile."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.part")
    tmp.write_bytes(data)
    try:
        for n in range(1, _MAX_VARIANTS + 1):
            candidate = (
                target if n == 1 else target.with_name(f"{target.stem} ({n}){target.suffix}")
            )
            try:
                os.link(tmp, candidate)
                return candidate, True
            except FileExistsError:
                if _same_bytes(candidate, data):
                    return candidate, False
        return None, False
    finally:
        tmp.unlink(missing_ok=True)


def _same_bytes(path: Path, data: bytes) -> bool:
    try:
        return path.stat().st_size == len(data) and path.read_bytes() == data
    except OSError:
        return False


def ingest_files(
    access: Access, kb_dir: Path, paths: list[str], settings: Settings, progress: ProgressFn
) -> IngestReport:
    access.require(Action.WRITE, kb_dir.name)
    report = ingest_paths(paths, settings.model_copy(update={"index": kb_dir}), progress=progress)
    telemetry.record_ingest(report)
    return report


def delete_documents(
    access: Access, kb_dir: Path, paths: list[str], settings: Settings
) -> IngestReport:
    """Remove documents; an uploaded file is deleted from disk as well."""
    access.require(Action.WRITE, kb_dir.name)
    report = ingest_paths(
        [], settings.model_copy(update={"index": kb_dir}), IngestOptions(delete=paths)
    )
    uploads = (kb_dir / UPLOADS).resolve()
    for path in paths:
        if Path(path).resolve().parent == uploads:
            Path(path).unlink(missing_ok=True)
    access.record("delete", kb_dir.name, _names(paths))
    return report


def rebuild(
    access: Access, kb_dir: Path, settings: Settings, progress: ProgressFn,
    allow_drop: bool = False,
) -> IngestReport:  # fmt: skip
    """Re-ingest every document from its file, each with the options it was
    ingested with, into a fresh generation published only when complete:
    the current one serves searches until then, and stays if the rebuild
    stops. Raises `RebuildRefused` naming the documents it would drop
    (files gone or unreadable) unless `allow_drop`, and when nothing is
    left to ingest."""
    access.require(Action.WRITE, kb_dir.name)
    stored = open_store(kb_dir, settings).published_documents()
    gone = [path for path in stored if not os.path.exists(path)]
    if gone and not allow_drop:
        raise RebuildRefused.dropping(gone)
    sources = sorted(set(stored) - set(gone))
    report = ingest_paths(
        sources, settings.model_copy(update={"index": kb_dir}),
        IngestOptions(rebuild=True, allow_drop=allow_drop), progress=progress,
    )  # fmt: skip
    access.record("rebuild", kb_dir.name, f"dropped {_names(gone)}" if gone else "")
    telemetry.record_ingest(report)
    return report


def delete_knowledge_base(access: Access, kb_dir: Path, settings: Settings) -> None:
    """Remove the knowledge base: its rows in its store (a Milvus drops its
    collections), then its folder, then every grant to it. An admin's action. Its folder is first
    renamed out of sight, so nothing opens it by name meanwhile; it comes
    back if its store refuses (an ingest is writing: `IndexBusy`)."""
    access.require(Action.ADMIN, kb_dir.name)
    hidden = kb_dir.with_name(f".deleting-{kb_dir.name}-{secrets.token_hex(4)}")
    os.rename(kb_dir, hidden)
    try:
        open_store(hidden, settings).drop()
    except BaseException:
        os.rename(hidden, kb_dir)
        raise
    shutil.rmtree(hidden)
    access.record("delete knowledge base", kb_dir.name)
    if access.policy.db is not None:
        access.policy.db.accounts.forget_kb(kb_dir.name, by=access.user.name)


def has_index(kb_dir: Path, settings: Settings) -> bool:
    """Whether anything was published there, in whichever store it is."""
    try:
        return open_store(kb_dir, settings).exists()
    except RagError:
        return True  # opening it shows the problem
