"""A long PDF parsed in ranges of pages, each in its own parser process, then
put back together exactly as if it had been parsed whole.

Passages never cross a page (`Chunker.split` splits page by page), so each
range can be split and tokenized where it was parsed: putting the ranges
together only shifts offsets and ordinals, and numbers the tables on from
the ranges before (a PDF's tables are labelled "table N" in page order).
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from ingest import loaders
from ingest.tables import check_length
from rag.errors import BadDocument
from rag.types import Chunk, Document, PageSpan, TableSpan

_TABLE_LABEL = re.compile(r"table (\d+)")


def page_count(path: str) -> int:
    """How many pages the PDF has (in a parser process: it opens the file)."""
    pdf = loaders.open_pdf(Path(path).read_bytes())
    try:
        return len(pdf)
    finally:
        pdf.close()


def plan(pages: int, per_range: int) -> list[range]:
    """The ranges of at most `per_range` pages that a PDF of `pages` is read in."""
    return [range(start, min(start + per_range, pages)) for start in range(0, pages, per_range)]


def load_range(
    path: str, content_hash: str, pages: range, ocr: bool, max_chars: int | None
) -> Document:
    """Some pages of a PDF as a `Document` of their own, its pages numbered
    as in the file, its tables from "table 1". Raises `BadDocument`."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BadDocument(f"cannot read the file ({exc.strerror or exc})") from None
    text, title, spans, found = loaders.pdf_range(data, pages, ocr, max_chars)
    return Document(path, text, content_hash, "pdf", title or Path(path).stem, spans, found)


def merged(parts: list[Document], ocr: bool, max_chars: int | None) -> Document:
    """The whole file's `Document` from its ranges' (in page order), with the
    checks `loaders.load` makes on a PDF parsed whole. Raises `BadDocument`."""
    offsets = _offsets(parts)
    pages: list[PageSpan] = []
    found: list[TableSpan] = []
    for part, offset in zip(parts, offsets, strict=True):
        pages += [PageSpan(p.number, p.start + offset, p.end + offset) for p in part.pages]
        found += [
            TableSpan(
                f"table {len(found) + i + 1}",
                t.start + offset,
                t.body + offset,
                t.end + offset,
                t.rows,
            )
            for i, t in enumerate(part.tables)
        ]
    texts = [part.text[p.start : p.end] for part in parts for p in part.pages]
    check_length(sum(len(t) + len(loaders.PAGE_SEPARATOR) for t in texts), max_chars)
    loaders.check_text_layer([(t, []) for t in texts], ocr)
    document = replace(
        parts[0],
        text=loaders.PAGE_SEPARATOR.join(part.text for part in parts),
        pages=tuple(pages),
        tables=tuple(found),
    )
    check_length(len(document.text), max_chars)
    if not document.text.strip():
        raise BadDocument("no text found in the file")
    return document


def merged_chunks(parts: list[Document], chunks: list[list[Chunk]]) -> list[Chunk]:
    """The whole file's chunks from its ranges', as `Chunker.split` gives
    them for the merged document."""
    out: list[Chunk] = []
    tables_before = 0
    for part, offset, part_chunks in zip(parts, _offsets(parts), chunks, strict=True):
        out += [
            replace(
                c,
                start=c.start + offset,
                end=c.end + offset,
                ordinal=len(out) + i,
                locator=_renumbered(c.locator, tables_before),
            )
            for i, c in enumerate(part_chunks)
        ]
        tables_before += len(part.tables)
    return out


def _offsets(parts: list[Document]) -> list[int]:
    offsets, at = [], 0
    for part in parts:
        offsets.append(at)
        at += len(part.text) + len(loaders.PAGE_SEPARATOR)
    return offsets


def _renumbered(locator: str, tables_before: int) -> str:
    """A passage's locator with its table's number counted from the file's
    first page ("table 2, rows 1-9" in a range after 3 tables: "table 5, ...")."""
    match = _TABLE_LABEL.match(locator)
    if not match or not tables_before:
        return locator
    return f"table {int(match.group(1)) + tables_before}{locator[match.end() :]}"
