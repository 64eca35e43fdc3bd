"""Which words of a question ask for another kind of a thing a quote names.

"How many petrol vans does the fleet have?" beside "30 diesel vans and 16
electric vans": "petrol" qualifies "vans" as "diesel" and "electric" do, so
it asks for a kind of van the text does not name; close in meaning to
"diesel" (0.72), it is a sibling, not another word for it. A word in that
place is such a sibling where the passages read name several kinds of the
thing ("diesel vans", "electric vans"; "paid leave", "unused leave") and
the base lacks the word, or where they name the asked kind elsewhere ("the
diesel vans" asked of a sentence on the electric vans), unless it is
closer in meaning to the quote's word than a sibling is ("yearly" beside
"annual"). Where the passages name one kind
only ("flammable solvents"), the question's word may well be another word
for it ("combustible"): the extractive read weighs its closeness as for
any word the base lacks (rag/answering/extractive.py).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from rag.answering import followup
from rag.embedding import Embedder
from rag.lexical import terms

_TOKEN = re.compile(r"\w+")
# A word and the next, with nothing but spaces between them: "Accounts,
# laptop" is a list, not a kind of laptop.
_PAIR = re.compile(r"(\w+)(?= +(\w+))")


def _modifier(word: str) -> bool:
    """A word that can name a kind: a content word, not a number or a letter."""
    return (
        len(word) > 1 and not any(c.isdigit() for c in word) and bool(followup.content_terms(word))
    )


def _pairs(text: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in _PAIR.finditer(" ".join(text.lower().split()))]


def kinds(text: str) -> dict[str, set[str]]:
    """Each term of `text` -> the words standing right before it, lower-cased:
    the kinds of it the text names ("30 diesel vans and 16 electric vans" ->
    {"van": {"diesel", "electric"}})."""
    found: dict[str, set[str]] = defaultdict(set)
    for before, word in _pairs(text):
        if _modifier(before):
            for term in terms(word):
                found[term].add(before)
    return found


def contrasts(
    question: str, quote: str, named: dict[str, set[str]], lacking: set[str]
) -> dict[str, set[str]]:
    """The question's words the quote lacks that qualify a thing the quote
    names with another word, where the passages (`named`: their `kinds`)
    name the asked kind of it, or where the base lacks the word (`lacking`)
    and the passages name several kinds of it -> the quote's words for it.
    (A word the base holds elsewhere, but not as a kind of that thing, is
    left to the rest of the rule: "broken files" beside "an empty file", in
    a list of the broken files' kinds.)"""
    asked, said, own = set(terms(question)), set(terms(quote)), kinds(quote)
    found: dict[str, set[str]] = {}
    for word, after in _pairs(question):
        stems = set(terms(word))
        if not _modifier(word) or stems & said:
            continue
        for head in set(terms(after)) & said:
            others = {m for m in own.get(head, ()) if not set(terms(m)) & asked}
            named_kinds = {t for m in named.get(head, ()) for t in terms(m)}
            several = word in lacking and len(named.get(head, ())) >= 2
            if others and (several or stems & named_kinds):
                found.setdefault(word, set()).update(others)
    return found


class Siblings:
    """Per question asked and quote, its words asking for a sibling of a
    kind the quote names: those no closer than `near` to the quote's word
    for that kind, nor than `paraphrase` to any other word of the quote
    ("broken files" beside "an empty file" in a sentence on a "corrupt"
    PDF: the question's word is said otherwise, and "empty file" is one
    kind of broken file, not a sibling)."""

    def __init__(
        self,
        embedder: Embedder,
        named: dict[str, set[str]],
        quotes: Sequence[str],
        asks: dict[str, set[str]],
        near: float,
        paraphrase: float,
    ) -> None:
        self._found = {(a, q): contrasts(a, q, named, u) for a, u in asks.items() for q in quotes}
        self._rest = {q: _content_words(q) for q in quotes}
        words = {w for c in self._found.values() for k, v in c.items() for w in (k, *v)}
        words |= {w for (_, q), c in self._found.items() if c for w in self._rest[q]}
        self._near, self._paraphrase = near, paraphrase
        self._at = {w: i for i, w in enumerate(sorted(words))}
        self._vectors = np.zeros((0, 0), dtype=np.float32)
        if words:
            self._vectors = np.asarray(
                embedder.embed_batch(sorted(words), kind="document"), np.float32
            )

    def of(self, question: str, quote: str) -> set[str]:
        found = self._found.get((question, quote), {})
        return {
            word
            for word, others in found.items()
            if self._closest(word, others) < self._near
            and self._closest(word, self._rest[quote] - others) < self._paraphrase
        }

    def _closest(self, word: str, others: set[str]) -> float:
        row = self._vectors[self._at[word]]
        return max((float(self._vectors[self._at[o]] @ row) for o in others), default=-1.0)


def _content_words(quote: str) -> set[str]:
    return {w for w in _TOKEN.findall(quote.lower()) if _modifier(w)}
