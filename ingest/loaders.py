"""Loaders: a file's bytes -> a `Document` (text, title, page spans, tables).

Every failure a user can cause (corrupt, encrypted, empty, binary, scanned)
becomes `BadDocument` with a reason written for them. These functions run in
a worker process (see `ingest.workers`), so a parser that crashes or hangs on
a hostile file takes only that file down.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ingest import tables
from ingest.tables import Blocks, Loaded, check_length, clean
from rag.errors import BadDocument
from rag.types import Document, PageSpan, TableSpan

if TYPE_CHECKING:
    import pypdfium2 as pdfium

KINDS = {
    ".pdf": "pdf",
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".text": "text",
    ".rst": "text",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".docx": "docx",
    ".xlsx": "xlsx",
    ".csv": "csv",
    ".tsv": "csv",
    ".pptx": "pptx",
    ".epub": "epub",
    # One kind for both: the loader tells an Outlook file (OLE) from MIME.
    ".eml": "email",
    ".msg": "email",
}
PAGE_SEPARATOR = "\n\n"
# Control characters other than tab/newline are noise from extractors (and
# NUL breaks some consumers); form feeds become newlines.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # encrypted Office files are OLE containers
__all__ = ["KINDS", "check_length", "clean", "kind_of", "load", "parse", "sha256_file"]


def kind_of(path: str | Path) -> str | None:
    return KINDS.get(Path(path).suffix.lower())


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Table-of-contents leaders (". . . . . 12") carry no meaning and would fill
# passages with dots; four or more become one ellipsis.
_LEADERS = re.compile(r"(?:\s?\.){4,}")


def load(
    path: str, kind: str, content_hash: str, ocr: bool = False, max_chars: int | None = None
) -> Document:
    """Read and parse one file. Raises `BadDocument` with a user-facing reason,
    among them a text longer than `max_chars` (the PDF and DOCX loaders stop
    as soon as they pass it, before building the whole text)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BadDocument(f"cannot read the file ({exc.strerror or exc})") from None
    document = parse(data, kind, ocr, max_chars)
    return replace(
        document, path=path, content_hash=content_hash, title=document.title or Path(path).stem
    )


def parse(
    data: bytes, kind: str, ocr: bool = False, max_chars: int | None = None, depth: int = 0
) -> Document:
    """A file's bytes as a `Document` without a path (`load` gives it one;
    a message's attachments are parsed here too, `depth` counting how deep
    in nested messages). Raises `BadDocument`."""
    if not data:
        raise BadDocument("empty file (0 bytes)")
    if kind in ("pptx", "epub", "email"):
        # Formats cited by slide, chapter or attachment build their sections.
        from ingest import mail, sections

        if kind == "email":
            document = mail.load_message(data, ocr, max_chars, depth)
        else:
            document = (sections.load_pptx if kind == "pptx" else sections.load_epub)(
                data, max_chars
            )
    else:
        text, title, pages, found_tables = _loader(kind, ocr, max_chars)(data)
        document = Document("", text, "", kind, title, pages, found_tables)
    check_length(len(document.text), max_chars)
    if not document.text.strip():
        raise BadDocument("no text found in the file")
    return document


def _loader(kind: str, ocr: bool, max_chars: int | None) -> Callable[[bytes], Loaded]:
    if kind == "pdf":
        return lambda data: _pdf(data, ocr, max_chars)
    if kind == "docx":
        return lambda data: _docx(data, max_chars)
    if kind == "xlsx":
        return lambda data: tables.load_xlsx(data, max_chars)
    return _LOADERS[kind]


# -- plain text and Markdown ---------------------------------------------------


def decode_text(data: bytes) -> str:
    """UTF-8 (with or without BOM), UTF-16 with BOM, else refuse: guessing a
    legacy encoding silently would index mojibake."""
    text = None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        with contextlib.suppress(UnicodeDecodeError):
            text = data.decode("utf-16")
    if text is None:
        if b"\x00" in data[:8192]:
            raise BadDocument("binary content, not text (NUL bytes found)")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise BadDocument(
                f"not valid UTF-8 (bad byte at offset {exc.start}); convert it to UTF-8 first"
            ) from None
    sample = text[:8192]
    controls = len(_CONTROL.findall(sample))
    if sample and controls / len(sample) > 0.05:
        raise BadDocument("binary content, not text (too many control characters)")
    return clean(text)


def _text(data: bytes) -> Loaded:
    return decode_text(data), "", (), ()


_MD_TITLE = re.compile(r"^#\s+(.+?)\s*#*\s*$", re.MULTILINE)


def _markdown(data: bytes) -> Loaded:
    text = decode_text(data)
    match = _MD_TITLE.search(text)
    return text, match.group(1) if match else "", (), ()


# -- HTML ------------------------------------------------------------------------

_INVISIBLE = ("script", "style", "noscript", "template", "head", "svg", "iframe", "object")
_BLOCKS = {
    "p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre",
    "section", "article", "header", "footer", "table", "ul", "ol", "blockquote",
    "dt", "dd", "figcaption", "main", "nav", "aside", "hr", "td", "th",
}  # fmt: skip


def html(data: bytes) -> Loaded:
    """Visible text and tables of an HTML page (scripts, styles, frames and
    the like dropped); e-book chapters and mail bodies are read here too."""
    import lxml.etree
    import lxml.html

    # huge_tree lifts libxml2's default nesting limit of 256 levels, past
    # which it silently drops content.
    parser = lxml.html.HTMLParser(huge_tree=True)
    try:
        root = lxml.html.document_fromstring(data, parser=parser)
    except (lxml.etree.ParserError, ValueError) as exc:
        raise BadDocument(f"unreadable HTML ({exc})") from None
    # Even then it stops at 2048 levels, dropping everything deeper without
    # an error: refuse the file rather than index part of it in silence.
    if any(e.type_name == "ERR_RESOURCE_LIMIT" for e in parser.error_log):
        raise BadDocument(
            "HTML nested too deeply (over 2048 levels): the parser would drop the text inside"
        )
    title = " ".join((root.findtext(".//title") or "").split())
    parts: list[str] = []
    blocks = Blocks()
    # iterwalk is iterative, so deeply nested markup cannot exhaust the stack.
    # An outermost visible <table> becomes a table block (ingest.tables).
    skip_depth = table_depth = 0
    for event, element in lxml.etree.iterwalk(root, events=("start", "end")):
        tag = element.tag if isinstance(element.tag, str) else ""
        if event == "start":
            if tag in _INVISIBLE:
                skip_depth += 1
            elif tag == "table" and not skip_depth:
                if not table_depth:
                    blocks.text(_tidy("".join(parts)))
                    parts = []
                    blocks.table(f"table {len(blocks.tables) + 1}", *tables.html_table(element))
                table_depth += 1
            elif not skip_depth and not table_depth and element.text and tag:
                parts.append(element.text)
        else:
            if tag in _INVISIBLE:
                skip_depth -= 1
            elif tag == "table" and not skip_depth:
                table_depth -= 1
            if tag in _BLOCKS and not table_depth:
                parts.append("\n")
            if not skip_depth and not table_depth and element.tail:
                parts.append(element.tail)
    blocks.text(_tidy("".join(parts)))
    text, found = blocks.build()
    if not text:
        raise BadDocument("no visible text (only scripts/styles, or markup nested too deeply)")
    return text, title, (), found


def _tidy(text: str) -> str:
    """HTML text with its layout whitespace collapsed, paragraphs kept."""
    text = re.sub(r"[ \t\u00a0]+", " ", clean(text))
    return re.sub(r"\n\s*\n+", "\n\n", re.sub(r" *\n *", "\n", text)).strip()


# -- DOCX ------------------------------------------------------------------------


def _docx(data: bytes, max_chars: int | None = None) -> Loaded:
    import io
    import zipfile

    import docx
    from docx.table import Table

    if data.startswith(OLE_MAGIC):
        raise BadDocument(
            "encrypted (password-protected) or legacy .doc file; save it as plain .docx"
        )
    try:
        document = docx.Document(io.BytesIO(data))
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise BadDocument(f"not a valid DOCX file ({exc.__class__.__name__}: {exc})") from None
    except MemoryError:  # a zip bomb: the worker reports it (see ingest.workers)
        raise
    except Exception as exc:  # python-docx raises its own and lxml's errors
        raise BadDocument(f"not a valid DOCX file ({exc.__class__.__name__}: {exc})") from None
    blocks = Blocks()
    title = document.core_properties.title or ""
    for item in document.iter_inner_content():
        if isinstance(item, Table):
            rows = tables.numbered([c.text for c in row.cells] for row in item.rows)
            blocks.table(f"table {len(blocks.tables) + 1}", "", rows)
        else:
            # Only a paragraph with a style of its own can be a title:
            # resolving the default style scans the whole style sheet, for
            # every paragraph.
            if (
                not title
                and item._p.style is not None
                and item.style is not None
                and (item.style.name or "").startswith(("Title", "Heading"))
            ):
                title = item.text.strip()
            blocks.text(clean(item.text))
        check_length(blocks.length, max_chars)
    text, found = blocks.build()
    return text, title, (), found


# -- PDF -------------------------------------------------------------------------

# pdfium drops the space between words whose gap is narrower than ~0.15 em
# (tight justification, some generators); pdfminer keeps them down to ~0.1 em
# but is two orders of magnitude slower. So pdfium reads every
# page and pdfminer re-reads only pages that look glued together.
_GLUED_MIN_CHARS = 200
_GLUED_MAX_SPACE_RATIO = 0.06


def looks_glued(text: str) -> bool:
    letters = sum(c.isalpha() for c in text)
    if letters < _GLUED_MIN_CHARS:
        return False
    spaces = sum(c.isspace() for c in text)
    return spaces / letters < _GLUED_MAX_SPACE_RATIO


def _pdf(data: bytes, ocr: bool = False, max_chars: int | None = None) -> Loaded:
    title, texts = pdf_pages(data, ocr, max_chars)
    check_text_layer(texts, ocr)
    return _joined(texts, title)


PageTexts = list[tuple[str, list[TableSpan]]]


def open_pdf(data: bytes) -> pdfium.PdfDocument:
    import pypdfium2 as pdfium

    try:
        return pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        message = str(exc)
        if "password" in message.lower():
            raise BadDocument("encrypted PDF (password required)") from None
        raise BadDocument(f"not a valid PDF, corrupt or truncated ({message})") from None


def pdf_pages(
    data: bytes, ocr: bool = False, max_chars: int | None = None, pages: range | None = None
) -> tuple[str, PageTexts]:
    """The PDF's title and the text and tables of each of its `pages` (all
    by default), tables numbered from 1 within them. A long PDF's ranges of
    pages are read in several processes (`ingest.pdf_ranges`)."""
    pdf = open_pdf(data)
    finder = tables.PdfTables(data)
    try:
        title = (pdf.get_metadata_dict().get("Title") or "").strip()
        texts: PageTexts = []
        chars = 0
        for index in pages if pages is not None else range(len(pdf)):
            page = pdf[index]
            textpage = page.get_textpage()
            with_tables = finder.page(index, page, textpage)
            text = _LEADERS.sub(" … ", clean(textpage.get_text_range()))
            textpage.close()
            if with_tables is None and looks_glued(text):
                text = _pdfminer_page(data, index) or text
            if not text.strip() and ocr:
                text = _ocr_page(page)
            page.close()
            texts.append(with_tables or (text.strip(), []))
            chars += len(texts[-1][0]) + len(PAGE_SEPARATOR)
            check_length(chars, max_chars)
    finally:
        finder.close()
        pdf.close()
    return title, texts


def pdf_range(data: bytes, pages: range, ocr: bool, max_chars: int | None) -> Loaded:
    """Some of a PDF's pages as if they were all of it, but numbered as in
    the file and without the check for a text layer (made on the whole)."""
    title, texts = pdf_pages(data, ocr, max_chars, pages)
    return _joined(texts, title, pages.start + 1)


def check_text_layer(texts: PageTexts, ocr: bool) -> None:
    if not any(text for text, _ in texts):
        hint = "" if ocr else " (run ingest with --ocr)"
        raise BadDocument(f"no text layer in {len(texts)} page(s): a scanned PDF needs OCR{hint}")


def _joined(texts: PageTexts, title: str, first: int = 1) -> Loaded:
    """Concatenate pages with a separator, remembering where each page and
    each table lies; the first page is numbered `first`."""
    spans: list[PageSpan] = []
    found: list[TableSpan] = []
    parts: list[str] = []
    offset = 0
    for number, (text, page_tables) in enumerate(texts, start=first):
        if parts:
            parts.append(PAGE_SEPARATOR)
            offset += len(PAGE_SEPARATOR)
        parts.append(text)
        spans.append(PageSpan(number, offset, offset + len(text)))
        found.extend(tables.shifted(page_tables, offset))
        offset += len(text)
    return "".join(parts), title, tuple(spans), tuple(found)


def _pdfminer_page(data: bytes, index: int) -> str:
    import io

    from pdfminer.high_level import extract_text

    try:
        return clean(extract_text(io.BytesIO(data), page_numbers=[index]))
    except Exception:  # a fallback only: pdfium's text stands if this fails
        return ""


def _ocr_page(page: object) -> str:
    import shutil
    import subprocess
    import tempfile

    if shutil.which("tesseract") is None:
        raise BadDocument(
            "OCR asked for but tesseract is not installed (apt-get install tesseract-ocr)"
        )
    image = page.render(scale=300 / 72).to_pil()  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "page.png"
        image.save(png)
        result = subprocess.run(
            ["tesseract", str(png), "stdout"], capture_output=True, text=True, timeout=300
        )
    if result.returncode != 0:
        reason = " ".join(result.stderr.split())[:200] or f"exit code {result.returncode}"
        raise BadDocument(f"OCR failed (tesseract: {reason})")
    return clean(result.stdout)


_LOADERS: dict[str, Callable[[bytes], Loaded]] = {
    "text": _text,
    "markdown": _markdown,
    "html": html,
    "docx": _docx,
    "csv": lambda data: tables.load_csv(decode_text(data)),
}
