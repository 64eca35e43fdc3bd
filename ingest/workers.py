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
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from pebble import ProcessExpired, ProcessPool

from ingest import loaders
from ingest.chunking import Chunker
from ingest.discovery import FileTask
from rag.embedding import load_token_counter
from rag.errors import BadDocument, ModelMissing
from rag.types import Chunk, Document

# Exit code of a worker that hit its memory cap.
_OUT_OF_MEMORY = 86


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
    document = _load(path, kind, content_hash, ocr, max_chars)
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
) -> Iterator[tuple[FileTask, Parsed | str]]:
    """Yield (task, Parsed) or (task, reason it failed) for each (task,
    content hash), in order, split in the worker when `split` is given. A
    text over `max_text_chars` is refused in the worker, so it is never
    sent back to this process."""
    queue = iter(tasks)
    pending: deque[tuple[FileTask, object]] = deque()
    # forkserver: workers start from a small clean process, not a fork of one
    # that has torch and its threads loaded.
    pool = ProcessPool(
        max_workers=workers,
        context=multiprocessing.get_context("forkserver"),
        initializer=_limit_memory,
        initargs=(memory_mb,),
    )

    def fill() -> None:
        for task, digest in queue:
            future = pool.schedule(
                _load_and_split,
                args=(task.path, task.kind, digest, ocr, max_text_chars, split),
                timeout=timeout,
            )
            pending.append((task, future))
            if len(pending) >= workers * 4:
                break

    try:
        fill()
        while pending:
            task, future = pending.popleft()
            try:
                result: Parsed | str = future.result()  # type: ignore[attr-defined]
            except BadDocument as exc:
                result = str(exc)
            except FutureTimeout:
                result = f"parsing took longer than {timeout:.0f} s; the file was skipped"
            except ProcessExpired as exc:
                if exc.exitcode == _OUT_OF_MEMORY:
                    result = f"parsing needed more than {memory_mb} MB of memory"
                else:
                    result = f"the parser crashed on this file (exit code {exc.exitcode})"
            except Exception as exc:  # a library bug on a strange file: report, go on
                result = f"unexpected parser error ({exc.__class__.__name__}: {exc})"
            yield task, result
            fill()
    finally:
        pool.stop()
        pool.join()
