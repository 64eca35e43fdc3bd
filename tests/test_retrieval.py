"""Retrieval over a real index: the right passage, file and page."""

from __future__ import annotations

import pytest

from rag.knowledge_base import KnowledgeBase


@pytest.fixture(scope="module")
def kb(built_index, embedder):
    return KnowledgeBase.open(built_index, embedder)


CASES = [
    ("Which planet is the largest?", "astronomy.pdf", 2, "Jupiter"),
    ("what are Saturn's rings made of", "astronomy.pdf", 3, "water ice"),
    ("Roman town destroyed by an eruption", "volcanoes.md", None, "Pompeii"),
    ("longest animal migration", "birds.html", None, "Arctic tern"),
]


@pytest.mark.parametrize(("query", "source", "page", "phrase"), CASES)
@pytest.mark.parametrize("mode", ["hybrid", "dense", "bm25"])
def test_finds_the_passage_with_file_and_page(kb, query, source, page, phrase, mode):
    top = kb.search(query, k=3, mode=mode)[0]
    assert top.source.endswith(source)
    assert top.page == page
    assert phrase in top.text


@pytest.mark.parametrize("mode", ["hybrid", "dense"])
def test_meaning_without_shared_words(kb, mode):
    # "breathe" never occurs in the corpus; only the dense side can bridge it.
    top = kb.search("how do fish breathe", k=3, mode=mode)[0]
    assert top.source.endswith("fish.docx") and "gills" in top.text


def test_hits_carry_their_ranks_and_sorted_scores(kb):
    hits = kb.search("tea leaves oxidised", k=5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert hits[0].bm25_rank == 1 or hits[0].dense_rank == 1
    assert len({h.chunk_id for h in hits}) == len(hits)


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ('"Jupiter', "Jupiter"),
        ("Jupiter AND OR NOT storm", "Jupiter and or not storm"),
        ("C++ -Pompeii *", "C Pompeii"),
        ("NEAR(tern migration)", "near tern migration"),
        ("col:tea", "col tea"),
        ("(((volcanoes", "volcanoes"),
        ("'; DROP TABLE chunks;--", "drop table chunks"),
    ],
)
def test_query_punctuation_is_plain_text(kb, query, words):
    # Operators and quotes mean nothing to the lexical search: the query
    # finds what its words alone find, and nothing in it reaches the
    # database as syntax. (The dense side sees punctuation as characters.)
    before = kb.stats()
    assert [h.chunk_id for h in kb.search(query, k=3, mode="bm25")] == [
        h.chunk_id for h in kb.search(words, k=3, mode="bm25")
    ]
    assert kb.stats() == before


def test_empty_query_returns_nothing(kb):
    assert kb.search("   ", k=3) == []


def test_unknown_mode_is_refused(kb):
    with pytest.raises(ValueError, match="mode"):
        kb.search("x", mode="magic")


def test_the_float16_search_copy_agrees_with_the_exact_vectors(built_index, embedder):
    # Searches use a float16 copy of the stored float32 vectors (half the
    # memory traffic); it must rank and score like the exact ones.
    from rag.settings import Settings

    exact = KnowledgeBase.open(built_index, embedder, Settings(dense_precision="float32"))
    half = KnowledgeBase.open(built_index, embedder, Settings(dense_precision="float16"))
    assert half.stats().vectors == exact.stats().vectors > 0
    for query, *_ in CASES:
        for mode in ("dense", "hybrid"):
            a, b = exact.search(query, k=5, mode=mode), half.search(query, k=5, mode=mode)
            assert [h.chunk_id for h in a] == [h.chunk_id for h in b]
            assert [h.score for h in b] == pytest.approx([h.score for h in a], abs=2e-3)
