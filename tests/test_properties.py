"""Property-based tests (hypothesis): no input crashes the chunker or the
loaders, and offsets and pages always round-trip.

The chunker runs on the real embedding tokenizer; example counts are modest
because every example tokenizes its text many times.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from ingest.chunking import Chunker
from ingest.loaders import _LOADERS, _join_pages, _pdf, clean, decode_text, load
from ingest.tables import load_xlsx
from rag.errors import BadDocument
from rag.types import Document
from team.library import safe_filename

# Text that stresses splitters and tokenizers: separators, odd whitespace,
# accents (combining marks), CJK, emoji, control characters.
ALPHABET = st.sampled_from(
    [
        *"abc xyz ABC 0123 .,;!?-'\"",
        *["\n", "\n\n", "\t", "\r\n", "\u00a0", "\u3000", "\u200b", "\ufeff", "\x00", "\x1f"],
        *["é", "e\u0301", "ß", "Ω", "ж", "語", "日本", "😀", "👩\u200d🔬"],
    ]
)
TEXT = st.lists(ALPHABET, max_size=400).map("".join)
WORDY = st.lists(
    st.sampled_from(["alpha", "beta", "gamma", "supercalifragilistic", "—", "1234567890"])
    | ALPHABET,
    max_size=600,
).map(" ".join)
EXAMPLES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def chunker(embedder) -> Chunker:
    # Small chunks, so short generated texts already make several of them.
    return Chunker(embedder.count_tokens, 24, 6, embedder.max_tokens)


def check_chunks(document: Document, chunker: Chunker) -> None:
    chunks = chunker.split(document)
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert document.text[chunk.start : chunk.end] == chunk.text
        assert chunk.text.strip(), "no empty or whitespace-only chunks"
        assert chunker.count_tokens(chunk.text) <= chunker.max_tokens
        if document.pages:
            [span] = [p for p in document.pages if p.number == chunk.page]
            assert span.start <= chunk.start and chunk.end <= span.end, "one page per chunk"
            assert chunk.page == document.page_at(chunk.start)
        else:
            assert chunk.page is None
    # Nothing is lost: every visible character lies inside some chunk.
    covered = [False] * len(document.text)
    for chunk in chunks:
        covered[chunk.start : chunk.end] = [True] * (chunk.end - chunk.start)
    lost = [c for c, hit in zip(document.text, covered, strict=True) if not hit and not c.isspace()]
    assert not lost, lost[:20]


@EXAMPLES
@given(text=st.one_of(TEXT, WORDY))
@example(text="")
@example(text="word " * 300)
@example(text="x" * 3000)  # one "word" far over the model's window
@example(text="| a | b |\n" * 500)  # identical table rows
def test_chunker_offsets_round_trip_on_any_text(chunker, text):
    check_chunks(Document(path="/t.txt", text=text, content_hash="h", kind="text"), chunker)


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(TEXT, WORDY))
@example(text="x" * 3000)
def test_token_counts_equal_the_models_own_tokenizer(embedder, text):
    # The embedder counts with the Rust tokenizer directly (for speed);
    # the count must be the one the model's tokenizer gives.
    wrapped = embedder.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert embedder.count_tokens(text) == len(wrapped)


@EXAMPLES
@given(pages=st.lists(st.one_of(TEXT, WORDY), min_size=1, max_size=5))
@example(pages=["", "only page two has text", ""])
def test_paged_chunks_stay_on_their_page(chunker, pages):
    text, spans = _join_pages([p.strip() for p in pages])
    document = Document(path="/t.pdf", text=text, content_hash="h", kind="pdf", pages=spans)
    # The page bookkeeping itself round-trips.
    assert [text[s.start : s.end] for s in spans] == [p.strip() for p in pages]
    assert [s.number for s in spans] == list(range(1, len(pages) + 1))
    check_chunks(document, chunker)


# -- loaders ---------------------------------------------------------------------------

BYTES = st.one_of(
    st.binary(max_size=3000),
    TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")),
    TEXT.map(lambda t: t.encode("utf-16")),
    st.tuples(st.sampled_from([b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b""]), st.binary()).map(
        b"".join
    ),
    TEXT.map(lambda t: f"<html><body><p>{t}</p><div><b>{t}</div></p></body>".encode()),
    st.lists(st.sampled_from(["<div>", "</div>", "<p>", "<script>", "</script>", "<!--", "x"]))
    .map("".join)
    .map(str.encode),
)


@settings(max_examples=300, deadline=None)
@given(data=BYTES)
@example(data=b"\xff\xfe\x00\xd8")  # UTF-16 BOM, then a lone surrogate
@example(data=b"<" * 1000)
def test_text_markdown_html_and_csv_loaders_raise_only_bad_document(data):
    for kind in ("text", "markdown", "html", "csv"):
        try:
            text, title, pages, _tables = _LOADERS[kind](data)
        except BadDocument as exc:
            assert str(exc)
            continue
        assert isinstance(text, str) and isinstance(title, str) and pages == ()
        assert clean(text) == text, "no control characters survive"


@settings(max_examples=60, deadline=None)
@given(
    data=st.one_of(st.binary(max_size=2000), st.binary(max_size=2000).map(b"%PDF-1.4\n".__add__))
)
def test_pdf_and_docx_loaders_raise_only_bad_document(data):
    for parse in (_pdf, _LOADERS["docx"], load_xlsx):
        try:
            parse(data)
        except BadDocument as exc:
            assert str(exc)


@settings(max_examples=200, deadline=None)
@given(text=TEXT)
def test_valid_utf8_text_is_decoded_not_refused_unless_binary(text):
    try:
        decoded = decode_text(text.encode("utf-8"))
    except BadDocument as exc:
        # Only text that is mostly control characters may be refused.
        assert "binary" in str(exc)
        return
    assert decoded == clean(text.removeprefix("\ufeff"))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(min_size=1, max_size=500), kind=st.sampled_from(["text", "markdown", "html"]))
def test_load_gives_a_document_or_bad_document(tmp_path_factory, data, kind):
    path = tmp_path_factory.mktemp("load") / f"f.{kind}"
    path.write_bytes(data)
    try:
        document = load(str(path), kind, "hash")
    except BadDocument:
        return
    assert document.text.strip() and document.kind == kind and document.path == str(path)


# -- upload names --------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(name=st.text(max_size=300))
@example(name="../../etc/passwd")
@example(name="..")
@example(name="\\..\\..\\boot.ini")
def test_any_upload_name_stays_inside_its_folder(tmp_path_factory, name):
    folder = Path("/srv/kb/uploads")
    safe = safe_filename(name)
    assume(safe)
    assert "/" not in safe and "\\" not in safe and "\x00" not in safe
    assert not safe.startswith(".") and safe not in {".", ".."}
    assert len(safe.encode("utf-8")) < 255
    assert (folder / safe).resolve().parent == folder
