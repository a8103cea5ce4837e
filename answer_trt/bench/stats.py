"""Order statistics of repeated timings."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    """Median, 90th percentile (nearest rank) and minimum, in the samples' unit."""

    median: float
    p90: float
    min: float
    runs: int

    def scaled(self, factor: float) -> Summary:
        return Summary(self.median * factor, self.p90 * factor, self.min * factor, self.runs)


def summarize(samples: Sequence[float]) -> Summary:
    if not samples:
        raise ValueError("no samples to summarize")
    ordered = sorted(samples)
    n = len(ordered)
    mid = n // 2
    median = ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    p90 = ordered[max(0, math.ceil(0.9 * n) - 1)]
    return Summary(median, p90, ordered[0], n)
