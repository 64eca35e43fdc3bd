"""The store contract (rag/store/__init__.py), one suite run against every store:
the local store and Milvus Lite, both real. Each test gets its own
knowledge base under tmp_path, opened through `open_store` as every caller
opens it. What only one store does is tested beside it (test_store.py,
test_milvus_store.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from builders import STORE_CORPUS, fill_store, put_texts, text_vector, texts_of

from ingest.pipeline import IngestOptions, ingest_documents, ingest_paths
from rag import lexical
from rag.errors import (
    BadFilter,
    IndexCorrupt,
    IndexIncompatible,
    IndexMissing,
    NothingMatches,
    RebuildRefused,
)
from rag.filters import Filters
from rag.knowledge_base import MODES, KnowledgeBase
from rag.layout import IndexParams
from rag.settings import Settings
from rag.store import DocumentEntry, Published, Store, open_store
from rag.types import Chunk, Document

STORES = ["local", "milvus-lite"]
PARAMS = IndexParams("test-model", 8, 200, 32, lexical.ANALYZER_ID)
CORPUS = STORE_CORPUS


def store_settings(kind: str, folder: Path) -> Settings:
    """A knowledge base in `folder`/index, kept in the store `kind`."""
    uri = "local" if kind == "local" else f"milvus-lite://{folder}/kb.db"
    # float32: the local store otherwise searches a float16 copy.
    return Settings(index=folder / "index", store=uri, dense_precision="float32")


def close(store: Store) -> None:
    """Let go of Milvus Lite's server for the file (the local store holds nothing)."""
    getattr(store, "close", lambda: None)()


@pytest.fixture(params=STORES)
def kb_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    return store_settings(request.param, tmp_path)


@pytest.fixture
def store(kb_settings: Settings) -> Iterator[Store]:
    opened = open_store(kb_settings.index, kb_settings)
    yield opened
    close(opened)


def fill(store: Store) -> None:
    fill_store(store, PARAMS)


def test_put_adds_documents_a_snapshot_reads(store):
    assert not store.exists() and store.published() is None
    with pytest.raises(IndexMissing, match="ingest"):
        store.snapshot()
    fill(store)
    snap = store.snapshot()
    assert store.exists() and texts_of(snap) == CORPUS
    assert [(d.path, d.chunks) for d in snap.documents()] == [(p, 2) for p in sorted(CORPUS)]
    record = snap.document("pets.md")
    assert record is not None and snap.document_with_hash(record.content_hash) == record
    assert snap.document("nowhere.md") is None
    first, second = snap.document_chunks("pets.md")
    assert snap.chunks([second.id, first.id]) == {first.id: first, second.id: second}
    assert snap.context(second) == (first.text, second.text, "")
    assert store.published() == Published(snap.generation, PARAMS)
    assert store.published_documents() == {d.path: d for d in snap.documents()}


NEW_FRUIT = ["Cherries are red.", "Plums are purple.", "Figs are sweet."]


def test_put_at_the_same_path_replaces_the_document(store):
    fill(store)
    old = {c.id for c in store.snapshot().document_chunks("fruit.md")}
    with store.writer(PARAMS) as w:
        earlier = w.earlier("fruit.md")
        put_texts(w, "fruit.md", NEW_FRUIT)
        assert w.document("fruit.md").content_hash != earlier.content_hash
    snap = store.snapshot()
    assert texts_of(snap)["fruit.md"] == NEW_FRUIT
    assert snap.chunks(old) == {}
    assert snap.bm25("apple pie", 5) == ([], {})
    plums = snap.document_chunks("fruit.md")[1]
    assert snap.dense(text_vector("Plums are purple."), 1)[0][0] == plums.id
    assert snap.context(plums) == tuple(NEW_FRUIT)


def test_delete_removes_a_document_and_its_chunks(store):
    fill(store)
    with store.writer(PARAMS) as w:
        assert w.delete("pets.md") and not w.delete("nowhere.md")
        assert w.paths() == ["fruit.md", "space.md"]  # the writer reads its own changes
        assert w.document("pets.md") is None and w.document_chunks("pets.md") == []
    snap = store.snapshot()
    assert set(texts_of(snap)) == {"fruit.md", "space.md"}
    assert snap.bm25("cat windowsill", 5) == ([], {})
    near = {cid for cid, _ in snap.dense(text_vector(CORPUS["pets.md"][0]), 10)}
    assert len(near) == 4 and not near & {c.id for c in snap.document_chunks("pets.md")}


def test_a_snapshot_knows_the_terms_its_passages_hold(store):
    # The answering's "does the base hold this word at all", a lookup in the
    # BM25 side's vocabulary rather than a whole search per word.
    fill(store)
    snap = store.snapshot()
    assert all(snap.has_term(t) for t in lexical.terms("cat windowsill galaxies bananas"))
    assert not snap.has_term("zebra") and not snap.has_term("")
    with store.writer(PARAMS) as w:
        w.delete("pets.md")
    snap = store.snapshot()
    assert not any(snap.has_term(t) for t in lexical.terms("cat windowsill"))
    assert snap.has_term(lexical.terms("galaxies")[0])


def test_a_snapshot_gives_back_the_vectors_as_written(kb_settings):
    # Searched at float16 (the local store's default), read back as written.
    settings = kb_settings.model_copy(update={"dense_precision": "float16"})
    store = open_store(settings.index, settings)
    try:
        fill(store)
        snap = store.snapshot()
        chunks = [c for path in sorted(CORPUS) for c in snap.document_chunks(path)][::-1]
        got = snap.vectors_of([c.id for c in chunks])
        assert got.dtype == np.float32 and got.shape == (6, PARAMS.dimension)
        assert np.array_equal(got, np.stack([text_vector(c.text) for c in chunks]))
        assert snap.vectors_of([]).shape == (0, PARAMS.dimension)
        with pytest.raises(IndexCorrupt):
            snap.vectors_of([10**9])
    finally:
        close(store)


def test_nothing_changed_publishes_nothing(store):
    fill(store)
    stamp = store.stamp()
    with store.writer(PARAMS) as w:
        assert not w.delete("nowhere.md")
    assert store.stamp() == stamp


def test_ingest_follows_the_files_added_changed_renamed_and_gone(kb_settings, store, tmp_path):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    for name, text in [("a.md", "Alpha talks about glaciers."), ("b.md", "Beta is on tides."),
                       ("sub/c.md", "Gamma covers deserts.")]:  # fmt: skip
        (folder / name).write_text(f"# {name}\n\n{text}\n")

    def ingest(paths=(folder,), **options):
        return ingest_paths([str(p) for p in paths], kb_settings, IngestOptions(**options))

    first = ingest()
    assert (first.added, first.generation) == (3, store.published().generation)
    (folder / "a.md").write_text("# a.md\n\nAlpha now talks about volcanoes.\n")
    (folder / "b.md").rename(folder / "moved.md")
    (folder / "sub" / "c.md").unlink()
    report = ingest(sync=True)
    assert (report.updated, report.added, report.deleted, report.chunks_copied) == (1, 1, 2, 1)
    paths = sorted(store.published_documents())
    assert [Path(p).name for p in paths] == ["a.md", "moved.md"]
    assert ingest(paths=(), delete=[str(folder / "moved.md")]).deleted == 1
    kb = KnowledgeBase.open(kb_settings.index, settings=kb_settings)
    assert [Path(d.path).name for d in kb.documents()] == ["a.md"]
    assert kb.search("volcanoes", k=1, mode="bm25")[0].source == str(folder / "a.md")


def test_other_params_are_refused_until_a_rebuild(store):
    fill(store)
    other = IndexParams("other-model", 8, 200, 32, lexical.ANALYZER_ID)
    with pytest.raises(IndexIncompatible, match=r"model_id.*--rebuild"), store.writer(other):
        pass
    with store.writer(other, rebuild=True, allow_drop=True) as w:
        put_texts(w, "fruit.md", CORPUS["fruit.md"])
    assert store.published().params == other and set(texts_of(store.snapshot())) == {"fruit.md"}


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
        put_texts(w, "fruit.md", ["Rebuilt fruit."])
        put_texts(w, "pets.md", ["Rebuilt pets."])
        assert w.checkpoint() is None  # a rebuild publishes only when complete
        assert store.stamp() == stamp
        earlier = w.earlier("space.md")
        assert earlier is not None and earlier.chunks == 2 and w.document("space.md") is None
    assert store.stamp() == stamp and texts_of(store.snapshot()) == CORPUS
    generation = store.snapshot().generation
    with store.writer(PARAMS, rebuild=True, allow_drop=True) as w:
        put_texts(w, "fruit.md", ["Rebuilt fruit."])
    snap = store.snapshot()
    assert texts_of(snap) == {"fruit.md": ["Rebuilt fruit."]}
    assert snap.generation == generation + 1 and snap.stats().chunks == 1


def test_stats_agree_with_what_was_put(store, kb_settings):
    fill(store)
    with store.writer(PARAMS) as w:
        put_texts(w, "extra.md", ["One.", "Two.", "Three."])
        w.delete("space.md")
    stats = store.snapshot().stats()
    assert (stats.documents, stats.chunks, stats.vectors) == (3, 7, 7)
    assert (stats.model, stats.dimension, stats.chunk_tokens, stats.chunk_overlap) == (
        "test-model", 8, 200, 32,
    )  # fmt: skip
    assert stats.store == store.uri == kb_settings.store
    assert stats.index == str(kb_settings.index)
    assert stats.generation == store.published().generation
    assert stats.disk_bytes and stats.disk_bytes > 0


def test_a_snapshot_keeps_its_state_while_a_writer_publishes(store):
    fill(store)
    old = store.snapshot()
    before = texts_of(old)
    probe = text_vector(CORPUS["pets.md"][0])
    ids = [c.id for c in old.document_chunks("space.md")]
    dense_before, bm25_before = old.dense(probe, 3), old.bm25("cat galaxy", 5, also=ids)
    with store.writer(PARAMS) as w:
        put_texts(w, "pets.md", ["Parrots talk."])
        w.delete("space.md")
        assert w.checkpoint() == old.generation + 1
        new = store.snapshot()
        assert texts_of(new) == {"fruit.md": CORPUS["fruit.md"], "pets.md": ["Parrots talk."]}
        put_texts(w, "later.md", ["Written after the checkpoint."])
        assert "later.md" not in texts_of(store.snapshot())  # not published yet
        assert (texts_of(old), old.dense(probe, 3)) == (before, dense_before)
        assert old.bm25("cat galaxy", 5, also=ids) == bm25_before
    assert set(texts_of(store.snapshot())) == {"fruit.md", "pets.md", "later.md"}
    assert texts_of(new) == {"fruit.md": CORPUS["fruit.md"], "pets.md": ["Parrots talk."]}


def test_a_writer_that_raises_publishes_nothing(store):
    fill(store)
    stamp = store.stamp()
    with pytest.raises(RuntimeError), store.writer(PARAMS) as w:
        put_texts(w, "fruit.md", ["Replaced."])
        w.delete("pets.md")
        put_texts(w, "new.md", ["New."])
        assert texts_of(store.snapshot()) == CORPUS  # nothing visible while it writes
        raise RuntimeError("parser crashed")
    assert store.stamp() == stamp and texts_of(store.snapshot()) == CORPUS
    with store.writer(PARAMS) as w:  # the next writer starts from the published state
        assert w.paths() == sorted(CORPUS) and w.document_chunks("pets.md")
    assert texts_of(store.snapshot()) == CORPUS


def test_checkpoints_publish_what_is_done(store):
    with store.writer(PARAMS) as w:
        put_texts(w, "one.md", ["First document."])
        assert not store.exists()
        first = w.checkpoint()
        assert texts_of(store.snapshot()) == {"one.md": ["First document."]}
        put_texts(w, "two.md", ["Second document."])
        assert store.snapshot().generation == first
        assert "two.md" not in texts_of(store.snapshot())
    assert set(texts_of(store.snapshot())) == {"one.md", "two.md"}


# -- search through KnowledgeBase, with the real embedding model ------------------------

NOTES = {
    "volcano.md": "Mount Vesuvius erupted in 79 AD and buried Pompeii under volcanic ash. "
    "Seismometers detect the small earthquakes that come before an eruption.",
    "bread.md": "Sourdough bread rises slowly with wild yeast. Bakers feed the starter with "
    "flour and water every day.",
    "tides.md": "The Moon's gravity pulls the oceans into two bulges, which gives most coasts "
    "two high tides a day.",
    "planets.md": "Jupiter is the largest planet of the solar system; its Great Red Spot is "
    "a storm bigger than the Earth.",
}
QUERIES = {
    "which volcano buried Pompeii": "volcano.md",
    "how does sourdough rise": "bread.md",
    "why are there two high tides": "tides.md",
    "largest planet storm": "planets.md",
}


def note_documents() -> list[Document]:
    return [
        Document(path, text, hashlib.sha256(text.encode()).hexdigest(), "text", title=path[:-3])
        for path, text in NOTES.items()
    ]


def searched(settings: Settings, embedder) -> dict[tuple[str, str], list[tuple[str, float]]]:
    """Each query's hits in each mode, as (source, score), from a knowledge base of NOTES."""
    ingest_documents(note_documents(), settings, embedder=embedder)
    kb = KnowledgeBase.open(settings.index, embedder=embedder, settings=settings)
    try:
        return {
            (query, mode): [(h.source, h.score) for h in kb.search(query, k=4, mode=mode)]
            for query in QUERIES
            for mode in MODES
        }
    finally:
        kb.close()


@pytest.fixture(scope="module")
def notes_searched(
    tmp_path_factory: pytest.TempPathFactory, embedder
) -> Callable[[str], dict[tuple[str, str], list[tuple[str, float]]]]:
    """`searched` in a knowledge base of each store, done once a module:
    the test of each store and the comparison of the two read the same hits."""
    done: dict[str, dict[tuple[str, str], list[tuple[str, float]]]] = {}

    def of(kind: str) -> dict[tuple[str, str], list[tuple[str, float]]]:
        if kind not in done:
            settings = store_settings(kind, tmp_path_factory.mktemp(kind))
            store = open_store(settings.index, settings)
            try:
                done[kind] = searched(settings, embedder)
            finally:
                close(store)
        return done[kind]

    return of


@pytest.mark.parametrize("kind", STORES)
def test_search_in_every_mode_finds_the_known_document(kind, notes_searched):
    results = notes_searched(kind)
    for (query, mode), hits in results.items():
        assert hits[0][0] == QUERIES[query], (query, mode, hits)


def test_each_hit_carries_its_cosine_to_the_query(kb_settings, store, embedder):
    # The cosine a hit carries (Hit.dense_score), for the library's callers.
    ingest_documents(note_documents(), kb_settings, embedder=embedder)
    kb = KnowledgeBase.open(kb_settings.index, embedder=embedder, settings=kb_settings)
    try:
        query = "which volcano buried Pompeii"
        vector = embedder.embed_batch([query], kind="query")[0]
        for mode in ("hybrid", "dense"):
            hits = kb.search(query, k=4, mode=mode)
            exact = kb.snapshot().dense_scores(vector, [h.chunk_id for h in hits])
            assert [h.dense_score for h in hits] == pytest.approx(
                [exact[h.chunk_id] for h in hits], abs=2e-3
            ), mode  # the local store searches a float16 copy
        assert all(h.dense_score is None for h in kb.search(query, k=4, mode="bm25"))
    finally:
        kb.close()


def test_both_stores_rank_alike(notes_searched):
    local, milvus = notes_searched("local"), notes_searched("milvus-lite")
    for key, hits in local.items():
        assert [s for s, _ in milvus[key]] == [s for s, _ in hits], key
        # BM25 is the same sums of the same terms; vectors are float32 in both.
        tolerance = 1e-5 if key[1] == "bm25" else 1e-4
        assert [x for _, x in milvus[key]] == pytest.approx([x for _, x in hits], abs=tolerance)


# -- scoped search: filters apply inside the store, before the top k --------------------

DAY = 86400.0
JAN_2025 = 1735689600.0  # 2025-01-01T00:00:00Z
PROBE = text_vector("the probe")


def put_scoped(writer, path: str, texts: list[str], kind: str, mtime: float, tags=(), near=False):
    """A document whose chunks all lie on the probe (`near`) or anywhere."""
    chunks, offset = [], 0
    for ordinal, text in enumerate(texts):
        chunks.append(Chunk(text, path, offset, offset + len(text), ordinal=ordinal))
        offset += len(text) + 1
    vectors = np.stack([PROBE if near else text_vector(t) for t in texts])
    digest = hashlib.sha256(path.encode()).hexdigest()
    entry = DocumentEntry(path=path, content_hash=digest, kind=kind, size=offset, mtime=mtime,
                          tags=tuple(tags))  # fmt: skip
    writer.put(entry, chunks, vectors)


DECOYS = 40  # more than the fusion depth: the scoped passages rank far below them


@pytest.fixture(scope="module", params=STORES)
def scoped(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Store, Settings]]:
    """40 news notes on the probe that say "ledger" three times; below them,
    a PDF report (3 passages), a DOCX budget (2) and an old note (2) that say it once.
    One knowledge base a store for the module: the tests that take it only read."""
    settings = store_settings(request.param, tmp_path_factory.mktemp("scoped"))
    store = open_store(settings.index, settings)
    with store.writer(PARAMS) as w:
        for n in range(DECOYS):
            text = f"Ledger ledger ledger news item {n}."
            mtime = JAN_2025 - 200 * DAY
            put_scoped(w, f"/kb/news/n{n:02d}.md", [text], "markdown", mtime, ["news"], near=True)
        put_scoped(w, "/kb/finance/report.pdf",
                   ["The ledger shows growth.", "Ledger of Q1 costs.", "Q1 ledger totals."],
                   "pdf", JAN_2025 + 60 * DAY, ["finance", "q1"])  # fmt: skip
        put_scoped(w, "/kb/finance/budget.docx", ["Budget ledger lines.", "Ledger for 2025."],
                   "docx", JAN_2025 + 150 * DAY, ["finance"])  # fmt: skip
        put_scoped(w, "/kb/misc_1/old.md", ["An old ledger.", "Older ledger notes."], "markdown",
                   JAN_2025 - 800 * DAY)  # fmt: skip
    yield store, settings
    close(store)


def sources(snap, ranked) -> set[str]:
    return {c.source for c in snap.chunks(cid for cid, _ in ranked).values()}


@pytest.mark.parametrize(
    ("filters", "expected", "passages"),
    [
        (Filters.parse(path_prefix="/kb/finance/"), {"report.pdf", "budget.docx"}, 5),
        (Filters.parse(path_prefix="/kb/misc_"), {"old.md"}, 2),  # LIKE's _ is literal
        (Filters.parse(types=["pdf"]), {"report.pdf"}, 3),
        (Filters.parse(types=["pdf", "docx"]), {"report.pdf", "budget.docx"}, 5),
        (Filters.parse(tags=["q1"]), {"report.pdf"}, 3),
        (Filters.parse(tags=["Finance", "nothing-else"]), {"report.pdf", "budget.docx"}, 5),
        (Filters.parse(after="2025-01-01", before="2025-04-01"), {"report.pdf"}, 3),
        (Filters.parse(before="2023-06-01"), {"old.md"}, 2),
        (Filters.parse(path_prefix="/kb/", types=[".MD"], before="2024-01-01"), {"old.md"}, 2),
        (Filters.parse(tags=["finance"], after="2025-04-01"), {"budget.docx"}, 2),
    ],
)
def test_filters_apply_before_the_top_k(scoped, filters, expected, passages):
    snap = scoped[0].snapshot()
    for k in (passages, 2):
        want = min(k, passages)  # k come back whenever k matching passages exist
        dense = snap.dense(PROBE, k, filters)
        bm25, scores = snap.bm25("ledger", k, filters=filters)
        assert len(dense) == len(bm25) == want, (k, dense, bm25)
        for ranked in (dense, bm25):
            assert {Path(s).name for s in sources(snap, ranked)} <= expected
        assert all(scores[cid] > 0 for cid, _ in bm25)
    assert {Path(s).name for s in sources(snap, snap.dense(PROBE, 50, filters))} == expected
    matching = {d.path for d in snap.documents() if filters.matches(d)}
    assert {Path(p).name for p in matching} == expected
    unfiltered = snap.dense(PROBE, passages)
    assert sources(snap, unfiltered) <= {f"/kb/news/n{n:02d}.md" for n in range(DECOYS)}


def test_a_filter_that_matches_nothing_says_so(scoped):
    store, kb_settings = scoped
    snap = store.snapshot()
    nothing = Filters.parse(tags=["travel"])
    assert snap.dense(PROBE, 5, nothing) == [] and snap.bm25("ledger", 5, filters=nothing)[0] == []
    kb = KnowledgeBase.open(kb_settings.index, settings=kb_settings)
    try:
        with pytest.raises(
            NothingMatches, match=r"No document matches the filters \(tagged travel\)"
        ):
            kb.search("ledger", k=3, mode="bm25", filters=nothing)
        # Documents that match but hold no query term: no passage, and no error.
        assert kb.search("zebra", k=3, mode="bm25", filters=Filters.parse(types=["pdf"])) == []
        hits = kb.search("ledger", k=4, mode="bm25", filters=Filters.parse(tags=["finance"]))
        assert len(hits) == 4 and {Path(h.source).parent.name for h in hits} == {"finance"}
    finally:
        kb.close()


def test_tags_are_stored_replaced_and_kept(store, tmp_path, kb_settings, embedder):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.md").write_text("# A\n\nAlpha talks about glaciers.\n")
    (folder / "b.md").write_text("# B\n\nBeta is on tides.\n")

    def tags():
        return {Path(p).name: d.tags for p, d in store.published_documents().items()}

    ingest_paths(
        [str(folder)], kb_settings, IngestOptions(tags=["Finance", "q1"]), embedder=embedder
    )
    assert tags() == {"a.md": ("finance", "q1"), "b.md": ("finance", "q1")}
    report = ingest_paths(
        [str(folder / "b.md")], kb_settings, IngestOptions(tags=["hr"]), embedder=embedder
    )
    assert (report.updated, report.unchanged, report.chunks_embedded) == (1, 0, 0)
    assert tags() == {"a.md": ("finance", "q1"), "b.md": ("hr",)}
    (folder / "a.md").write_text("# A\n\nAlpha now talks about volcanoes.\n")
    report = ingest_paths([str(folder)], kb_settings, embedder=embedder)  # no --tag: kept
    assert (report.updated, report.unchanged) == (1, 1)
    assert tags() == {"a.md": ("finance", "q1"), "b.md": ("hr",)}
    kb = KnowledgeBase.open(kb_settings.index, embedder=embedder, settings=kb_settings)
    try:
        hits = kb.search("volcanoes and tides", k=5, filters=Filters.parse(tags=["hr"]))
        assert [Path(h.source).name for h in hits] == ["b.md"]
    finally:
        kb.close()
    with pytest.raises(BadFilter, match="Bad tag"):
        ingest_paths(
            [str(folder)], kb_settings, IngestOptions(tags=["no spaces"]), embedder=embedder
        )
