"""The BM25 side: text analysis, and the per-generation BM25 index.

Passages and queries go through the same `terms()`. The index is built by
bm25s (Lucene BM25, k1=1.2, b=0.75) when a generation is published, from
the analysed terms stored with each chunk, and saved next to it as numpy
arrays and JSON (no pickle). Readers memory-map it. It scores from
precomputed per-term arrays, where SQLite FTS5 scores every row containing
any query term (bench/query.py compares the two).
"""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np
import Stemmer


@contextmanager
def _jax_unseen() -> Iterator[None]:
    """bm25s probes for JAX when it is imported and, where JAX imports,
    runs one JAX operation to pick it for top-k selection. On a GPU machine
    that starts JAX's GPU backend, which takes three quarters of the GPU's
    memory for the life of the process (and of every Ray worker that
    imports this module), leaving the embedding model and vLLM out of
    memory. We select top-k with numpy, so bm25s is imported with JAX
    hidden, unless the process has already imported JAX itself."""
    if "jax" in sys.modules or "bm25s" in sys.modules:
        yield
        return
    sys.modules["jax"] = None  # type: ignore[assignment]  # `import jax` raises ImportError
    try:
        yield
    finally:
        del sys.modules["jax"]


with _jax_unseen():
    import bm25s
    from bm25s.stopwords import STOPWORDS_EN

# Two or more word characters, as bm25s and scikit-learn tokenise: single
# letters carry almost no signal and bloat the postings.
_WORD = re.compile(r"(?u)\b\w\w+\b")
_STOP = frozenset(STOPWORDS_EN)
K1, B = 1.2, 0.75

ANALYZER_ID = "word2+lower+stop-en33+snowball-en;bm25-lucene-k1.2-b0.75"
IDS_FILE = "chunk_ids.npy"

# numpy reads a .npy header with ast.literal_eval, and CPython 3.11 counts
# the AST constructor's depth in state every thread shares: two threads
# opening generations at once can fail with "SystemError: AST constructor
# recursion depth mismatch" (python/cpython#106905). Opening is rare and
# short; searching, which is what runs concurrently, takes no lock.
_OPENING = threading.Lock()


@lru_cache(maxsize=1)
def _stemmer() -> Stemmer.Stemmer:
    return Stemmer.Stemmer("english")


def terms(text: str) -> list[str]:
    """Lower-cased, stop-word-free, Snowball-stemmed terms of `text`."""
    words = [w for w in _WORD.findall(text.lower()) if w not in _STOP]
    return _stemmer().stemWords(words)


def build(folder: Path, chunk_ids: Sequence[int], chunk_terms: Sequence[list[str]]) -> None:
    """Write the BM25 index of a generation into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / IDS_FILE, np.asarray(chunk_ids, dtype=np.int64), allow_pickle=False)
    if not chunk_ids:
        return
    index = bm25s.BM25(method="lucene", k1=K1, b=B)
    index.index([list(t) for t in chunk_terms], show_progress=False)
    index.save(str(folder), allow_pickle=False)


class LexicalIndex:
    """A generation's BM25 index, read-only."""

    def __init__(self, folder: Path) -> None:
        self._index = None
        with _OPENING:
            self.ids = np.load(folder / IDS_FILE, allow_pickle=False)
            if len(self.ids):
                self._index = bm25s.BM25.load(str(folder), mmap=True, allow_pickle=False)

    def has_term(self, term: str) -> bool:
        """Whether some chunk holds the analysed `term` (one of `terms()`):
        the index's vocabulary is that of this generation's chunks."""
        if self._index is None or not term:
            return False
        return term in (self._index.vocab_dict or {})

    def scores(self, query: str) -> np.ndarray:
        """The BM25 score of every chunk (aligned with `self.ids`)."""
        words = terms(query)
        if self._index is None or not words:
            return np.zeros(len(self.ids), dtype=np.float32)
        return np.asarray(self._index.get_scores(words), dtype=np.float32)

    def rank(
        self,
        query: str,
        k: int,
        also: Sequence[int] = (),
        allowed: np.ndarray | None = None,
    ) -> tuple[list[tuple[int, float]], dict[int, float]]:
        """The `k` best chunks by BM25 (score > 0; only chunks whose ids are
        in the sorted `allowed`, when given), and the BM25 scores of those
        and of the chunks in `also` (0 where no query term matched), for
        fusion. Only those few are looked up: at 100k chunks a common term
        matches tens of thousands."""
        scores, ids = self.scores(query), self.ids
        positive = scores > 0
        if allowed is not None:
            # Scores stay those of the whole collection (the same IDF as an
            # unfiltered search); only the candidates are restricted.
            positive &= np.isin(ids, allowed, assume_unique=True)
        matched = np.flatnonzero(positive)
        if len(matched) > k:
            # Back in id order, so that ties rank as a full sort ranks them.
            matched = np.sort(matched[np.argpartition(-scores[matched], k - 1)[:k]])
        top = matched[np.argsort(-scores[matched], kind="stable")]
        ranked = [(int(ids[i]), float(scores[i])) for i in top]
        lookup = dict(ranked)
        if len(also):
            # `ids` is in chunk-id order (the index is built ORDER BY id).
            wanted = np.asarray(also, dtype=np.int64)
            at = np.minimum(np.searchsorted(ids, wanted), max(len(ids) - 1, 0))
            found = (ids[at] == wanted) if len(ids) else np.zeros(len(wanted), dtype=bool)
            for cid, pos, ok in zip(wanted.tolist(), at.tolist(), found.tolist(), strict=True):
                lookup.setdefault(cid, float(scores[pos]) if ok else 0.0)
        return ranked, lookup
