"""Rank fusion: combine the BM25 and dense rankings into one.

Rankings are best-first lists of (id, score); functions return a best-first
list of (id, fused score).

The default is `convex` (its weight and depth are `Settings`), chosen with
bench/fusion.py on one half of SciFact's queries and checked on the other
(BENCHMARKS.md): it keeps how much better one passage scored than the next,
which reciprocal-rank fusion throws away. `rrf` stays for comparison
(`RAG_FUSION=rrf`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

Ranking = Sequence[tuple[int, float]]


def rrf(
    rankings: Sequence[Ranking], k: float = 60.0, weights: Sequence[float] | None = None
) -> list[tuple[int, float]]:
    """Reciprocal-rank fusion (Cormack et al., 2009): sum of w / (k + rank),
    rank counted from 1. Ties keep the order of first appearance."""
    weights = weights or [1.0] * len(rankings)
    fused: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, (item, _score) in enumerate(ranking, start=1):
            fused[item] = fused.get(item, 0.0) + weight / (k + rank)
    return sorted(fused.items(), key=lambda pair: -pair[1])


def _minmax(values: Sequence[float]) -> list[float]:
    low, high = min(values), max(values)
    span = high - low
    return [(v - low) / span if span > 0 else 0.0 for v in values]


def convex(
    dense: Mapping[int, float], lexical: Mapping[int, float], *, alpha: float
) -> list[tuple[int, float]]:
    """alpha * dense + (1 - alpha) * BM25, each min-max normalised over the
    candidates. Every candidate must have its exact dense score; a candidate
    missing from `lexical` matched no query term and scores 0 there.
    `alpha` has no default here: its one home is `Settings.fusion_alpha`."""
    ids = list(dense)
    if not ids:
        return []
    d = _minmax([dense[i] for i in ids])
    l = _minmax([lexical.get(i, 0.0) for i in ids])  # noqa: E741
    fused = [(i, alpha * a + (1 - alpha) * b) for i, a, b in zip(ids, d, l, strict=True)]
    return sorted(fused, key=lambda pair: -pair[1])
