"""The Streams backend's operations: one stream per lane, one consumer group per stream.

Each call is one script of ``lua/`` (``route_xadd``, ``fetch_stream``, ``ack_stream``,
``fail_stream``, ``promote_delayed_stream``, ``touch_stream``, ``reclaim_stream``,
``return_stream``, ``drain_stream``, ``set_backend``); this module builds their KEYS and ARGV and
turns replies into dataclasses. Why a stream per lane rather than a group per version:
docs/strategies.md. The consumer name is the worker id, so the pending entries list (PEL) of a
consumer is that worker's processing list, and the entry id (not the envelope text) names a held
job.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import defaults, metrics, validation
from ..connection import Connection
from ..errors import ScriptError, ValidationError
from ..keys import LANES, STREAM_GROUP

#: fetch_stream's reply when the worker's version is rolled back (as fetch_jobs').
VERSION_ROLLED_BACK = -5
MAX_FETCH = 1000
MAX_DRAIN_BATCH = 5000
#: Ids per touch_stream / return_stream call (the scripts refuse more).
MAX_IDS = 1000


@dataclass(frozen=True)
class Entry:
    """One job as a stream entry: its id names it while a worker holds it."""

    id: str
    raw: str | bytes  # bytes: the envelope is not UTF-8 (dead-lettered by the worker)
    lane: str


@dataclass(frozen=True)
class Settled:
    """ack_stream / fail_stream: attempts recorded, and late ones (no longer held here)."""

    recorded: int
    late: int


@dataclass
class Reclaimed:
    """reclaim_stream over a whole stream: entries now held by the claimer (to run again),
    dead-lettered entries (delivered too often), deleted idle consumers, and the started ones
    counted as crashed attempts."""

    entries: list[Entry] = field(default_factory=list)
    dead: int = 0
    consumers_deleted: int = 0
    crashed: int = 0
    calls: int = 0


@dataclass(frozen=True)
class StreamDrainReport:
    queue: str
    moved: int
    calls: int
    seconds: float
    max_call_ms: float
    #: entries left in the canary stream pending on live consumers (they settle by their ack)
    in_flight: int
    #: entries left that were not yet looked at (> 0 only when stopped by max_seconds)
    remaining: int

    @property
    def complete(self) -> bool:
        return self.remaining == 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["complete"] = self.complete
        return d


def _lane(lane: str) -> str:
    if lane not in LANES:
        raise ValidationError(f"must be one of {', '.join(LANES)}, got {lane!r}", field="lane")
    return lane


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _check(res: Any, script: str) -> Any:
    if isinstance(res, int) and res < 0:
        raise ScriptError(f"{script} failed with code {res}")
    return res


def _entries(flat: Sequence[Any], lane: str) -> list[Entry]:
    return [Entry(_text(flat[i]), _text(flat[i + 1]), lane) for i in range(0, len(flat), 2)]


# -- config ----------------------------------------------------------------------------------
def set_backend(conn: Connection, queue: str, backend: str, *, now_ms: int | None = None) -> bool:
    """Choose the queue's backend; True if it changed. Refused (ValidationError naming
    ``backend``, with how many jobs and where) while the queue holds jobs."""
    validation.queue_name(queue)
    if backend == "streams" and conn.is_memory:
        raise ValidationError(
            "the Streams backend needs a Redis server: the embedded memory:// server "
            "(fakeredis) cannot run its scripts (XREADGROUP and XAUTOCLAIM replies inside Lua)",
            field="backend")
    try:
        changed, _rev = conn.scripts.call(
            "set_backend", conn.keys.queue(queue).backend_keys(),
            [now_ms if now_ms is not None else defaults.now_ms(), backend])
    except ValidationError as exc:
        raise ValidationError(exc.message.split(": ", 2)[-1], field="backend") from None
    return bool(int(changed))


def backend_of(conn: Connection, queue: str) -> str:
    return conn.client.hget(conn.keys.queue(queue).config, "backend") or "lists"


# -- producers -------------------------------------------------------------------------------
def route_args(args: Sequence[Any], idem_ttl_ms: Any | None) -> list[Any]:
    """route_enqueue's ARGV as route_xadd's: the group goes before the idempotency TTL."""
    out = [*args, STREAM_GROUP]
    if idem_ttl_ms is not None:
        out.append(idem_ttl_ms)
    return out


# -- workers ---------------------------------------------------------------------------------
def fetch(conn: Connection, queue: str, lane: str, version: str, consumer: str,
          max_entries: int) -> list[Entry] | int:
    """Up to ``max_entries`` new entries of the lane, now pending on ``consumer``; or
    VERSION_ROLLED_BACK (nothing taken)."""
    qk = conn.keys.queue(queue)
    res = conn.scripts.call("fetch_stream", qk.stream_fetch_keys(_lane(lane)),
                            [max_entries, version, STREAM_GROUP, consumer])
    if res == VERSION_ROLLED_BACK:
        return VERSION_ROLLED_BACK
    good, bad = _check(res, "fetch_stream")
    out = _entries(good, lane)
    out += [Entry(_text(bad[i]), bytes.fromhex(_text(bad[i + 1])), lane)
            for i in range(0, len(bad), 2)]
    return out


def ack(conn: Connection, queue: str, lane: str, version: str, consumer: str, slot: int,
        keep_s: int, jobs: Sequence[Sequence[Any]]) -> Settled:
    """Acknowledge jobs: per job (entry id, run bucket, wait bucket, cpu bucket or '', first,
    unit), as ack_jobs' fields with the entry id for the envelope."""
    args: list[Any] = [keep_s, STREAM_GROUP, consumer]
    for j in jobs:
        args += list(j)
    res = conn.scripts.call("ack_stream", conn.keys.queue(queue).stream_ack_keys(
        version, _lane(lane), slot), args)
    acked, late = _check(res, "ack_stream")
    return Settled(int(acked), int(late))


def fail(conn: Connection, queue: str, lane: str, version: str, consumer: str, slot: int,
         keep_s: int, jobs: Sequence[Sequence[Any]]) -> Settled:
    """Record failed attempts: per job (entry id, 'retry'|'dead', next, due_ms or '', run
    bucket, wait bucket, cpu bucket or '', first, unit)."""
    args: list[Any] = [keep_s, STREAM_GROUP, consumer]
    for j in jobs:
        args += list(j)
    res = conn.scripts.call("fail_stream", conn.keys.queue(queue).stream_fail_keys(
        version, _lane(lane), slot), args)
    failed, late = _check(res, "fail_stream")
    return Settled(int(failed), int(late))


def promote_delayed(conn: Connection, queue: str, *, now_ms: int | None = None,
                    max_jobs: int = 1000) -> tuple[int, int]:
    """Due retries back into their streams as new entries; returns (to stable, to canary)."""
    qk = conn.keys.queue(queue)
    now = now_ms if now_ms is not None else defaults.now_ms()
    a = b = 0
    while True:
        res = _check(conn.scripts.call("promote_delayed_stream", qk.stream_promote_keys(),
                                       [now, max_jobs, STREAM_GROUP]), "promote_delayed_stream")
        a, b = a + int(res[0]), b + int(res[1])
        if not int(res[2]):
            return a, b


def touch(conn: Connection, queue: str, lane: str, consumer: str,
          ids: Sequence[str]) -> tuple[int, list[str]]:
    """Keep held entries fresh (their idle time restarts); returns (touched, ids lost)."""
    key = conn.keys.queue(queue).stream(_lane(lane))
    touched, lost = 0, []
    for i in range(0, len(ids), MAX_IDS):
        n, gone = _check(conn.scripts.call("touch_stream", [key],
                                           [STREAM_GROUP, consumer, *ids[i:i + MAX_IDS]]),
                         "touch_stream")
        touched += int(n)
        lost += [_text(x) for x in gone]
    return touched, lost


def reclaim(conn: Connection, queue: str, lane: str, claimer: str, *, min_idle_ms: int,
            max_deliveries: int, version: str = "", count: int = 100, max_calls: int = 100,
            now_ms: int | None = None, slot_s: int = metrics.DEFAULT_SLOT_S,
            keep_s: int = metrics.DEFAULT_KEEP_S) -> Reclaimed:
    """XAUTOCLAIM the lane's entries idle at least ``min_idle_ms`` (their workers stopped
    touching them) for ``claimer``, dead-lettering those delivered over ``max_deliveries``
    times, and delete idle consumers that hold nothing. Entries the dead worker had started
    count as crashed attempts of ``version`` (the claimer's: it serves the same lane).
    Bounded: ``max_calls`` calls."""
    qk = conn.keys.queue(queue)
    out = Reclaimed()
    cursor = "0-0"
    now = now_ms if now_ms is not None else defaults.now_ms()
    keys = qk.stream_reclaim_keys(version or "unknown", _lane(lane),
                                  metrics.slot_of(now, slot_s))
    while out.calls < max_calls:
        nxt, flat, dead, deleted, crashed = _check(conn.scripts.call(
            "reclaim_stream", keys,
            [STREAM_GROUP, claimer, min_idle_ms, cursor, count, max_deliveries, now, lane,
             keep_s]), "reclaim_stream")
        out.crashed += int(crashed)
        out.calls += 1
        out.entries += _entries(flat, lane)
        out.dead += int(dead)
        out.consumers_deleted += int(deleted)
        cursor = _text(nxt)
        if cursor == "0-0":
            break
    return out


def give_back(conn: Connection, queue: str, lane: str, consumer: str,
              ids: Sequence[str]) -> tuple[int, int, int]:
    """Held entries not started go back (new entries; to stable when the canary lane is
    closed). Returns (returned, of those to stable, late)."""
    qk = conn.keys.queue(queue)
    total = [0, 0, 0]
    for i in range(0, len(ids), MAX_IDS):
        res = _check(conn.scripts.call("return_stream", qk.stream_move_keys(_lane(lane)),
                                       [STREAM_GROUP, consumer, lane, *ids[i:i + MAX_IDS]]),
                     "return_stream")
        total = [t + int(r) for t, r in zip(total, res, strict=True)]
    return total[0], total[1], total[2]


def depth(conn: Connection, queue: str, lane: str) -> int:
    """Entries of a lane's stream: waiting or running (acked ones are deleted)."""
    return int(conn.client.xlen(conn.keys.queue(queue).stream(_lane(lane))))


# -- drain -----------------------------------------------------------------------------------
def drain(conn: Connection, queue: str, *, retired: Sequence[str] = (), batch: int = 1000,
          max_seconds: float = 60.0) -> StreamDrainReport:
    """Move the canary stream's undelivered entries, and those pending on ``retired``
    consumers, to the stable stream in bounded calls, in order. Passes repeat until a pass
    moves nothing (producers may still add while it runs); entries running on live workers
    stay and settle by their ack (``in_flight``)."""
    validation.queue_name(queue)
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_DRAIN_BATCH:
        raise ValidationError(f"must be an integer 1-{MAX_DRAIN_BATCH}, got {batch!r}",
                              field="batch")
    if any(not isinstance(w, str) or not w or " " in w for w in retired):
        raise ValidationError("must be worker ids", field="retired")
    keys = conn.keys.queue(queue).stream_drain_keys()
    started = time.monotonic()
    moved = calls = 0
    max_call_ms = 0.0
    in_flight = 0
    remaining = 0
    while True:
        cursor, pass_moved, in_flight = "-", 0, 0
        while True:
            t0 = time.perf_counter()
            n, cursor, skipped = _check(conn.scripts.call(
                "drain_stream", keys, [STREAM_GROUP, batch, cursor, *retired]), "drain_stream")
            max_call_ms = max(max_call_ms, (time.perf_counter() - t0) * 1000)
            calls += 1
            pass_moved += int(n)
            in_flight += int(skipped)
            cursor = _text(cursor)
            if not cursor or time.monotonic() - started > max_seconds:
                break
        moved += pass_moved
        if cursor and time.monotonic() - started > max_seconds:
            remaining = max(0, depth(conn, queue, "canary") - in_flight)
            break
        if pass_moved == 0:
            break
    return StreamDrainReport(queue, moved, calls, time.monotonic() - started, max_call_ms,
                             in_flight, remaining)
