"""Chunking: token-sized, exact offsets, pages, nothing over the window."""

from __future__ import annotations

import itertools

import pytest

from ingest.chunking import Chunker
from ingest.loaders import _joined
from rag.types import Document, PageSpan


def join_pages(pages: list[str]) -> tuple[str, tuple[PageSpan, ...]]:
    """Pages without tables, joined as the PDF loader joins them."""
    text, _, spans, _ = _joined([(page, []) for page in pages], "")
    return text, spans


def doc(text: str, pages: list[str] | None = None) -> Document:
    if pages is not None:
        text, spans = join_pages(pages)
        return Document(path="/x.pdf", text=text, content_hash="h", kind="pdf", pages=spans)
    return Document(path="/x.txt", text=text, content_hash="h", kind="text")


@pytest.fixture(scope="module")
def chunker(embedder) -> Chunker:
    return Chunker(
        embedder.count_tokens, chunk_tokens=40, overlap=8, max_tokens=embedder.max_tokens
    )


def test_offsets_point_at_the_chunk_text(chunker):
    text = " ".join(f"Sentence number {i} talks about topic {i % 7}." for i in range(60))
    chunks = chunker.split(doc(text))
    assert len(chunks) > 3
    for chunk in chunks:
        assert text[chunk.start : chunk.end] == chunk.text
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))


def test_chunks_cover_the_text_and_overlap(chunker):
    text = " ".join(f"word{i}" for i in range(400))
    chunks = chunker.split(doc(text))
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    for before, after in itertools.pairwise(chunks):
        assert after.start > before.start
        assert after.start <= before.end  # no gap: overlap or adjacency
    covered = set()
    for c in chunks:
        covered.update(range(c.start, c.end))
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())


def test_no_chunk_exceeds_the_size_even_without_spaces(chunker, embedder):
    # One 5,000-character "word": the splitter must fall back to characters.
    text = "x" * 5000 + " tail"
    for chunk in chunker.split(doc(text)):
        assert embedder.count_tokens(chunk.text) <= 40


def test_pdf_chunks_never_span_pages(chunker):
    pages = [" ".join(f"fact{n}x{i}" for i in range(30)) for n in (1, 2, 3)] + ["tail"]
    chunks = chunker.split(doc("", pages))
    assert {c.page for c in chunks} == {1, 2, 3, 4}
    for chunk in chunks:
        numbers = {int(w[4]) for w in chunk.text.split() if w.startswith("fact")}
        assert numbers <= {chunk.page}


def test_page_at_known_answers():
    text, spans = join_pages(["abc", "", "defg"])
    assert text == "abc\n\n\n\ndefg"
    assert [(s.number, s.start, s.end) for s in spans] == [(1, 0, 3), (2, 5, 5), (3, 7, 11)]
    d = Document(path="p", text=text, content_hash="h", kind="pdf", pages=spans)
    assert [d.page_at(i) for i in (0, 2, 7, 10)] == [1, 1, 3, 3]


def test_rejects_sizes_the_model_would_truncate(embedder):
    with pytest.raises(ValueError, match="window"):
        Chunker(
            embedder.count_tokens, chunk_tokens=10_000, overlap=0, max_tokens=embedder.max_tokens
        )
