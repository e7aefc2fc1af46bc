"""Handlers used by the worker tests, imported by worker processes as tests.handlers:NAME.

They record what ran in Redis under the test's own prefix (PYCANARY_PREFIX), so the test can
compare what was enqueued with what was processed.
"""

from __future__ import annotations

import os
import random
import time

import redis

from pycanary.job import Job

_client: redis.Redis | None = None
_rng = random.Random(os.getpid())


def _r() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["PYCANARY_REDIS_URL"], decode_responses=True)
    return _client


def done_key() -> str:
    return f"{os.environ['PYCANARY_PREFIX']}:test:done"


def started_key() -> str:
    return f"{os.environ['PYCANARY_PREFIX']}:test:started"


def flaky(job: Job) -> None:
    """About 1 ms of work; 10% of attempts fail at random."""
    time.sleep(0.001)
    if _rng.random() < 0.10:
        raise RuntimeError(f"induced failure of {job.id} attempt {job.attempt}")
    _r().rpush(done_key(), job.id)


def slow(job: Job) -> None:
    """Sleeps SLOW_S seconds (default 0.3), recording start and finish."""
    _r().rpush(started_key(), job.id)
    time.sleep(float(os.environ.get("SLOW_S", "0.3")))
    _r().rpush(done_key(), job.id)
