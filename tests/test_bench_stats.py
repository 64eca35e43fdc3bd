"""The benchmarks' one percentile rule (bench/stats.py), and no second one."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))  # as when a bench script runs: bench/ first on sys.path

import stats  # noqa: E402  (bench/stats.py)


def test_percentiles_interpolate_between_the_nearest_ranks():
    assert stats.percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert stats.percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5  # the median
    assert math.isclose(stats.percentile([float(i) for i in range(1, 21)], 0.95), 19.05)
    assert stats.percentile([7.0], 0.95) == 7.0
    assert math.isnan(stats.percentile([], 0.95))
    assert stats.p50_p95([1.0, 2.0, 3.0, 4.0, 5.0]) == (3.0, 4.8)


def test_no_bench_script_computes_a_percentile_its_own_way():
    own = re.compile(r"0\.95 \*|def percentiles?\b")
    offenders = [
        f"{path.name}:{n}"
        for path in sorted(BENCH.glob("*.py"))
        if path.name != "stats.py"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if own.search(line)
    ]
    assert not offenders, offenders
