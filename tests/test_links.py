"""Symbolic links in the folders given to `ingest` (issue 29, finding 5): a
file is ingested only where its resolved path lies under a folder the
command was given. A link leading elsewhere (a drop folder's `key.md` ->
`~/.ssh/id_rsa`, a folder linked to `/etc`) is skipped and reported by name
and reason, in `ingest`, `--sync` and `--watch`; `--follow-links` opts in.
A link that stays inside the folders is followed as before."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.ingest_main import main as ingest_main
from ingest.pipeline import IngestOptions, ingest_paths
from ingest.watch import Batch, watch_folders
from rag.embedding import Embedder
from rag.errors import RagError
from rag.knowledge_base import KnowledgeBase
from rag.settings import Settings

SECRET = "PRIVATE KEY of the operator: correct horse battery staple."
ELSEWHERE = "Payroll figures kept outside the drop folder."
NOTE = "Harbour seals rest on sandbanks at low tide."
OUTSIDE = "outside the folders given"


@pytest.fixture
def drop(tmp_path: Path) -> Path:
    """A drop folder with one note, a link to a secret file and a link to a
    folder, both outside it, and two links that stay inside it."""
    secret = tmp_path / "home" / ".ssh" / "id_rsa.md"
    secret.parent.mkdir(parents=True)
    secret.write_text(SECRET, encoding="utf-8")
    payroll = tmp_path / "hr"
    payroll.mkdir()
    (payroll / "salaries.txt").write_text(ELSEWHERE, encoding="utf-8")

    folder = tmp_path / "drop"
    (folder / "notes").mkdir(parents=True)
    (folder / "notes" / "seals.md").write_text(NOTE, encoding="utf-8")
    os.symlink(secret, folder / "key.md")
    os.symlink(payroll, folder / "hr")
    os.symlink("notes/seals.md", folder / "seals-again.md")  # inside: followed
    os.symlink("notes", folder / "notes-too")  # inside, the same folder: walked once
    return folder


def documents(index: Path) -> set[str]:
    try:
        return {d.path for d in KnowledgeBase.open(index).documents()}
    except RagError:
        return set()


def texts(index: Path) -> str:
    snap = KnowledgeBase.open(index).snapshot()
    return " ".join(c.text for d in snap.documents() for c in snap.document_chunks(d.path))


def skipped(entries: list[dict[str, str]] | list, folder: Path) -> dict[str, str]:
    rows = [e if isinstance(e, dict) else {"path": e.path, "error": e.error} for e in entries]
    return {os.path.relpath(e["path"], folder): e["error"] for e in rows}


def test_ingest_skips_links_out_of_the_folder_by_name_and_reason(drop, tmp_path):
    index = tmp_path / "index"
    result = CliRunner().invoke(ingest_main, [str(drop), "--index", str(index), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    reasons = skipped(report["skipped"], drop)
    assert set(reasons) == {"key.md", "hr"}
    assert OUTSIDE in reasons["key.md"] and "--follow-links" in reasons["key.md"]
    assert OUTSIDE in reasons["hr"]
    stored = documents(index)
    assert str(drop / "notes" / "seals.md") in stored
    assert str(drop / "seals-again.md") in stored  # a link inside the folder is followed
    assert not any("key.md" in p or "/hr/" in p or "id_rsa" in p for p in stored), stored
    assert SECRET not in texts(index) and ELSEWHERE not in texts(index)


def test_the_summary_names_each_skipped_link_with_its_reason(drop, tmp_path):
    result = CliRunner().invoke(ingest_main, [str(drop), "--index", str(tmp_path / "index")])
    assert result.exit_code == 0, result.output
    assert f"{drop / 'key.md'}: symbolic link" in result.stdout
    assert f"{drop / 'hr'}: symbolic link" in result.stdout


def test_follow_links_opts_in(drop, tmp_path):
    index = tmp_path / "index"
    result = CliRunner().invoke(
        ingest_main, [str(drop), "--follow-links", "--index", str(index), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["skipped"] == []
    assert {str(drop / "key.md"), str(drop / "hr" / "salaries.txt")} <= documents(index)
    assert SECRET in texts(index)


def test_a_file_named_on_the_command_line_is_its_own_root(drop, tmp_path, embedder):
    # The operator named it: that is the opt-in.
    index = tmp_path / "index"
    report = ingest_paths([str(drop / "key.md")], Settings(index=index), embedder=embedder)
    assert report.skipped == [] and documents(index) == {str(drop / "key.md")}


def test_sync_removes_what_a_link_out_of_the_folder_brought_in_and_says_so(
    drop, tmp_path, embedder
):
    # Before, links were followed: `hr` was a real folder when first ingested
    # (as a followed link would have been), and is a link out of it now.
    index = tmp_path / "index"
    (drop / "hr").unlink()
    (drop / "hr").mkdir()
    (drop / "hr" / "salaries.txt").write_text(ELSEWHERE, encoding="utf-8")
    first = ingest_paths([str(drop)], Settings(index=index), embedder=embedder)
    assert str(drop / "hr" / "salaries.txt") in documents(index), first
    (drop / "hr" / "salaries.txt").unlink()
    (drop / "hr").rmdir()
    os.symlink(tmp_path / "hr", drop / "hr")

    plain = ingest_paths([str(drop)], Settings(index=index), embedder=embedder)
    assert plain.deleted == 0  # without --sync nothing is removed ...
    assert OUTSIDE in skipped(plain.skipped, drop)["hr"]  # ... and the link is named

    report = ingest_paths(
        [str(drop)], Settings(index=index), IngestOptions(sync=True), embedder=embedder
    )
    reasons = skipped(report.skipped, drop)
    assert report.deleted == 1
    assert OUTSIDE in reasons["hr"]
    gone = reasons[os.path.join("hr", "salaries.txt")]
    assert "removed from the index" in gone and "--follow-links" in gone
    assert str(drop / "hr" / "salaries.txt") not in documents(index)
    assert ELSEWHERE not in texts(index)


def test_sync_with_follow_links_keeps_them(drop, tmp_path, embedder):
    index = tmp_path / "index"
    settings = Settings(index=index)
    ingest_paths([str(drop)], settings, IngestOptions(follow_links=True), embedder=embedder)
    both = IngestOptions(sync=True, follow_links=True)
    report = ingest_paths([str(drop)], settings, both, embedder=embedder)
    assert (report.deleted, report.skipped) == (0, [])
    assert str(drop / "hr" / "salaries.txt") in documents(index)


# -- --watch ------------------------------------------------------------------------


class Watcher:
    def __init__(self, folder: Path, index: Path, embedder: Embedder) -> None:
        self.batches: list[dict] = []
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

        def report(batch: Batch) -> None:
            self.batches.append(json.loads(json.dumps(batch.to_dict())))

        def run() -> None:
            try:
                watch_folders(
                    [str(folder)], Settings(index=index), self.stop_event, report,
                    settle=0.5, embedder=embedder,
                )  # fmt: skip
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def wait(self, wanted, what: str, timeout: float = 90.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            found = next((b for b in list(self.batches) if wanted(b)), None)
            if found is not None:
                return found
            assert self.thread.is_alive(), self.error
            assert time.monotonic() < deadline, f"no batch {what} in {self.batches}"
            time.sleep(0.05)

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=60)
        assert self.error is None, self.error


def test_watch_skips_links_out_of_the_folder(drop, tmp_path, embedder):
    index = tmp_path / "index"
    watcher = Watcher(drop, index, embedder)
    try:
        catch_up = watcher.wait(lambda b: b["catch_up"], "catching up")
        assert set(skipped(catch_up["skipped"], drop)) == {"key.md", "hr"}
        # Links made while watching: a file and a folder out of it, then a note.
        more = tmp_path / "more"
        more.mkdir()
        (more / "ledger.md").write_text(ELSEWHERE, encoding="utf-8")
        os.symlink(tmp_path / "home" / ".ssh" / "id_rsa.md", drop / "key2.md")
        os.symlink(more, drop / "more")
        later = drop / "notes" / "otters.md"
        later.write_text("Sea otters hold hands while they sleep.", encoding="utf-8")
        watcher.wait(lambda b: str(later) in b["files"], "with the new note")

        def reported() -> dict[str, str]:
            seen: dict[str, str] = {}
            for b in list(watcher.batches):
                seen |= skipped(b["skipped"], drop)
            return seen

        # Each link in a batch of its own or with the note: wait for both.
        watcher.wait(lambda _: {"key2.md", "more"} <= set(reported()), "naming both links")
        assert OUTSIDE in reported()["key2.md"] and OUTSIDE in reported()["more"]
    finally:
        watcher.stop()
    stored = documents(index)
    assert str(later) in stored
    leaked = [p for p in stored if p.endswith(("key.md", "key2.md")) or "/hr/" in p]
    assert not leaked and not any("/more/" in p for p in stored), stored
    assert SECRET not in texts(index) and ELSEWHERE not in texts(index)
