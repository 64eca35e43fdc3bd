"""Loaders, one per format, on real files; bad files fail with a reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from builders import kerned_words_pdf, make_docx, make_pdf, make_raw_pdf

from ingest.loaders import kind_of, load, looks_glued, sha256_file
from rag.errors import BadDocument


def loaded(path: Path):
    return load(str(path), kind_of(path), sha256_file(path))


def test_pdf_keeps_physical_pages(tmp_path):
    path = make_pdf(tmp_path / "a.pdf", ["first page text", "", "third page mentions zebras"])
    document = loaded(path)
    assert [p.number for p in document.pages] == [1, 2, 3]
    third = document.pages[2]
    assert "zebras" in document.text[third.start : third.end]
    assert document.page_at(document.text.index("zebras")) == 3


def test_pdf_word_boundaries_survive_tight_kerning(tmp_path):
    # At a 0.12 em gap pdfium glues the words together; the loader notices and
    # re-reads the page with pdfminer, which keeps them apart.
    sentence = "The quick brown fox jumps over the lazy dog while seven wizards quietly box"
    words = sentence.split() * 8
    document = loaded(kerned_words_pdf(tmp_path / "k.pdf", words, gap=120))
    assert "quick brown fox" in document.text
    assert not looks_glued(document.text)


def test_markdown_title_and_text(tmp_path):
    path = tmp_path / "n.md"
    path.write_text("Intro line\n\n# The Title\n\nBody text.", encoding="utf-8")
    document = loaded(path)
    assert document.title == "The Title"
    assert "Body text." in document.text


def test_html_keeps_visible_text_only(tmp_path):
    path = tmp_path / "p.html"
    path.write_text(
        "<html><head><title>T</title><style>.x{}</style></head><body><p>Visible</p>"
        "<script>alert('SECRET')</script><noscript>NOSCRIPT</noscript><p>More</p></body></html>",
        encoding="utf-8",
    )
    document = loaded(path)
    assert document.title == "T"
    assert "Visible" in document.text and "More" in document.text
    assert (
        "SECRET" not in document.text
        and ".x{}" not in document.text
        and "NOSCRIPT" not in document.text
    )


def test_html_nested_past_the_parsers_depth_is_refused_by_name(tmp_path):
    # lxml silently drops text nested deeper than it parses: refusing says so.
    path = tmp_path / "deep.html"
    path.write_text("<div>" * 50_000 + "deep text" + "</div>" * 50_000, encoding="utf-8")
    with pytest.raises(BadDocument, match="nested too deeply"):
        loaded(path)


def test_html_nested_within_the_parsers_depth_keeps_its_text(tmp_path):
    path = tmp_path / "nested.html"
    path.write_text("<div>" * 1_000 + "deep text" + "</div>" * 1_000, encoding="utf-8")
    assert "deep text" in loaded(path).text


def test_docx_paragraphs_and_tables(tmp_path):
    path = make_docx(
        tmp_path / "d.docx", "Doc Title", ["Alpha paragraph."], [["k", "v"], ["gills", "breathing"]]
    )
    document = loaded(path)
    assert document.title == "Doc Title"
    assert "Alpha paragraph." in document.text
    assert "gills | breathing" in document.text


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.txt", b"", "empty"),
        ("junk.txt", b"\x00\x01\x02binary\x00" * 50, "binary"),
        ("latin1.txt", "caf\xe9 cr\xe8me".encode("latin-1"), "UTF-8"),
        ("spaces.md", b"   \n\n  ", "no text"),
        ("truncated.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog", "not a valid PDF"),
        ("fake.docx", b"this is not a zip file", "not a valid DOCX"),
        ("encrypted.docx", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 600, "encrypted"),
    ],
)
def test_bad_files_fail_with_a_reason(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(BadDocument, match=reason):
        loaded(path)


def test_encrypted_pdf(tmp_path):
    import pypdf

    plain = make_pdf(tmp_path / "plain.pdf", ["secret content"])
    writer = pypdf.PdfWriter(clone_from=str(plain))
    writer.encrypt(user_password="pw", owner_password="owner")
    target = tmp_path / "locked.pdf"
    with open(target, "wb") as fh:
        writer.write(fh)
    with pytest.raises(BadDocument, match="encrypted PDF"):
        loaded(target)


def test_pdf_without_text_layer_asks_for_ocr(tmp_path):
    path = make_raw_pdf(tmp_path / "scan.pdf", b"0 0 1 rg 10 10 100 100 re f")
    with pytest.raises(BadDocument, match="OCR"):
        loaded(path)
