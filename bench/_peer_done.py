"""The no-op job of bench/peers.py, the same for every queue: count completions in Redis.

Every peer's worker runs its framework's own task wrapper around `done()`. A worker process
counts its completions and adds them to the peer's own Redis database ($PEERS_URL) with one
INCRBY per FLUSH_EVERY jobs (and on its first and its $PEERS_N-th), recording the monotonic
clock (system-wide on Linux, so comparable with the bench's) at the first completion and at
the $PEERS_N-th. So the count costs every peer one round trip per 50 jobs, not one per job,
except rq's forking worker: each of its jobs runs in a new process, which adds its one.
"""

from __future__ import annotations

import os
import threading
import time

import redis

DONE, FIRST, LAST = "peers:done", "peers:first_ns", "peers:last_ns"
FLUSH_EVERY = 50
_lock = threading.Lock()
_client: redis.Redis | None = None
_pid = 0
_count = 0  # completions this process has counted
_pending = 0  # of which not yet added in Redis


def done() -> None:
    global _client, _pid, _count, _pending
    with _lock:
        if _pid != os.getpid():  # first job of this process (or of a fork: rq's work horse)
            _client = redis.Redis.from_url(os.environ["PEERS_URL"])
            _pid, _count, _pending = os.getpid(), 0, 0
        _count += 1
        _pending += 1
        n = int(os.environ["PEERS_N"])
        if _count == 1 or _pending >= FLUSH_EVERY or _count >= n:
            _flush(n)


def _flush(n: int) -> None:
    global _pending
    assert _client is not None
    now = time.monotonic_ns()
    total = _client.incrby(DONE, _pending)
    _pending = 0
    if _count == 1:
        _client.set(FIRST, now, nx=True)
    if total >= n:
        _client.set(LAST, now, nx=True)
