"""Incremental ingestion: unchanged, changed, renamed, deleted, synced."""

from __future__ import annotations

import shutil

import pytest

from ingest.pipeline import IngestOptions, ingest_paths
from rag.knowledge_base import KnowledgeBase
from rag.settings import Settings


@pytest.fixture(scope="module")
def first(tmp_path_factory, corpus_dir, embedder):
    """The corpus in a folder of its own, ingested once for the module:
    (folder, index, report). Each test changes a copy of that index."""
    base = tmp_path_factory.mktemp("incremental")
    folder, index = base / "docs", base / "index"
    shutil.copytree(corpus_dir, folder)
    return folder, index, run(folder, index, embedder)


@pytest.fixture
def kb_dir(first, corpus_dir):
    """The folder the module's index was built from, as it was then (the
    index records absolute paths, so each test finds it at the same place)."""
    folder = first[0]
    shutil.rmtree(folder)
    shutil.copytree(corpus_dir, folder)
    return folder


@pytest.fixture
def index(first, tmp_path):
    """A private copy of the module's index of `kb_dir`."""
    target = tmp_path / "index"
    shutil.copytree(first[1], target)
    return target


def run(folder, index, embedder, **options):
    settings = Settings(index=index)
    return ingest_paths([str(folder)], settings, IngestOptions(**options), embedder=embedder)


def state(index):
    kb = KnowledgeBase.open(index)
    snap = kb.snapshot()
    return {
        d.path: (d.content_hash, tuple(c.text for c in snap.document_chunks(d.path)))
        for d in kb.documents()
    }


def test_rerun_embeds_nothing(first, kb_dir, index, embedder):
    report = first[2]
    assert report.added == 5 and report.chunks_embedded > 0
    again = run(kb_dir, index, embedder)
    assert (again.added, again.updated, again.unchanged, again.chunks_embedded) == (0, 0, 5, 0)
    assert again.generation is None  # nothing published


def test_changed_file_replaces_its_chunks(kb_dir, index, embedder):
    (kb_dir / "tea.txt").write_text("Oolong tea is partially oxidised.", encoding="utf-8")
    report = run(kb_dir, index, embedder)
    assert (report.updated, report.unchanged) == (1, 4)
    chunks = state(index)[str(kb_dir / "tea.txt")][1]
    assert chunks == ("Oolong tea is partially oxidised.",)
    hits = KnowledgeBase.open(index, embedder).search("green tea Camellia sinensis", k=20)
    assert all("Camellia" not in h.text for h in hits)
    stats = KnowledgeBase.open(index).stats()
    assert stats.chunks == stats.vectors


def test_renamed_file_is_copied_not_embedded(kb_dir, index, embedder):
    (kb_dir / "tea.txt").rename(kb_dir / "tea-notes.txt")
    report = run(kb_dir, index, embedder, sync=True)
    assert (report.added, report.deleted, report.chunks_embedded) == (1, 1, 0)
    assert report.chunks_copied >= 1
    hits = KnowledgeBase.open(index, embedder).search("black tea oxidised", k=1)
    assert hits[0].source == str(kb_dir / "tea-notes.txt")


def test_sync_removes_vanished_files_only_under_given_folders(kb_dir, index, tmp_path, embedder):
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("Unrelated note about bicycles.", encoding="utf-8")
    ingest_paths([str(kb_dir), str(other)], Settings(index=index), embedder=embedder)
    (kb_dir / "birds.html").unlink()
    report = run(kb_dir, index, embedder, sync=True)
    assert report.deleted == 1
    paths = set(state(index))
    assert str(kb_dir / "birds.html") not in paths
    assert str(other / "keep.txt") in paths


def test_without_sync_vanished_files_stay(kb_dir, index, embedder):
    (kb_dir / "birds.html").unlink()
    assert run(kb_dir, index, embedder).deleted == 0
    assert str(kb_dir / "birds.html") in state(index)


def test_delete_one_document(kb_dir, index, embedder):
    doomed = IngestOptions(delete=[str(kb_dir / "fish.docx")])
    report = ingest_paths([], Settings(index=index), doomed, embedder=embedder)
    assert report.deleted == 1 and not report.failed
    assert str(kb_dir / "fish.docx") not in state(index)
    stats = KnowledgeBase.open(index).stats()
    assert stats.chunks == stats.vectors


def test_a_broken_update_keeps_the_old_version(kb_dir, index, embedder):
    before = state(index)[str(kb_dir / "astronomy.pdf")]
    (kb_dir / "astronomy.pdf").write_bytes(b"%PDF-1.4 truncated garbage")
    report = run(kb_dir, index, embedder)
    assert [f.path for f in report.failed] == [str(kb_dir / "astronomy.pdf")]
    assert state(index)[str(kb_dir / "astronomy.pdf")] == before


def test_same_final_state_whatever_the_order(kb_dir, index, tmp_path, embedder):
    one, two = index, tmp_path / "two"  # one: the whole folder at once
    for name in ("tea.txt", "fish.docx"):
        ingest_paths([str(kb_dir / name)], Settings(index=two), embedder=embedder)
    run(kb_dir, two, embedder)
    assert state(one) == state(two)
