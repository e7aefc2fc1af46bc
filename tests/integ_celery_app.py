"""An existing Celery application given canaries (tests/test_integ_celery.py): the five lines
of docs/integrations.md, and a task that knows nothing of pycanary.

The task's test instrumentation writes each run to Redis under the test's prefix (the task id
into a set per version, and a run counter), so the test accounts for every task. The bad build
is simulated by the environment of the worker process (INTEG_FAIL=1: the task raises), as a
broken dependency of a new version would; the task's code is the same in both versions.
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

from pycanary.integrations.celery import Canary

URL = os.environ.get("PYCANARY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("PYCANARY_PREFIX", "pycanary-integ")

app = Celery("integ", broker=URL)
app.conf.broker_transport_options = {"global_keyprefix": f"{PREFIX}:celery:"}
app.conf.worker_prefetch_multiplier = 1  # bounds what a rolled-back worker still holds
app.conf.worker_hijack_root_logger = False

# the five lines an application adds (docs/integrations.md)
canary = Canary(app, "payments", redis_url=URL, prefix=PREFIX, sticky="order_id")
app.conf.task_routes = (canary.router,)
canary.install()

_r = redis.Redis.from_url(URL, decode_responses=True)


@app.task(name="integ.charge", bind=True, autoretry_for=(RuntimeError,), max_retries=None,
          default_retry_delay=0.05)
def charge(self, order_id: str, n: int) -> str:
    version = os.environ.get("PYCANARY_VERSION", "?")
    time.sleep(float(os.environ.get("INTEG_SLEEP", "0.002")))
    if os.environ.get("INTEG_FAIL") == "1":
        _r.hincrby(f"{PREFIX}:integ:failed", version, 1)
        raise RuntimeError("v2 cannot reach the gateway")
    pipe = _r.pipeline(transaction=False)
    pipe.hincrby(f"{PREFIX}:integ:runs", self.request.id, 1)
    pipe.sadd(f"{PREFIX}:integ:done:{version}", self.request.id)
    pipe.hset(f"{PREFIX}:integ:ran_at", self.request.id, int(time.time() * 1000))
    pipe.execute()
    return version


@app.task(name="integ.crash", bind=True)
def crash(self, order_id: str) -> None:
    """A task whose pool process dies under it (OOM killer, segfault): kill -9 of itself."""
    import signal

    _r.sadd(f"{PREFIX}:integ:crash_started", self.request.id)
    os.kill(os.getpid(), signal.SIGKILL)
