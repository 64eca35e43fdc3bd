"""Watching a real folder with a real watcher: files added, changed,
deleted, renamed, written slowly and broken, a restart that catches up (the
watcher in a thread, with the session's model), `ingest --watch` as a
process stopped by SIGTERM, and the app's "Last synced" line. Waits poll
with a deadline; no sleep is an assertion about timing."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from builders import reap
from click.testing import CliRunner
from streamlit.testing.v1 import AppTest

from cli.ingest_main import main as ingest_main
from ingest.watch import Batch, watch_folders
from rag.embedding import Embedder
from rag.errors import RagError
from rag.knowledge_base import KnowledgeBase
from rag.settings import Settings
from rag.synced import last_sync, record_sync

SETTLE = 1.5  # seconds a file must hold still; the slow writer pauses far less
DEADLINE = 30.0  # for a change to show, on a busy machine
APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")


class Batches:
    """The batches a watcher reported, collected as they come."""

    def __init__(self) -> None:
        self.batches: list[dict] = []
        self._seen = threading.Condition()

    def add(self, batch: dict) -> None:
        with self._seen:
            self.batches.append(batch)
            self._seen.notify_all()

    def running(self) -> bool:
        raise NotImplementedError

    def wait_batch(self, wanted: Callable[[dict], bool], timeout: float = 90.0) -> dict:
        """The first batch `wanted` accepts (a process's catch-up waits for
        the model to load, hence the long default)."""
        deadline = time.monotonic() + timeout
        with self._seen:
            while True:
                found = next((b for b in self.batches if wanted(b)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                assert left > 0 and self.running(), f"no such batch in {self.batches}"
                self._seen.wait(min(left, 1.0))

    def seen(self) -> list[dict]:
        with self._seen:
            return list(self.batches)


class ThreadWatcher(Batches):
    """`watch_folders` in a thread, with the session's embedder."""

    def __init__(self, folder: Path, index: Path, embedder: Embedder) -> None:
        super().__init__()
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

        def run() -> None:
            def report(b: Batch) -> None:
                self.add(json.loads(json.dumps(b.to_dict())))  # as --json prints it

            try:
                watch_folders(
                    [str(folder)], Settings(index=index), self.stop_event, report,
                    settle=SETTLE, embedder=embedder,
                )  # fmt: skip
            except BaseException as exc:  # shown by the test that waits
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def running(self) -> bool:
        return self.thread.is_alive()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive() and self.error is None, self.error


class ProcessWatcher(Batches):
    """`ingest --watch FOLDER --index INDEX --json` in a session of its own."""

    def __init__(self, folder: Path, index: Path) -> None:
        super().__init__()
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "ingest"), "--watch", str(folder),
             "--index", str(index), "--settle", str(SETTLE), "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.add(json.loads(line))

    def running(self) -> bool:
        return self.process.poll() is None


def until(check: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        assert time.monotonic() < deadline, f"not within {DEADLINE} s: {what}"
        time.sleep(0.2)


def documents(index: Path) -> dict[str, str]:
    """Path -> content hash, as published."""
    try:
        return {d.path: d.content_hash for d in KnowledgeBase.open(index).documents()}
    except RagError:
        return {}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Watched:
    """A folder, its index, and the watcher now running on them (the
    restart test replaces it)."""

    def __init__(self, folder: Path, index: Path, embedder: Embedder) -> None:
        self.folder, self.index, self.embedder = folder, index, embedder
        self.watcher = self.start()

    def start(self) -> ThreadWatcher:
        self.watcher = ThreadWatcher(self.folder, self.index, self.embedder)
        return self.watcher

    def __iter__(self) -> Iterator:
        return iter((self.folder, self.index, self.watcher))


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> Iterator[Watched]:
    folder = tmp_path_factory.mktemp("watched")
    (folder / "seed.md").write_text("The lighthouse keeper logs the fog horn.", encoding="utf-8")
    session = Watched(folder, tmp_path_factory.mktemp("watch-index") / "index", embedder)
    try:
        session.watcher.wait_batch(lambda b: b["catch_up"])
        yield session
    finally:
        session.watcher.stop()


def test_an_added_file_becomes_searchable(watched, embedder):
    folder, index, _ = watched
    path = folder / "otters.md"
    path.write_text("Sea otters hold hands while they sleep in kelp forests.", encoding="utf-8")

    def found() -> bool:
        hits = KnowledgeBase.open(index, embedder).search("otters sleeping holding hands", k=1)
        return bool(hits) and hits[0].source == str(path)

    until(found, "the new file is the top hit")


def test_a_changed_file_is_updated_and_a_deleted_one_removed(watched):
    folder, index, _ = watched
    changed, doomed = folder / "tides.txt", folder / "comets.txt"
    changed.write_text("Spring tides follow the full moon.", encoding="utf-8")
    doomed.write_text("Comets grow tails near the sun.", encoding="utf-8")
    until(lambda: {str(changed), str(doomed)} <= set(documents(index)), "both ingested")
    changed.write_text("Neap tides follow the quarter moon.", encoding="utf-8")
    doomed.unlink()
    until(lambda: documents(index).get(str(changed)) == digest(changed), "the new version")
    until(lambda: str(doomed) not in documents(index), "the deleted file removed")
    texts = [c.text for c in KnowledgeBase.open(index).snapshot().document_chunks(str(changed))]
    assert texts == ["Neap tides follow the quarter moon."]


def test_a_renamed_file_is_moved_without_embedding_again(watched):
    folder, index, watcher = watched
    old, new = folder / "glaciers.md", folder / "ice.md"
    old.write_text("Glaciers carve U-shaped valleys as they flow.", encoding="utf-8")
    until(lambda: str(old) in documents(index), "ingested under its first name")
    old.rename(new)
    batch = watcher.wait_batch(lambda b: str(new) in b["files"])
    assert str(old) in batch["gone"]  # the two halves of the rename in one batch
    assert (batch["renamed"], batch["chunks_embedded"]) == (1, 0)
    assert batch["chunks_copied"] >= 1
    stored = documents(index)
    assert stored.get(str(new)) == digest(new) and str(old) not in stored


def test_a_file_still_being_written_is_ingested_once_whole(watched):
    folder, index, watcher = watched
    path = folder / "slow.md"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("Part one: the kettle whistles.\n")
        fh.flush()
        time.sleep(SETTLE / 10)  # a writer pausing mid-file, well inside the settle time
        fh.write("Part two: the teapot is warmed first.\n")
    watcher.wait_batch(lambda b: str(path) in b["files"])  # reported after it publishes
    assert documents(index).get(str(path)) == digest(path)
    ingested = [b for b in watcher.seen() if str(path) in b["files"]]
    assert len(ingested) == 1 and ingested[0]["added"] == 1  # never half, then whole
    text = KnowledgeBase.open(index).snapshot().document_chunks(str(path))[0].text
    assert "Part two" in text


def test_a_broken_file_is_reported_by_name_and_watching_goes_on(watched):
    folder, index, watcher = watched
    broken = folder / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4 this is no PDF at all")
    batch = watcher.wait_batch(lambda b: any(f["path"] == str(broken) for f in b["failed"]))
    assert str(broken) not in documents(index)
    assert batch["failed"][0]["error"]
    after = folder / "after.txt"
    after.write_text("Still watching after a broken file.", encoding="utf-8")
    until(lambda: str(after) in documents(index), "the next file ingested")


def test_a_restart_catches_up_on_what_changed_while_stopped(watched):
    # Its own file to delete: under pytest-xdist the module's other tests
    # may run on another worker, with a watched folder of their own.
    folder, index, watcher = watched
    doomed = folder / "herons.md"
    doomed.write_text("Herons stand still in the shallows.", encoding="utf-8")
    until(lambda: str(doomed) in documents(index), "the file to delete ingested")
    first = last_sync(index)
    watcher.stop()
    (folder / "seed.md").write_text("The lighthouse keeper oils the lamp.", encoding="utf-8")
    doomed.unlink()
    (folder / "sub").mkdir()
    (folder / "sub" / "moths.md").write_text("Moths navigate by the moon.", encoding="utf-8")
    batch = watched.start().wait_batch(lambda b: b["catch_up"])
    assert (batch["added"], batch["updated"], batch["deleted"]) == (1, 1, 1)
    on_disk = [p for p in folder.rglob("*") if p.suffix in (".md", ".txt")]
    assert documents(index) == {str(p): digest(p) for p in on_disk}
    now = last_sync(index)
    assert first is not None and now is not None and now.at > first.at
    assert now.folders == (str(folder),)


def test_the_command_watches_until_sigterm(tmp_path):
    folder, index = tmp_path / "docs", tmp_path / "index"
    folder.mkdir()
    (folder / "owls.md").write_text("Owls turn their heads a long way.", encoding="utf-8")
    watcher = ProcessWatcher(folder, index)
    try:
        assert watcher.wait_batch(lambda b: b["catch_up"])["added"] == 1
        (folder / "bats.md").write_text("Bats find insects by echo.", encoding="utf-8")
        assert watcher.wait_batch(lambda b: str(folder / "bats.md") in b["files"])["added"] == 1
        watcher.process.send_signal(signal.SIGTERM)
        assert watcher.process.wait(timeout=60) == 0  # a clean stop between batches
        assert set(documents(index)) == {str(folder / "owls.md"), str(folder / "bats.md")}
    finally:
        reap(watcher.process)


def test_watch_wants_folders_and_no_delete():
    runner = CliRunner()
    result = runner.invoke(ingest_main, ["--watch", "--delete", "x", "docs"])
    assert result.exit_code == 2 and "--watch" in result.output
    result = runner.invoke(ingest_main, ["--watch", "README.md"])
    assert result.exit_code == 2 and "not a folder: README.md" in result.output


def test_the_app_shows_when_a_knowledge_base_was_last_synced(app_env, kb_root):
    record_sync(kb_root / "default", time.time() - 150, [os.fspath(kb_root)])
    at = AppTest.from_file(APP, default_timeout=240).run()
    assert not at.exception
    assert "Last synced 2 minutes ago" in [c.value for c in at.sidebar.caption]
