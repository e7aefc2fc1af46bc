"""Quantiles read from the fixed log-spaced histogram are within 10% of exact."""

from __future__ import annotations

import math
import random

import pytest

from pycanary import defaults, histogram, metrics, stats


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


def test_one_quantile_function_interpolates() -> None:
    # the analysis (stats) and the views (histogram, metrics) use the same function
    assert stats.quantile is histogram.quantile and stats.quantiles is histogram.quantiles
    lo, hi = histogram.bucket_bounds(10)
    # 4 values in bucket 10: the median is the geometric point halfway through it, not the
    # bucket midpoint rounded to a 10% step
    assert histogram.quantile({10: 4}, 0.5) == pytest.approx(lo * (hi / lo) ** 0.5)
    assert histogram.quantile({10: 4}, 0.25) == pytest.approx(lo * (hi / lo) ** 0.25)
    assert histogram.quantiles({10: 1, 20: 1}, (0.5, 1.0)) == [
        pytest.approx(hi), pytest.approx(histogram.bucket_bounds(20)[1])]
    w = metrics.WindowStats("q", "v1", "stable", 0, 10_000, run_hist={10: 4})
    assert w.run_quantile(0.5) == histogram.quantile({10: 4}, 0.5)


def test_metrics_hash_decoded_in_one_place() -> None:
    f = metrics.decode({"ok": "7", "failed": "2", "late": "1", "r12": "5", "r3": "4",
                        "w0": "9", "extra": "1", "rx": "3"})
    assert f.counts == {"ok": 7, "failed": 2, "late": 1}
    assert f.run_hist == {12: 5, 3: 4} and f.wait_hist == {0: 9}
    # a difference of two hashes (ints, possibly negative after a reset) decodes the same way
    assert metrics.decode({"ok": -1, "r2": 3}).counts == {"ok": -1}
    w = metrics.WindowStats("q", "v1", "stable", 0, 10_000)
    metrics.add_slot(w, {"ok": "3", "r5": "3"})
    metrics.add_slot(w, {"ok": "1", "failed": "1", "r5": "2", "w1": "2"})
    assert (w.ok, w.failed, w.run_hist, w.wait_hist, w.slots_with_data) == (
        4, 1, {5: 5}, {1: 2}, 2)


def test_defaults_ttl() -> None:
    assert defaults.ttl_ms(2.0) == 6000 == defaults.TTL_MS
    assert defaults.ttl_ms(0.5) == 1500
