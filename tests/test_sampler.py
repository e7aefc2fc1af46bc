"""Sampler correctness: the canary share over 100,000 jobs sits within a binomial 5-sigma band
of the weight, in sticky and random mode; 0% and 100% are exact. Fixed seeds throughout.
Slow on fakeredis (about 10 s a case); all of it runs in CI."""

from __future__ import annotations

import math
import random

import pytest

from pycanary import queue_config
from pycanary.producer import Producer

N = 100_000


@pytest.mark.parametrize("sticky", [True, False], ids=["sticky", "random"])
@pytest.mark.parametrize("weight_bp", [50, 500, 1000, 5000, 0, 10_000])
def test_canary_share_within_5_sigma(conn, sticky: bool, weight_bp: int) -> None:
    queue_config.configure(conn, "payments", sticky=sticky)
    queue_config.set_weight(conn, "payments", weight_bp)
    producer = Producer(conn, rng=random.Random(1234))
    n = N if 0 < weight_bp < 10_000 else 20_000  # the ends are exact; 20,000 show it
    results = producer.enqueue_many("payments", [None] * n, batch_size=1000)
    canary = sum(r.lane == "canary" for r in results)
    qk = conn.keys.queue("payments")
    assert conn.client.llen(qk.lane_canary) == canary
    assert conn.client.llen(qk.lane_stable) == n - canary
    assert int(conn.client.hgetall(qk.routed).get("canary", 0)) == canary
    p = weight_bp / 10_000
    if weight_bp in (0, 10_000):
        assert canary == n * p  # exact at the ends
        return
    sigma = math.sqrt(N * p * (1 - p))
    assert abs(canary - N * p) <= 5 * sigma, (canary, N * p, sigma)
