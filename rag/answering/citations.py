"""Stage 3, citations: the answer's [n] markers resolved to their passages
(`resolve_citations`), and a cheap check that each could support its
sentence (`unsupported`).

`resolve_citations` only knows that a marker's number is
in range; an answer can still pin a claim on the wrong passage, by mistake
or because a passage told the model to. Here each sentence with [n] markers
is compared with passage n through the BM25 analyser (lower-cased, stop
words out, Snowball stems): a citation whose passage shares no term with
its sentence is reported. Sharing a word proves nothing; sharing none is a
strong sign of a wrong citation, and costs a set intersection.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from rag.lexical import terms
from rag.types import Citation, Hit

_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n+")
_LEADING_MARKERS = re.compile(r"^(?:\s*\[\d+\])+")
_MARKER = re.compile(r"\[(\d+)\]")


@dataclass(frozen=True)
class Unsupported:
    """Citation [n] on the answer's `sentence`-th sentence (1-based), whose
    passage shares no word with it."""

    n: int
    sentence: int

    def note(self) -> str:
        # No quote of the sentence: notes are shown as Markdown, and the
        # sentence is model text.
        return (
            f"[{self.n}] is cited for sentence {self.sentence} of the answer, "
            f"which shares no words with passage {self.n}."
        )


def sentences(text: str) -> list[str]:
    """The answer's sentences; markers that open a sentence belong to the one
    before it (models write "a claim. [1] Another claim.")."""
    out: list[str] = []
    for piece in _SENTENCE_BREAK.split(text):
        leading = _LEADING_MARKERS.match(piece)
        if leading and out:
            out[-1] += leading.group(0)
            piece = piece[leading.end() :]
        if piece.strip():
            out.append(piece.strip())
    return out


def unsupported(text: str, ordered: Sequence[Hit]) -> list[Unsupported]:
    """Citations of `text` whose passage (`ordered[n - 1]`, with its document
    title) shares no content word with the sentence citing it. Sentences
    of stop words only ("That is it [2].") cannot be checked and are
    skipped, as are numbers out of range (`resolve_citations` drops those)."""
    passage_terms: dict[int, set[str]] = {}
    found = []
    for number, sentence in enumerate(sentences(text), start=1):
        words = set(terms(_MARKER.sub(" ", sentence)))
        if not words:
            continue
        for n in dict.fromkeys(int(m) for m in _MARKER.findall(sentence)):
            if not 1 <= n <= len(ordered):
                continue
            if n not in passage_terms:
                passage_terms[n] = set(terms(ordered[n - 1].chunk.indexed_text))
            if not words & passage_terms[n]:
                found.append(Unsupported(n, number))
    return found


_CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


def resolve_citations(text: str, ordered: Sequence[Hit]) -> tuple[str, list[Citation], int]:
    """Map [n] markers to passages, renumbered 1, 2, 3... in order of first
    use in the answer (a reader never sees [1] and [3] without [2]).
    Markers that match no passage are removed from the text and counted, so
    a reader never follows a dead reference. (Whether passage n could
    support its sentence: `unsupported`.)"""
    cited: dict[int, Citation] = {}  # prompt number -> citation with its new number
    dropped = 0

    def fix(match: re.Match[str]) -> str:
        nonlocal dropped
        good = []
        for part in match.group(1).split(","):
            n = int(part)
            if 1 <= n <= len(ordered):
                cited.setdefault(n, Citation(len(cited) + 1, ordered[n - 1]))
                good.append(cited[n].n)
            else:
                dropped += 1
        return "".join(f"[{n}]" for n in good)

    cleaned = _CITATION.sub(fix, text)
    return cleaned, list(cited.values()), dropped
