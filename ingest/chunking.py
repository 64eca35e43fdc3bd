"""Chunking sized in tokens of the embedding model, with exact offsets.

LangChain's recursive splitter does the splitting (paragraphs, then lines,
sentences, words), page by page for paged formats. We add what it lacks:
offsets that always satisfy
`document.text[start:end] == chunk.text` (its own `add_start_index` mixes
token and character units when the length function counts tokens), page
numbers, and a hard guarantee that no chunk exceeds the model's window,
because the model would silently drop the excess.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from functools import lru_cache

from langchain_text_splitters import RecursiveCharacterTextSplitter

from rag.types import Chunk, Document, TableSpan

SEPARATORS = ["\n\n", "\n", ". ", "? ", "! ", "; ", ", ", " ", ""]
# Longer titles are cut for the prefix: a title should not eat the window.
MAX_TITLE_TOKENS = 64


class Chunker:
    def __init__(
        self,
        count_tokens: Callable[[str], int],
        chunk_tokens: int,
        overlap: int,
        max_tokens: int,
    ) -> None:
        if chunk_tokens > max_tokens:
            raise ValueError(
                f"chunk size {chunk_tokens} exceeds the model's window of {max_tokens} tokens"
            )
        if overlap >= chunk_tokens:
            raise ValueError("chunk overlap must be smaller than the chunk size")
        # Pieces are measured again and again while the splitter merges and
        # slides its window; the cache makes that cheap.
        self.count_tokens = lru_cache(maxsize=65536)(count_tokens)
        self.chunk_tokens = chunk_tokens
        self.overlap = overlap
        self.max_tokens = max_tokens

    def _splitter(self, size: int) -> RecursiveCharacterTextSplitter:
        return RecursiveCharacterTextSplitter(
            chunk_size=size,
            chunk_overlap=min(self.overlap, size // 4),
            length_function=self.count_tokens,
            separators=SEPARATORS,
            keep_separator="end",
        )

    def spans(
        self, text: str, size: int | None = None, limit: int | None = None
    ) -> list[tuple[int, int]]:
        """(start, end) offsets of the chunks of `text`, in order, none over
        `limit` tokens."""
        size = size or self.chunk_tokens
        limit = limit or self.max_tokens
        spans: list[tuple[int, int]] = []
        for start, end in self._offsets(text, size):
            if self.count_tokens(text[start:end]) > limit and size > 8:
                # Token counts of pieces do not always add up to the count of
                # their concatenation; split the rare offender finer.
                inner = self.spans(text[start:end], size * 3 // 4, limit)
                spans.extend((start + a, start + b) for a, b in inner)
            else:
                spans.append((start, end))
        return spans

    def _offsets(self, text: str, size: int) -> list[tuple[int, int]]:
        """Where the splitter's pieces lie in `text`: its own algorithm
        replayed over offsets, checked against the pieces it returns
        (`locate` only if a future LangChain splits otherwise)."""
        pieces = self._splitter(size).split_text(text)
        found = self._replay(text, size)
        return found if [text[a:b] for a, b in found] == pieces else locate(text, pieces)

    def _replay(self, text: str, size: int) -> list[tuple[int, int]]:
        """LangChain's recursive split (keep_separator="end", whitespace
        stripped) over offsets. Searching for each piece's text cannot place
        pieces of repetitive text ("word word word ...", identical table
        rows): they occur at many places, and a wrong guess either leaves the
        end of the text unindexed or finds no place for a later piece."""
        replay = _Replay(text, size, min(self.overlap, size // 4), self.count_tokens)
        replay.split(0, len(text), SEPARATORS)
        return replay.out

    def clip_title(self, title: str) -> str:
        """The title as prefixed to every passage: at most MAX_TITLE_TOKENS."""
        words = title.split()
        while words and self.count_tokens(" ".join(words)) > MAX_TITLE_TOKENS:
            words.pop()
        return " ".join(words)

    def split(self, document: Document) -> list[Chunk]:
        """Chunks of a document. Paged documents are split page by page, so
        every passage cites exactly one physical page, and sectioned ones
        (slides, chapters, attachments) section by section, the section's
        label heading the passage's locator; a table is kept whole, or split
        by rows (`table_chunks`)."""
        if document.pages:
            regions = [(p.start, p.end) for p in document.pages]
        elif document.sections:
            regions = [(s.start, s.end) for s in document.sections]
        else:
            regions = [(0, len(document.text))]
        # Every passage is embedded as "title\n" + passage: leave room for it.
        title = self.clip_title(document.title)
        limit = self.max_tokens - (self.count_tokens(title) + 1 if title else 0)
        size = min(self.chunk_tokens, limit)
        pieces: list[tuple[int, int, str, str]] = []  # start, end, text, locator
        for region_start, region_end in regions:
            position = region_start
            for table in document.tables:
                if region_start <= table.start < region_end:
                    pieces += self._text_pieces(document.text, position, table.start, size, limit)
                    pieces += self.table_chunks(document.text, table, size, limit)
                    position = table.end
            pieces += self._text_pieces(document.text, position, region_end, size, limit)
        return [
            Chunk(
                text=text,
                source=document.path,
                start=start,
                end=end,
                page=document.page_at(start),
                title=title,
                ordinal=ordinal,
                locator=", ".join(p for p in (document.section_at(start), locator) if p),
            )
            for ordinal, (start, end, text, locator) in enumerate(pieces)
        ]

    def _text_pieces(
        self, text: str, start: int, end: int, size: int, limit: int
    ) -> list[tuple[int, int, str, str]]:
        return [
            (start + a, start + b, text[start + a : start + b], "")
            for a, b in self.spans(text[start:end], size, limit)
        ]

    def table_chunks(
        self, text: str, table: TableSpan, size: int, limit: int
    ) -> list[tuple[int, int, str, str]]:
        """A table as one passage when it fits `size` tokens, else split by
        rows, each part headed by the table's caption and header lines. A
        row too long for a part of its own is split like running text."""
        head = text[table.start : table.body].rstrip("\n")
        lines: list[tuple[int, int]] = []
        position = table.body
        for line in text[table.body : table.end].split("\n") if table.body < table.end else []:
            lines.append((position, position + len(line)))
            position += len(line) + 1

        def number(i: int) -> int:
            return table.rows[i] if i < len(table.rows) else i + 1

        def part(first: int, last: int) -> list[tuple[int, int, str, str]]:
            start, end = lines[first][0], lines[last][1]
            where = _locator(table.label, number(first), number(last))
            if first == 0:
                start = table.start
            body = text[start:end] if first == 0 else f"{head}\n{text[start:end]}"
            if self.count_tokens(body) <= limit:
                return [(start, end, body, where)]
            if first < last:  # token counts do not quite add up: halve the rows
                middle = (first + last) // 2
                return part(first, middle) + part(middle + 1, last)
            return [
                (a, b, t, where) for a, b, t, _ in self._text_pieces(text, start, end, size, limit)
            ]

        whole = text[table.start : table.end]
        if self.count_tokens(whole) <= size:
            where = (
                _locator(table.label, number(0), number(len(lines) - 1)) if lines else table.label
            )
            return [(table.start, table.end, whole, where)]
        if not lines:  # a header alone (e.g. a one-row layout table), too long: running text
            pieces = self._text_pieces(text, table.start, table.end, size, limit)
            return [(a, b, t, table.label) for a, b, t, _ in pieces]
        head_tokens = self.count_tokens(head) + 1
        out: list[tuple[int, int, str, str]] = []
        first, total = 0, head_tokens
        for i, (a, b) in enumerate(lines):
            n = self.count_tokens(text[a:b]) + 1
            if i > first and total + n > size:
                out += part(first, i - 1)
                first, total = i, head_tokens
            total += n
        return out + part(first, len(lines) - 1)


def _locator(label: str, first: int, last: int) -> str:
    rows = f"row {first}" if first == last else f"rows {first}-{last}"
    return f"{label}, {rows}" if label else rows


def locate(text: str, pieces: list[str]) -> list[tuple[int, int]]:
    """Offsets of the splitter's pieces in `text`.

    Each piece starts after the previous one's start and no later than its
    end plus the whitespace the splitter stripped. Within that window the
    latest match is taken: in repetitive text ("word word word", identical
    table rows) the first match would lag behind the real cut and leave the
    end of the text uncovered, and any match is the same text.
    """
    spans: list[tuple[int, int]] = []
    for piece in pieces:
        if not spans:
            start = text.find(piece)
        else:
            prev_start, prev_end = spans[-1]
            reach = prev_end + len(text[prev_end:]) - len(text[prev_end:].lstrip())
            start = text.rfind(piece, prev_start + 1, reach + len(piece))
            if start < 0:
                start = text.find(piece, prev_start + 1)
        if start < 0:  # cannot happen: pieces are stripped substrings, in order
            raise AssertionError("splitter returned text that is not in the document")
        spans.append((start, start + len(piece)))
    return spans


class _Replay:
    """One run of `Chunker._replay`: LangChain's `_split_text` and
    `_merge_splits`, over (start, end) offsets into `text`."""

    def __init__(
        self, text: str, size: int, overlap: int, count_tokens: Callable[[str], int]
    ) -> None:
        self.text, self.size, self.overlap = text, size, overlap
        self.count_tokens = count_tokens
        self.out: list[tuple[int, int]] = []

    def length(self, span: tuple[int, int]) -> int:
        return self.count_tokens(self.text[span[0] : span[1]])

    def emit(self, start: int, end: int) -> None:
        piece = self.text[start:end]
        stripped = piece.strip()
        if stripped:
            start += len(piece) - len(piece.lstrip())
            self.out.append((start, start + len(stripped)))

    def merge(self, splits: list[tuple[int, int]]) -> None:  # TextSplitter._merge_splits
        current: list[tuple[int, int]] = []
        total = 0
        for split in splits:
            n = self.length(split)
            if total + n > self.size and current:
                self.emit(current[0][0], current[-1][1])
                while total > self.overlap or (total + n > self.size and total > 0):
                    total -= self.length(current.pop(0))
            current.append(split)
            total += n
        if current:
            self.emit(current[0][0], current[-1][1])

    def split(self, start: int, end: int, separators: list[str]) -> None:
        good: list[tuple[int, int]] = []
        finer = self._finer(self.text[start:end], separators)
        for a, b in self._pieces(self.text[start:end], separators):
            span = (start + a, start + b)
            if self.length(span) < self.size:
                good.append(span)
                continue
            if good:
                self.merge(good)
                good = []
            if finer:
                self.split(*span, finer)
            else:
                self.emit(*span)
        if good:
            self.merge(good)

    @staticmethod
    def _separator(part: str, separators: list[str]) -> tuple[str, list[str]]:
        """The first separator found in `part` and the finer ones after it."""
        for i, candidate in enumerate(separators):
            if not candidate:
                return candidate, []
            if candidate in part:
                return candidate, separators[i + 1 :]
        return separators[-1], []

    def _finer(self, part: str, separators: list[str]) -> list[str]:
        return self._separator(part, separators)[1]

    def _pieces(self, part: str, separators: list[str]) -> list[tuple[int, int]]:
        separator = self._separator(part, separators)[0]
        if not separator:
            return [(i, i + 1) for i in range(len(part))]
        cuts = [m.end() for m in re.finditer(re.escape(separator), part)]
        bounds = [0, *cuts] + ([len(part)] if not cuts or cuts[-1] < len(part) else [])
        return list(itertools.pairwise(bounds))
