"""The plain dataclasses that travel between pipeline stages.

Document -> Chunk -> Hit -> Verdict -> Answer. Nothing else crosses a module
boundary, so each stage can be read, tested and replaced on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PageSpan:
    """Where one physical page lies in a document's text (1-based number)."""

    number: int
    start: int
    end: int


@dataclass(frozen=True)
class Section:
    """Where one labelled part of a document lies in its text: a slide, a
    chapter, a page of a message's attachment. Its passages are cited by
    `label` ("slide 7", 'chapter 3 "Terns"', "attachment report.pdf, page 2"),
    as a table's by its rows; "" for a part cited by the file alone (a
    message's headers and body)."""

    label: str
    start: int
    end: int


@dataclass(frozen=True)
class TableSpan:
    """Where one table lies in a document's text, written as pipe rows, one
    row a line (see `ingest.tables`). `text[start:body]` is its caption and
    header lines, repeated in each part of a table split by rows; every line
    of `text[body:end]` is one row, numbered by `rows` (a sheet's own row
    numbers, else 1 for the first row after the header)."""

    label: str  # 'sheet "2025"', 'table 2'; "" for a CSV file's one table
    start: int
    body: int
    end: int
    rows: tuple[int, ...] = ()


@dataclass(frozen=True)
class Document:
    """A loaded file: its full text, for paged formats the page spans, for
    formats cited by slide, chapter or attachment the sections, and where
    its tables lie. `notes` say what was left out and why (an attachment
    that could not be read), for the ingest report."""

    path: str
    text: str
    content_hash: str
    kind: str
    title: str = ""
    pages: tuple[PageSpan, ...] = ()
    tables: tuple[TableSpan, ...] = ()
    sections: tuple[Section, ...] = ()
    notes: tuple[str, ...] = ()

    def section_at(self, offset: int) -> str:
        """The label of the section holding character `offset` ("" if none)."""
        for span in self.sections:
            if offset < span.end:
                return span.label
        return self.sections[-1].label if self.sections else ""

    def page_at(self, offset: int) -> int | None:
        """The page holding character `offset`, or None for unpaged formats."""
        for span in self.pages:
            if offset < span.end:
                return span.number
        return self.pages[-1].number if self.pages else None


@dataclass(frozen=True)
class Chunk:
    """A passage of a document, sized to fit the embedding model's window.

    `start`/`end` are character offsets into the document's text, so
    `document.text[start:end] == text` holds, except for a part of a table
    split by rows after the first: its text is the table's caption and header
    lines, a newline, then `document.text[start:end]` (see `document_part`).
    `locator` says which section, table and rows a passage holds, as shown
    in citations after the file name: 'sheet "2025", rows 14-22', "slide 7",
    "attachment report.pdf, page 2"; "" for running text cited by the file
    (and its `page`) alone.
    """

    text: str
    source: str
    start: int
    end: int
    page: int | None = None
    title: str = ""
    ordinal: int = 0
    id: int | None = None
    locator: str = ""

    @property
    def document_part(self) -> str:
        """The part of the document's text this chunk covers (its text less
        a repeated table header)."""
        return self.text[len(self.text) - (self.end - self.start) :]

    @property
    def indexed_text(self) -> str:
        """What the embedding model and the BM25 index see: the document's
        title on every passage ("field handling"), so a passage about "it"
        is still found by what its document is about. The chunker leaves
        room for the title in the model's window."""
        return f"{self.title}\n{self.text}" if self.title else self.text


@dataclass(frozen=True)
class Hit:
    """A chunk returned by a search, with its fused score, per-side ranks and
    its cosine to the query (None where the search was BM25 alone)."""

    chunk: Chunk
    score: float
    dense_rank: int | None = None
    bm25_rank: int | None = None
    dense_score: float | None = None

    @property
    def text(self) -> str:
        return self.chunk.text

    @property
    def source(self) -> str:
        return self.chunk.source

    @property
    def page(self) -> int | None:
        return self.chunk.page

    @property
    def locator(self) -> str:
        return self.chunk.locator

    @property
    def chunk_id(self) -> int:
        assert self.chunk.id is not None, "hits always come from a stored chunk"
        return self.chunk.id

    def to_dict(self) -> dict[str, object]:
        return {
            "text": self.text,
            "source": self.source,
            "page": self.page,
            "locator": self.locator,
            "score": self.score,
            "chunk_id": self.chunk_id,
        }


@dataclass(frozen=True)
class Verdict:
    """Stage 1's judgement of one passage. `valid` is False when the model's
    reply could not be parsed; retrieval alone then decides whether its
    passage is kept (rag/answering/screening.py `keep`)."""

    hit: Hit
    relevant: bool
    reason: str
    score: float = 0.0
    valid: bool = True
    error: str = ""
    started: float = 0.0  # wall-clock span of the request that judged it
    finished: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "chunk_id": self.hit.chunk_id,
            "source": self.hit.source,
            "page": self.hit.page,
            "relevant": self.relevant,
            "score": self.score,
            "reason": self.reason,
            "valid": self.valid,
            "error": self.error,
        }


@dataclass(frozen=True)
class Citation:
    """A numbered reference in the answer, resolved to its passage."""

    n: int
    hit: Hit

    def to_dict(self) -> dict[str, object]:
        return {
            "n": self.n,
            "source": self.hit.source,
            "page": self.hit.page,
            "locator": self.hit.locator,
            "text": self.hit.text,
            "chunk_id": self.hit.chunk_id,
        }


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )

    def to_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


@dataclass
class Answer:
    """Everything one question produced, stage by stage."""

    question: str
    text: str
    search_query: str = ""  # the standalone rewrite a follow-up was searched as
    citations: list[Citation] = field(default_factory=list)
    reasoning: str = ""
    hits: list[Hit] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    kept: list[Hit] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    usage: dict[str, Usage] = field(default_factory=dict)
    found: bool = True
    dropped_citations: int = 0
    notes: list[str] = field(default_factory=list)

    def total_usage(self) -> Usage:
        """Tokens over every stage."""
        return sum(self.usage.values(), Usage())

    def to_dict(self) -> dict[str, object]:
        """The JSON shape of `rag ask --json`."""
        usage = {stage: u.to_dict() for stage, u in self.usage.items()}
        usage["total"] = self.total_usage().to_dict()
        return {
            "question": self.question,
            "search_query": self.search_query or self.question,
            "answer": self.text,
            "found": self.found,
            "citations": [c.to_dict() for c in self.citations],
            "dropped_citations": self.dropped_citations,
            "verdicts": [v.to_dict() for v in self.verdicts],
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "notes": self.notes,
            "usage": usage,
            "reasoning": self.reasoning,
        }
