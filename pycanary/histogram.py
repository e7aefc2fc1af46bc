"""Fixed log-spaced latency histogram shared by workers (writers) and analysis (readers).

Bucket boundaries are fixed for the life of the project so histograms recorded by different
versions and workers can be added together and compared bucket by bucket. Growth factor 1.1
keeps the geometric midpoint of any bucket within ~5% of any value in it, which is what makes
p50/p95/p99 read from the histogram land within 10% of the exact quantile.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

#: Lowest bucket boundary, in microseconds (100 us).
LOW_US = 100
#: Highest boundary we resolve, in microseconds (10 minutes).
HIGH_US = 600_000_000
GROWTH = 1.1
_LOG_GROWTH = math.log(GROWTH)
#: Bucket 0 holds everything below LOW_US; the last bucket holds everything >= HIGH_US.
N_FINITE = math.ceil(math.log(HIGH_US / LOW_US) / _LOG_GROWTH)
N_BUCKETS = N_FINITE + 2


def bucket_index(us: float) -> int:
    """Return the bucket of a latency in microseconds."""
    if us < LOW_US:
        return 0
    if us >= HIGH_US:
        return N_BUCKETS - 1
    i = int(math.log(us / LOW_US) / _LOG_GROWTH) + 1
    return min(i, N_BUCKETS - 2)


def bucket_bounds(i: int) -> tuple[float, float]:
    """[low, high) bounds of bucket i in microseconds; the outer buckets are open-ended."""
    if i <= 0:
        return (0.0, float(LOW_US))
    if i >= N_BUCKETS - 1:
        return (float(HIGH_US), math.inf)
    return (LOW_US * GROWTH ** (i - 1), LOW_US * GROWTH**i)


def bucket_value(i: int) -> float:
    """Representative value of bucket i (geometric midpoint), in microseconds."""
    lo, hi = bucket_bounds(i)
    if i <= 0:
        return LOW_US / 2
    if math.isinf(hi):
        return lo
    return math.sqrt(lo * hi)


def quantile(counts: Mapping[int, int], q: float) -> float | None:
    """The q-quantile (0 < q <= 1) in microseconds, or None for an empty histogram."""
    total = sum(counts.values())
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i in sorted(counts):
        seen += counts[i]
        if seen >= rank:
            return bucket_value(i)
    return bucket_value(max(counts))


def merge(*hists: Mapping[int, int]) -> dict[int, int]:
    """Add histograms bucket by bucket."""
    out: dict[int, int] = {}
    for h in hists:
        for i, c in h.items():
            out[i] = out.get(i, 0) + c
    return out
