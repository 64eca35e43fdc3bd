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

from pebble import ProcessExpired, ProcessPool

from ingest import loaders
from ingest.discovery import FileTask
from rag.errors import BadDocument
from rag.types import Document

# Exit code of a worker that hit its memory cap.
_OUT_OF_MEMORY = 86


def _limit_memory(megabytes: int) -> None:
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


def parse_files(
    tasks: Iterable[tuple[FileTask, str]],
    *,
    workers: int = 1,
    timeout: float = 300.0,
    memory_mb: int = 4096,
    ocr: bool = False,
    max_text_chars: int | None = None,
) -> Iterator[tuple[FileTask, Document | str]]:
    """Yield (task, Document) or (task, reason it failed) for each (task,
    content hash), in order. A text over `max_text_chars` is refused in the
    worker, so it is never sent back to this process."""
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
                _load, args=(task.path, task.kind, digest, ocr, max_text_chars), timeout=timeout
            )
            pending.append((task, future))
            if len(pending) >= workers * 4:
                break

    try:
        fill()
        while pending:
            task, future = pending.popleft()
            try:
                result: Document | str = future.result()  # type: ignore[attr-defined]
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
