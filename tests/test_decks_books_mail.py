"""Slide decks (.pptx), e-books (.epub) and e-mail (.eml, .msg): each a real
file made by the library that writes them (tests/office_files.py), read by
the loaders, split into passages cited by slide, chapter or attachment, and
through ingest, both stores' search, the filters, --sync and deletion.

The .msg files are written by msgforge (an MS-OXMSG writer) and read by
extract-msg, which cannot write one.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pypdf
import pytest
from builders import make_docx, make_pdf
from click.testing import CliRunner
from office_files import make_eml, make_epub, make_msg, make_pptx, make_smime_eml

from cli.ingest_main import main as ingest_main
from cli.rag_main import main as rag_main
from ingest import workers
from ingest.chunking import Chunker
from ingest.discovery import FileTask
from ingest.loaders import kind_of, load, sha256_file
from ingest.pipeline import ingest_paths
from rag.errors import BadDocument
from rag.filters import Filters
from rag.knowledge_base import KnowledgeBase
from rag.settings import Settings
from ui.render import location

OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"

DECK = [
    {"title": "Welcome", "texts": ["The kickoff of the pelican survey."], "notes": "Smile."},
    {
        "title": "Budget",
        "texts": ["Costs per region for the survey boats."],
        "table": [["Region", "Boats"], ["North", "4"], ["South", "7"]],
        "notes": "The southern boats need new hulls.",
    },
    {"title": "Next steps", "texts": ["Count the pelicans again in May."]},
]


def loaded(path: Path):
    return load(str(path), kind_of(path), sha256_file(path))


@pytest.fixture(scope="module")
def chunker(embedder) -> Chunker:
    return Chunker(embedder.count_tokens, chunk_tokens=120, overlap=16, max_tokens=256)


def report_pdf(path: Path) -> Path:
    return make_pdf(path, ["Report cover page.", "Page two: the otters of the estuary number 412."])


# -- slide decks ---------------------------------------------------------------------


def test_a_deck_keeps_each_slides_title_text_table_and_notes(tmp_path, chunker):
    document = loaded(make_pptx(tmp_path / "deck.pptx", DECK))
    assert document.kind == "pptx"
    assert [s.label for s in document.sections] == ["slide 1", "slide 2", "slide 3"]
    second = document.sections[1]
    text = document.text[second.start : second.end]
    assert text.startswith("Budget\n\nCosts per region for the survey boats.")
    assert "| Region | Boats |\n| North | 4 |\n| South | 7 |" in text
    assert "Notes: The southern boats need new hulls." in text
    chunks = chunker.split(document)
    by_text = {c.locator: c.text for c in chunks}
    assert "pelican survey" in by_text["slide 1"]
    assert by_text["slide 2, table 1, rows 1-2"].startswith("| Region | Boats |")
    assert "May" in by_text["slide 3"]
    assert all(c.page is None for c in chunks)


# -- e-books -------------------------------------------------------------------------


def test_a_book_is_read_chapter_by_chapter_through_the_html_loader(tmp_path, chunker):
    path = make_epub(
        tmp_path / "book.epub",
        "Sea Birds",
        [
            ("Gulls", "<h1>Gulls</h1><p>Gulls nest on cliffs.</p><script>alert('x')</script>"),
            ("Terns", "<p>Terns fly from pole to pole.</p><table><tr><th>Tern</th><th>km</th>"
                      "</tr><tr><td>Arctic</td><td>70900</td></tr></table>"),
        ],
    )  # fmt: skip
    document = loaded(path)
    assert (document.kind, document.title) == ("epub", "Sea Birds")
    assert [s.label for s in document.sections] == ['chapter 1 "Gulls"', 'chapter 2 "Terns"']
    assert "alert" not in document.text, "scripts dropped, as by the HTML loader"
    assert "Table of contents" not in document.text, "the navigation document is no chapter"
    locators = {c.locator for c in chunker.split(document)}
    assert locators == {
        'chapter 1 "Gulls"',
        'chapter 2 "Terns"',
        'chapter 2 "Terns", table 1, row 1',
    }


# -- e-mail --------------------------------------------------------------------------


def test_a_message_has_its_headers_body_and_attachments_cited_by_name(tmp_path, chunker):
    pdf = report_pdf(tmp_path / "r.pdf").read_bytes()
    docx = make_docx(tmp_path / "d.docx", "Minutes", ["The board approved the kayak."]).read_bytes()
    path = make_eml(
        tmp_path / "message.eml",
        "Estuary census",
        text="Hello Charles,\nthe census results are attached.",
        html="<p>Hello Charles,</p><p>the census results are attached.</p>",
        attachments=[("report.pdf", pdf), ("minutes.docx", docx), ("logo.png", b"\x89PNG\r\n")],
    )
    document = loaded(path)
    assert (document.kind, document.title) == ("email", "Estuary census")
    head = document.text[: document.sections[0].end]
    assert head.startswith("Subject: Estuary census\nFrom: Ada Lovelace <ada@example.org>\n")
    assert "To: Charles Babbage <charles@example.org>\nDate: 2025-03-14 09:26 +0000" in head
    assert "the census results are attached." in head and "<p>" not in head
    assert [s.label for s in document.sections] == [
        "", "attachment report.pdf, page 1", "attachment report.pdf, page 2",
        "attachment minutes.docx",
    ]  # fmt: skip
    assert document.notes == (), "an image is no supported type: left out, not a failure"
    cited = {c.locator: c.text for c in chunker.split(document)}
    assert "412" in cited["attachment report.pdf, page 2"]
    assert "kayak" in cited["attachment minutes.docx"]


def test_an_html_only_message_is_made_safe_by_the_html_loader(tmp_path):
    path = make_eml(
        tmp_path / "m.eml",
        "Newsletter",
        html="<style>p{color:red}</style><p>Spring <b>migration</b> report.</p>"
        "<script>steal()</script><iframe>frame</iframe>",
    )
    document = loaded(path)
    assert "Spring migration report." in document.text
    for hidden in ("steal", "color:red", "frame"):
        assert hidden not in document.text


def test_a_damaged_attachment_is_reported_by_name_and_the_message_kept(tmp_path):
    path = make_eml(
        tmp_path / "m.eml",
        "Two files",
        text="See the attachments.",
        attachments=[("broken.pdf", b"%PDF-1.4 truncated"), ("empty.txt", b""),
                     ("notes.txt", b"Herons wade at dawn.")],
    )  # fmt: skip
    document = loaded(path)
    assert "Herons wade at dawn." in document.text
    assert [s.label for s in document.sections] == ["", "attachment notes.txt"]
    assert len(document.notes) == 2
    assert document.notes[0].startswith("attachment broken.pdf skipped: not a valid PDF")
    assert document.notes[1] == "attachment empty.txt skipped: empty file (0 bytes)"


def test_an_outlook_msg_reads_like_an_eml(tmp_path, chunker):
    pdf = report_pdf(tmp_path / "r.pdf").read_bytes()
    path = make_msg(
        tmp_path / "message.msg",
        "Estuary census",
        text="Hello Charles,\nthe census results are attached.",
        attachments=[("report.pdf", pdf)],
    )
    document = loaded(path)
    assert (document.kind, document.title) == ("email", "Estuary census")
    head = document.text[: document.sections[0].end]
    assert head.startswith("Subject: Estuary census\nFrom: Ada Lovelace <ada@example.org>\n")
    assert "To: Charles Babbage <charles@example.org>" in head
    assert "the census results are attached." in head
    cited = {c.locator: c.text for c in chunker.split(document)}
    assert "412" in cited["attachment report.pdf, page 2"]


def test_an_html_only_msg_goes_through_the_html_loader(tmp_path):
    path = make_msg(
        tmp_path / "m.msg",
        "Newsletter",
        html="<p>Spring <b>migration</b></p><script>steal()</script>",
    )
    document = loaded(path)
    assert "Spring migration" in document.text and "x()" not in document.text


# -- bad files -----------------------------------------------------------------------


def _bytes(data: bytes):
    def make(path: Path) -> Path:
        path.write_bytes(data)
        return path

    return make


def _drm_epub(path: Path) -> Path:
    make_epub(path, "Locked", [("One", "<p>Secret words.</p>")])
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(
            "META-INF/encryption.xml",
            '<encryption xmlns="urn:oasis:names:tc:opendocument:xmlns:container" '
            'xmlns:enc="http://www.w3.org/2001/04/xmlenc#"><enc:EncryptedData>'
            '<enc:CipherData><enc:CipherReference URI="EPUB/chap_1.xhtml"/></enc:CipherData>'
            "</enc:EncryptedData></encryption>",
        )
    return path


@pytest.mark.parametrize(
    ("name", "make", "reason"),
    [
        ("cut.pptx", _bytes(b"PK\x03\x04 cut short"), "not a valid PPTX file"),
        ("locked.pptx", _bytes(OLE + b"\x00" * 600), "encrypted"),
        ("blank.pptx", lambda p: make_pptx(p, [{}, {}]), "no text"),
        ("cut.epub", _bytes(b"PK\x03\x04 cut short"), "not a valid EPUB file"),
        ("drm.epub", _drm_epub, r"encrypted \(DRM-protected\) EPUB"),
        ("empty.epub", lambda p: make_epub(p, "Nothing", [("One", "<p> </p>")]), "no text"),
        ("empty.eml", _bytes(b""), "empty file"),
        ("locked.eml", lambda p: make_smime_eml(p, "Pass", "heron"), "encrypted message"),
        ("binary.eml", _bytes(b"\x00\x01\x02" * 300), "not an e-mail"),
        ("cut.msg", _bytes(OLE + b"\x00" * 600), "not a valid Outlook"),
        ("blank.msg", lambda p: make_msg(p, "", text=""), "no subject, body or attachment"),
        ("blank.eml", lambda p: make_eml(p, "", text=" "), "no subject, body or attachment"),
    ],
)
def test_bad_files_fail_with_a_reason(tmp_path, name, make, reason):
    path = make(tmp_path / name)
    with pytest.raises(BadDocument, match=reason):
        loaded(path)


def test_the_new_loaders_run_in_the_capped_parser_process(tmp_path):
    """A deck that inflates past the worker's memory cap fails that file only."""
    bomb = tmp_path / "bomb.pptx"
    make_pptx(tmp_path / "src.pptx", DECK)
    with (
        zipfile.ZipFile(tmp_path / "src.pptx") as zin,
        zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zout,
    ):
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "ppt/slides/slide1.xml":
                at = data.index(b"<p:cSld>")
                with zout.open(item.filename, "w", force_zip64=True) as fh:
                    fh.write(data[:at])
                    for _ in range(700):
                        fh.write(b" " * (1 << 20))
                    fh.write(data[at:])
            else:
                zout.writestr(item, data)
    good = make_pptx(tmp_path / "good.pptx", DECK)
    tasks = [
        (FileTask(str(p), "pptx", p.stat().st_size, 0.0), sha256_file(p)) for p in (bomb, good)
    ]
    results = [r for _, r in workers.parse_files(tasks, memory_mb=512, timeout=60)]
    assert results[0] == "parsing needed more than 512 MB of memory"
    assert results[1].document.sections[2].label == "slide 3"  # type: ignore[union-attr]


# -- through ingest, a search, the filters, --sync and deletion ----------------------------


@pytest.mark.parametrize("store", ["local", "milvus-lite"])
def test_citations_name_the_slide_chapter_and_attachment_page(tmp_path, embedder, store):
    folder = tmp_path / "docs"
    folder.mkdir()
    make_pptx(folder / "deck.pptx", DECK)
    make_epub(folder / "book.epub", "Sea Birds", [("Terns", "<p>Arctic terns fly 70,900 km.</p>")])
    pdf = report_pdf(tmp_path / "r.pdf").read_bytes()
    make_eml(folder / "message.eml", "Census", text="Results attached.",
             attachments=[("report.pdf", pdf)])  # fmt: skip
    make_msg(folder / "memo.msg", "Heron memo", text="Herons wade at dawn in the reeds.")
    uri = "local" if store == "local" else f"milvus-lite://{tmp_path}/kb.db"
    settings = Settings(index=tmp_path / "index", store=uri, chunk_tokens=120)
    report = ingest_paths([str(folder)], settings, embedder=embedder)
    assert not report.failed and report.added == 4
    kb = KnowledgeBase.open(settings.index, embedder, settings)
    try:
        assert {d.kind for d in kb.documents()} == {"pptx", "epub", "email"}
        otters = kb.search("How many otters live in the estuary?", k=3)[0]
        assert (Path(otters.source).name, otters.locator) == (
            "message.eml", "attachment report.pdf, page 2"
        )  # fmt: skip
        hulls = kb.search("Which boats need new hulls?", k=3)[0]
        assert (Path(hulls.source).name, hulls.locator, hulls.page) == (
            "deck.pptx",
            "slide 2",
            None,
        )
        terns = kb.search("How far do arctic terns fly?", k=3)[0]
        assert (Path(terns.source).name, terns.locator) == ("book.epub", 'chapter 1 "Terns"')
        mail = kb.search("herons", k=10, filters=Filters.parse(types=["msg"]))
        assert {Path(h.source).name for h in mail} == {"memo.msg", "message.eml"}
        decks = kb.search("herons", k=10, filters=Filters.parse(types=[".pptx"]))
        assert {Path(h.source).name for h in decks} == {"deck.pptx"}
    finally:
        kb.close()

    # The message changes: its attachment is gone, and so are its passages.
    make_eml(folder / "message.eml", "Census", text="Results to follow next week.")
    report = ingest_paths([str(folder)], settings, embedder=embedder)
    assert report.updated == 1
    kb = KnowledgeBase.open(settings.index, embedder, settings)
    try:
        passages = [h for h in kb.search("otters estuary", k=50) if h.source.endswith(".eml")]
        assert passages and all(h.locator == "" for h in passages)
    finally:
        kb.close()

    # The message is deleted: --sync removes every passage of it.
    (folder / "message.eml").unlink()
    report = ingest_paths([str(folder)], settings, embedder=embedder, sync=True)
    assert report.deleted == 1
    kb = KnowledgeBase.open(settings.index, embedder, settings)
    try:
        assert not [h for h in kb.search("otters results", k=50) if h.source.endswith(".eml")]
    finally:
        kb.close()


def test_the_command_lines_report_a_bad_attachment_and_show_slide_citations(tmp_path):
    writer = pypdf.PdfWriter(clone_from=str(report_pdf(tmp_path / "r.pdf")))
    writer.encrypt(user_password="pw", owner_password="owner")
    locked = io.BytesIO()
    writer.write(locked)
    folder = tmp_path / "docs"
    folder.mkdir()
    make_pptx(folder / "deck.pptx", DECK)
    make_eml(folder / "message.eml", "Census", text="Results attached.",
             attachments=[("locked.pdf", locked.getvalue()),
                          ("notes.txt", b"Herons wade at dawn.")])  # fmt: skip
    (folder / "cut.msg").write_bytes(OLE + b"\x00" * 600)
    index = tmp_path / "index"
    runner = CliRunner()
    result = runner.invoke(ingest_main, [str(folder), "--index", str(index)])
    assert result.exit_code == 1, result.output
    assert f"{folder / 'message.eml'}: attachment locked.pdf skipped: encrypted PDF" in (
        result.output
    )
    assert f"{folder / 'cut.msg'}: not a valid Outlook .msg file" in result.output
    found = runner.invoke(rag_main, ["search", "new hulls", "--index", str(index), "-k", "1"])
    assert "deck.pptx, slide 2" in found.stdout, found.output
    as_json = runner.invoke(
        rag_main, ["search", "herons", "--index", str(index), "--json", "--type", "eml"]
    )
    hits = json.loads(as_json.stdout)
    assert hits[0]["locator"] == "attachment notes.txt" and hits[0]["page"] is None
    kb = KnowledgeBase.open(index)
    try:
        (hit,) = kb.search("new hulls", k=1)
        assert location(hit) == "deck.pptx, slide 2", "as the app shows a source"
    finally:
        kb.close()
