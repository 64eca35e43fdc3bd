"""What an ingest reports: the `IngestReport` (counts, failures, where the
time went: `timed`) and the `Progress` events it sends on the way."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field


@dataclass
class Failure:
    path: str
    error: str


@dataclass
class IngestReport:
    index: str
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    # Of the added and deleted, documents that moved: their content was
    # copied to a new path and the old path removed in the same run.
    renamed: int = 0
    failed: list[Failure] = field(default_factory=list)
    skipped: list[Failure] = field(default_factory=list)
    chunks_embedded: int = 0
    chunks_copied: int = 0
    pages: int = 0
    seconds: float = 0.0
    generation: int | None = None
    # Where the time went, as this process waited for it (scan, parse, chunk,
    # model: loading it, once a file is parsed; embed, write: each second
    # counted once). Work done elsewhere (Ray
    # tasks and actors) is summed over them in `worker_seconds`.
    phases: dict[str, float] = field(default_factory=dict)
    worker_seconds: dict[str, float] = field(default_factory=dict)
    retried: int = 0  # embedding batches sent again after their worker was lost

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Progress:
    """One step of an ingest. `done`/`total` count files in "scan" (hashed)
    and "ingest" (parsed), and chunks in "embed" (embedded in this run / found
    so far). `fraction` is for a bar: in "scan" the files hashed; in "ingest"
    and "embed" each file to parse is an equal share, filled as its chunks are
    embedded and settled once stored (or failed), so the bar is full only
    when the last chunk is stored."""

    stage: str
    done: int
    total: int
    path: str = ""
    chunks: int = 0  # embedded so far in this run
    fraction: float = 0.0


ProgressFn = Callable[[Progress], None]


@contextmanager
def timed(report: IngestReport, phase: str) -> Iterator[None]:
    """Add the time the block takes to `report.phases[phase]`."""
    started = time.perf_counter()
    try:
        yield
    finally:
        spent = time.perf_counter() - started
        report.phases[phase] = report.phases.get(phase, 0.0) + spent


def noop(_: Progress) -> None:
    pass
