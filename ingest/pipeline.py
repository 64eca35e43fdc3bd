"""Incremental ingestion: files (or in-memory documents) -> chunks -> vectors
-> the next index generation.

Unchanged content (same path, same SHA-256) is never embedded again; content
already stored under another path (a renamed or copied file) is copied with
its vectors instead of being embedded again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from ingest import embed_process, workers
from ingest.discovery import OUTSIDE, FileTask, Found, discover, is_under
from ingest.ingestor import Ingestor, RemoteEmbedding
from ingest.loaders import sha256_file
from ingest.records import Failure, IngestReport, Progress, ProgressFn, noop, timed
from rag import lexical
from rag.embedding import Embedder, canonical_model_id, embedding_dimension, load_embedder
from rag.errors import RebuildRefused
from rag.filters import tags_of
from rag.layout import IndexParams
from rag.settings import Settings
from rag.store import Store, open_store, replaced_documents
from rag.types import Chunk, Document

# The public entry: what callers import from here.
__all__ = [
    "Engine", "IngestOptions", "IngestReport", "Parsed", "Progress", "ProgressFn",
    "ingest_documents", "ingest_paths",
]  # fmt: skip

ToParse = list[tuple[FileTask, str, bool]]  # (file, content hash, with OCR)


@dataclass(frozen=True)
class IngestOptions:
    """What an ingest run does besides storing the files under its paths.

    `sync`: remove the stored documents under the paths whose files are
    gone. `delete`: remove the documents at or under these paths first.
    `rebuild`: write a fresh generation from the paths, published only when
    complete; it raises `RebuildRefused` (publishing nothing) when it would
    be empty, or would drop stored documents and not `allow_drop`.

    `ocr`: OCR PDF pages without a text layer (a document stored with OCR is
    parsed with OCR again, asked or not). `tags` (validated by
    `rag.filters.tags_of`) replace the tags of every document under the
    paths, unchanged ones included; None keeps each document's tags.

    `gone` names files (or folders) known to have vanished: the documents at
    or under them whose files are gone are removed, after the new files are
    stored, so that a renamed file's new path copies their chunks (a watcher
    passes the two halves of a rename together).

    A symbolic link whose resolved path is not under `roots` (by default the
    paths) is skipped and reported, unless `follow_links`. With `sync` (and
    for `gone`), a stored document that only such a link reaches now is
    removed, each reported in `skipped` as removed."""

    sync: bool = False
    delete: Sequence[str] = ()
    rebuild: bool = False
    allow_drop: bool = False
    ocr: bool = False
    tags: Sequence[str] | None = None
    gone: Sequence[str] = ()
    roots: Sequence[str] | None = None
    follow_links: bool = False


@dataclass(frozen=True)
class Parsed:
    """One file parsed: its Document or why it failed, and its chunks when
    it was split where it was parsed (None: split by the `Ingestor`)."""

    task: FileTask
    result: Document | str
    ocr: bool
    chunks: list[Chunk] | None = None
    token_ids: list[np.ndarray] | None = None  # of the chunks, for `embed_token_ids`


class Engine(RemoteEmbedding, Protocol):
    """Where parsing and embedding run when not in this process and its
    parser workers (`ingest.distributed.RayEngine`). The writing stays here."""

    worker_seconds: dict[str, float]
    retried: int

    def parse(self, to_parse: ToParse, settings: Settings) -> Iterator[Parsed]:
        """One `Parsed` per file, in the order given."""
        ...


def index_params(
    settings: Settings, store: Store, rebuild: bool
) -> tuple[IndexParams, Embedder | None]:
    """The parameters of the index to write, checked against an existing
    index before any model is loaded (an unchanged re-run never loads one).
    A new index takes its dimension from the model's configuration, so the
    model loads later, beside the parsing (`Ingestor.start_loading`); only a
    model whose configuration does not tell, or one missing (it fails here,
    by name, before anything is written), is loaded now."""
    wanted_model = canonical_model_id(settings.embedding_model)
    current = None if rebuild else store.published()
    if current is not None:
        found = current.params
        wanted = replace(
            found,
            model_id=wanted_model,
            chunk_tokens=settings.chunk_tokens,
            chunk_overlap=settings.chunk_overlap,
            analyzer=lexical.ANALYZER_ID,
        )
        if wanted != found:
            # Let the writer phrase the difference.
            return wanted, None
        return found, None
    embedder = None
    dimension = embedding_dimension(settings.embedding_model)
    if dimension is None:
        embedder = load_embedder(
            settings.embedding_model, settings.embed_precision, settings.embed_device
        )
        dimension = embedder.dimension
    params = IndexParams(
        model_id=wanted_model,
        dimension=dimension,
        chunk_tokens=settings.chunk_tokens,
        chunk_overlap=settings.chunk_overlap,
        analyzer=lexical.ANALYZER_ID,
    )
    return params, embedder


def ingest_paths(
    paths: list[str],
    settings: Settings,
    options: IngestOptions = IngestOptions(),
    *,
    embedder: Embedder | None = None,
    progress: ProgressFn = noop,
    engine: Engine | None = None,
) -> IngestReport:
    """Bring the index (`settings.index`) in line with the files under
    `paths` as `options` say, parsing and embedding here or on an `engine`
    (Ray)."""
    o = options
    started = time.monotonic()
    wanted_tags = None if o.tags is None else tags_of(o.tags)  # a bad tag: before anything runs
    root = Path(settings.index)
    report = IngestReport(index=str(root))
    found = discover(paths, None if o.roots is None else list(o.roots), o.follow_links)
    report.skipped = [Failure(p, e) for p, e in found.skipped]
    report.failed = [Failure(p, e) for p, e in found.failed]
    store = open_store(root, settings)  # an unknown or other store: before the model loads
    if o.rebuild:
        _refuse_lossy_rebuild(store, root, found, o.allow_drop)  # before the model loads
    writing = _writing(
        store, settings, report, embedder, started, progress, o.rebuild, o.allow_drop, engine
    )
    with writing as ingestor:
        ingestor.tags = wanted_tags
        for target in o.delete:
            _delete_under(ingestor, os.path.abspath(target))
        with timed(report, "scan"):
            to_parse = _scan(found.files, ingestor, settings, o.ocr, progress)
        total = ingestor.planned = len(to_parse)
        parsed = engine.parse(to_parse, settings) if engine else _parse(to_parse, settings)
        _store_parsed(ingestor, parsed, total, report)
        seen = {f.path for f in found.files} | {f.path for f in report.failed}
        cleaned = (list(paths) if o.sync else []) + [os.path.abspath(g) for g in o.gone]
        if cleaned:
            _remove_vanished(ingestor, cleaned, seen, found.outside)
    if engine is not None:
        report.worker_seconds = {k: round(v, 3) for k, v in engine.worker_seconds.items()}
        report.retried = engine.retried
    return report


def _store_parsed(
    ingestor: Ingestor, parsed: Iterator[Parsed], total: int, report: IngestReport
) -> None:
    """Hand each of the `total` parsed files to the ingestor (a failure to
    the report), then write what it still holds."""
    for done in range(1, total + 1):
        with timed(report, "parse"):
            item = next(parsed)
        if isinstance(item.result, str):
            report.failed.append(Failure(item.task.path, item.result))
            ingestor.settle()
        else:
            task = item.task
            ingestor.add(
                item.result, task.size, task.mtime, ocr=item.ocr, chunks=item.chunks,
                token_ids=item.token_ids,
            )  # fmt: skip
        ingestor.tell_read(done, total, item.task.path)
    ingestor.flush()


@contextmanager
def _writing(
    store: Store,
    settings: Settings,
    report: IngestReport,
    embedder: Embedder | None,
    started: float,
    progress: ProgressFn,
    rebuild: bool = False,
    allow_drop: bool = False,
    engine: Engine | None = None,
) -> Iterator[Ingestor]:
    """What every ingest shares: the index's parameters checked, the write
    lock held around one `Ingestor`, and once the writer has published (or
    found nothing to publish), the generation and the time in the report."""
    params, loaded = index_params(settings, store, rebuild)
    embedder = embedder or loaded
    with (
        store.writer(
            params, rebuild=rebuild, allow_drop=allow_drop, lock_timeout=settings.lock_timeout
        ) as writer,
        _remote(settings, engine, embedder) as remote,
    ):
        yield Ingestor(writer, settings, report, embedder, progress, remote=remote)
        publishing = writer.changed
        publish_started = time.perf_counter()
    published = store.published() if publishing else None
    if published is not None:
        report.generation = published.generation
    report.phases["write"] = report.phases.get("write", 0.0) + time.perf_counter() - publish_started
    report.phases = {phase: round(spent, 3) for phase, spent in report.phases.items()}
    report.seconds = round(time.monotonic() - started, 3)


@contextmanager
def _remote(
    settings: Settings, engine: Engine | None, embedder: Embedder | None
) -> Iterator[RemoteEmbedding | None]:
    """Where the model runs when not in this process: the `engine` (Ray),
    else a child process (`embed_process.wanted`) unless a model is already
    loaded here. The child is stopped when the ingest ends, however it ends."""
    if engine is not None or embedder is not None or not embed_process.wanted(settings):
        yield engine
        return
    child = embed_process.EmbeddingProcess(settings)
    failed = True
    try:
        yield child
        failed = False
    finally:
        child.close(failed)


def _remove_vanished(
    ingestor: Ingestor, roots: list[str], seen: set[str], outside: list[str]
) -> None:
    """Remove the stored documents under `roots` that this run did not see:
    those whose file is gone, and those only a skipped link leading out of
    the folders reaches now (followed before: each is said by name, not
    left in the index unsaid, nor removed unsaid)."""
    for path in ingestor.writer.paths():
        if not is_under(path, roots) or path in seen:
            continue
        if not os.path.exists(path):
            ingestor.delete(path)
        elif is_under(path, outside):
            ingestor.delete(path)
            _removed_behind_link(ingestor.report, path)


def _removed_behind_link(report: IngestReport, path: str) -> None:
    why = f"reached by a symbolic link {OUTSIDE}: removed from the index (--follow-links keeps it)"
    for entry in report.skipped:
        if entry.path == path:  # the link itself: one line for it
            entry.error = why
            return
    report.skipped.append(Failure(path, why))


def _delete_under(ingestor: Ingestor, target: str) -> None:
    """Remove the document at `target`, or every one under that folder."""
    doomed = [p for p in ingestor.writer.paths() if is_under(p, [target])]
    if not doomed:
        ingestor.report.failed.append(Failure(target, "not in the index"))
    for path in doomed:
        ingestor.delete(path)


def _refuse_lossy_rebuild(store: Store, root: Path, found: Found, allow_drop: bool) -> None:
    """Fail fast on what the files found already show. The writer checks
    again before it publishes, when files that failed to parse are known."""
    if not found.files:
        raise RebuildRefused(
            f"Found no file to ingest, and a rebuild never publishes an empty index. "
            f"The index at {root} is unchanged."
        )
    if allow_drop:
        return
    coming = {task.path for task in found.files}
    stored = replaced_documents(store)
    dropped = sorted(path for path in stored if path not in coming)
    if dropped:
        raise RebuildRefused.dropping(dropped)


def _scan(
    files: list[FileTask], ingestor: Ingestor, settings: Settings, ocr: bool, progress: ProgressFn
) -> ToParse:
    """Hash each file; count the unchanged, copy the known content, and
    return (task, hash, with OCR) for the files to parse."""
    limit = int(settings.max_file_mb * 1024 * 1024)
    to_parse: ToParse = []
    for done, task in enumerate(files, start=1):
        progress(Progress("scan", done, len(files), task.path, fraction=done / len(files)))
        problem = _precheck(task, limit, settings.max_file_mb)
        if problem:
            ingestor.report.failed.append(Failure(task.path, problem))
            continue
        digest = sha256_file(task.path)
        state = ingestor.status(task.path, digest)
        if state == "unchanged":
            if not ingestor.retag(task.path):
                ingestor.report.unchanged += 1
        elif state == "copy":
            ingestor.copy(task.path, digest, task.size, task.mtime)
        else:
            earlier = ingestor.writer.earlier(task.path)
            to_parse.append((task, digest, ocr or bool(earlier and earlier.ocr)))
            ingestor.start_loading()  # a file to embed: the model loads beside the parsing
    return to_parse


def _parse(to_parse: ToParse, settings: Settings) -> Iterator[Parsed]:
    """A `Parsed` for each file, parsed, split and tokenized in worker
    processes (one per core unless RAG_PARSE_WORKERS says otherwise) while
    this process embeds and writes what came back: those without OCR first,
    then those with."""
    wanted = workers.Split(settings.embedding_model, settings.chunk_tokens, settings.chunk_overlap)
    # A model without a fast tokenizer: the `Ingestor` splits.
    split = wanted if workers.can_split(wanted) else None
    for with_ocr in (False, True):
        batch = [(task, digest) for task, digest, o in to_parse if o == with_ocr]
        if not batch:
            continue
        parsed = workers.parse_files(
            batch,
            workers=_parser_count(batch, settings),
            ocr=with_ocr,
            timeout=settings.parse_timeout,
            memory_mb=settings.parse_memory_mb,
            max_text_chars=settings.max_text_chars,
            split=split,
            pages_per_range=settings.pdf_pages_per_range,
        )
        for task, result in parsed:
            if isinstance(result, str):
                yield Parsed(task, result, with_ocr)
            else:
                yield Parsed(task, result.document, with_ocr, result.chunks, result.token_ids)


def _parser_count(batch: list[tuple[FileTask, str]], settings: Settings) -> int:
    """As many parser processes as asked for (one per core by default), no
    more than there are files, unless a PDF may be parsed in ranges."""
    wanted = settings.parse_workers or workers.default_workers()
    if settings.pdf_pages_per_range and any(task.kind == "pdf" for task, _ in batch):
        return wanted
    return min(len(batch), wanted)


def _precheck(task: FileTask, limit: int, limit_mb: float) -> str:
    if task.size == 0:
        return "empty file (0 bytes)"
    if task.size > limit:
        return f"file is {task.size / 1e6:.1f} MB, over the {limit_mb:g} MB limit (RAG_MAX_FILE_MB)"
    return ""


def ingest_documents(
    documents: Iterable[Document],
    settings: Settings,
    *,
    index: Path | None = None,
    total: int = 0,
    prune: bool = False,
    embedder: Embedder | None = None,
    progress: ProgressFn = noop,
) -> IngestReport:
    """Ingest documents that are already in memory (e.g. a BEIR corpus), with
    the same incremental rules as files. `prune` removes stored documents
    that are not among `documents`; `total` is how many there are, for the
    progress's fraction (0 if unknown)."""
    started = time.monotonic()
    root = Path(index or settings.index)
    report = IngestReport(index=str(root))
    store = open_store(root, settings)
    with _writing(store, settings, report, embedder, started, progress) as ingestor:
        ingestor.planned = total
        seen = set()
        for done, document in enumerate(documents, start=1):
            seen.add(document.path)
            state = ingestor.status(document.path, document.content_hash)
            if state == "unchanged":
                report.unchanged += 1
                ingestor.settle()
            elif state == "copy":
                ingestor.copy(document.path, document.content_hash, len(document.text), 0.0)
                ingestor.settle()
            else:
                ingestor.add(document)
            ingestor.tell_read(done, total, document.path)
        ingestor.flush()
        if prune:
            for path in ingestor.writer.paths():
                if path not in seen:
                    ingestor.delete(path)
    return report
