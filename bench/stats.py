"""The benchmarks' one percentile rule.

`percentile` interpolates linearly between the two nearest ranks of the
sorted values (numpy's default method, "linear"): at q=0.5 it is the
median, and p95 of 20 samples lies between the 19th and 20th. Every
bench script reports p50 and p95 through it, so their figures compare.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0 <= q <= 1) of `values`; NaN when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def p50_p95(values: Sequence[float]) -> tuple[float, float]:
    """The median and the 95th percentile of `values`."""
    return percentile(values, 0.5), percentile(values, 0.95)
