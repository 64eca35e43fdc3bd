"""The rows of a table passage that answer a question.

Tables reach the store as pipe rows, one row a line, after a caption
("Sheet: Budget 2025") and a header row (ingest/tables.py). A row is not a
sentence, so the extractive answer quotes a table by its header and the
row(s) that match the question: those holding every row label or cell value
it names ("Q3", "Engineering", "INV-1044") and sharing the most of its
words, the closest in meaning breaking ties; no row when none is the one
asked about. Column names ("budget") are in the header,
which every quote carries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rag.lexical import terms

_DIGIT = re.compile(r"\b\d\b")
_PIPE_ROW = re.compile(r"^\|.*\|$")
_CELL_BREAK = re.compile(r"(?<!\\)\|")
MAX_ROWS = 3  # rows quoted at once: "which invoices are overdue?" may match several


@dataclass(frozen=True)
class Table:
    """One table in a passage: its caption line ("" if none), header row
    and body rows, as the lines of the passage's text."""

    caption: str
    header: str
    rows: tuple[str, ...]

    def quote(self, rows: list[str]) -> str:
        """The caption, header and `rows`, one a line, as in the source."""
        lines = ([self.caption] if self.caption else []) + [self.header, *rows]
        return "\n".join(lines)

    def as_text(self, row: str) -> str:
        """The row as "column: value" pairs, for the embedding model."""
        pairs = zip(cells(self.header), cells(row), strict=False)
        return f"{self.caption}. " + "; ".join(f"{h}: {v}" for h, v in pairs)


def cells(row: str) -> list[str]:
    return [c.strip() for c in _CELL_BREAK.split(row.strip()[1:-1])]


def tables(text: str) -> list[Table]:
    """The tables of a passage's text (a run of pipe rows, the first of them
    the header); a header with no row under it is no table to quote."""
    found: list[Table] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        if not _PIPE_ROW.match(lines[i].strip()):
            i += 1
            continue
        start = i
        while i < len(lines) and _PIPE_ROW.match(lines[i].strip()):
            i += 1
        block = [line.strip() for line in lines[start:i]]
        before = lines[start - 1].strip() if start else ""
        if len(block) > 1:
            found.append(Table(before, block[0], tuple(block[1:])))
    return found


def matching_rows(question: str, table: Table, context: str = "") -> list[int]:
    """Indices of the rows the question names, in table order: each must hold
    every word of the question that names a row (an identifier with a digit,
    such as "INV-1050" or "Q2", or a word found in some row of this table),
    and of those, the rows sharing the most question words are kept. None
    when no row is the one asked about ("the Q2 training budget" where Q2 is
    a Travel row): a near row is the wrong answer. Words of the caption and
    header name columns, not rows. A follow-up that names no row ("What is
    its status?") takes the rows its `context` (the question joined to the
    conversation) names, even rows already said: it asks more about them."""
    head = words(f"{table.caption} {table.header}")
    asked = words(question) - head
    rows = [words(row) for row in table.rows]
    vocabulary = set().union(*rows)
    if not asked & vocabulary:
        return matching_rows(context, table) if context else []
    keys = {w for w in asked if w in vocabulary or any(ch.isdigit() for ch in w)}
    shared = [len(asked & row) if keys <= row else 0 for row in rows]
    best = max(shared, default=0)
    if best == 0:
        return []
    return [i for i, n in enumerate(shared) if n == best]


def words(text: str) -> set[str]:
    """The BM25 side's terms, and single digits too: "week 4" must not
    match every week of a table."""
    return set(terms(text)) | set(_DIGIT.findall(text))


def prose(text: str) -> str:
    """`text` without its table lines, for splitting into sentences."""
    return "\n".join(line for line in text.split("\n") if not _PIPE_ROW.match(line.strip()))
