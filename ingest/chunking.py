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

from collections.abc import Callable
from functools import lru_cache

from langchain_text_splitters import RecursiveCharacterTextSplitter

from rag.types import Chunk, Document

SEPARATORS = ["\n\n", "\n", ". ", "? ", "! ", "; ", ", ", " ", ""]


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

    def spans(self, text: str, size: int | None = None) -> list[tuple[int, int]]:
        """(start, end) offsets of the chunks of `text`, in order."""
        size = size or self.chunk_tokens
        spans: list[tuple[int, int]] = []
        cursor = 0
        for piece in self._splitter(size).split_text(text):
            start = text.find(piece, cursor)
            if start < 0:  # cannot happen: pieces are stripped substrings, in order
                raise AssertionError("splitter returned text that is not in the document")
            end = start + len(piece)
            if self.count_tokens(piece) > self.max_tokens and size > 8:
                # Token counts of pieces do not always add up to the count of
                # their concatenation; split the rare offender finer.
                spans.extend((start + a, start + b) for a, b in self.spans(piece, size * 3 // 4))
            else:
                spans.append((start, end))
            cursor = start + 1
        return spans

    def split(self, document: Document) -> list[Chunk]:
        """Chunks of a document. Paged documents are split page by page, so
        every passage cites exactly one physical page."""
        if document.pages:
            regions = [(p.start, p.end) for p in document.pages]
        else:
            regions = [(0, len(document.text))]
        chunks: list[Chunk] = []
        for region_start, region_end in regions:
            for start, end in self.spans(document.text[region_start:region_end]):
                start, end = start + region_start, end + region_start
                page = document.page_at(start)
                chunks.append(
                    Chunk(
                        text=document.text[start:end],
                        source=document.path,
                        start=start,
                        end=end,
                        page=page,
                        page_end=page,
                        title=document.title,
                        doc_hash=document.content_hash,
                        ordinal=len(chunks),
                    )
                )
        return chunks
