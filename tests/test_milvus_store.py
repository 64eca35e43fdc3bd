"""The Milvus store (rag/milvus_store.py) on the real Milvus Lite: each test
its own .db folder under tmp_path."""

from __future__ import annotations

import hashlib
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

import numpy as np
import pytest

from rag import lexical
from rag import milvus_schema as ms
from rag.errors import IndexMissing, RagError, RebuildRefused
from rag.layout import IndexParams
from rag.milvus_store import MilvusStore
from rag.settings import Settings
from rag.types import Chunk

DIM = 8
PARAMS = IndexParams("test-model", DIM, 200, 32, lexical.ANALYZER_ID)
CORPUS = {
    "fruit.md": ["Apple pie with cinnamon and baked apples.", "Banana bread needs ripe bananas."],
    "pets.md": ["The cat sleeps on the warm windowsill.", "Dogs love long walks in the park."],
    "space.md": ["The telescope observed a distant galaxy.", "Rockets carry satellites to orbit."],
}


def vector(text: str) -> np.ndarray:
    """A fixed unit vector per text."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def put(writer, path: str, texts: list[str], title: str = "") -> None:
    chunks, offset = [], 0
    for text in texts:
        chunks.append(Chunk(text=text, source=path, start=offset, end=offset + len(text)))
        offset += len(text) + 1
    writer.put(
        path=path, content_hash=hashlib.sha256(" ".join(texts).encode()).hexdigest(), kind="md",
        title=title, size=offset, mtime=1.0, pages=None, chunks=chunks,
        vectors=np.stack([vector(t) for t in texts]),
    )  # fmt: skip


def open_store(tmp_path: Path, bm25: str | None = None) -> MilvusStore:
    return MilvusStore(
        ms.parse_uri(f"milvus-lite://{tmp_path}/kb.db"), tmp_path / "index", bm25=bm25
    )  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MilvusStore]:
    s = open_store(tmp_path)
    yield s
    s.close()


def fill(store: MilvusStore, corpus: dict[str, list[str]] = CORPUS) -> None:
    with store.writer(PARAMS) as w:
        for path, texts in corpus.items():
            put(w, path, texts)


def texts_of(snap) -> dict[str, list[str]]:
    return {d.path: [c.text for c in snap.document_chunks(d.path)] for d in snap.documents()}


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
    settings = Settings().model_copy(update={"milvus_token": "s3cret"})
    store = MilvusStore.from_uri("milvus://db.example:19531", tmp_path, settings)
    assert store._token == "s3cret" and "s3cret" not in store.uri


def test_put_update_delete(store):
    with pytest.raises(IndexMissing):
        store.snapshot()
    fill(store)
    snap = store.snapshot()
    assert texts_of(snap) == CORPUS
    assert [d.chunks for d in snap.documents()] == [2, 2, 2]
    with store.writer(PARAMS) as w:
        put(w, "fruit.md", ["Cherries are red.", "Plums are purple.", "Figs are sweet."])
        assert w.delete("pets.md") and not w.delete("nowhere.md")
        assert w.paths() == ["fruit.md", "space.md"]  # the writer reads its own changes
    snap = store.snapshot()
    assert texts_of(snap) == {
        "fruit.md": ["Cherries are red.", "Plums are purple.", "Figs are sweet."],
        "space.md": CORPUS["space.md"],
    }
    record = snap.document("fruit.md")
    assert record is not None and record.chunks == 3
    assert snap.document_with_hash(record.content_hash) == record
    stats = snap.stats()
    assert (stats.documents, stats.chunks, stats.vectors) == (2, 5, 5)
    assert stats.store == store.uri and stats.disk_bytes and stats.disk_bytes > 0
    chunk = snap.document_chunks("fruit.md")[1]
    assert snap.context(chunk) == ("Cherries are red.", "Plums are purple.", "Figs are sweet.")
    assert snap.chunks([chunk.id])[chunk.id] == chunk


@pytest.mark.parametrize("engine", ["ours", "milvus"])
def test_dense_and_bm25_order_on_a_known_corpus(tmp_path, engine):
    store = open_store(tmp_path, engine)
    try:
        fill(store)
        snap = store.snapshot()
        by_text = {c.text: c.id for p in CORPUS for c in snap.document_chunks(p)}
        target = CORPUS["pets.md"][0]
        ranked = snap.dense(vector(target), 3)
        assert ranked[0][0] == by_text[target] and ranked[0][1] == pytest.approx(1.0, abs=1e-5)
        assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
        top, _ = snap.bm25("baked apple pie", 3)
        assert top[0][0] == by_text[CORPUS["fruit.md"][0]] and len(top) == 1
        top, _ = snap.bm25("rockets to a galaxy", 5)
        assert {i for i, _ in top} == {by_text[t] for t in CORPUS["space.md"]}
        assert snap.bm25("zebra", 5) == ([], {})
    finally:
        store.close()


def test_dense_scores_and_bm25_also_are_exact(store):
    fill(store)
    snap = store.snapshot()
    chunks = {c.id: c for p in CORPUS for c in snap.document_chunks(p)}
    query = vector("a question")
    scores = snap.dense_scores(query, list(chunks))
    for cid, chunk in chunks.items():
        assert scores[cid] == pytest.approx(float(vector(chunk.text) @ query), abs=1e-6)
    rows = {cid: lexical.terms(c.indexed_text) for cid, c in chunks.items()}
    expected = brute_bm25(rows, "the cat and the apple")
    ranked, lookup = snap.bm25("the cat and the apple", 10, also=list(chunks))
    assert {i for i, _ in ranked} == {i for i, s in expected.items() if s > 0}
    for cid in chunks:
        assert lookup[cid] == pytest.approx(expected[cid], rel=1e-5)


def test_a_snapshot_keeps_its_generation_while_a_writer_publishes(store):
    fill(store)
    old = store.snapshot()
    before = texts_of(old)
    probe = vector(CORPUS["pets.md"][0])
    dense_before, bm25_before = old.dense(probe, 3), old.bm25("cat galaxy", 5, also=[1, 2])
    with store.writer(PARAMS) as w:
        put(w, "pets.md", ["Parrots talk."])
        w.delete("space.md")
        assert w.checkpoint() == old.generation + 1
        new = store.snapshot()
        assert texts_of(new) == {"fruit.md": CORPUS["fruit.md"], "pets.md": ["Parrots talk."]}
        put(w, "later.md", ["Written after the checkpoint."])
        assert "later.md" not in texts_of(store.snapshot())  # not published yet
        assert (texts_of(old), old.dense(probe, 3)) == (before, dense_before)
        assert old.bm25("cat galaxy", 5, also=[1, 2]) == bm25_before
    assert set(texts_of(store.snapshot())) == {"fruit.md", "pets.md", "later.md"}
    assert texts_of(new) == {"fruit.md": CORPUS["fruit.md"], "pets.md": ["Parrots talk."]}


def test_a_writer_that_raises_publishes_nothing(store):
    fill(store)
    stamp = store.stamp()
    with pytest.raises(RuntimeError), store.writer(PARAMS) as w:
        put(w, "fruit.md", ["Replaced."])
        w.delete("pets.md")
        put(w, "new.md", ["New."])
        assert texts_of(store.snapshot()) == CORPUS  # nothing visible while it writes
        raise RuntimeError("parser crashed")
    assert store.stamp() == stamp and texts_of(store.snapshot()) == CORPUS
    with store.writer(PARAMS) as w:  # the next writer starts from the published state
        assert w.paths() == sorted(CORPUS) and w.document_chunks("pets.md")
    assert texts_of(store.snapshot()) == CORPUS


def test_rebuild_refusals_and_earlier_records(store):
    fill(store)
    stamp = store.stamp()
    with (
        pytest.raises(RebuildRefused, match="ingested no document"),
        store.writer(PARAMS, rebuild=True),
    ):
        pass
    with (
        pytest.raises(RebuildRefused, match="drop 1 document"),
        store.writer(PARAMS, rebuild=True) as w,
    ):
        put(w, "fruit.md", ["Rebuilt fruit."])
        put(w, "pets.md", ["Rebuilt pets."])
        assert w.checkpoint() is None  # a rebuild publishes only when complete
        assert store.stamp() == stamp
        earlier = w.earlier("space.md")
        assert earlier is not None and earlier.chunks == 2 and w.document("space.md") is None
    assert store.stamp() == stamp and texts_of(store.snapshot()) == CORPUS
    with store.writer(PARAMS, rebuild=True, allow_drop=True) as w:
        put(w, "fruit.md", ["Rebuilt fruit."])
    assert texts_of(store.snapshot()) == {"fruit.md": ["Rebuilt fruit."]}


def test_checkpoints_publish_what_is_done(store):
    with store.writer(PARAMS) as w:
        put(w, "one.md", ["First document."])
        assert not store.exists()
        first = w.checkpoint()
        assert texts_of(store.snapshot()) == {"one.md": ["First document."]}
        put(w, "two.md", ["Second document."])
        assert store.snapshot().generation == first
        assert "two.md" not in texts_of(store.snapshot())
    assert set(texts_of(store.snapshot())) == {"one.md", "two.md"}


CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    from test_milvus_store import PARAMS, open_store, put, version
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
