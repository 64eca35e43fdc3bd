"""`ingest --watch`: keep a knowledge base in line with folders as their
files are added, changed, deleted and renamed.

On start, one sync pass (`ingest --sync` over the folders) catches up on
what changed while nobody watched. Then `watchfiles` reports changes; a
changed file waits until its size and modification time have held still for
`settle` seconds (a file still being copied or written is not ingested
half-way), and everything that is ready goes to `ingest_paths` together:
one write, one published generation per batch. The two halves of a rename
(the old path gone, the new one added) travel in the same batch, so the new
path copies the stored chunks and vectors instead of being embedded again.

Stopping (`stop` set, e.g. by Ctrl-C) takes effect between batches: a batch
being written is finished first. An exception inside a batch abandons it;
either way the index stays at a complete generation.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import watchfiles

from ingest.discovery import UNSUPPORTED, discover, is_under
from ingest.loaders import kind_of
from ingest.pipeline import IngestOptions, ingest_paths
from ingest.records import IngestReport
from rag.embedding import Embedder, load_embedder
from rag.errors import IndexBusy
from rag.settings import Settings
from rag.synced import record_sync

# How often the loop wakes without events, to see which files have settled.
TICK_MS = 250
# watchfiles groups the events of this long a burst into one report.
DEBOUNCE_MS = 800
# A file that never holds still (a growing log) does not hold back the
# rest: after this long, what is ready is applied without it.
MAX_HOLD_S = 30.0
# After "index busy" (another ingest is writing), try again this much later.
BUSY_RETRY_S = 5.0


@dataclass(frozen=True)
class Batch:
    """One applied set of changes: what the status line shows."""

    at: float  # time.time() when it was applied
    report: IngestReport
    files: tuple[str, ...] = ()  # the changed files it ingested
    gone: tuple[str, ...] = ()  # the vanished paths it removed
    catch_up: bool = False  # the sync pass on start
    busy: bool = False  # not applied: another ingest holds the index; retried

    def line(self) -> str:
        """`12:03:04  applied  +1 ~0 -0 >1  (3 chunks embedded)`, then failures by name."""
        r = self.report
        added, deleted = r.added - r.renamed, r.deleted - r.renamed
        head = time.strftime("%H:%M:%S", time.localtime(self.at))
        if self.busy:
            return f"{head}  index busy (another ingest is writing); retrying"
        what = "caught up" if self.catch_up else "applied"
        text = f"{head}  {what}  +{added} ~{r.updated} -{deleted} >{r.renamed}"
        n = r.chunks_embedded
        text += f"  ({n} chunk{'' if n == 1 else 's'} embedded"
        text += f", generation {r.generation})" if r.generation else ")"
        if r.failed:
            text += f"  {len(r.failed)} failed: " + "; ".join(
                f"{f.path}: {f.error}" for f in r.failed
            )
        links = [f for f in r.skipped if not f.error.startswith(UNSUPPORTED)]
        if links:
            text += f"  {len(links)} skipped: " + "; ".join(f"{f.path}: {f.error}" for f in links)
        return text

    def to_dict(self) -> dict[str, object]:
        return {
            "at": self.at, "catch_up": self.catch_up, "busy": self.busy,
            "files": list(self.files), "gone": list(self.gone), **self.report.to_dict(),
        }  # fmt: skip

    @property
    def changed(self) -> bool:
        r = self.report
        changes = r.added or r.updated or r.deleted or r.failed or r.skipped
        return self.catch_up or self.busy or bool(changes)


BatchFn = Callable[[Batch], None]


@dataclass
class Pending:
    """Changes seen and not applied yet. A file is ready once its (size,
    mtime) has not changed for `settle` seconds."""

    settle: float
    roots: list[str] = field(default_factory=list)  # a folder moved in is walked under these
    follow_links: bool = False
    files: dict[str, tuple[tuple[int, int] | None, float]] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)
    held_since: float | None = None  # when the oldest unapplied change came
    not_before: float = 0.0  # after "index busy"

    def saw(self, changes: Iterable[tuple[watchfiles.Change, str]], now: float) -> None:
        for change, path in changes:
            if change == watchfiles.Change.deleted:
                self.gone.add(path)
                self.files.pop(path, None)
            elif os.path.isdir(path):  # a folder moved or copied in: its files
                # (a link to a folder elsewhere yields none: the batch reports it)
                found = discover([path], self.roots or None, self.follow_links)
                for task in found.files:
                    self._touch(task.path, now)
                for link in found.outside:
                    self._touch(link, now)
            elif kind_of(path) is not None:
                self._touch(path, now)

    def _touch(self, path: str, now: float) -> None:
        self.files[path] = (None, now)
        if self.held_since is None:
            self.held_since = now

    def due(self, now: float) -> tuple[list[str], list[str]] | None:
        """(files ready, paths gone) when a batch should be applied now."""
        ready = []
        for path, (seen, since) in list(self.files.items()):
            current = _signature(path)
            if current is None:  # vanished before it settled
                del self.files[path]
                self.gone.add(path)
            elif current != seen:
                self.files[path] = (current, now)
            elif now - since >= self.settle:
                ready.append(path)
        if now < self.not_before or not (ready or self.gone):
            return None
        # Hold deletions while files settle: a rename's new half may be one.
        held = self.held_since is not None and now - self.held_since >= MAX_HOLD_S
        if len(ready) < len(self.files) and not held:
            return None
        return sorted(ready), sorted(self.gone)

    def applied(self, files: list[str], gone: list[str], now: float) -> None:
        for path in files:
            self.files.pop(path, None)
        self.gone.difference_update(gone)
        self.held_since = now if self.files else None


def _signature(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


def watch_folders(
    folders: list[str],
    settings: Settings,
    stop: threading.Event,
    on_batch: BatchFn,
    *,
    settle: float = 2.0,
    ocr: bool = False,
    follow_links: bool = False,
    embedder: Embedder | None = None,
) -> None:
    """Catch up, then apply the folders' changes to `settings.index` until
    `stop` is set. Raises the `RagError`s that make going on pointless (an
    incompatible index, a store that is gone); "index busy" is retried.
    Symbolic links leading out of the folders are skipped (and reported in
    the batch) unless `follow_links`."""
    roots = [os.path.abspath(f) for f in folders]
    index = os.path.abspath(settings.index)
    model = embedder or load_embedder(
        settings.embedding_model, settings.embed_precision, settings.embed_device
    )
    pending = Pending(settle, roots, follow_links)

    def apply(files: list[str], gone: list[str], catch_up: bool = False) -> bool:
        return _apply(
            files, gone, roots, settings, model, on_batch,
            ocr=ocr, catch_up=catch_up, follow_links=follow_links,
        )  # fmt: skip

    def interesting(change: watchfiles.Change, path: str) -> bool:
        # Hidden files and folders are left alone, as `ingest` does; and
        # the index's own files, should it live under a watched folder.
        inside = next((r for r in roots if is_under(path, [r])), None)
        parts = Path(os.path.relpath(path, inside)).parts if inside else ()
        return not any(p.startswith(".") for p in parts) and not is_under(path, [index])

    changes_seen = watchfiles.watch(
        *roots, watch_filter=interesting, debounce=DEBOUNCE_MS, step=50,
        rust_timeout=TICK_MS, yield_on_timeout=True, stop_event=stop,
    )  # fmt: skip
    caught_up = False
    for changes in changes_seen:
        if not caught_up:  # watching already: what changes meanwhile comes next
            apply(roots, [], catch_up=True)
            caught_up = True
            continue
        pending.saw(changes, time.monotonic())
        due = pending.due(time.monotonic())
        if due is None or stop.is_set():
            continue
        files, gone = due
        files = [f for f in files if os.path.exists(f)]  # gone since: in `gone` next tick
        if apply(files, gone):
            pending.applied(files, gone, time.monotonic())
        else:
            pending.not_before = time.monotonic() + BUSY_RETRY_S


def _apply(
    files: list[str],
    gone: list[str],
    roots: list[str],
    settings: Settings,
    embedder: Embedder,
    on_batch: BatchFn,
    *,
    ocr: bool,
    catch_up: bool,
    follow_links: bool = False,
) -> bool:
    """One batch through the ingest pipeline; False if the index was busy.
    The catch-up is `ingest --sync` over the watched folders (`files`)."""
    try:
        options = IngestOptions(sync=catch_up, gone=gone, ocr=ocr, roots=roots,
                                follow_links=follow_links)  # fmt: skip
        report = ingest_paths(files, settings, options, embedder=embedder)
    except IndexBusy:
        on_batch(Batch(time.time(), IngestReport(str(settings.index)), busy=True))
        return False
    now = time.time()
    record_sync(Path(settings.index), now, roots)
    batch = Batch(now, report, tuple(files), tuple(gone), catch_up=catch_up)
    if batch.changed:
        on_batch(batch)
    return True
