"""A rebuild never loses the index: until the new generation is complete
the previous one stays current and whole, whether the rebuild is killed,
stopped by the app, refused or has nothing to ingest.

The kill test prints what a reader saw before, during and after each
SIGKILL (run with -s to see it).
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import shutil
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest
from builders import LOCAL_ADMIN, code_word, image_only_pdf, reap, write_notes
from click.testing import CliRunner

from cli.ingest_main import main as ingest_main
from cli.rag_main import main as rag_main
from ingest.pipeline import IngestOptions, Progress, ingest_paths
from rag import errors, layout
from rag.knowledge_base import KnowledgeBase
from rag.settings import Settings
from team import library

pytestmark = pytest.mark.timeout(900)

NOTES = 40
CHUNKING = {"chunk_tokens": 32, "chunk_overlap": 4}  # many chunks: several embedding batches
ENV = {
    "RAG_CHUNK_TOKENS": "32",
    "RAG_CHUNK_OVERLAP": "4",
    "RAG_CHECKPOINT_SECONDS": "0.01",  # a normal ingest would publish after every batch
}


@pytest.fixture(scope="module")
def notes(tmp_path_factory, embedder) -> tuple[Path, Path]:
    """A folder of notes and an index built from it (copy it to change it)."""
    base = tmp_path_factory.mktemp("rebuild")
    # 10 sentences a note: some 320 chunks, two embedding flushes (256
    # chunks each at most) of several slices; more only costs time.
    folder = write_notes(base / "notes", NOTES, sentences=10)
    index = base / "index"
    report = ingest_paths([str(folder)], Settings(index=index, **CHUNKING), embedder=embedder)
    assert report.added == NOTES and not report.failed
    return folder, index


def copy_of(index: Path, target: Path) -> Path:
    shutil.copytree(index, target)
    return target


def view(index: Path) -> dict:
    """What a reader sees: `rag stats` and the documents of the current generation."""
    result = CliRunner().invoke(rag_main, ["stats", "--index", str(index), "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["chunks"] == stats["vectors"]
    paths = [d.path for d in KnowledgeBase.open(index).documents()]
    assert stats["documents"] == len(paths)
    return {"generation": stats["generation"], "documents": len(paths), "paths": paths}


def searches_work(index: Path, embedder, numbers: list[int]) -> None:
    kb = KnowledgeBase.open(index, embedder)
    for i in numbers:
        hit = kb.search(f"code word {code_word(i)}", k=1, mode="bm25")[0]
        assert Path(hit.source).stem == f"note-{i:02d}", hit.source
    assert kb.search("the river near the mountain", k=1)


def writing(index: Path, since: float) -> bool:
    """Whether a writer started after `since` is building a generation (its
    staging folder exists; one left by an earlier kill does not count)."""
    return any(
        p.name.startswith(".staging-") and p.stat().st_ctime >= since for p in index.iterdir()
    )


# tqdm draws `ingest`'s progress bar only on a terminal: "scan: 40%|...|
# 16/40 [..., chunks=0]" while it hashes the files (the lock held, its staging
# folder made), then "ingest: 35%|...| [..., chunks=224]" as files are read and
# chunks embedded.
BAR = re.compile(r"(scan|ingest):\s*(\d+)%.*?chunks=(\d+)")


class Rebuild:
    """`ingest --rebuild --json` with its stderr on a pseudo-terminal, its
    progress read as it is drawn: the ready signals a kill waits for."""

    def __init__(self, folder: Path, index: Path) -> None:
        self.index = index
        self.started = time.time() - 0.2  # coarse file-system timestamps
        self.drawn: list[tuple[str, int, int]] = []  # (phase, percent, chunks)
        self._seen = threading.Condition()
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 400, 0, 0))
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "ingest"), str(folder), "--index", str(index),
             "--rebuild", "--json"],
            env={**os.environ, **ENV}, stdout=subprocess.DEVNULL, stderr=slave,
            start_new_session=True,
        )  # fmt: skip
        os.close(slave)
        self._master = master
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        tail = ""
        while True:
            try:
                data = os.read(self._master, 4096).decode(errors="replace")
            except OSError:  # the terminal's last writer is gone
                data = ""
            if not data:
                break
            *drawn, tail = re.split(r"[\r\n]", tail + data)
            with self._seen:
                for line in drawn:
                    if m := BAR.search(line):
                        self.drawn.append((m[1], int(m[2]), int(m[3])))
                self._seen.notify_all()
        os.close(self._master)
        with self._seen:
            self._seen.notify_all()

    def wait_drawn(self, wanted, timeout: float = 300) -> tuple[str, int, int] | None:
        """The first progress `wanted` accepts, or None once the run ended without it."""
        deadline = time.monotonic() + timeout
        with self._seen:
            while True:
                found = next((d for d in self.drawn if wanted(d)), None)
                if found or self.process.poll() is not None:
                    return found
                assert time.monotonic() < deadline, f"not drawn in {timeout} s: {self.drawn}"
                self._seen.wait(0.05)

    def wait_files(self, wanted, timeout: float = 300) -> bool:
        """Until `wanted(index)` holds (polled), or False once the run ended."""
        deadline = time.monotonic() + timeout
        while not wanted(self.index):
            if self.process.poll() is not None:
                return False
            assert time.monotonic() < deadline, f"not within {timeout} s"
            time.sleep(0.01)
        return True


def publishing(index: Path, current: str | None) -> bool:
    """The new generation is being written out (its lexical index or vectors
    are in its staging folder), or is published already (not `current`)."""
    return layout.current_generation(index) != current or any(
        p.name.startswith(".staging-")
        and ((p / layout.BM25_DIR).exists() or (p / layout.VECTORS_FILE).exists())
        for p in index.iterdir()
    )


@pytest.fixture(scope="module")
def completed(notes, tmp_path_factory) -> tuple[dict, dict]:
    """An uninterrupted `ingest --rebuild`: the view before and after. In
    this process (the model loaded once): the kill test runs it in its own."""
    folder, built = notes
    index = copy_of(built, tmp_path_factory.mktemp("completed") / "index")
    before = view(index)
    result = CliRunner().invoke(
        ingest_main, [str(folder), "--index", str(index), "--rebuild", "--json"], env=ENV
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["chunks_embedded"] > 256, "more than one embedding flush"
    return before, view(index)


def test_a_completed_rebuild_publishes_one_generation_with_every_document(completed, embedder):
    before, after = completed
    assert after["paths"] == before["paths"]
    assert after["generation"] == before["generation"] + 1, "a rebuild publishes once, at the end"


# Where each kill lands: what the run must have shown (or the index hold)
# when it is killed.
KILLS = {
    "starting up (imports, model load)": None,
    "scanning (lock held, staging made)": lambda d: d[0] == "scan",
    "embedding": lambda d: d[0] == "ingest" and d[2] > 0 and d[1] < 100,
    "writing the new generation out": "files",  # the staging folder tells
}


def test_a_killed_rebuild_leaves_the_previous_generation_current_and_whole(
    notes, embedder, tmp_path
):
    folder, built = notes
    index = copy_of(built, tmp_path / "index")
    before = view(index)
    lines = [f"before: generation {before['generation']}, {before['documents']} documents"]
    landed = []
    for stage, signal_ in KILLS.items():
        run = Rebuild(folder, index)
        try:
            if signal_ is None:  # killed at once: it draws nothing before its model loads
                ready = True
            elif signal_ == "files":
                current = layout.current_generation(index)
                ready = run.wait_files(lambda i, c=current: publishing(i, c))
            else:
                ready = run.wait_drawn(signal_) is not None
            assert ready and run.process.poll() is None, f"{stage}: {run.drawn}"
            during = view(index)  # what a search opened now would read
            was_writing, drawn = writing(index, run.started), len(run.drawn)
            run.process.send_signal(signal.SIGKILL)
            run.process.wait()
        finally:
            reap(run.process)
        after = view(index)
        # Killed while it shut down after publishing: the new generation
        # is complete, and that is what readers see from then on.
        published = after["generation"] != before["generation"]
        landed.append(was_writing or published if drawn or was_writing else "not yet")
        lines.append(
            f"killed {stage}" + (" (after publishing)" if published else "")
            + f", {drawn} progress lines drawn: during generation {during['generation']},"
            f" {during['documents']} documents; after generation {after['generation']},"
            f" {after['documents']} documents"
        )  # fmt: skip
        report = "\n".join(lines)
        if published:
            assert stage == "writing the new generation out", report
            assert after["generation"] == before["generation"] + 1, report
            assert after["paths"] == before["paths"], report
            assert during in (before, after), report
            before = after
        else:
            assert during == before, report
            assert after == before, report
        searches_work(index, embedder, [0, NOTES // 2, NOTES - 1])
    print("\n[rebuild kills]\n  " + "\n  ".join(lines))
    # The first kill landed before the run took the lock, the others once it
    # was writing its new generation (or had just published it).
    assert landed == ["not yet", True, True, True], "\n".join(lines)


def test_an_app_rebuild_stopped_at_a_progress_call_keeps_the_previous_generation(notes, tmp_path):
    # Streamlit stops a script (the user touched a widget or left) by
    # raising StopException / RerunException from the next st.* call: here,
    # the progress bar's update, once several embedding batches are done.
    from streamlit.runtime.scriptrunner_utils.exceptions import StopException

    _, built = notes
    index = copy_of(built, tmp_path / "index")
    before = view(index)
    settings = Settings(index=index, checkpoint_seconds=1e-6, **CHUNKING)
    batches = []

    def progress(p: Progress) -> None:
        batches.append(p.chunks)
        if p.stage == "ingest" and p.done == p.total:
            raise StopException()

    with pytest.raises(StopException):
        library.rebuild(LOCAL_ADMIN, index, settings, progress)
    assert len(set(batches)) > 2, "stopped before several embedding batches were done"
    assert view(index) == before
    assert not [p for p in index.iterdir() if p.name.startswith(".staging-")]


def test_a_rebuild_that_would_drop_documents_names_them_and_changes_nothing(tmp_path, embedder):
    kept = write_notes(tmp_path / "kept", 2, sentences=4)
    elsewhere = write_notes(tmp_path / "elsewhere", 12, sentences=4)
    index = tmp_path / "index"
    ingest_paths([str(kept), str(elsewhere)], Settings(index=index), embedder=embedder)
    before = view(index)

    refused = CliRunner().invoke(ingest_main, [str(kept), "--index", str(index), "--rebuild"])
    assert refused.exit_code == 3, refused.output
    message = refused.stderr
    assert "would drop 12 documents" in message, message
    assert str(elsewhere / "note-00.txt") in message and "and 7 more" in message, message
    assert str(elsewhere / "note-11.md") not in message, "names the first few only"
    assert "--allow-drop" in message, message
    assert view(index) == before

    allowed = CliRunner().invoke(
        ingest_main, [str(kept), "--index", str(index), "--rebuild", "--allow-drop", "--json"]
    )
    assert allowed.exit_code == 0, allowed.output
    after = view(index)
    assert after["paths"] == sorted(str(p) for p in kept.iterdir())
    assert after["generation"] == before["generation"] + 1


def test_an_app_rebuild_with_source_files_gone_refuses_until_allowed(tmp_path, embedder):
    folder = write_notes(tmp_path / "notes", 3, sentences=4)
    index = tmp_path / "index"
    ingest_paths([str(folder)], Settings(index=index), embedder=embedder)
    gone = folder / "note-01.md"
    gone.unlink()
    before = view(index)

    with pytest.raises(errors.RebuildRefused) as refused:
        library.rebuild(LOCAL_ADMIN, index, Settings(index=index), lambda p: None)
    assert refused.value.dropped == [str(gone)]
    assert str(gone) in str(refused.value)
    assert view(index) == before

    library.rebuild(LOCAL_ADMIN, index, Settings(index=index), lambda p: None, allow_drop=True)
    after = view(index)
    assert after["paths"] == [p for p in before["paths"] if p != str(gone)]


@pytest.mark.parametrize("sources", ["empty folder", "only an unreadable file"])
def test_a_rebuild_with_nothing_to_ingest_publishes_nothing(sources, tmp_path, embedder):
    folder = write_notes(tmp_path / "notes", 2, sentences=4)
    index = tmp_path / "index"
    ingest_paths([str(folder)], Settings(index=index), embedder=embedder)
    before = view(index)
    other = tmp_path / "other"
    other.mkdir()
    if sources == "only an unreadable file":
        (other / "broken.pdf").write_bytes(b"%PDF-1.4 this is not a pdf")

    result = CliRunner().invoke(
        ingest_main, [str(other), "--index", str(index), "--rebuild", "--allow-drop"]
    )
    assert result.exit_code == 3, result.output
    assert "empty" in result.stderr and "unchanged" in result.stderr, result.stderr
    assert view(index) == before


def test_the_app_rebuild_with_every_file_gone_publishes_nothing(tmp_path, embedder):
    folder = write_notes(tmp_path / "notes", 2, sentences=4)
    index = tmp_path / "index"
    ingest_paths([str(folder)], Settings(index=index), embedder=embedder)
    before = view(index)
    shutil.rmtree(folder)
    with pytest.raises(errors.RebuildRefused):
        library.rebuild(LOCAL_ADMIN, index, Settings(index=index), lambda p: None, allow_drop=True)
    assert view(index) == before


def test_a_rebuild_reads_a_scanned_pdf_with_ocr_again(tmp_path, embedder):
    # The app's rebuild (and `ingest --rebuild` without --ocr) re-ingests
    # each document with the options it was ingested with.
    assert shutil.which("tesseract"), "tesseract is missing: run `make system-setup`"
    folder = tmp_path / "docs"
    folder.mkdir()
    scan = image_only_pdf(folder / "scan.pdf", "The submarine cable reached Lisbon in 1870.")
    (folder / "note.md").write_text("# Cables\n\nThe first cable failed after three weeks.\n")
    index = tmp_path / "index"
    ingest_paths([str(scan)], Settings(index=index), IngestOptions(ocr=True), embedder=embedder)
    ingest_paths([str(folder / "note.md")], Settings(index=index), embedder=embedder)
    stored = {d.path: d.ocr for d in KnowledgeBase.open(index).documents()}
    assert stored == {str(scan): True, str(folder / "note.md"): False}

    library.rebuild(LOCAL_ADMIN, index, Settings(index=index), lambda p: None)
    hit = KnowledgeBase.open(index, embedder).search("submarine cable Lisbon", k=1)[0]
    assert hit.source == str(scan) and "Lisbon" in hit.text

    result = CliRunner().invoke(ingest_main, [str(folder), "--index", str(index), "--rebuild"])
    assert result.exit_code == 0, result.output
    assert {d.path: d.ocr for d in KnowledgeBase.open(index).documents()} == stored


def test_an_index_written_before_ingest_options_were_stored_still_works(tmp_path, embedder):
    # Indexes written before the `ocr` column: readable as they are (the
    # column reads as False), extended and rebuilt without a format change.
    import sqlite3

    folder = write_notes(tmp_path / "notes", 2, sentences=4)
    index = tmp_path / "index"
    ingest_paths([str(folder / "note-00.txt")], Settings(index=index), embedder=embedder)
    generation = index / layout.require_generation(index)
    db = sqlite3.connect(generation / layout.DB_FILE)
    columns = [r[1] for r in db.execute("PRAGMA table_info(documents)")]
    if "ocr" in columns:
        db.execute("ALTER TABLE documents DROP COLUMN ocr")
        db.execute("VACUUM")
    db.close()
    manifest = json.loads((generation / layout.MANIFEST_FILE).read_text())
    manifest["file_sizes"][layout.DB_FILE] = (generation / layout.DB_FILE).stat().st_size
    manifest.pop("file_sha256", None)  # older indexes carry no checksums either
    (generation / layout.MANIFEST_FILE).write_text(json.dumps(manifest))

    assert [d.ocr for d in KnowledgeBase.open(index).documents()] == [False]
    ingest_paths([str(folder)], Settings(index=index), embedder=embedder)
    assert [d.ocr for d in KnowledgeBase.open(index).documents()] == [False, False]
    library.rebuild(LOCAL_ADMIN, index, Settings(index=index), lambda p: None)
    assert len(KnowledgeBase.open(index).documents()) == 2
