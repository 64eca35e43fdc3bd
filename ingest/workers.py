"""Parsing files in worker processes, so that a parser that crashes, hangs or
eats all memory on a hostile file fails that file only.

pebble's pool kills a worker whose task times out and reports a worker that
died as `ProcessExpired`, leaving the other tasks alone. Results come back in
submission order, with a bounded number in flight so memory stays flat.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from pebble import ProcessExpired, ProcessPool

from ingest import loaders, pdf_ranges
from ingest.chunking import Chunker
from ingest.discovery import FileTask
from rag.embedding import load_token_counter
from rag.errors import BadDocument, ModelMissing
from rag.types import Chunk, Document

# Exit code of a worker that hit its memory cap.
_OUT_OF_MEMORY = 86
# A PDF is only counted for splitting if it has at least this many bytes for
# each page of a range: text pages rarely take less.
_MIN_PAGE_BYTES = 1024


def _limit_memory(megabytes: int) -> None:
    # The workers are the parallelism: the tokenizer's own thread pool would
    # only add threads, each reserving address space under the cap.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    limit = megabytes * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _load(path: str, kind: str, content_hash: str, ocr: bool, max_chars: int | None) -> Document:
    """`loaders.load` in a worker. A worker that ran out of memory exits:
    the parser may have left its heap full, and every later file would fail
    too. The pool starts a fresh one."""
    try:
        return loaders.load(path, kind, content_hash, ocr, max_chars)
    except MemoryError:
        os._exit(_OUT_OF_MEMORY)


@dataclass(frozen=True)
class Split:
    """How a worker splits what it parsed: the embedding model (for its
    tokenizer alone) and the chunking parameters."""

    model: str
    chunk_tokens: int
    chunk_overlap: int


@dataclass(frozen=True)
class Parsed:
    """A file parsed in a worker, split there when a `Split` was given: its
    chunks and their token ids as the model reads them (`embed_token_ids`),
    so the tokenizer runs once per passage, in a parser process."""

    document: Document
    chunks: list[Chunk] | None = None
    token_ids: list[np.ndarray] | None = None


@lru_cache(maxsize=2)
def chunker_for(split: Split) -> Chunker:
    """One chunker per worker process: the tokenizer loads once, and the
    chunker's count cache serves every file the worker parses."""
    counter = load_token_counter(split.model)
    return Chunker(
        counter.count_tokens, split.chunk_tokens, split.chunk_overlap, counter.max_tokens
    )


def _load_and_split(
    path: str, kind: str, content_hash: str, ocr: bool, max_chars: int | None, split: Split | None
) -> Parsed:
    return _split(_load(path, kind, content_hash, ocr, max_chars), split)


def _load_range_and_split(
    path: str,
    content_hash: str,
    pages: range,
    ocr: bool,
    max_chars: int | None,
    split: Split | None,
) -> Parsed:
    """Some pages of a long PDF, parsed and split as `_load_and_split` does
    a whole file (`ingest.pdf_ranges` puts the ranges together)."""
    try:
        document = pdf_ranges.load_range(path, content_hash, pages, ocr, max_chars)
    except MemoryError:
        os._exit(_OUT_OF_MEMORY)
    return _split(document, split)


def _split(document: Document, split: Split | None) -> Parsed:
    if split is None:
        return Parsed(document)
    try:
        chunks = chunker_for(split).split(document)
        token_ids = load_token_counter(split.model).encode([c.indexed_text for c in chunks])
    except MemoryError:
        os._exit(_OUT_OF_MEMORY)
    return Parsed(document, chunks, token_ids)


def can_split(split: Split) -> bool:
    """Whether workers can split for this model (it has a fast tokenizer)."""
    try:
        load_token_counter(split.model)
    except ModelMissing:
        return False
    return True


def default_workers() -> int:
    """Parser processes when none are asked for: one per core this process may use."""
    return max(1, len(os.sched_getaffinity(0)))


def parse_files(
    tasks: Iterable[tuple[FileTask, str]],
    *,
    workers: int = 1,
    timeout: float = 300.0,
    memory_mb: int = 4096,
    ocr: bool = False,
    max_text_chars: int | None = None,
    split: Split | None = None,
    pages_per_range: int = 0,
    pool: ProcessPool | None = None,
) -> Iterator[tuple[FileTask, Parsed | str]]:
    """Yield (task, Parsed) or (task, reason it failed) for each (task,
    content hash), in order, split in the worker when `split` is given. A
    text over `max_text_chars` is refused in the worker, so it is never
    sent back to this process. A PDF of more than `pages_per_range` pages
    (0: none) is parsed in ranges of that many pages, in several workers at
    once (with two workers or more), and fails whole if one of its ranges
    fails; `timeout` holds for each range. `pool` (of `parser_pool`, with
    `workers` processes and `memory_mb`): the caller's, kept from one call
    to the next and left running (its workers keep the tokenizer loaded);
    by default one is started for this call."""
    limits = _Limits(timeout, memory_mb, ocr, max_text_chars, split, pages_per_range)
    batch = _Batch(workers, limits, pool)
    try:
        yield from batch.run(iter(tasks))
    finally:
        batch.close()


@dataclass(frozen=True)
class _Limits:
    timeout: float
    memory_mb: int
    ocr: bool
    max_text_chars: int | None
    split: Split | None
    pages_per_range: int


@dataclass
class _File:
    """A file being parsed: what is left to hand to the pool (None: the
    whole file; else ranges of a PDF's pages), what the pool is working on,
    and what came back, in page order."""

    task: FileTask
    digest: str
    todo: deque[range | None]
    running: deque[tuple[range | None, Any]] = field(default_factory=deque)
    parts: list[Parsed] = field(default_factory=list)


def parser_pool(workers: int, memory_mb: int) -> ProcessPool:
    # forkserver: workers start from a small clean process, not a fork of one
    # that has torch and its threads loaded.
    return ProcessPool(
        max_workers=workers,
        context=multiprocessing.get_context("forkserver"),
        initializer=_limit_memory,
        initargs=(memory_mb,),
    )


class _Batch:
    """Files handed to the pool in order, no more tasks (whole files or
    ranges of pages) in flight or held than `workers * 4`, a file's ranges
    before any later file's: the file at the head can always go on."""

    def __init__(self, workers: int, limits: _Limits, pool: ProcessPool | None = None) -> None:
        self.limits = limits
        self.own = pool is None  # stopped at the end, else the caller's
        self.pool = pool if pool is not None else parser_pool(workers, limits.memory_mb)
        self.probe: ProcessPool | None = None  # counts pages, beside the busy pool
        self.workers = workers
        self.window = workers * 4
        self.files: deque[_File] = deque()
        self.in_flight = 0

    def run(self, queue: Iterator[tuple[FileTask, str]]) -> Iterator[tuple[FileTask, Parsed | str]]:
        self.fill(queue)
        while self.files:
            file = self.files[0]
            result = self.collect(file, queue)
            self.files.popleft()
            yield file.task, result
            self.fill(queue)

    def fill(self, queue: Iterator[tuple[FileTask, str]]) -> None:
        for file in self.files:
            self.schedule(file)
            if file.todo:
                return
        for task, digest in queue:
            file = _File(task, digest, deque(self.plan(task)))
            self.files.append(file)
            self.schedule(file)
            if self.in_flight >= self.window:
                return

    def plan(self, task: FileTask) -> list[range | None]:
        per_range = self.limits.pages_per_range
        # One worker gains nothing from ranges; a smaller file has too few
        # pages to be worth a round trip to count them.
        if (
            self.workers < 2
            or not per_range
            or task.kind != "pdf"
            or task.size < per_range * _MIN_PAGE_BYTES
        ):
            return [None]
        if self.probe is None:
            self.probe = parser_pool(1, self.limits.memory_mb)
        future = self.probe.schedule(
            pdf_ranges.page_count, args=(task.path,), timeout=min(self.limits.timeout, 60)
        )
        try:
            pages = future.result()
        except Exception:  # parsed whole, which reports why it cannot be read
            return [None]
        return [None] if pages <= per_range else list(pdf_ranges.plan(pages, per_range))

    def schedule(self, file: _File) -> None:
        limits = self.limits
        while file.todo and self.in_flight < self.window:
            pages = file.todo.popleft()
            task, digest, ocr, most = file.task, file.digest, limits.ocr, limits.max_text_chars
            future = (
                self.pool.schedule(
                    _load_and_split,
                    args=(task.path, task.kind, digest, ocr, most, limits.split),
                    timeout=limits.timeout,
                )
                if pages is None
                else self.pool.schedule(
                    _load_range_and_split,
                    args=(task.path, digest, pages, ocr, most, limits.split),
                    timeout=limits.timeout,
                )
            )
            file.running.append((pages, future))
            self.in_flight += 1

    def collect(self, file: _File, queue: Iterator[tuple[FileTask, str]]) -> Parsed | str:
        """The file's result once all its tasks are back; the first that
        failed fails it, and the rest of its tasks are cancelled."""
        while file.running or file.todo:
            if not file.running:
                self.fill(queue)
            pages, future = file.running.popleft()
            self.in_flight -= 1
            outcome = _outcome(future, pages, self.limits)
            if isinstance(outcome, str):
                for _, other in file.running:
                    other.cancel()
                self.in_flight -= len(file.running)
                file.running.clear()
                file.todo.clear()
                return outcome
            file.parts.append(outcome)
            self.fill(queue)
        return self.assembled(file)

    def assembled(self, file: _File) -> Parsed | str:
        parts = file.parts
        if len(parts) == 1:  # parsed whole
            return parts[0]
        documents = [p.document for p in parts]
        try:
            document = pdf_ranges.merged(documents, self.limits.ocr, self.limits.max_text_chars)
        except BadDocument as exc:
            return str(exc)
        if parts[0].chunks is None:
            return Parsed(document)
        chunks = pdf_ranges.merged_chunks(documents, [p.chunks or [] for p in parts])
        return Parsed(document, chunks, [t for p in parts for t in p.token_ids or []])

    def close(self) -> None:
        if not self.own:  # the caller's pool goes on: what this call left in it stops
            for file in self.files:
                for _, future in file.running:
                    future.cancel()
        for pool in (self.pool if self.own else None, self.probe):
            if pool is not None:
                pool.stop()
                pool.join()


def _outcome(future: Any, pages: range | None, limits: _Limits) -> Parsed | str:
    """What a task gave back, or why it failed (naming the pages of a range)."""
    at = f" (pages {pages.start + 1}-{pages.stop})" if pages is not None else ""
    try:
        result: Parsed = future.result()
    except BadDocument as exc:
        return str(exc)
    except FutureTimeout:
        return f"parsing took longer than {limits.timeout:.0f} s{at}; the file was skipped"
    except ProcessExpired as exc:
        if exc.exitcode == _OUT_OF_MEMORY:
            return f"parsing needed more than {limits.memory_mb} MB of memory{at}"
        return f"the parser crashed on this file (exit code {exc.exitcode}){at}"
    except Exception as exc:  # a library bug on a strange file: report, go on
        return f"unexpected parser error ({exc.__class__.__name__}: {exc}){at}"
    return result
