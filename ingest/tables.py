"""Tables as text: spreadsheets (XLSX) and CSV files, and the tables found in
HTML, DOCX and PDF, written as pipe rows, one row a line, header row first:

    Sheet: 2025
    | Item | Q1 | Q2 |
    | Rent | $1,200.00 | $1,250.00 |

so that a row reads as text, and `TableSpan`s that tell the chunker where
each table, its header and its rows lie (it keeps a table whole, or splits
it by rows with the header repeated: see `ingest.chunking`).

Numbers and dates are written as the user sees them in the spreadsheet:
the cell's number format applied (dates, percentages, thousands separators,
simple currency), never a raw float such as 0.30000000000000004.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from rag.errors import BadDocument
from rag.types import PageSpan, TableSpan

if TYPE_CHECKING:
    import pdfplumber
    import pypdfium2 as pdfium
    from lxml.html import HtmlElement

Loaded = tuple[str, str, tuple[PageSpan, ...], tuple[TableSpan, ...]]

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # encrypted Office files are OLE containers
_CURRENCY = re.compile(r"\[\$([^\]-]*)[^\]]*\]|([$€£¥])")
# csv.Sniffer's quote regex backtracks: its time grows with the square of
# the sample on quoted fields (a 64 KB sample took seconds). The first
# lines tell the dialect as well.
_SNIFF_CHARS = 8 * 1024


def cell_text(value: object) -> str:
    """One cell on one line: whitespace collapsed, control characters gone,
    and `|` escaped so it cannot be read as a column break."""
    text = _CONTROL.sub(" ", str(value))
    return " ".join(text.split()).replace("|", "\\|")


def pipe_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


class Blocks:
    """Builds a document's text from paragraphs and tables, recording where
    each table lies. Blocks are separated by a blank line."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0
        self.tables: list[TableSpan] = []

    def _append(self, text: str) -> int:
        if self.parts:
            self.parts.append("\n\n")
            self.length += 2
        start = self.length
        self.parts.append(text)
        self.length += len(text)
        return start

    def text(self, block: str) -> None:
        block = block.strip()
        if block:
            self._append(block)

    def table(
        self,
        label: str,
        caption: str,
        rows: Sequence[tuple[int, Sequence[object]]],
    ) -> None:
        """`rows`: (row number, cells), the header row first. Empty rows
        are left out; columns are cut to the widest row's last filled cell."""
        cleaned = [(n, [cell_text(c) for c in cells]) for n, cells in rows]
        cleaned = [(n, cells) for n, cells in cleaned if any(cells)]
        if not cleaned:
            return
        width = max(max(i + 1 for i, c in enumerate(cells) if c) for _, cells in cleaned)
        lines = [pipe_row((cells + [""] * width)[:width]) for _, cells in cleaned]
        head = ([cell_text(caption)] if caption.strip() else []) + lines[:1]
        head_text = "\n".join(head)
        body_text = "\n".join(lines[1:])
        start = self._append(head_text + ("\n" + body_text if body_text else ""))
        body = start + len(head_text) + (1 if body_text else 0)
        numbers = tuple(n for n, _ in cleaned[1:])
        self.tables.append(TableSpan(label, start, body, self.length, numbers))

    def build(self) -> tuple[str, tuple[TableSpan, ...]]:
        return "".join(self.parts), tuple(self.tables)


def clean(text: str) -> str:
    """Newlines for every line break; other control characters (noise from
    extractors; NUL breaks some consumers) removed."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n")
    return _TEXT_CONTROL.sub("", text)


def check_length(chars: int, max_chars: int | None) -> None:
    if max_chars is not None and chars > max_chars:
        raise BadDocument(
            f"the text extracted from this file is over the {max_chars:,}-character limit "
            "(RAG_MAX_TEXT_CHARS)"
        )


# -- number formats ----------------------------------------------------------------


def format_cell(value: object, number_format: str | None = "General") -> str:
    """A cell's value as the spreadsheet shows it (simplified: ISO dates,
    and the decimals, percent, thousands separator and currency symbol of
    the format's first section)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    fmt = (number_format or "General").split(";")[0]
    if isinstance(value, dt.datetime):
        if value.time() == dt.time() and not re.search(r"[hs]", fmt, re.IGNORECASE):
            return value.date().isoformat()
        return value.strftime("%Y-%m-%d %H:%M" + (":%S" if value.second else ""))
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return str(value)
    if isinstance(value, int | float):
        return _format_number(float(value), fmt)
    return str(value)


def _format_number(value: float, fmt: str) -> str:
    if fmt.lower() in {"general", "@", ""}:
        return f"{value:.15g}"
    # Quoted literals and escapes do not count as digits or separators.
    bare = re.sub(r'"[^"]*"|\\.|_.|\*.', "", fmt)
    percent = "%" in bare
    if percent:
        value *= 100
    point = bare.find(".")
    decimals = len(re.match(r"[0#?]*", bare[point + 1 :]).group()) if point >= 0 else 0  # type: ignore[union-attr]
    grouping = "," if re.search(r"[0#?],[0#?]", bare) else ""
    number = f"{abs(value):{grouping}.{decimals}f}"
    currency = _CURRENCY.search(fmt)
    symbol = (currency.group(1) or currency.group(2)) if currency else ""
    digits = re.search(r"[0#?]", fmt)
    before = bool(currency and digits and currency.start() < digits.start())
    text = (symbol + number if before else number + (" " + symbol if symbol else "")) + (
        "%" if percent else ""
    )
    return ("-" if value < 0 and float(number.replace(",", "")) != 0 else "") + text


# -- spreadsheets and CSV --------------------------------------------------------


def load_xlsx(data: bytes, max_chars: int | None = None) -> Loaded:
    """Every sheet a table labelled by its name; row numbers as in the sheet."""
    import zipfile

    import openpyxl
    from openpyxl.utils.exceptions import InvalidFileException

    if data.startswith(_OLE_MAGIC):
        raise BadDocument(
            "encrypted (password-protected) or legacy .xls workbook; save it as plain .xlsx"
        )
    try:
        book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except MemoryError:  # a zip bomb: the worker reports it (see ingest.workers)
        raise
    except (zipfile.BadZipFile, InvalidFileException, KeyError, ValueError, OSError) as exc:
        raise BadDocument(f"not a valid XLSX file ({exc.__class__.__name__}: {exc})") from None
    except Exception as exc:  # openpyxl raises lxml's and its own errors on damage
        raise BadDocument(f"not a valid XLSX file ({exc.__class__.__name__}: {exc})") from None
    blocks = Blocks()
    try:
        for sheet in book.worksheets:
            rows: list[tuple[int, list[str]]] = []
            chars = blocks.length
            for counted, cells in enumerate(sheet.iter_rows(), start=1):
                texts = [format_cell(c.value, getattr(c, "number_format", None)) for c in cells]
                # A read-only sheet's empty cells carry no row number.
                number = next((r for c in cells if (r := getattr(c, "row", None))), counted)
                rows.append((number, texts))
                chars += sum(len(t) + 3 for t in texts)
                check_length(chars, max_chars)
            blocks.table(f'sheet "{sheet.title}"', f"Sheet: {sheet.title}", rows)
    except BadDocument:
        raise
    except Exception as exc:  # a damaged sheet part surfaces only while reading it
        raise BadDocument(f"not a valid XLSX file ({exc.__class__.__name__}: {exc})") from None
    finally:
        book.close()
    text, tables = blocks.build()
    if not tables:
        raise BadDocument("no data in any sheet of the workbook")
    title = (book.properties.title or "").strip() if book.properties else ""
    return text, title, (), tables


def load_csv(text: str, max_chars: int | None = None) -> Loaded:
    """One table; the dialect (delimiter, quoting) sniffed from its start.
    Row numbers count records, the header being row 1."""
    check_length(len(text), max_chars)
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(
            _sniff_sample(text), delimiters=",;\t|"
        )
    except csv.Error:
        dialect = csv.excel
    try:
        rows = list(enumerate(csv.reader(io.StringIO(text), dialect), start=1))
    except csv.Error as exc:
        raise BadDocument(f"not a readable CSV file ({exc})") from None
    blocks = Blocks()
    blocks.table("", "", rows)
    out, tables = blocks.build()
    if not tables:
        raise BadDocument("no data in the CSV file")
    return out, "", (), tables


def _sniff_sample(text: str) -> str:
    """The start of `text`, at most `_SNIFF_CHARS`, cut after its last whole
    line (a cut row would show the sniffer fewer delimiters than the rest)."""
    sample = text[:_SNIFF_CHARS]
    if len(text) > _SNIFF_CHARS and "\n" in sample:
        sample = sample[: sample.rindex("\n") + 1]
    return sample


def numbered(rows: Iterable[Sequence[object]]) -> list[tuple[int, Sequence[object]]]:
    """Rows of a table inside a document: the header row 0, then 1, 2, ..."""
    return list(enumerate(rows))


# -- tables inside HTML, DOCX and PDF ------------------------------------------------

_VISIBLE_TEXT = (
    ".//text()[not(ancestor::script or ancestor::style or ancestor::template "
    "or ancestor::noscript)]"
)


def html_table(table: HtmlElement) -> tuple[str, list[tuple[int, Sequence[object]]]]:
    """(caption, numbered rows) of an lxml <table>, its nested tables' rows
    left in their cells' text."""
    captions = table.iterchildren("caption")
    caption = next((" ".join(c.xpath(_VISIBLE_TEXT)) for c in captions), "")
    rows = [r for r in table.iter("tr") if next(r.iterancestors("table"), None) is table]
    cells = [["".join(c.xpath(_VISIBLE_TEXT)) for c in r.iterchildren("td", "th")] for r in rows]
    return caption, numbered(cells)


class PdfTables:
    """Tables of a PDF's pages, found by pdfplumber (ruled tables). pdfminer,
    under it, is slow: it opens the file once, and only for pages that draw
    the lines of a table (`_ruled`)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pdf: pdfplumber.PDF | None = None
        self.count = 0

    def page(
        self, index: int, page: pdfium.PdfPage, textpage: pdfium.PdfTextPage
    ) -> tuple[str, list[TableSpan]] | None:
        """The page as text and tables, or None when it has no table."""
        import pypdfium2.raw as pdfium_c

        paths = page.get_objects(filter=(pdfium_c.FPDF_PAGEOBJ_PATH,), max_depth=2)
        if not _ruled(path.get_bounds() for path in paths):
            return None
        try:
            found = self._plumber().pages[index].find_tables()
        except Exception:  # an aid only: the page's plain text stands if this fails
            return None
        if not found:
            return None
        width, height = page.get_size()
        blocks, top = Blocks(), 0.0
        for table in sorted(found, key=lambda t: t.bbox[1]):
            above = textpage.get_text_bounded(0, height - table.bbox[1], width, height - top)
            blocks.text(clean(above))
            before = len(blocks.tables)
            blocks.table(f"table {self.count + 1}", "", numbered(table.extract()))
            self.count += len(blocks.tables) - before
            top = table.bbox[3]
        blocks.text(clean(textpage.get_text_bounded(0, 0, width, height - top)))
        text, tables = blocks.build()
        return text, list(tables)

    def _plumber(self) -> pdfplumber.PDF:
        if self.pdf is None:
            import pdfplumber

            self.pdf = pdfplumber.open(io.BytesIO(self.data))
        return self.pdf

    def close(self) -> None:
        if self.pdf is not None:
            self.pdf.close()


def _ruled(bounds: Iterable[tuple[float, float, float, float]]) -> bool:
    """Whether path objects with these bounds (left, bottom, right, top, in
    points) could rule a table of rows: long horizontal strokes at three or
    more heights and long vertical ones at two or more places, a box giving
    both its edges. Underscores and bullets do not count, nor a plain frame
    around a listing."""
    heights: set[int] = set()
    places: set[int] = set()
    for left, bottom, right, top in bounds:
        width, height = right - left, top - bottom
        if width >= 20 and height <= 2:
            heights.add(round(top))
        elif height >= 8 and width <= 2:
            places.add(round(left))
        elif width >= 20 and height >= 8:
            heights.update((round(top), round(bottom)))
            places.update((round(left), round(right)))
    return len(heights) >= 3 and len(places) >= 2


def shifted(tables: Iterable[TableSpan], offset: int) -> list[TableSpan]:
    return [
        TableSpan(t.label, t.start + offset, t.body + offset, t.end + offset, t.rows)
        for t in tables
    ]
