"""Known-answer tests for rank fusion."""

from __future__ import annotations

import pytest

from rag.fusion import convex, rrf


def test_rrf_known_answer():
    bm25 = [(1, 9.0), (2, 5.0), (3, 1.0)]
    dense = [(3, 0.9), (1, 0.8)]
    fused = dict(rrf([bm25, dense], k=60))
    assert fused[1] == pytest.approx(1 / 61 + 1 / 62)
    assert fused[2] == pytest.approx(1 / 62)
    assert fused[3] == pytest.approx(1 / 63 + 1 / 61)
    assert [i for i, _ in rrf([bm25, dense], k=60)] == [1, 3, 2]


def test_rrf_ignores_raw_scores_and_weights_sides():
    a = [(1, 1000.0), (2, 0.001)]
    b = [(2, 5.0), (1, 4.0)]
    assert rrf([a, b], k=1)[0][1] == pytest.approx(rrf([b, a], k=1)[0][1])
    assert rrf([a, b], k=1, weights=[2.0, 1.0])[0][0] == 1
    assert rrf([a, b], k=1, weights=[1.0, 2.0])[0][0] == 2


def test_rrf_of_nothing_is_empty():
    assert rrf([[], []]) == []


def test_convex_known_answer():
    dense = {1: 0.9, 2: 0.5, 3: 0.7}  # min-max: 1.0, 0.0, 0.5
    bm25 = {2: 10.0, 3: 4.0}  # 1 matched nothing: 0 -> min-max: 0.0, 1.0, 0.4
    fused = dict(convex(dense, bm25, alpha=0.6))
    assert fused[1] == pytest.approx(0.6)
    assert fused[2] == pytest.approx(0.4)
    assert fused[3] == pytest.approx(0.6 * 0.5 + 0.4 * 0.4)
    assert [i for i, _ in convex(dense, bm25, alpha=0.6)] == [1, 3, 2]


def test_convex_alpha_picks_a_side_and_handles_ties():
    dense = {1: 0.9, 2: 0.1}
    bm25 = {2: 3.0}
    assert convex(dense, bm25, alpha=1.0)[0][0] == 1
    assert convex(dense, bm25, alpha=0.0)[0][0] == 2
    assert convex({5: 0.3, 6: 0.3}, {}, alpha=0.6) == [(5, 0.0), (6, 0.0)]
    assert convex({}, {1: 2.0}, alpha=0.5) == []
