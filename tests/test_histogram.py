"""Quantiles read from the fixed log-spaced histogram are within 10% of exact."""

from __future__ import annotations

import math
import random

import pytest

from pycanary import histogram


def exact(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[max(0, math.ceil(q * len(s)) - 1)]


DISTRIBUTIONS = {
    "lognormal-1ms": lambda r: r.lognormvariate(math.log(1_000), 0.6),
    "lognormal-200ms": lambda r: r.lognormvariate(math.log(200_000), 1.0),
    "uniform-100us-10min": lambda r: r.uniform(100, 600_000_000),
    "exponential-50ms": lambda r: r.expovariate(1 / 50_000) + 100,
    "bimodal": lambda r: r.choice([r.gauss(2_000, 200), r.gauss(80_000, 5_000)]),
    "loguniform": lambda r: math.exp(r.uniform(math.log(100), math.log(600_000_000))),
}


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_quantiles_within_10_percent(name: str) -> None:
    rng = random.Random(42)
    values = [max(100.0, DISTRIBUTIONS[name](rng)) for _ in range(50_000)]
    counts: dict[int, int] = {}
    for v in values:
        b = histogram.bucket_index(v)
        counts[b] = counts.get(b, 0) + 1
    for q in (0.5, 0.95, 0.99):
        got = histogram.quantile(counts, q)
        want = exact(values, q)
        assert abs(got - want) / want <= 0.10, (name, q, got, want)


def test_bucket_edges() -> None:
    assert histogram.bucket_index(0) == 0
    assert histogram.bucket_index(99.9) == 0
    assert histogram.bucket_index(100) == 1
    assert histogram.bucket_index(600_000_000) == histogram.N_BUCKETS - 1
    for i in range(1, histogram.N_BUCKETS - 1):
        lo, hi = histogram.bucket_bounds(i)
        assert histogram.bucket_index(lo * 1.0000001) == i
        assert hi / lo == pytest.approx(histogram.GROWTH)
    assert histogram.quantile({}, 0.5) is None
    assert histogram.merge({1: 2}, {1: 3, 4: 1}) == {1: 5, 4: 1}
