"""The versioned index: round trips, atomic publication, clear errors."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from ingest.pipeline import ingest_paths
from rag import layout
from rag.errors import IndexBusy, IndexCorrupt, IndexIncompatible, IndexMissing, StoreUnknown
from rag.knowledge_base import KnowledgeBase
from rag.layout import IndexParams
from rag.settings import Settings
from rag.store import STORE_RECORD, StoreStats, open_store, record_store, recorded_store
from rag.types import Chunk


def params(dimension: int = 4) -> IndexParams:
    return IndexParams(
        model_id="m", dimension=dimension, chunk_tokens=100, chunk_overlap=10, analyzer="a"
    )


def open_writer(root, params, **options):
    return open_store(root, Settings()).writer(params, **options)


def put(writer, path: str, texts: list[str]) -> None:
    chunks = [Chunk(text=t, source=path, start=0, end=len(t)) for t in texts]
    vectors = np.eye(4, dtype=np.float32)[: len(texts)]
    writer.put(path=path, content_hash=path + "#h", kind="text", title="", size=1, mtime=0,
               pages=None, chunks=chunks, vectors=vectors)  # fmt: skip


def test_round_trip_keeps_documents_chunks_and_vectors(tmp_path):
    root = tmp_path / "idx"
    with open_writer(root, params()) as w:
        put(w, "/a.txt", ["alpha one", "alpha two"])
        put(w, "/b.txt", ["beta"])
    kb = KnowledgeBase.open(root)
    snap = kb.snapshot()
    assert [c.text for c in snap.document_chunks("/a.txt")] == ["alpha one", "alpha two"]
    [(best, _score)] = snap.dense(np.array([1, 0, 0, 0], dtype=np.float32), 1)
    assert snap.chunks([best])[best].text == "alpha one"
    ranked, _lookup = snap.bm25("beta", 5)
    assert [cid for cid, _ in ranked] == [c.id for c in snap.document_chunks("/b.txt")]
    manifest = json.loads(
        (root / layout.generation_name(snap.generation) / "manifest.json").read_text()
    )
    assert manifest["format_version"] == layout.FORMAT_VERSION
    assert manifest["params"]["dimension"] == 4
    assert not any(f.suffix in {".pkl", ".pickle"} for f in root.rglob("*"))


def test_an_error_mid_write_leaves_the_previous_generation(tmp_path):
    root = tmp_path / "idx"
    with open_writer(root, params()) as w:
        put(w, "/a.txt", ["alpha"])
    before = layout.current_generation(root)
    with pytest.raises(RuntimeError), open_writer(root, params()) as w:
        put(w, "/b.txt", ["beta"])
        w.delete("/a.txt")
        raise RuntimeError("crash")
    assert layout.current_generation(root) == before
    assert [d.path for d in KnowledgeBase.open(root).documents()] == ["/a.txt"]
    assert not [p for p in os.listdir(root) if p.startswith(".staging")]


def test_leftovers_of_a_killed_writer_are_swept(tmp_path):
    root = tmp_path / "idx"
    with open_writer(root, params()) as w:
        put(w, "/a.txt", ["alpha"])
    (root / ".staging-g00000002").mkdir()  # died while writing
    shutil.copytree(root / "g00000001", root / "g00000009")  # died between rename and CURRENT
    with open_writer(root, params()) as w:
        put(w, "/b.txt", ["beta"])
    assert layout.current_generation(root) == "g00000002"
    assert sorted(p for p in os.listdir(root) if not p.startswith(".")) == [
        "CURRENT",
        "g00000001",
        "g00000002",
    ]


def test_nothing_changed_publishes_nothing(tmp_path):
    root = tmp_path / "idx"
    with open_writer(root, params()) as w:
        put(w, "/a.txt", ["alpha"])
    with open_writer(root, params()) as w:
        assert not w.delete("/missing.txt")
    assert layout.current_generation(root) == "g00000001"


def test_old_generations_are_pruned(tmp_path):
    root = tmp_path / "idx"
    for i in range(4):
        with open_writer(root, params()) as w:
            put(w, f"/{i}.txt", ["text"])
    assert sorted(p.name for p in root.glob("g*")) == ["g00000003", "g00000004"]


def test_second_writer_gets_a_clear_busy_error(tmp_path):
    root = tmp_path / "idx"
    with (
        open_writer(root, params()),
        pytest.raises(IndexBusy, match="Another ingest"),
        open_writer(root, params(), lock_timeout=0.3),
    ):
        pass


def test_missing_index_says_how_to_build_one(tmp_path):
    with pytest.raises(IndexMissing, match="ingest"):
        KnowledgeBase.open(tmp_path / "nothing")


def test_other_model_is_refused_with_rebuild_hint(index_copy, corpus_dir):
    settings = Settings(index=index_copy, chunk_tokens=120)
    with pytest.raises(IndexIncompatible, match="--rebuild"):
        ingest_paths([str(corpus_dir)], settings)


def test_other_format_version_is_refused(index_copy):
    gen = index_copy / layout.current_generation(index_copy)
    manifest = json.loads((gen / "manifest.json").read_text())
    manifest["format_version"] = 99
    (gen / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexIncompatible, match="format version 99"):
        KnowledgeBase.open(index_copy)


@pytest.mark.parametrize("name", ["vectors.faiss", "chunks.sqlite"])
def test_truncated_files_are_reported_as_damage(index_copy, name):
    target = index_copy / layout.current_generation(index_copy) / name
    target.write_bytes(target.read_bytes()[:100])
    with pytest.raises(IndexCorrupt, match="damaged"):
        KnowledgeBase.open(index_copy)


@pytest.mark.parametrize("name", ["vectors.faiss", "chunks.sqlite"])
def test_same_size_garbage_is_reported_as_damage(index_copy, name):
    target = index_copy / layout.current_generation(index_copy) / name
    target.write_bytes(os.urandom(target.stat().st_size))
    with pytest.raises(IndexCorrupt, match="damaged"):
        KnowledgeBase.open(index_copy)


def test_context_rebuilds_the_text_around_a_chunk(tmp_path):
    text = "".join(f"Sentence {i:02d} is here. " for i in range(12))
    spans = [(0, 100), (80, 180), (160, len(text))]  # overlapping, like real chunks
    chunks = [
        Chunk(text=text[a:b], source="/d.txt", start=a, end=b, ordinal=n)
        for n, (a, b) in enumerate(spans)
    ]
    root = tmp_path / "idx"
    with open_writer(root, params()) as w:
        w.put(path="/d.txt", content_hash="h", kind="text", title="", size=1, mtime=0,
              pages=None, chunks=chunks, vectors=np.eye(4, dtype=np.float32)[:3])  # fmt: skip
    snap = KnowledgeBase.open(root).snapshot()
    middle = snap.document_chunks("/d.txt")[1]
    before, span, after = snap.context(middle)
    assert (before, span, after) == (text[0:80].strip(), text[80:180], text[180:].strip())
    first = snap.document_chunks("/d.txt")[0]
    assert snap.context(first, neighbours=1)[0] == ""


def test_stats_describe_the_local_store(tmp_path):
    root = tmp_path / "idx"
    with open_writer(root, params()) as w:
        put(w, "/a.txt", ["alpha one", "alpha two"])
        put(w, "/b.txt", ["beta"])
    stats = KnowledgeBase.open(root).stats()
    assert isinstance(stats, StoreStats)
    assert (stats.store, stats.generation, stats.documents, stats.chunks, stats.vectors) == (
        "local", 1, 2, 3, 3,
    )  # fmt: skip
    assert stats.dimension == 4 and stats.disk_bytes and stats.disk_bytes > 0
    assert json.loads(json.dumps(stats.to_dict()))["store"] == "local"
    assert not (root / STORE_RECORD).exists()  # no record: a local index, as before the seam


def test_an_unknown_store_is_named(tmp_path):
    with pytest.raises(StoreUnknown, match="'cassandra'"):
        open_store(tmp_path / "idx", Settings(store="cassandra://db:9042"))
    assert not (tmp_path / "idx").exists()


def test_the_recorded_store_is_used_and_another_one_refused(tmp_path):
    root = tmp_path / "idx"
    with open_writer(root, params()) as w:
        put(w, "/a.txt", ["alpha"])
    # A local index (no record) searched with settings naming another store.
    with pytest.raises(IndexIncompatible, match="local"):
        KnowledgeBase.open(root, settings=Settings(store="cassandra://db:9042"))
    # A record is followed without being asked for, and checked when asked.
    (root / STORE_RECORD).write_text(json.dumps({"store": "cassandra://db:9042"}))
    with pytest.raises(StoreUnknown, match="'cassandra'"):
        open_store(root, Settings())
    with pytest.raises(IndexIncompatible, match="cassandra://db:9042"):
        open_store(root, Settings(store="local"))


def test_the_store_record_keeps_no_credentials(tmp_path):
    root = tmp_path / "idx"
    record_store(root, "milvus://reader:s3cret@db.example:19530")
    assert recorded_store(root) == "milvus://db.example:19530"
    assert "s3cret" not in (root / STORE_RECORD).read_text()
    assert [p.name for p in root.iterdir()] == [STORE_RECORD]


def test_a_generation_written_before_tags_reads_none_and_gains_the_column(tmp_path):
    import sqlite3

    from rag.store.local.generations import SCHEMA, Tables, create_schema

    db = sqlite3.connect(tmp_path / "older.sqlite")
    db.executescript(SCHEMA)  # the documents table as written before the `tags` column
    db.execute("ALTER TABLE documents DROP COLUMN ocr")  # and before `ocr`
    db.execute(
        "INSERT INTO documents (path, content_hash, kind, ingested_at) VALUES ('a.md', 'h', "
        "'markdown', 0)"
    )
    tables = Tables()
    tables.db = db
    assert [(d.path, d.ocr, d.tags) for d in tables.documents()] == [("a.md", False, ())]
    create_schema(db)  # what a writer does to the copy it extends
    db.execute("UPDATE documents SET tags = '[\"finance\"]'")
    assert tables.document("a.md").tags == ("finance",)
