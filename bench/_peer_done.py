"""The no-op job of bench/peers.py, the same for every queue: count one completion in Redis.

Every peer's worker runs its framework's own task wrapper around `done()`, which makes one
INCR on the peer's own Redis database ($PEERS_URL) and, on the first and the $PEERS_N-th
completion, records the monotonic clock (system-wide on Linux, so comparable across the
worker's processes and forks). The bench reads those keys; so every peer pays the same one
round trip per job, and completions are counted from Redis, not from a worker's own log.
"""

from __future__ import annotations

import os
import time

import redis

DONE, FIRST, LAST = "peers:done", "peers:first_ns", "peers:last_ns"
_client: redis.Redis | None = None
_pid = 0


def done() -> None:
    global _client, _pid
    if _client is None or _pid != os.getpid():  # a forking worker (rq) needs its own socket
        _client = redis.Redis.from_url(os.environ["PEERS_URL"])
        _pid = os.getpid()
    n = _client.incr(DONE)
    if n == 1:
        _client.set(FIRST, time.monotonic_ns())
    if n == int(os.environ["PEERS_N"]):
        _client.set(LAST, time.monotonic_ns())
