"""Slide decks (.pptx) and e-books (.epub): documents whose passages are cited
by a section, "slide 7" or 'chapter 3 "Terns"', rather than by a page.

A deck's slide is its title, its text frames (groups included), its tables
as our other tables (one row a line, header first: `ingest.tables`) and its
speaker notes. A book's chapters are the documents of its spine, in reading
order, each read by the HTML loader. `Sections` joins the parts and records
where each lies; the e-mail loader (`ingest.mail`) builds on it too.
"""

from __future__ import annotations

import io
import posixpath
import zipfile
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import unquote

from ingest import loaders, tables
from ingest.tables import Blocks, check_length, clean
from rag.errors import BadDocument
from rag.types import Document, Section, TableSpan

SEPARATOR = "\n\n"


class Sections:
    """A document's text built from labelled parts (their own text and
    tables), each part one `Section`."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0
        self.sections: list[Section] = []
        self.tables: list[TableSpan] = []

    def add(self, label: str, text: str, found: Iterable[TableSpan] = ()) -> None:
        if not text.strip():
            return
        if self.parts:
            self.parts.append(SEPARATOR)
            self.length += len(SEPARATOR)
        start = self.length
        self.parts.append(text)
        self.length += len(text)
        self.sections.append(Section(label, start, self.length))
        self.tables += tables.shifted(found, start)

    def document(self, kind: str, title: str, notes: Iterable[str] = ()) -> Document:
        return Document(
            path="",
            text="".join(self.parts),
            content_hash="",
            kind=kind,
            title=title,
            tables=tuple(self.tables),
            sections=tuple(self.sections),
            notes=tuple(notes),
        )


# -- slide decks -------------------------------------------------------------------


def load_pptx(data: bytes, max_chars: int | None = None) -> Document:
    import pptx

    if data.startswith(loaders.OLE_MAGIC):
        raise BadDocument(
            "encrypted (password-protected) or legacy .ppt file; save it as plain .pptx"
        )
    try:
        deck = pptx.Presentation(io.BytesIO(data))
    except MemoryError:  # a zip bomb: the worker reports it (see ingest.workers)
        raise
    except Exception as exc:  # python-pptx raises its own, zipfile's and lxml's errors
        raise BadDocument(f"not a valid PPTX file ({exc.__class__.__name__}: {exc})") from None
    out = Sections()
    counter = [0]  # tables numbered through the deck, as in a PDF
    title = (deck.core_properties.title or "").strip()
    try:
        for number, slide in enumerate(deck.slides, start=1):
            heading = slide.shapes.title
            if not title and heading is not None and heading.has_text_frame:
                title = " ".join(heading.text_frame.text.split())
            blocks = _slide(slide, counter)
            out.add(f"slide {number}", *blocks.build())
            check_length(out.length, max_chars)
    except (BadDocument, MemoryError):
        raise
    except Exception as exc:  # a damaged slide part surfaces only while reading it
        raise BadDocument(f"not a valid PPTX file ({exc.__class__.__name__}: {exc})") from None
    if not out.parts:
        raise BadDocument(f"no text on any of the deck's {len(deck.slides)} slide(s)")
    return out.document("pptx", title)


def _slide(slide: Any, counter: list[int]) -> Blocks:
    """The slide's title first, then its shapes in their order, then its notes."""
    blocks = Blocks()
    heading = slide.shapes.title
    if heading is not None and heading.has_text_frame:
        blocks.text(clean(heading.text_frame.text))
    for shape in _shapes(slide.shapes):
        if heading is not None and shape.shape_id == heading.shape_id:
            continue
        if getattr(shape, "has_table", False):
            rows = [[cell.text for cell in row.cells] for row in shape.table.rows]
            before = len(blocks.tables)
            blocks.table(f"table {counter[0] + 1}", "", tables.numbered(rows))
            counter[0] += len(blocks.tables) - before
        elif getattr(shape, "has_text_frame", False):
            blocks.text(clean(shape.text_frame.text))
    if slide.has_notes_slide:
        frame = slide.notes_slide.notes_text_frame
        notes = clean(frame.text).strip() if frame is not None else ""
        if notes:
            blocks.text(f"Notes: {notes}")
    return blocks


def _shapes(shapes: Iterable[Any]) -> Iterator[Any]:
    """Shapes, those inside groups included, in document order."""
    for shape in shapes:
        inner = getattr(shape, "shapes", None)  # a group shape
        if inner is not None:
            yield from _shapes(inner)
        else:
            yield shape


# -- e-books ---------------------------------------------------------------------------

_CONTAINER = "{urn:oasis:names:tc:opendocument:xmlns:container}"
_OPF = "{http://www.idpf.org/2007/opf}"
_DC = "{http://purl.org/dc/elements/1.1/}"
_CHAPTER_TYPES = {"application/xhtml+xml", "text/html"}


def load_epub(data: bytes, max_chars: int | None = None) -> Document:
    """The spine's documents in reading order, each a chapter read by the HTML
    loader; the navigation document (a table of contents) left out."""
    try:
        book = zipfile.ZipFile(io.BytesIO(data))
        root = posixpath.dirname(_rootfile(book))
        opf = _xml(book, _rootfile(book))
    except BadDocument:
        raise
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise BadDocument(f"not a valid EPUB file ({exc.__class__.__name__}: {exc})") from None
    manifest = {
        item.get("id"): item for item in opf.iter(f"{_OPF}item") if item.get("href") is not None
    }
    spine = [manifest[ref.get("idref")] for ref in opf.iter(f"{_OPF}itemref")
             if ref.get("idref") in manifest]  # fmt: skip
    chapters = [
        posixpath.normpath(posixpath.join(root, unquote(item.get("href") or "")))
        for item in spine
        if item.get("media-type") in _CHAPTER_TYPES
        and "nav" not in (item.get("properties") or "").split()
    ]
    if _encrypted(book) & set(chapters):
        raise BadDocument("encrypted (DRM-protected) EPUB; only DRM-free books can be read")
    title = " ".join((opf.findtext(f".//{_DC}title") or "").split())
    out = Sections()
    for name in chapters:
        try:
            page = book.read(name)
        except KeyError:
            raise BadDocument(f"not a valid EPUB file (its chapter {name} is missing)") from None
        except (zipfile.BadZipFile, ValueError, OSError) as exc:
            raise BadDocument(f"not a valid EPUB file ({exc.__class__.__name__}: {exc})") from None
        try:
            text, heading, _, found = loaders.html(page)
        except BadDocument:  # a chapter of images, or an empty one: no text to cite
            continue
        label = f"chapter {len(out.sections) + 1}"
        if heading and heading != title:
            label += f' "{heading}"'
        out.add(label, text, found)
        check_length(out.length, max_chars)
    return out.document("epub", title)


def _rootfile(book: zipfile.ZipFile) -> str:
    rootfile = _xml(book, "META-INF/container.xml").find(f".//{_CONTAINER}rootfile")
    path = rootfile.get("full-path") if rootfile is not None else None
    if not path:
        raise BadDocument("not a valid EPUB file (no package document in its container.xml)")
    return unquote(path)


def _xml(book: zipfile.ZipFile, name: str) -> Any:
    """An XML part of the book: no entities resolved, no network, no DTD (a
    book is untrusted input)."""
    import lxml.etree

    parser = lxml.etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    try:
        return lxml.etree.fromstring(book.read(name), parser=parser)
    except lxml.etree.XMLSyntaxError as exc:
        raise BadDocument(f"not a valid EPUB file ({name}: {exc})") from None


def _encrypted(book: zipfile.ZipFile) -> set[str]:
    """The parts that META-INF/encryption.xml lists (DRM; font obfuscation
    lists only fonts, which are no chapters)."""
    if "META-INF/encryption.xml" not in book.namelist():
        return set()
    listing = _xml(book, "META-INF/encryption.xml")
    return {
        posixpath.normpath(unquote(ref.get("URI") or ""))
        for ref in listing.iter("{http://www.w3.org/2001/04/xmlenc#}CipherReference")
    }
