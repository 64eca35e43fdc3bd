"""Text analysis for the BM25 side: the same function turns passages and
queries into terms, so both sides always agree."""

from __future__ import annotations

import re
from functools import lru_cache

import Stemmer
from bm25s.stopwords import STOPWORDS_EN

# Two or more word characters, as bm25s and scikit-learn tokenise: single
# letters carry almost no signal and bloat the postings.
_WORD = re.compile(r"(?u)\b\w\w+\b")
_STOP = frozenset(STOPWORDS_EN)

ANALYZER_ID = "word2+lower+stop-en33+snowball-en"


@lru_cache(maxsize=1)
def _stemmer() -> Stemmer.Stemmer:
    return Stemmer.Stemmer("english")


def terms(text: str) -> list[str]:
    """Lower-cased, stop-word-free, Snowball-stemmed terms of `text`."""
    words = [w for w in _WORD.findall(text.lower()) if w not in _STOP]
    return _stemmer().stemWords(words)


def fts_query(text: str) -> str:
    """An FTS5 MATCH expression that ORs the query's terms.

    Every term is double-quoted so user punctuation ("C++", "AND", "-x") is
    never read as FTS5 syntax.
    """
    unique = dict.fromkeys(terms(text))
    return " OR ".join(f'"{t}"' for t in unique)
