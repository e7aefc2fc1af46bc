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


_behaviour: dict[str, tuple[float, dict[str, str]]] = {}


def _behaviour_of(version: str) -> dict[str, str]:
    """Per-version behaviour set by the test in Redis (fail rate, sleep), re-read every 0.1 s
    so a test can start a regression mid-run."""
    now = time.monotonic()
    cached = _behaviour.get(version)
    if cached is None or now - cached[0] > 0.1:
        raw = _r().hgetall(f"{os.environ['PYCANARY_PREFIX']}:test:behaviour:{version}")
        cached = (now, raw)
        _behaviour[version] = cached
    return cached[1]


def scenario(job: Job) -> None:
    """Fails `fail` of attempts and sleeps `sleep_ms` (lognormal around it), per version."""
    b = _behaviour_of(job.version)
    sleep_ms = float(b.get("sleep_ms", "1"))
    time.sleep(_rng.lognormvariate(0, 0.3) * sleep_ms / 1000)
    if _rng.random() < float(b.get("fail", "0.01")):
        raise RuntimeError(f"{job.version} failed {job.id}")
    _r().rpush(done_key(), job.id)


def record(job: Job) -> None:
    """Sleeps SLEEP_S (default 0), then appends the job id to RECORD_FILE: a local file, so
    runs are recorded while Redis is down. A payload {"exit": n} calls sys.exit(n) instead, and
    {"interrupt": true} raises KeyboardInterrupt (both must fail only that attempt)."""
    import sys

    p = job.payload if isinstance(job.payload, dict) else {}
    if "exit" in p:
        sys.exit(p["exit"])
    if p.get("interrupt"):
        raise KeyboardInterrupt("handler interrupt")
    time.sleep(float(os.environ.get("SLEEP_S", "0")))
    fd = os.open(os.environ["RECORD_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (job.id + "\n").encode())  # one O_APPEND write: atomic across processes
    finally:
        os.close(fd)


def starts_key() -> str:
    return f"{os.environ['PYCANARY_PREFIX']}:test:starts"


def finishes_key() -> str:
    return f"{os.environ['PYCANARY_PREFIX']}:test:finishes"


def versioned(job: Job) -> None:
    """Sleeps SLOW_S seconds (default 1), recording "id version lane ms" when it starts and
    when it finishes (wall clock), so a test can tell which version ran each job and when."""
    _r().rpush(starts_key(), f"{job.id} {job.version} {job.lane} {int(time.time() * 1000)}")
    time.sleep(float(os.environ.get("SLOW_S", "1")))
    _r().rpush(finishes_key(), f"{job.id} {job.version} {job.lane} {int(time.time() * 1000)}")
