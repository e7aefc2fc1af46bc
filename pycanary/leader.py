"""Leader election with fencing for the controller (design.md invariant 4: one controller acts).

A lease in Redis (``Keys.leader`` = "epoch:token", PX) says who leads; every new leadership gets
a strictly higher epoch. Three layers keep a deposed leader from acting:

1. **Lease**: only one token holds the leader key at a time; the leader renews it every tick.
2. **Local validity**: `is_leader()` trusts the lease only for ``0.8 * lease_s`` after the last
   confirmed acquire/renew, measured from *before* that call was sent, by the local clock. A
   process that was paused (SIGSTOP, GC, a swapped VM) knows on waking that it may not act,
   without a round trip.
3. **Fencing**: queue keys live in other cluster slots than the leader key, so a controller write
   cannot check the lease itself. Instead every controller script takes the epoch as an ARGV and
   includes ``lua/includes/fence.lua``: a queue remembers the highest epoch that wrote to it and
   refuses older ones (-7, `FencedError`). Right after acquiring, a leader calls
   `fence_queues()` on every queue it will act on, so a deposed leader whose write was already
   in flight is refused there too, even before the new leader writes to that queue.

Typical loop::

    lead = Leadership(conn)
    while True:
        if lead.tick() and not lead.fence_queues(queues):
            for q in queues:
                if not lead.is_leader():
                    break
                act(q, epoch=lead.epoch)        # the script refuses a stale epoch
        time.sleep(lead.lease_s / 5)
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from . import defaults
from .connection import Connection
from .errors import FENCED, raise_for_code
from .keys import Keys
from .validation import queue_name

log = logging.getLogger("pycanary.leader")

#: Share of the lease during which a confirmed leader may act without asking Redis again. The
#: rest is the margin for clock rate differences and the time a call takes to reach Redis.
VALIDITY = 0.8

_REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


class Leadership:
    """One contender for controller leadership. Call `tick()` at least a few times per lease
    (``lease_s / 5`` is a good interval); act only while `is_leader()`, and pass `epoch` to every
    controller script so that Redis refuses the write if a newer leader exists.

    Not thread-safe: one Leadership per controller loop.
    """

    def __init__(
        self,
        conn: Connection,
        *,
        lease_s: float = defaults.LEASE_S,
        controller_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not lease_s > 0:
            raise ValueError(f"lease_s must be positive, got {lease_s!r}")
        self.conn = conn
        self.lease_s = lease_s
        self.controller_id = controller_id or f"{socket.gethostname()}:{os.getpid()}"
        # The nonce makes two contenders with the same id (same process, a restart reusing a
        # pid) distinct: only the exact token that set the lease may renew or release it.
        self.token = f"{self.controller_id}/{uuid.uuid4().hex[:8]}"
        self._clock = clock
        self._lease_ms = max(1, int(lease_s * 1000))
        self._epoch: int | None = None
        self._value: str | None = None  # "epoch:token" as stored in Redis while we lead
        self._confirmed_at: float | None = None  # local time just before the last confirmation

    @property
    def epoch(self) -> int | None:
        """The fencing token of the leadership held (as Redis last confirmed), else None."""
        return self._epoch

    def is_leader(self) -> bool:
        """Whether this process may act now, by the local clock alone: the last confirmed
        acquire/renew started less than ``0.8 * lease_s`` ago. No Redis call, so a process that
        wakes from a pause longer than that stops at once, before its next tick."""
        if self._epoch is None or self._confirmed_at is None:
            return False
        return self._clock() - self._confirmed_at < self.lease_s * VALIDITY

    def tick(self) -> bool:
        """Renew the lease if we lead, else try to acquire it; return `is_leader()`.

        A failed renewal (lease lapsed or taken) drops leadership and tries to acquire at once,
        which takes a new epoch. If Redis cannot be reached the error is logged, nothing is
        confirmed and validity runs out by the local clock.
        """
        started = self._clock()  # before the call: the lease in Redis starts later than this
        try:
            if self._value is not None:
                renewed = self.conn.scripts.call(
                    "leader_renew", [self.conn.keys.leader], [self._value, self._lease_ms])
                if renewed == 1:
                    self._confirmed_at = started
                    return self.is_leader()
                log.warning("lost controller leadership (epoch %s)", self._epoch)
                self._drop()
            self._acquire(started)
        except _REDIS_DOWN as exc:
            log.warning("leader election: Redis unreachable: %s", exc)
        return self.is_leader()

    def _acquire(self, started: float) -> None:
        keys = self.conn.keys
        res = self.conn.scripts.call(
            "leader_acquire", [keys.leader, keys.leader_epoch, keys.leader_since],
            [self.token, self._lease_ms, defaults.now_ms()])
        if isinstance(res, int):
            raise_for_code(res, script="leader_acquire", field="lease_s")
        epoch, value = int(res[0]), res[1]
        if epoch > 0:
            if epoch != self._epoch:
                log.info("acquired controller leadership, epoch %d", epoch)
            self._epoch, self._value, self._confirmed_at = epoch, value, started

    def _drop(self) -> None:
        self._epoch = self._value = self._confirmed_at = None

    def holder(self) -> str | None:
        """The leader's "epoch:token" as stored in Redis (see `holder`)."""
        return holder(self.conn)

    def release(self) -> bool:
        """Give up leadership (on shutdown) so another controller takes over at once instead of
        after the lease. Returns whether our lease was still there to delete."""
        value = self._value
        self._drop()
        if value is None:
            return False
        return self.conn.scripts.call("release_lock", [self.conn.keys.leader], [value]) == 1

    def fence_queues(self, queues: Iterable[str]) -> list[str]:
        """Raise the fence of each queue to our epoch (one pipelined round trip) and return the
        queues that refused it. A refusal means a newer leader exists: leadership is dropped
        here, and the caller must not act. Without leadership every queue counts as refused.

        Call it after every `tick()` that returned True, not only after acquiring: it is
        idempotent and cheap, and it also covers queues created since the last tick. A queue
        whose fence cannot be raised (invalid name, corrupt fence value) is logged and left
        out; `fence()` returns those too.
        """
        refused, broken = self.fence(queues)
        for q, why in broken.items():
            log.warning("cannot fence %r: %s", q, why)
        return refused

    def fence(self, queues: Iterable[str]) -> tuple[list[str], dict[str, str]]:
        """`fence_queues`, also returning the queues whose fence could not be raised, each with
        why (an invalid name, a fence value that is not a number, a refused argument). One bad
        queue must not stop the others being fenced: the caller skips it and reports it."""
        names: list[str] = []
        broken: dict[str, str] = {}
        for q in queues:
            try:
                names.append(queue_name(q))
            except ValueError as exc:
                broken[q] = str(exc)
        if self._epoch is None:
            return names, broken
        results = run_scripts(self.conn, [
            ("fence_queue", [self.conn.keys.queue(q).fence], [self._epoch]) for q in names])
        refused = []
        for q, r in zip(names, results, strict=True):
            if r == FENCED:
                refused.append(q)
            elif isinstance(r, Exception):
                broken[q] = f"fence_queue failed: {r}"
            elif r != 1:
                try:
                    raise_for_code(r, script="fence_queue", field="epoch")
                except Exception as exc:  # reported per queue
                    broken[q] = str(exc)
        if refused:
            log.warning("fenced on %s: a newer controller leads; dropping epoch %s",
                        ", ".join(refused), self._epoch)
            # Give the lease back (if it is still ours) and take a new token: acquiring is
            # idempotent per token, so keeping it would re-take the same, refused epoch forever
            # (possible when the epoch counter fell behind the fences, e.g. after a Redis restore).
            self.release()
            self.token = f"{self.controller_id}/{uuid.uuid4().hex[:8]}"
        return refused, broken


def run_scripts(conn: Connection, calls: Sequence[tuple[str, Sequence[str], Sequence[Any]]]
                ) -> list[Any]:
    """Script calls in one non-transactional round trip, with every reply returned as it came,
    an error reply as its exception object (never raised). A batch of per-queue writes then
    fails one queue at a time: a Lua error caused by one queue's corrupt data (a fence that is
    not a number, a key of the wrong type) leaves the other replies usable. NOSCRIPT replies
    (after SCRIPT FLUSH or a failover) did not run; those calls are replayed once after a
    reload."""
    if not calls:
        return []
    scripts = conn.scripts

    def send(batch: Sequence[tuple[str, Sequence[str], Sequence[Any]]]) -> list[Any]:
        pipe = conn.client.pipeline(transaction=False)
        for name, keys, args in batch:
            pipe.execute_command("EVALSHA", scripts[name].sha, len(keys), *keys, *args)
        return pipe.execute(raise_on_error=False)

    results = send(calls)
    missing = [i for i, r in enumerate(results) if isinstance(r, redis.exceptions.NoScriptError)]
    if missing:
        scripts.load()
        for i, r in zip(missing, send([calls[i] for i in missing]), strict=True):
            results[i] = r
    return results


def holder(conn: Connection) -> str | None:
    """The leader's "epoch:token" as stored in Redis (token = controller id/nonce), or None if
    nobody leads. The one reader of the leader key, for status displays and advice such as
    the ramp preflight ("no controller is running"); never base a controller write on it (the
    lease may lapse right after the read: fencing, not this, keeps writes safe)."""
    return conn.client.get(conn.keys.leader)


@dataclass(frozen=True)
class LeaderInfo:
    """Who leads the controllers and since when, as Redis says now (for /metrics, /healthz).

    ``acquired_ms`` is the leader's own wall clock when it took the lease (leader_acquire's
    ``now_ms``), so ``age_s`` is off by the clock difference between that host and the reader's;
    None when the start is unknown (a lease taken by a controller older than the record).
    """

    epoch: int
    token: str
    acquired_ms: int | None

    def age_s(self, now_ms: int) -> float | None:
        """Seconds since the leadership began (never negative), or None if unknown."""
        if self.acquired_ms is None:
            return None
        return max(0.0, (now_ms - self.acquired_ms) / 1000)


def read_leader_on(pipe: Any, keys: Keys) -> None:
    """Queue on a pipeline the reads `decode_leader` needs (the lease and its start record, one
    cluster slot), so a caller batching other reads pays no extra round trip."""
    pipe.get(keys.leader)
    pipe.get(keys.leader_since)


def decode_leader(value: str | None, since: str | None) -> LeaderInfo | None:
    """The replies of `read_leader_on` as a LeaderInfo, or None if nobody leads. A start
    record of another epoch (an older leadership's) or unparsable is "unknown", never guessed."""
    if not value:
        return None
    epoch_s, _, token = value.partition(":")
    try:
        epoch = int(epoch_s)
    except ValueError:
        return None
    acquired: int | None = None
    if since:
        since_epoch, _, ms = since.partition(":")
        if since_epoch == epoch_s and ms.isdigit():
            acquired = int(ms)
    return LeaderInfo(epoch, token, acquired)


def leader_info(conn: Connection) -> LeaderInfo | None:
    """The current leader with its start, in one round trip (see LeaderInfo)."""
    pipe = conn.client.pipeline(transaction=False)
    read_leader_on(pipe, conn.keys)
    value, since = pipe.execute()
    return decode_leader(value, since)
