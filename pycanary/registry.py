"""The worker registry: heartbeats, listing live workers without SCAN, and the reaper.

The registry is a sorted set by last heartbeat, with a second one by deadline (last heartbeat
plus the worker's own advertised TTL), so "who is dead" is one ZRANGEBYSCORE and a reaper pass
costs the number of dead workers, not the number of keys; each worker is judged by its own
heartbeat, never by the reaper's. A worker's live details sit in a hash with a TTL; what the
reaper needs (version, queues, lanes, TTL) stays in a meta hash until the worker is reaped.

Each queue also keeps a processing index (worker id -> lane and version) written by every
fetch, so a processing list whose worker is not registered at all (a lost registry entry,
unreadable meta) is still found: the reaper returns those orphans for the queues it is given,
counting the jobs they had started as crashed attempts of the version the index names.

A dead worker's jobs that it had started (its running hash, written before each job starts)
are crashed attempts of its version and lane: `requeue_jobs` counts them (`crashed`, `failed`,
first attempts) in the same step that returns them (docs/reliability.md).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from . import defaults, metrics, validation
from .connection import Connection
from .errors import ValidationError, raise_for_code
from .keys import LANES

log = logging.getLogger("pycanary.registry")

DEFAULT_HEARTBEAT_S = defaults.HEARTBEAT_S
#: Missed heartbeats before a worker counts as dead.
TTL_HEARTBEATS = defaults.TTL_HEARTBEATS
MIN_HEARTBEAT_S = 0.1
MAX_HEARTBEAT_S = 300.0
MIN_TTL_MS = 300
MAX_TTL_MS = 900_000
DEFAULT_TTL_MS = defaults.TTL_MS
#: "Now" far in the future (16 digits, what the scripts accept): forget whatever the deadline.
FOREVER_MS = 10**15
REQUEUE_BATCH = 200
REAP_LIMIT = 100


now_ms = defaults.now_ms


def rss_bytes() -> int:
    """This process's resident set size in bytes, reported in every heartbeat: current RSS
    from /proc/self/statm (Linux), else the peak RSS from getrusage (other systems)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if os.uname().sysname == "Darwin" else peak * 1024


@dataclass
class WorkerRecord:
    """One row of `pycanary workers`."""

    id: str
    version: str
    state: str  # active | outdated | retiring | standby | dead
    last_seen_ms: int
    queues: dict[str, str] = field(default_factory=dict)  # queue -> lane
    info: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "version": self.version, "state": self.state,
            "last_seen_ms": self.last_seen_ms, "queues": self.queues,
            "host": self.info.get("host"), "pid": _int(self.info.get("pid")),
            "concurrency": _int(self.info.get("concurrency")),
            "started_at": _int(self.info.get("started_at")),
            "current": _int(self.info.get("current")),
            "done": _int(self.info.get("done")), "failed": _int(self.info.get("failed")),
            "rss_bytes": _int(self.info.get("rss")),
            "schemas": self.info.get("schemas", "any"),
            # jobs running now, {queue: {lane: n}}, and when its last job finished (ms)
            "running": _running(self.info.get("running", "")),
            "last_finished_at": _int(self.info.get("last_finished_at")) or None,
            # what it takes now ("-" = nothing: standby or retiring); queues holds the lane the
            # reaper returns its jobs to
            "lanes": dict(part.split("=", 1) for part in self.info.get("lanes", "").split(",")
                          if "=" in part) or dict(self.queues),
        }


def _int(v: str | None) -> int | None:
    if v in (None, ""):
        return None
    try:
        return int(v)  # type: ignore[arg-type]
    except ValueError:  # a foreign or garbled write: unknown, not a failed listing
        return None


def _running(text: str) -> dict[str, dict[str, int]]:
    """The heartbeat's ``running`` field, "queue/lane=n,...", as {queue: {lane: n}}."""
    out: dict[str, dict[str, int]] = {}
    for part in text.split(","):
        where, sep, n = part.rpartition("=")
        q, slash, lane = where.partition("/")
        if sep and slash and n.isdigit():
            out.setdefault(q, {})[lane] = int(n)
    return out


def heartbeat(
    conn: Connection,
    worker_id: str,
    *,
    version: str,
    queues: Mapping[str, str],
    info: Mapping[str, Any],
    ttl_ms: int,
    now: int | None = None,
) -> bool:
    """Register or refresh a worker; returns False when this (re-)registered it.

    ``ttl_ms`` is the worker's own liveness TTL (3 of its heartbeats). It is advertised in the
    registry (a deadline per worker), so reapers with other heartbeats judge this worker by
    its TTL, not theirs.
    """
    check_ttl_ms(ttl_ms)
    keys = conn.keys
    meta = json.dumps({"version": version, "queues": dict(queues), "ttl_ms": int(ttl_ms)},
                      separators=(",", ":"))
    pairs: list[Any] = []
    for k, v in info.items():
        pairs += [k, str(v)]
    res = conn.scripts.call(
        "heartbeat", keys.heartbeat_keys(worker_id),
        [worker_id, now if now is not None else now_ms(), int(ttl_ms), meta, *pairs],
    )
    if int(res) < 0:
        raise_for_code(int(res), script="heartbeat", field="heartbeat")
    return int(res) == 1


def check_ttl_ms(ttl_ms: int) -> None:
    """The TTL bounds the heartbeat script enforces, checked first to name the field."""
    if isinstance(ttl_ms, bool) or not isinstance(ttl_ms, int) or not (
            MIN_TTL_MS <= ttl_ms <= MAX_TTL_MS):
        raise ValidationError(
            f"TTL must be {MIN_TTL_MS}..{MAX_TTL_MS} ms ({MIN_HEARTBEAT_S}..{MAX_HEARTBEAT_S} s "
            f"heartbeats), got {ttl_ms!r}", field="heartbeat")


def check_heartbeat_s(heartbeat_s: float) -> float:
    """Seconds between heartbeats: 0.1..300 (NaN and infinities refused)."""
    if isinstance(heartbeat_s, bool) or not isinstance(heartbeat_s, int | float) or not (
            MIN_HEARTBEAT_S <= heartbeat_s <= MAX_HEARTBEAT_S):
        raise ValidationError(
            f"must be {MIN_HEARTBEAT_S}..{MAX_HEARTBEAT_S} seconds, got {heartbeat_s!r}",
            field="heartbeat")
    return float(heartbeat_s)


def deregister(conn: Connection, worker_id: str) -> None:
    """A clean exit. Call it only once the worker's processing lists are empty (the worker
    checks): a deregistered worker's leftovers are found only through the processing index."""
    conn.scripts.call("forget_worker", conn.keys.heartbeat_keys(worker_id),
                      [worker_id, FOREVER_MS, DEFAULT_TTL_MS])


def list_workers(conn: Connection, *, ttl_ms: int, now: int | None = None) -> list[WorkerRecord]:
    """Every registered worker with its state; dead = past its own advertised deadline (or,
    for a worker that advertised none, no heartbeat within ``ttl_ms``)."""
    now = now if now is not None else now_ms()
    keys = conn.keys
    entries = conn.client.zrange(keys.registry, 0, -1, withscores=True)
    if not entries:
        return []
    pipe = conn.client.pipeline(transaction=False)
    pipe.hmget(keys.worker_meta, [wid for wid, _ in entries])
    pipe.zmscore(keys.worker_deadlines, [wid for wid, _ in entries])
    for wid, _ in entries:
        pipe.hgetall(keys.worker_info(wid))
    metas, deadlines, *infos = pipe.execute()
    out = []
    for (wid, score), meta_raw, deadline, info in zip(entries, metas, deadlines, infos,
                                                      strict=True):
        meta = _parse_meta(meta_raw) or {"version": "?", "queues": {}}
        seen = int(score)
        alive = now <= deadline if deadline is not None else now - seen <= ttl_ms
        state = info.get("state", "dead") if alive and info else "dead"
        out.append(WorkerRecord(wid, meta.get("version", "?"), state, seen,
                                meta.get("queues", {}), info))
    return out


def _parse_meta(raw: str | None) -> dict[str, Any] | None:
    """A worker's meta, or None if missing or malformed (a foreign write, a partial upgrade):
    the caller skips what it cannot read instead of failing for every other worker."""
    if not raw:
        return None
    try:
        meta = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(meta, dict):
        return None
    queues = meta.get("queues", {})
    if not isinstance(queues, dict) or not all(
            isinstance(q, str) and q and lane in LANES for q, lane in queues.items()):
        return None
    return meta


@dataclass
class ReapReport:
    workers: int = 0
    jobs: int = 0
    by_lane: dict[str, int] = field(default_factory=lambda: {"stable": 0, "canary": 0})
    skipped_lock: bool = False
    crashed: int = 0  # jobs the dead workers had started: counted as crashed attempts
    orphans: int = 0  # processing lists of workers not in the registry at all
    bad_meta: list[str] = field(default_factory=list)  # dead workers whose meta was unreadable
    errors: list[str] = field(default_factory=list)


def _dead_workers(conn: Connection, now: int, fallback_ttl_ms: int) -> list[str]:
    """Workers past their own deadline, plus registered workers that advertised no deadline
    (registered by an older version) and are silent for longer than the fallback TTL."""
    keys = conn.keys
    dead = list(conn.client.zrangebyscore(keys.worker_deadlines, "-inf", now, start=0,
                                          num=REAP_LIMIT))
    legacy = conn.client.zrangebyscore(keys.registry, "-inf", now - fallback_ttl_ms, start=0,
                                       num=REAP_LIMIT)
    if legacy:
        scores = conn.client.zmscore(keys.worker_deadlines, legacy)
        dead += [w for w, d in zip(legacy, scores, strict=True) if d is None and w not in dead]
    return dead


def _version_or_none(v: Any) -> str | None:
    """A dead worker's advertised version, if it is one (crashed attempts are counted there)."""
    try:
        return validation.version(v)
    except ValidationError:
        return None


def _index_entry(value: str) -> tuple[str, str | None]:
    """A processing-index value, "<lane> <version>" (fetch_jobs), as (lane, version or None).

    A bare lane (written before versions were recorded) or an unreadable value still returns
    the list: to stable, its started jobs uncounted."""
    lane, _, version = str(value).partition(" ")
    return (lane if lane in LANES else "stable"), _version_or_none(version or None)


def _orphans(conn: Connection, queues: Iterable[str]
             ) -> list[tuple[str, str, str, str | None]]:
    """(queue, worker, lane, version) of processing lists whose worker is not registered."""
    keys = conn.keys
    queues = list(dict.fromkeys(queues))
    if not queues:
        return []
    pipe = conn.client.pipeline(transaction=False)
    for q in queues:
        pipe.hgetall(keys.queue(q).processing_index)
    indexes = pipe.execute()
    listed = [(q, wid, *_index_entry(entry)) for q, idx in zip(queues, indexes, strict=True)
              for wid, entry in idx.items()]
    if not listed:
        return []
    wids = list(dict.fromkeys(wid for _, wid, _, _ in listed))
    scores = dict(zip(wids, conn.client.zmscore(keys.registry, wids), strict=True))
    return [row for row in listed if scores[row[1]] is None]


def _requeue(conn: Connection, queue: str, wid: str, lane: str, report: ReapReport,
             version: str | None = None) -> None:
    """Return one worker's list; with its version known (from its meta, or for an orphan from
    the processing index), the jobs it had started are counted as crashed attempts of that
    version and lane in the same script call; without it they are returned uncounted."""
    qk = conn.keys.queue(queue)
    if version:
        slot = metrics.slot_of(now_ms())  # the wall clock: `now` may be a reaper's "as if"
        keys = qk.reap_keys(wid, version, lane, slot)
        args: list[object] = [lane, REQUEUE_BATCH, wid, metrics.DEFAULT_KEEP_S]
    else:
        keys, args = qk.requeue_keys(wid), [lane, REQUEUE_BATCH, wid]
    while True:
        try:
            res = conn.scripts.call("requeue_jobs", keys, args)
        except redis.exceptions.ResponseError as exc:
            if not version or "WRONGTYPE" not in str(exc):
                raise
            # a metrics or running key of the wrong type must not keep the jobs from their
            # lane: they go back uncounted (returning them matters more than the count)
            log.warning("cannot count the crashed attempts of %s on %s (%s); returning its "
                        "jobs uncounted", wid, queue, exc)
            version, keys, args = None, qk.requeue_keys(wid), [lane, REQUEUE_BATCH, wid]
            continue
        if isinstance(res, int):
            raise_for_code(res, script="requeue_jobs")
        moved, remaining, target, crashed = res
        report.jobs += int(moved)
        report.by_lane[target] += int(moved)
        if int(crashed):
            report.crashed += int(crashed)
            log.warning("worker %s died running %d job(s) of %s (version %s, %s lane): counted "
                        "as crashed attempts", wid, int(crashed), queue, version, lane)
        if int(remaining) == 0:
            break


def reap(conn: Connection, *, ttl_ms: int = DEFAULT_TTL_MS, now: int | None = None,
         lock_ms: int = 5_000, queues: Iterable[str] = ()) -> ReapReport:
    """Return the jobs of dead workers to their lanes, then forget them; and return the
    processing lists of ``queues`` whose worker is not registered at all (orphans).

    Each worker is judged by its own advertised TTL; ``ttl_ms`` only applies to workers that
    advertised none. A dead worker whose meta is unreadable is logged and forgotten (its lists
    on ``queues`` are then recovered as orphans); one bad worker never blocks the others.
    Runs under a short lock so that many workers calling it do the work once. Each step is
    idempotent: a reaper that dies midway leaves the rest to the next pass.
    """
    report = ReapReport()
    keys = conn.keys
    now = now if now is not None else now_ms()
    queues = list(queues)
    dead = _dead_workers(conn, now, ttl_ms)
    orphans = _orphans(conn, queues)
    if not dead and not orphans:
        return report
    token = secrets.token_hex(8)
    if not conn.client.set(keys.reaper_lock, token, nx=True, px=lock_ms):
        report.skipped_lock = True
        return report
    try:
        metas = conn.client.hmget(keys.worker_meta, dead) if dead else []
        for wid, meta_raw in zip(dead, metas, strict=True):
            try:
                meta = _parse_meta(meta_raw)
                if meta is None:
                    log.warning("dead worker %s has unreadable meta %r; forgetting it, its "
                                "lists are recovered through the processing index",
                                wid, (meta_raw or "")[:200])
                    report.bad_meta.append(wid)
                    meta = {"queues": {}}
                version = _version_or_none(meta.get("version"))
                for queue, lane in meta["queues"].items():
                    _requeue(conn, queue, wid, lane, report, version)
                forgotten = conn.scripts.call("forget_worker", keys.heartbeat_keys(wid),
                                              [wid, now, ttl_ms])
                report.workers += int(forgotten) == 1
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                raise
            except Exception as exc:  # one bad worker must not block the others
                log.warning("could not reap worker %s: %s", wid, exc)
                report.errors.append(f"{wid}: {exc}")
        if report.bad_meta:  # their lists may be orphans now: look again
            seen = {(o[0], o[1]) for o in orphans}
            orphans += [o for o in _orphans(conn, queues) if (o[0], o[1]) not in seen]
        for queue, wid, lane, version in orphans:
            try:
                before = report.jobs
                _requeue(conn, queue, wid, lane, report, version)
                if report.jobs > before:
                    report.orphans += 1
                    log.warning("returned %d jobs of unregistered worker %s on %s",
                                report.jobs - before, wid, queue)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                raise
            except Exception as exc:
                log.warning("could not return the jobs of %s on %s: %s", wid, queue, exc)
                report.errors.append(f"{wid}@{queue}: {exc}")
    finally:
        conn.scripts.call("release_lock", [keys.reaper_lock], [token])
    return report
