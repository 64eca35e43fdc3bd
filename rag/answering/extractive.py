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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rag.answering import asked_kind, followup, table_rows
from rag.answering.siblings import Siblings, kinds
from rag.embedding import Embedder
from rag.lexical import terms
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


# What a quote's support adds up (see `Candidate.support`), chosen with
# bench/answering.py on the tune half of its question set; docs/answering.md
# gives the figures. Closeness in meaning alone (all-MiniLM-L6-v2's cosine)
# misses the sentence that answers a short question in other words ("How are
# broken files reported?"), and rows are not sentences at all.
OVERLAP_WEIGHT = 0.6  # times the share of the question's content words the quote holds
# Taken off per word of the question the knowledge base does not hold at all
# (and per identifier the passages lack) that qualifies a thing the quote
# names: the word after it in the question is one the quote holds. A near
# miss ("the Model T van" where the base has the Model K, "sick leave" beside
# paid leave) shares every other word with the sentence that would be
# quoted, but asks for a kind of that thing the knowledge base does not name.
UNKNOWN_WEIGHT = 0.75
# Taken off per other word the base lacks (a verb, a noun standing alone:
# "allowance" in "the yearly allowance of paid leave"): a question in other
# words than the text more often than a near miss.
OTHER_WORD_WEIGHT = 0.25
# A word the base lacks is a question in other words, not a near miss, when
# the quote holds a word this close to it in meaning (all-MiniLM-L6-v2's
# cosine of the two words alone): "retained" beside "kept", "yearly" beside
# "annual"; "sick" has nothing near it beside "paid leave". Identifiers
# always count.
NEAR_WORD = 0.55
# The same for a word the base lacks that does not qualify a thing the quote
# names (a verb: "inspected" beside "checked").
OTHER_NEAR = 0.5
# Taken off when the question asks for a kind of thing (an amount, a number,
# a frequency, a time, a person: rag/answering/asked_kind.py) that the
# quote holds none of.
KIND_WEIGHT = 0.25
# A word qualifying a thing the quote names with another word ("petrol vans"
# beside "electric vans", "unpaid leave" beside "paid leave") asks for
# another kind of it, costing as much as an identifier the passages lack,
# where the passages name several kinds of that thing or the asked one
# elsewhere (a sibling, however close in meaning: "petrol" is 0.72 from
# "diesel"), unless the two words are this close: the same kind said
# otherwise ("yearly" beside "annual", 0.82).
SIBLING_NEAR = 0.8
# The relation a "who" question asks about ("won") and the operation of a
# "how do I" one ("remove"), rag/answering/asked_kind.py, must be in the
# quote, or a word this close to it ("owns" beside "owner", 0.80; not "won"
# beside "prize", 0.68).
RELATION_NEAR = 0.75
# Taken off when the quote lacks that relation: it names the same thing in
# another relation ("Fuel cards are issued by the fleet desk" for "Who sets
# the limit of the fuel cards?"), and shares every other word with the
# question, so it costs more than a kind of thing missing.
RELATION_WEIGHT = 0.75
# Words that name one thing among similar ones: a single capital letter
# ("Model T"; not "I" or "A") or a word with a digit ("Q3", "1050"). The BM25
# terms leave single letters and digits out.
_IDENTIFIER = re.compile(r"\b(?:(?![AI]\b)[A-Z]|\w*\d\w*)\b")
_TOKEN = re.compile(r"\w+")
_MEASURES = frozenset({"time", "times"})


@dataclass(frozen=True)
class Candidate:
    """A quote offered to the model: a sentence, or a table's caption,
    header and matching rows; `n` is its passage's number in the prompt."""

    n: int
    sentence: str
    similarity: float  # cosine to the question (of the closest row, for a table)
    overlap: float = 0.0  # share of the question's content words in the quote
    unknown: int = 0  # words of the question the base lacks, identifiers the passages lack
    near: tuple[float, ...] = ()  # per plain word of `unknown`: its nearest word of the quote
    qualifies: tuple[bool, ...] = ()  # per plain word: it qualifies a word the quote holds
    missing_kind: bool = False  # the question asks for a kind of thing the quote lacks
    missing_relation: bool = False  # the quote lacks the relation "who"/"how do I" asks about
    siblings: int = 0  # words the base holds asking for another kind of a thing the quote names

    def lacking(self, near: float = NEAR_WORD, other: float | None = None) -> tuple[int, int]:
        """The words of `unknown` the quote does not say in other words (no
        word of it at least `near` close; `other`, default `near`, for a
        word not qualifying a thing the quote names), with `siblings`:
        (identifiers and words qualifying a thing the quote names, other words)."""
        other = near if other is None else other
        plain = [q for c, q in zip(self.near, self.qualifies, strict=True)
                 if c < (near if q else other)]  # fmt: skip
        identifiers = self.unknown - len(self.near) + self.siblings
        return identifiers + sum(plain), len(plain) - sum(plain)

    @property
    def support(self) -> float:
        """The evidence that this quote answers the question."""
        qualifying, other = self.lacking(NEAR_WORD, OTHER_NEAR)
        return (
            self.similarity
            + OVERLAP_WEIGHT * self.overlap
            - UNKNOWN_WEIGHT * qualifying
            - OTHER_WORD_WEIGHT * other
            - KIND_WEIGHT * self.missing_kind
            - RELATION_WEIGHT * self.missing_relation
        )


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
    min_support: float,
    said: Sequence[str] = (),
    own: str | None = None,
    known: Callable[[str], bool] | None = None,
) -> list[Candidate]:
    """Up to `limit` quotes of the passages (numbered 1.. in `ordered`, the
    first being retrieval's strongest) best supported as answers to the
    question, best first; none below `min_support`. A passage offers its
    sentences and, for each table in it, the header with the rows the
    question names. What the conversation already `said` (earlier answers)
    is not offered again as a sentence: a follow-up asks for something new.

    `own`: for a follow-up searched as `question` joined to the conversation
    (rag/answering/followup.py), the follow-up as asked. A quote's support is the
    better of its support for either: the joined words found the passages,
    but the answer holds what the follow-up itself asks for ("What is her
    extension?"), rarely the earlier question's words too. It is weighed for
    the follow-up joined to each thing the last of `said` named, too
    (`followup.referred`): "it" may point there.

    `known`: whether the knowledge base holds a word anywhere (None: not
    known; only identifiers the passages lack count against a quote)."""
    own = own or question
    quotes = _quotes(question, own, ordered, said)
    if not quotes:
        return []
    texts = [t for _, group in quotes.values() for t in group]
    vectors = np.asarray(embedder.embed_batch(texts, kind="document"), dtype=np.float32)
    referents = followup.referred(own, question, said[-1]) if said and own != question else []
    asks = list(dict.fromkeys([question, own, *referents]))
    queries = np.asarray(embedder.embed_batch(asks, kind="query"), dtype=np.float32)
    scores = iter((vectors @ queries.T).tolist())
    held = " ".join(hit.text for hit in ordered)
    unknown = [unknown_words(ask, held, known) for ask in asks]
    plain = [sorted(u - _identifiers(ask)) for u, ask in zip(unknown, asks, strict=True)]
    relations = {r for r in map(asked_kind.relation, asks) if r}
    nearest = _nearest(embedder, {w for p in plain for w in p} | relations, list(quotes))
    siblings = Siblings(embedder, kinds(held), list(quotes), dict(zip(asks, unknown, strict=True)),
                        SIBLING_NEAR, OTHER_NEAR)  # fmt: skip
    found = []
    for quote, (n, group) in quotes.items():
        closeness = [next(scores) for _ in group]  # per text: one score per query
        near = nearest[quote]
        quote = _best_rows(quote, [max(c) for c in closeness]) if len(group) > 1 else quote
        best = max(
            (_candidate(n, quote, max(c[i] for c in closeness), ask, len(unknown[i]), plain[i],
                        near, siblings.of(ask, quote))
             for i, ask in enumerate(asks)),
            key=lambda c: c.support,
        )  # fmt: skip
        found.append(best)
    found.sort(key=lambda c: -c.support)  # stable: passage order breaks ties
    return [c for c in found[:limit] if c.support >= min_support]


def _candidate(
    n: int,
    quote: str,
    similarity: float,
    ask: str,
    unknown: int,
    plain: list[str],
    near: dict[str, float],
    siblings: set[str],
) -> Candidate:
    """The quote as evidence for `ask`: a plain word of `plain` asking for
    another kind of a thing the quote names is a near miss however close
    in meaning; the others are weighed by their closeness `near`."""
    relation = asked_kind.relation(ask)
    unrelated = (
        relation is not None
        and not _is_table(quote)
        and not set(terms(relation)) & set(terms(quote))
        and near.get(relation, -1.0) < RELATION_NEAR
    )
    return Candidate(
        n, quote, similarity, _share(ask, quote), unknown,
        tuple(-1.0 if w in siblings else near[w] for w in plain),
        tuple(w in siblings or _qualifies(ask, w, quote) for w in plain),
        asked_kind.lacks(ask, quote),
        unrelated,
        len(siblings - set(plain)),
    )  # fmt: skip


def _is_table(quote: str) -> bool:
    """Whether the quote is a table's header and rows, whose columns name
    what each row is (the rows were chosen by rule, table_rows.py)."""
    return "\n|" in quote or quote.startswith("|")


def _qualifies(question: str, word: str, quote: str) -> bool:
    """Whether `word` of the question qualifies a thing the quote names: the
    word after it is one the quote holds ("parental" in "parental leave"
    beside "paid leave"), rather than a verb or a noun of its own."""
    words = [w.lower() for w in _TOKEN.findall(question)]
    after = [words[i + 1] for i, w in enumerate(words[:-1]) if w == word]
    held = set(terms(quote))
    return any(followup.content_terms(w) & held for w in after)


def _quotes(
    question: str, own: str, ordered: Sequence[Hit], said: Sequence[str]
) -> dict[str, tuple[int, list[str]]]:
    """Each quote the passages offer -> its passage's number, the texts to embed."""
    before = " ".join(" ".join(text.split()) for text in said)
    quotes: dict[str, tuple[int, list[str]]] = {}
    for n, hit in enumerate(ordered, start=1):
        for sentence in sentences(table_rows.prose(hit.text)):
            if sentence not in before:
                quotes.setdefault(sentence, (n, [sentence]))  # overlapping chunks repeat them
        for table in table_rows.tables(hit.text):
            rows = table_rows.matching_rows(own, table, context=question)
            if rows:
                quote = table.quote([table.rows[i] for i in rows])
                quotes.setdefault(quote, (n, [table.as_text(table.rows[i]) for i in rows]))
    return quotes


def _identifiers(question: str) -> set[str]:
    return {w.lower() for w in _IDENTIFIER.findall(question)}


def _nearest(
    embedder: Embedder, lacking: set[str], quotes: list[str]
) -> dict[str, dict[str, float]]:
    """Per quote, each of the `lacking` words' closeness in meaning to the
    quote's nearest content word (-1 when it has none)."""
    if not lacking:
        return {quote: {} for quote in quotes}
    asked = sorted(lacking)
    spoken = {
        q: {w for w in set(_TOKEN.findall(q.lower())) if followup.content_terms(w)} for q in quotes
    }
    words = sorted(set().union(*spoken.values()))
    vectors = np.asarray(embedder.embed_batch(asked + words, kind="document"), dtype=np.float32)
    close = vectors[len(asked) :] @ vectors[: len(asked)].T  # a row per quote word
    at = {w: i for i, w in enumerate(words)}
    nearest = {}
    for quote, said in spoken.items():
        rows = [at[w] for w in said]
        best = close[rows].max(axis=0) if rows else np.full(len(asked), -1.0)
        nearest[quote] = dict(zip(asked, best.tolist(), strict=True))
    return nearest


def _share(question: str, quote: str) -> float:
    """The share of the question's content words that the quote holds
    ("what", "her" say nothing of what is asked)."""
    asked = followup.content_terms(question)
    return len(asked & set(terms(quote))) / len(asked) if asked else 0.0


def unknown_words(question: str, text: str, known: Callable[[str], bool] | None = None) -> set[str]:
    """The question's content words that neither `text` (the passages read)
    nor, per `known`, the rest of the base holds, as asked rather than as
    BM25 terms, with the identifiers such as "T" or "Q3" that `text` lacks.
    (`known` None: the base is taken to hold every word.)"""
    held, tokens = set(terms(text)), set(_TOKEN.findall(text.lower()))
    unknown = _identifiers(question) - tokens
    words = _TOKEN.findall(question)
    for before, word in zip(["", *words], words, strict=False):
        if before.lower() == "how" or word.lower() in _MEASURES:
            continue  # "How often", "How big", "how many times": the answer names a measure
        if known is not None and followup.content_terms(word) - held and not known(word):
            unknown.add(word.lower())  # as asked: its meaning is weighed (`_nearest`)
    return unknown


def _best_rows(quote: str, closeness: list[float]) -> str:
    """A table quote cut to its MAX_ROWS rows closest to the question."""
    lines = quote.split("\n")
    rows = lines[len(lines) - len(closeness) :]
    best = sorted(range(len(rows)), key=lambda i: -closeness[i])[: table_rows.MAX_ROWS]
    return "\n".join(lines[: len(lines) - len(rows)] + [rows[i] for i in sorted(best)])


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
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'
