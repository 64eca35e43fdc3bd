"""What both stores' writers and readers share: the parameters a base may
be extended with, the rebuild's refusals, and a passage's text put back
together from overlapping chunks."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from rag.errors import IndexIncompatible, RebuildRefused
from rag.layout import IndexParams
from rag.store import DocumentRecord


def check_compatible(root: Path, found: IndexParams, wanted: IndexParams) -> None:
    """Refuse to extend a knowledge base built with other parameters (another
    embedding model, chunking or analyser) than `wanted`."""
    if found == wanted:
        return
    diffs = [
        f"{name}: index has {getattr(found, name)!r}, requested {getattr(wanted, name)!r}"
        for name in found.__dataclass_fields__
        if getattr(found, name) != getattr(wanted, name)
    ]
    raise IndexIncompatible(
        f"The index at {root} was built with other settings ({'; '.join(diffs)}). "
        f"Rebuild it with: ingest PATH... --index {root} --rebuild "
        "(or keep its settings, or use another --index)."
    )


def check_rebuild(
    root: Path, kept: Iterable[str], previous: Mapping[str, DocumentRecord], allow_drop: bool
) -> None:
    """Refuse to publish a rebuild that holds no document, or that lacks
    documents of the state it replaces (`previous`) unless `allow_drop`."""
    kept = set(kept)
    if not kept:
        raise RebuildRefused(
            f"The rebuild of {root} ingested no document, and an empty index is "
            "never published. The index is unchanged."
        )
    dropped = [path for path in sorted(previous) if path not in kept]
    if dropped and not allow_drop:
        raise RebuildRefused.dropping(dropped)


def assemble(pieces: list[tuple[int, str]], start: int, end: int) -> str:
    """The document text in [start, end) from overlapping (offset, text)
    pieces (a chunk and its neighbours); a gap between pieces (stripped
    whitespace) becomes one space."""
    out: list[str] = []
    position = start
    for offset, text in sorted(pieces):
        piece_end = offset + len(text)
        if piece_end <= position or offset >= end:
            continue
        if offset > position:
            out.append(" ")
            position = offset
        out.append(text[position - offset : min(end, piece_end) - offset])
        position = min(end, piece_end)
    return "".join(out).strip()
