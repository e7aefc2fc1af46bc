"""Drain a lane into another: what follows a rollback or a promotion (docs/design.md invariant 2).

Rollback closes the canary lane in one script (``rollback_canary.lua``); the jobs already waiting
in it still have to run, on the stable version, next and in their order. ``drain_lane.lua`` moves
a bounded batch per call to the head of the stable lane (order-preserving across calls: see its
header). This module repeats it until the lane is empty:

- bounded calls, so no single script call holds the Redis event loop for more than a few ms
  (every other client, producers included, waits while a script runs);
- several calls per round trip (a pipeline), so 100,000 jobs take tens of round trips, not
  hundreds; the calls of one round trip still run one by one, each short;
- bounded in time: after ``max_seconds`` it stops and reports what is left rather than loop
  forever (e.g. when the lane is still open and producers keep filling it). Draining again
  later resumes where it stopped; nothing is lost either way, since every call is atomic.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from . import defaults, validation
from .backends import streams
from .connection import Connection
from .errors import ValidationError, raise_for_code
from .keys import LANES, STREAM_GROUP

DEFAULT_BATCH = defaults.DRAIN_BATCH
#: The script refuses more per call: 5,000 jobs stay within a few ms of server time.
MAX_BATCH = 5_000
#: Script calls per round trip.
DEFAULT_CALLS_PER_ROUND_TRIP = 4
DEFAULT_MAX_SECONDS = 60.0


@dataclass(frozen=True)
class DrainReport:
    queue: str
    from_lane: str
    to_lane: str
    #: Jobs moved by this drain.
    moved: int
    #: Script calls sent (every call moves up to ``batch`` jobs).
    calls: int
    round_trips: int
    seconds: float
    #: Client side, per call: the slowest round trip divided by the calls it carried. Calls of
    #: a pipeline cannot be timed one by one from the client; the server's own figure is in
    #: SLOWLOG (see bench/drain.py).
    max_call_ms: float
    #: Client side: the slowest round trip, network included (an upper bound for any call).
    max_round_trip_ms: float
    #: Jobs left in the from-lane after the last call (> 0 only when stopped by max_seconds).
    remaining: int

    @property
    def complete(self) -> bool:
        return self.remaining == 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["complete"] = self.complete
        return d


def _check(
    queue: str, from_lane: str, to_lane: str, batch: int, max_seconds: float,
    calls_per_round_trip: int,
) -> None:
    """Everything is checked before the first call, so a bad argument moves nothing."""
    validation.queue_name(queue)
    for field, lane in (("from_lane", from_lane), ("to_lane", to_lane)):
        if lane not in LANES:
            raise ValidationError(f"must be one of {', '.join(LANES)}, got {lane!r}",
                                  field=field)
    if from_lane == to_lane:
        raise ValidationError("must differ from from_lane", field="to_lane")
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
        raise ValidationError(f"must be an integer 1-{MAX_BATCH}, got {batch!r}", field="batch")
    if not max_seconds > 0:
        raise ValidationError(f"must be positive, got {max_seconds!r}", field="max_seconds")
    if not 1 <= calls_per_round_trip <= 100:
        raise ValidationError(f"must be 1-100, got {calls_per_round_trip!r}",
                              field="calls_per_round_trip")


@dataclass
class _Leg:
    moved: int = 0
    calls: int = 0
    round_trips: int = 0
    max_call: float = 0.0
    max_rt: float = 0.0
    remaining: int = -1  # unknown until the first call answers


def bound_lists(bound: Any) -> dict[str, str]:
    """{lane: broker list key} of a queue's binding (the HGETALL of its ``broker`` key), empty
    for a queue that is not bound to a Celery or RQ application."""
    if not isinstance(bound, dict) or bound.get("kind") not in ("celery", "rq"):
        return {}
    return {lane: bound[lane] for lane in LANES if bound.get(lane)}


def broker_backlogs(conn: Connection, bindings: dict[str, Any]) -> dict[tuple[str, str], int]:
    """{(queue, lane): messages waiting in the broker's list} for the bound queues among
    ``bindings`` ({queue: HGETALL of its broker key}), one round trip (none if none is bound):
    an integrated queue's backlog is in the broker's lists, not in pycanary's lanes."""
    wanted = [(q, lane, key) for q, b in bindings.items() for lane, key in bound_lists(b).items()]
    if not wanted:
        return {}
    pipe = conn.client.pipeline(transaction=False)
    for _q, _lane, key in wanted:
        pipe.llen(key)
    replies = pipe.execute(raise_on_error=False)
    return {(q, lane): int(n) for (q, lane, _k), n in zip(wanted, replies, strict=True)
            if isinstance(n, int)}


def broker_leg(conn: Connection, queue: str, from_lane: str, to_lane: str, batch: int
               ) -> tuple[str, list[str], tuple[Any, ...]] | None:
    """The second leg of a drain of a queue bound to a Celery or RQ application
    (pycanary/integrations/, bind_broker.lua): the broker's own canary list into its stable
    list, by drain_broker.lua. None for a queue of pycanary's own workers only."""
    bound = conn.client.hgetall(conn.keys.queue(queue).broker)
    lists = bound_lists(bound)
    if from_lane not in lists or to_lane not in lists:
        return None
    return ("drain_broker", [lists[from_lane], lists[to_lane]],
            (batch, bound["kind"], bound.get(f"{from_lane}_name", ""),
             bound.get(f"{to_lane}_name", "")))


def _drain_leg(conn: Connection, script: str, keys: list[str], args: tuple[Any, ...],
               batch: int, leg: _Leg, progress: Callable[[int, int], None] | None,
               clock: Callable[[], float], start: float, max_seconds: float,
               calls_per_round_trip: int, moved_before: int) -> None:
    """Repeat one drain script until its source is empty or the time is up."""
    while True:
        left = leg.remaining
        n = 1 if left < 0 else min(calls_per_round_trip, -(-left // batch))
        pipe = conn.scripts.pipeline()
        for _ in range(n):
            pipe.call(script, keys, args)
        t0 = clock()
        results = pipe.execute()
        rt = clock() - t0
        leg.calls += n
        leg.round_trips += 1
        leg.max_rt = max(leg.max_rt, rt)
        leg.max_call = max(leg.max_call, rt / n)
        for res in results:
            if isinstance(res, int):  # a negative code: refused, nothing moved by this call
                raise_for_code(res, script=script, field="batch")
            got, rest = res
            leg.moved += int(got)
            leg.remaining = int(rest)  # the last call's answer is the current state
        if progress is not None:
            progress(moved_before + leg.moved, leg.remaining)
        if leg.remaining == 0 or clock() - start >= max_seconds:
            return


def drain_lane(
    conn: Connection,
    queue: str,
    *,
    from_lane: str = "canary",
    to_lane: str = "stable",
    batch: int = DEFAULT_BATCH,
    progress: Callable[[int, int], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    calls_per_round_trip: int = DEFAULT_CALLS_PER_ROUND_TRIP,
) -> DrainReport:
    """Move every job of ``from_lane`` to the head of ``to_lane``, oldest first, in batches.

    Call it after the from-lane is closed (``rollback_canary`` or a promotion): an open lane
    keeps receiving jobs, and the drain then runs until ``max_seconds``. ``progress(moved,
    remaining)`` is called after every round trip (for a CLI progress line).

    The first round trip carries one call, which also reports how many jobs there are; later
    ones carry just enough calls for what is left, at most ``calls_per_round_trip``, so an
    empty lane costs one call and a static lane exactly ceil(jobs / batch).
    """
    _check(queue, from_lane, to_lane, batch, max_seconds, calls_per_round_trip)
    if streams.backend_of(conn, queue) == "streams":
        return _drain_streams(conn, queue, from_lane, to_lane, batch, progress, max_seconds)
    qk = conn.keys.queue(queue)
    start = clock()
    legs = [("drain_lane", [qk.lane(from_lane), qk.lane(to_lane)], (batch,))]
    broker = broker_leg(conn, queue, from_lane, to_lane, batch)
    if broker is not None:
        legs.append(broker)
    moved = calls = round_trips = remaining = 0
    max_call = max_rt = 0.0
    for script, keys, args in legs:
        leg = _Leg()
        _drain_leg(conn, script, keys, args, batch, leg, progress, clock, start, max_seconds,
                   calls_per_round_trip, moved)
        moved += leg.moved
        calls += leg.calls
        round_trips += leg.round_trips
        max_call, max_rt = max(max_call, leg.max_call), max(max_rt, leg.max_rt)
        remaining += leg.remaining
        if leg.remaining:
            # stopped by max_seconds: what the next legs hold is left too (unknown here, at
            # least what this one left); a later drain resumes
            break
    return DrainReport(
        queue=queue, from_lane=from_lane, to_lane=to_lane, moved=moved, calls=calls,
        round_trips=round_trips, seconds=clock() - start, max_call_ms=max_call * 1000,
        max_round_trip_ms=max_rt * 1000, remaining=remaining,
    )


def retired_consumers(conn: Connection, queue: str) -> list[str]:
    """Consumers of the canary stream's group that are not live registered workers: their
    pending entries will never be acked, so the drain moves them too."""
    key = conn.keys.queue(queue).stream_canary
    try:
        names = [c["name"] for c in conn.client.xinfo_consumers(key, STREAM_GROUP)]
    except Exception:  # no stream or no group yet: nobody holds anything
        return []
    from .registry import list_workers  # registry imports worker-side modules

    alive = {w.id for w in list_workers(conn, ttl_ms=defaults.TTL_MS) if w.state != "dead"}
    return [n for n in names if n not in alive]


def _drain_streams(conn: Connection, queue: str, from_lane: str, to_lane: str, batch: int,
                   progress: Callable[[int, int], None] | None,
                   max_seconds: float) -> DrainReport:
    """The Streams backend's drain (drain_stream.lua, via backends/streams.drain): the canary
    stream's undelivered entries and those of retired consumers, to the stable stream."""
    if (from_lane, to_lane) != ("canary", "stable"):
        raise ValidationError("the Streams backend drains canary into stable only",
                              field="from_lane")
    rep = streams.drain(conn, queue, retired=retired_consumers(conn, queue), batch=batch,
                        max_seconds=max_seconds)
    if progress is not None:
        progress(rep.moved, rep.remaining)
    return DrainReport(
        queue=queue, from_lane=from_lane, to_lane=to_lane, moved=rep.moved, calls=rep.calls,
        round_trips=rep.calls, seconds=rep.seconds, max_call_ms=rep.max_call_ms,
        max_round_trip_ms=rep.max_call_ms, remaining=rep.remaining,
    )
