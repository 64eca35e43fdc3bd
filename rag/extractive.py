"""Extractive answers: the deep read may only quote whole sentences of the
kept passages, each followed by the number of the passage it came from.

Why: a small model on a CPU (SmolLM2-135M in `make run` without a GPU)
ignores the instruction to cite and mixes passages into new, wrong claims.
Constrained to quoting, every sentence of its answer is in a source and
every citation points at the passage the sentence is in, by construction.
gpt-oss-20b writes real answers and keeps the default, generative style.

The candidates are the sentences closest in meaning to the question (the
retrieval embedder scores them); the answer opens with the closest and the
model chooses which of the others to add, in order of closeness. When no
sentence is close enough, the answer is that the knowledge base does not
contain it: the model is not asked.
The grammar is sent as vLLM's `structured_outputs` (xgrammar EBNF).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rag.embedding import Embedder
from rag.types import Hit

# A block: a paragraph, or one Markdown list item or heading.
_BLOCK = re.compile(r"\n\s*\n|\n(?=\s*(?:[-*+#]|\d+[.)])\s)")
_MARKER = re.compile(r"^\s*(?:[-*+]|#+|\d+[.)])\s+")
# A sentence ends at . ! or ? and a space, except after an abbreviation.
# (Not only before a capital: technical text starts sentences with
# lower-case names such as "gpt-oss" or "ingest".)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_ABBREVIATION = re.compile(r"(?:\b(?:e\.g|i\.e|etc|vs|cf|approx|Fig|No|Dr|Mr|Ms|St)|\b[A-Za-z])\.$")
_ENDS_LIKE_SENTENCE = re.compile(r"[.!?:]['\")`]?$")
# A short line with no closing punctuation, followed by a capitalised line,
# is a heading in text taken from a PDF (whose paragraphs keep their line
# breaks): it starts a block of its own instead of running into a sentence.
_HEADING_LINE = re.compile(r"^[^\n.!?:;,]{1,60}$")
MIN_WORDS = 5


@dataclass(frozen=True)
class Candidate:
    n: int  # the passage's number in the prompt
    sentence: str
    similarity: float


def sentences(text: str) -> list[str]:
    """The whole sentences of a passage, whitespace-normalised; headings,
    fragments and list items without closing punctuation are left out."""
    found = []
    for block in _BLOCK.split(_split_headings(text)):
        flat = _MARKER.sub("", " ".join(block.split()))
        for sentence in _join_abbreviations(_SENTENCE_END.split(flat)):
            if len(sentence.split()) >= MIN_WORDS and _ENDS_LIKE_SENTENCE.search(sentence):
                found.append(sentence)
    return found


def _join_abbreviations(pieces: list[str]) -> list[str]:
    joined: list[str] = []
    for piece in pieces:
        # The last 8 characters hold the longest abbreviation and the one
        # before it (for \b): searching the whole grown sentence was quadratic.
        if joined and _ABBREVIATION.search(joined[-1][-8:]):
            joined[-1] += " " + piece
        else:
            joined.append(piece)
    return joined


def _split_headings(text: str) -> str:
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines):
        nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if _HEADING_LINE.match(line.strip()) and nxt[:1].isupper():
            out.append(line + "\n")  # an empty line after it closes the block
        else:
            out.append(line)
    return "\n".join(out)


def candidates(
    question: str,
    ordered: Sequence[Hit],
    embedder: Embedder,
    limit: int,
    min_similarity: float,
) -> list[Candidate]:
    """Up to `limit` sentences of the passages (numbered 1.. in `ordered`)
    closest to the question, closest first; none below `min_similarity`."""
    pool: list[tuple[int, str]] = []
    seen: set[str] = set()
    for n, hit in enumerate(ordered, start=1):
        for sentence in sentences(hit.text):
            if sentence not in seen:  # overlapping chunks repeat sentences
                seen.add(sentence)
                pool.append((n, sentence))
    if not pool:
        return []
    vectors = embedder.embed_batch([s for _, s in pool], kind="document")
    query = embedder.embed_batch([question], kind="query")[0]
    scores = np.asarray(vectors, dtype=np.float32) @ np.asarray(query, dtype=np.float32)
    best = np.argsort(-scores, kind="stable")[:limit]
    return [
        Candidate(pool[i][0], pool[i][1], float(scores[i]))
        for i in best
        if scores[i] >= min_similarity
    ]


def grammar(chosen: Sequence[Candidate]) -> str:
    """EBNF for: the closest candidate, then any of the others, each at most
    once and in the given order, each followed by its citation.

    The closest sentence always opens the answer: left free to skip it,
    SmolLM2 often quoted a weaker sentence alone (on the sample knowledge
    base, "Another ingest is writing to the index..." to a question on
    how broken files are reported)."""
    if not chosen:
        raise ValueError("an extractive answer needs at least one candidate sentence")
    quotes = [f'{_literal(c.sentence)} " [{c.n}]"' for c in chosen]
    rules = [f'root ::= {quotes[0]} (" " from1)?' if len(quotes) > 1 else f"root ::= {quotes[0]}"]
    for i in range(1, len(quotes)):
        if i == len(quotes) - 1:
            rules.append(f"from{i} ::= {quotes[i]}")
        else:
            rules.append(f'from{i} ::= {quotes[i]} (" " from{i + 1})? | from{i + 1}')
    return "\n".join(rules)


def request_extra(chosen: Sequence[Candidate]) -> dict[str, Any]:
    """The request body fields that constrain the answer to `chosen`."""
    return {"structured_outputs": {"grammar": grammar(chosen)}}


def _literal(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
