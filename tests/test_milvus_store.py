"""The Milvus store (rag/store/milvus/store.py) on the real Milvus Lite, where it
differs from the local store: its URIs and token, BM25 scores, one process
per Milvus Lite file, and a writer killed mid-write. What every store does
is in test_store_contract.py. Each test its own .db folder under tmp_path."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from builders import STORE_CORPUS, fill_store, put_texts, text_vector, texts_of

from rag import lexical
from rag.errors import IndexBusy, IndexIncompatible, RagError
from rag.filters import Filters
from rag.knowledge_base import KnowledgeBase
from rag.layout import IndexParams
from rag.settings import Settings
from rag.store import open_store as open_any_store
from rag.store import recorded_store
from rag.store.milvus import schema as ms
from rag.store.milvus.store import MilvusStore, open_milvus

PARAMS = IndexParams("test-model", 8, 200, 32, lexical.ANALYZER_ID)
CORPUS = STORE_CORPUS


def open_store(tmp_path: Path, bm25: str | None = None) -> MilvusStore:
    return MilvusStore(
        ms.parse_uri(f"milvus-lite://{tmp_path}/kb.db"), tmp_path / "index", bm25=bm25
    )  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MilvusStore]:
    s = open_store(tmp_path)
    yield s
    s.close()


def brute_bm25(rows: dict[int, list[str]], query: str) -> dict[int, float]:
    """Lucene BM25 (bm25s's 'lucene' method) over `rows`, written out."""
    words = lexical.terms(query)
    n = len(rows)
    avgdl = sum(len(t) for t in rows.values()) / n
    out = {}
    for cid, terms in rows.items():
        score = 0.0
        for w in words:
            df = sum(w in t for t in rows.values())
            tf = terms.count(w)
            if tf:
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                score += (
                    idf * tf / (tf + lexical.K1 * (1 - lexical.B + lexical.B * len(terms) / avgdl))
                )
        out[cid] = score
    return out


def test_uri_forms_and_no_secret_in_the_uri(tmp_path):
    lite = ms.parse_uri(f"milvus-lite://{tmp_path}/a.db?collection=kb_one")
    assert (lite.lite_path, lite.prefix) == (tmp_path / "a.db", "kb_one")
    cluster = ms.parse_uri("milvus://db.example:19531")
    assert (cluster.client_uri, cluster.uri) == (
        "http://db.example:19531",
        "milvus://db.example:19531",
    )
    for bad in (
        "milvus-lite://relative.db",
        "milvus://user:secret@host:1",
        "milvus://h?collection=x-y",
    ):
        with pytest.raises(RagError):
            ms.parse_uri(bad)
    settings = Settings(milvus_token="s3cret")
    store = open_milvus(tmp_path, "milvus+tls://db.example:19531", settings)
    assert store._token == "s3cret" and "s3cret" not in store.uri
    assert "s3cret" not in repr(settings) and "s3cret" not in settings.model_dump_json()


def test_dense_scores_and_bm25_also_are_exact(store):
    fill_store(store, PARAMS)
    snap = store.snapshot()
    chunks = {c.id: c for p in CORPUS for c in snap.document_chunks(p)}
    query = text_vector("a question")
    scores = snap.dense_scores(query, list(chunks))
    for cid, chunk in chunks.items():
        assert scores[cid] == pytest.approx(float(text_vector(chunk.text) @ query), abs=1e-6)
    rows = {cid: lexical.terms(c.indexed_text) for cid, c in chunks.items()}
    expected = brute_bm25(rows, "the cat and the apple")
    ranked, lookup = snap.bm25("the cat and the apple", 10, also=list(chunks))
    assert {i for i, _ in ranked} == {i for i, s in expected.items() if s > 0}
    for cid in chunks:
        assert lookup[cid] == pytest.approx(expected[cid], rel=1e-5)


def test_milvus_own_bm25_ranks_a_known_corpus(tmp_path):
    """The cluster's BM25 path (Milvus's full-text search), run on Lite."""
    store = open_store(tmp_path, "milvus")
    try:
        fill_store(store, PARAMS)
        snap = store.snapshot()
        by_text = {c.text: c.id for p in CORPUS for c in snap.document_chunks(p)}
        top, _ = snap.bm25("baked apple pie", 3)
        assert top[0][0] == by_text[CORPUS["fruit.md"][0]] and len(top) == 1
        top, lookup = snap.bm25("rockets to a galaxy", 5, also=[by_text[CORPUS["pets.md"][0]]])
        assert {i for i, _ in top} == {by_text[t] for t in CORPUS["space.md"]}
        assert lookup[by_text[CORPUS["pets.md"][0]]] == 0.0
        assert snap.bm25("zebra", 5) == ([], {})
        assert snap.has_term(lexical.terms("galaxies")[0]) and not snap.has_term("zebra")
    finally:
        store.close()


def test_the_recorded_store_is_followed_and_another_refused(tmp_path):
    uri = f"milvus-lite://{tmp_path}/kb.db"
    settings = Settings(index=tmp_path / "index", store=uri)
    store = open_any_store(settings.index, settings)
    try:
        fill_store(store, PARAMS)
        assert recorded_store(settings.index) == uri  # written before the first publish
        opened = open_any_store(settings.index, Settings())  # found from the folder alone
        assert opened.uri == uri and texts_of(opened.snapshot()) == CORPUS
        for other in ("local", f"milvus-lite://{tmp_path}/other.db"):
            with pytest.raises(IndexIncompatible, match=f"kept in the store '{uri}'"):
                KnowledgeBase.open(settings.index, settings=Settings(store=other))
        local = tmp_path / "local-index"
        fill_store(open_any_store(local, Settings()), PARAMS)
        with pytest.raises(IndexIncompatible, match="kept in the store 'local'"):
            open_any_store(local, settings)
    finally:
        store.close()


HOLDER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, sys.argv[2])
    from pathlib import Path
    from test_milvus_store import open_store
    store = open_store(Path(sys.argv[1]))
    store.client  # a new base reads nothing: connect as its first writer would
    print("open", flush=True)
    time.sleep(120)
    """
)


def test_a_second_process_on_a_lite_file_is_told_what_to_do(tmp_path, caplog):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path), str(Path(__file__).parent)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline(), holder.stderr.read()
        store = open_store(tmp_path)
        with pytest.raises(IndexBusy, match=r"another process.*Stop the app or the ingest") as busy:
            _ = store.client
        assert f"using {tmp_path / 'kb.db'}" in str(busy.value)
        assert "DataDirLockedError" not in caplog.text  # one line, not Milvus Lite's traceback
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(timeout=60)


CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    from builders import put_texts as put
    from test_milvus_store import PARAMS, open_store, version
    store = open_store(Path(sys.argv[1]))
    with store.writer(PARAMS) as w:
        for round_ in range(int(sys.argv[2]), 1000):
            for i in range(6):
                put(w, f"doc{i}.md", version(i, round_))
                w.checkpoint()
                print(round_, i, flush=True)
    """
)


def version(i: int, round_: int) -> list[str]:
    return [
        f"Document {i} version {round_} part {j} about topic{i}." for j in range(3 + i + round_ % 3)
    ]


def test_sigkill_mid_write_leaves_each_document_old_or_new(tmp_path):
    here = str(Path(__file__).parent)
    seen: dict[str, list[str]] = {}
    for kill, (round_, lines) in enumerate([(0, 3), (1, 8), (2, 5)]):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path), str(round_), here],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        try:
            for _ in range(lines):  # some checkpoints published, then more writes under way
                assert child.stdout is not None and child.stdout.readline(), child.stderr.read()
            time.sleep(random.uniform(0.0, 0.3))  # somewhere in the next put or checkpoint
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(timeout=60)
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
        store = open_store(tmp_path)
        try:
            snap = store.snapshot()
            state = texts_of(snap)
            for path, texts in state.items():  # every document whole: one version's chunks
                i = int(path[3])
                assert any(texts == version(i, r) for r in range(kill + 3)), (path, texts)
            assert set(seen) <= set(state), f"kill {kill}: a published document was lost"
            stats = snap.stats()
            assert stats.chunks == sum(len(t) for t in state.values()) == stats.vectors
            assert snap.bm25("topic0", 3)[0][0][0] in {
                c.id for c in snap.document_chunks("doc0.md")
            }
            seen = state
        finally:
            store.close()
    assert len(seen) == 6


def test_a_wal_already_flushed_when_the_writer_was_killed_is_not_replayed(tmp_path):
    """Milvus Lite saves a flush's manifest before it deletes the WAL just
    flushed: a kill between the two leaves that WAL beside the segments it
    became. Copying it back reproduces exactly that state."""
    store = open_store(tmp_path)
    with store.writer(PARAMS) as w:
        for path, texts in CORPUS.items():
            put_texts(w, path, texts)
        wals = {f: f.read_bytes() for f in (tmp_path / "kb.db").glob("collections/*/wal/*")}
    store.close()
    assert any("_chunks_" in f.parent.parent.name for f in wals)  # the flushed collection
    for file, data in wals.items():
        assert not file.exists()  # flushed, then deleted
        file.write_bytes(data)
    store = open_store(tmp_path)
    try:
        snap = store.snapshot()
        assert not any((tmp_path / "kb.db").glob("collections/*/wal/wal_*_000001.arrow"))
        assert texts_of(snap) == CORPUS  # no chunk twice
        stats = snap.stats()
        assert stats.chunks == sum(map(len, CORPUS.values())) == stats.vectors
    finally:
        store.close()


def test_an_index_file_torn_by_a_kill_is_built_again(tmp_path):
    """Milvus Lite writes a segment's index file in a background thread,
    straight to its name: a kill leaves it empty or cut short."""
    store = open_store(tmp_path)
    fill_store(store, PARAMS)
    store.close()
    torn = sorted((tmp_path / "kb.db").glob("collections/*/partitions/*/indexes/*.flat.idx"))
    assert len(torn) == 3  # chunks, documents, meta
    for file, keep in zip(torn, (0, 60, -4), strict=True):  # empty, header cut, data cut
        file.write_bytes(file.read_bytes()[:keep])
    store = open_store(tmp_path)
    try:
        snap = store.snapshot()
        assert texts_of(snap) == CORPUS
        top = snap.dense(text_vector(CORPUS["fruit.md"][0]), 1)
        assert snap.chunks([top[0][0]])[top[0][0]].text == CORPUS["fruit.md"][0]
    finally:
        store.close()


def test_a_knowledge_base_of_schema_1_is_refused_until_rebuilt(store):
    fill_store(store, PARAMS)
    meta = store.current()
    record = json.loads(meta.to_json())
    del record["schema"]  # what the code before schema 2 wrote
    name = f"{store.prefix}_meta"
    store.client.upsert(name, [{"id": meta.generation, "vector": ms.DUMMY,
                                "record": json.dumps(record)}])  # fmt: skip
    assert store.current().schema == 1
    rebuild = r"schema version 1; this version of kbqa reads version 2\. Rebuild it: .*--rebuild"
    with pytest.raises(IndexIncompatible, match=rebuild):
        store.snapshot()
    with pytest.raises(IndexIncompatible, match=rebuild), store.writer(PARAMS):
        pass
    assert set(store.published_documents()) == set(CORPUS)  # what a rebuild replaces
    with store.writer(PARAMS, rebuild=True) as w:
        for path, texts in CORPUS.items():
            put_texts(w, path, texts)
    snap = store.snapshot()
    assert store.current().schema == ms.SCHEMA_VERSION and texts_of(snap) == CORPUS
    assert len(snap.dense(text_vector("x"), 5, Filters.parse(path_prefix="pets"))) == 2


def test_a_passage_over_milvus_field_size_fails_its_file_and_the_batch_goes_on(tmp_path, embedder):
    """Words of over 100 characters are one token each ([UNK]), so a passage
    of a few hundred tokens can exceed the 65,535 bytes a Milvus VARCHAR
    holds: that file is reported by name before anything of it is written;
    the other files are ingested and searchable."""
    from ingest.pipeline import ingest_paths

    folder = tmp_path / "docs"
    folder.mkdir()
    rng = random.Random(7)
    blob = " ".join("".join(rng.choices("abcdefgh", k=400)) for _ in range(600))
    (folder / "blobs.md").write_text(blob, encoding="utf-8")
    (folder / "good.md").write_text("The larch pump is serviced every March.", encoding="utf-8")
    settings = Settings(index=tmp_path / "index", store=f"milvus-lite://{tmp_path}/kb.db")
    report = ingest_paths([str(folder)], settings, embedder=embedder)
    ((path, error),) = [(Path(f.path).name, f.error) for f in report.failed]
    assert path == "blobs.md" and "bytes long" in error and "65,535" in error
    kb = KnowledgeBase.open(tmp_path / "index", settings=settings)
    try:
        assert [d.path.rsplit("/", 1)[1] for d in kb.snapshot().documents()] == ["good.md"]
        assert kb.search("When is the larch pump serviced?", k=1)[0].chunk.text.startswith(
            "The larch"
        )
    finally:
        kb.close()
