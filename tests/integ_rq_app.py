"""An existing RQ application given canaries (tests/test_integ_rq.py): its job function knows
nothing of pycanary; the producer imports pycanary's Queue instead of rq's, and workers run
with `-w pycanary.integrations.rq.SimpleWorker`.

The job's test instrumentation writes each run under the test's prefix so the test accounts
for every job; the bad build is simulated by the worker's environment (INTEG_FAIL=1)."""

from __future__ import annotations

import os
import sys
import time

import redis
from rq import Retry

from pycanary.integrations.rq import Queue

URL = os.environ.get("PYCANARY_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("PYCANARY_PREFIX", "pycanary-integ")

_r = redis.Redis.from_url(URL, decode_responses=True)


def charge(order_id: str, n: int) -> str:
    from rq import get_current_job

    job = get_current_job()
    version = os.environ.get("PYCANARY_VERSION", "?")
    time.sleep(float(os.environ.get("INTEG_SLEEP", "0.002")))
    if os.environ.get("INTEG_FAIL") == "1":
        _r.hincrby(f"{PREFIX}:integ:failed", version, 1)
        raise RuntimeError("v2 cannot reach the gateway")
    pipe = _r.pipeline(transaction=False)
    pipe.hincrby(f"{PREFIX}:integ:runs", job.id, 1)
    pipe.sadd(f"{PREFIX}:integ:done:{version}", job.id)
    pipe.execute()
    return version


def publish(rate: float) -> None:
    """The application's producer: steady traffic with sticky order ids until told to stop."""
    q = Queue("payments", connection=redis.Redis.from_url(URL), sticky="order_id")
    i = 0
    while not _r.exists(f"{PREFIX}:integ:stop"):
        order = f"order-{i % 60}"
        job = q.enqueue("tests.integ_rq_app.charge", order_id=order, n=i, retry=Retry(max=1000))
        _r.rpush(f"{PREFIX}:integ:sent", f"{job.id} {order}")
        i += 1
        time.sleep(1 / rate)
    _r.set(f"{PREFIX}:integ:stopped", i)


if __name__ == "__main__":
    publish(float(sys.argv[1]) if len(sys.argv) > 1 else 150.0)
