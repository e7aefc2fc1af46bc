"""The worker registry: heartbeats, listing live workers without SCAN, and the reaper.

The registry is a sorted set by last heartbeat, so "who is dead" is one ZRANGEBYSCORE and a
reaper pass costs the number of dead workers, not the number of keys. A worker's live details
sit in a hash with a TTL; what the reaper needs (version, queues, lanes) stays in a meta hash
until the worker is reaped.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .connection import Connection

DEFAULT_HEARTBEAT_S = 2.0
#: Missed heartbeats before a worker counts as dead.
TTL_HEARTBEATS = 3
REQUEUE_BATCH = 200
REAP_LIMIT = 100


def now_ms() -> int:
    return time.time_ns() // 1_000_000


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
            "schemas": self.info.get("schemas", "any"),
            # what it takes now ("-" = nothing: standby or retiring); queues holds the lane the
            # reaper returns its jobs to
            "lanes": dict(part.split("=", 1) for part in self.info.get("lanes", "").split(",")
                          if "=" in part) or dict(self.queues),
        }


def _int(v: str | None) -> int | None:
    return None if v in (None, "") else int(v)


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
    """Register or refresh a worker; returns False when this (re-)registered it."""
    keys = conn.keys
    meta = json.dumps({"version": version, "queues": dict(queues)}, separators=(",", ":"))
    pairs: list[Any] = []
    for k, v in info.items():
        pairs += [k, str(v)]
    res = conn.scripts.call(
        "heartbeat",
        [keys.registry, keys.worker_meta, keys.worker_info(worker_id)],
        [worker_id, now if now is not None else now_ms(), ttl_ms, meta, *pairs],
    )
    return int(res) == 1


def deregister(conn: Connection, worker_id: str) -> None:
    """A clean exit: the worker's processing lists are empty, so just forget it."""
    keys = conn.keys
    conn.scripts.call("forget_worker", [keys.registry, keys.worker_meta,
                                        keys.worker_info(worker_id)], [worker_id, 2**62])


def list_workers(conn: Connection, *, ttl_ms: int, now: int | None = None) -> list[WorkerRecord]:
    """Every registered worker with its state; dead = no heartbeat within the TTL."""
    now = now if now is not None else now_ms()
    keys = conn.keys
    entries = conn.client.zrange(keys.registry, 0, -1, withscores=True)
    if not entries:
        return []
    pipe = conn.client.pipeline(transaction=False)
    pipe.hmget(keys.worker_meta, [wid for wid, _ in entries])
    for wid, _ in entries:
        pipe.hgetall(keys.worker_info(wid))
    metas, *infos = pipe.execute()
    out = []
    for (wid, score), meta_raw, info in zip(entries, metas, infos, strict=True):
        meta = json.loads(meta_raw) if meta_raw else {"version": "?", "queues": {}}
        seen = int(score)
        state = info.get("state", "dead") if now - seen <= ttl_ms and info else "dead"
        out.append(WorkerRecord(wid, meta.get("version", "?"), state, seen,
                                meta.get("queues", {}), info))
    return out


@dataclass
class ReapReport:
    workers: int = 0
    jobs: int = 0
    by_lane: dict[str, int] = field(default_factory=lambda: {"stable": 0, "canary": 0})
    skipped_lock: bool = False


def reap(conn: Connection, *, ttl_ms: int, now: int | None = None,
         lock_ms: int = 5_000) -> ReapReport:
    """Return the jobs of workers whose heartbeat expired to their lanes, then forget them.

    Runs under a short lock so that many workers calling it do the work once. Each step is
    idempotent: a reaper that dies midway leaves the rest to the next pass.
    """
    report = ReapReport()
    keys = conn.keys
    now = now if now is not None else now_ms()
    cutoff = now - ttl_ms
    dead = conn.client.zrangebyscore(keys.registry, "-inf", cutoff, start=0, num=REAP_LIMIT)
    if not dead:
        return report
    token = secrets.token_hex(8)
    if not conn.client.set(keys.reaper_lock, token, nx=True, px=lock_ms):
        report.skipped_lock = True
        return report
    try:
        metas = conn.client.hmget(keys.worker_meta, dead)
        for wid, meta_raw in zip(dead, metas, strict=True):
            meta = json.loads(meta_raw) if meta_raw else {"queues": {}}
            for queue, lane in meta.get("queues", {}).items():
                qk = keys.queue(queue)
                while True:
                    moved, remaining, target = conn.scripts.call(
                        "requeue_jobs",
                        [qk.processing(wid), qk.lane_stable, qk.lane_canary, qk.config],
                        [lane, REQUEUE_BATCH],
                    )
                    report.jobs += int(moved)
                    report.by_lane[target] += int(moved)
                    if int(remaining) == 0:
                        break
            forgotten = conn.scripts.call(
                "forget_worker", [keys.registry, keys.worker_meta, keys.worker_info(wid)],
                [wid, cutoff])
            report.workers += int(forgotten) == 1
    finally:
        conn.scripts.call("release_lock", [keys.reaper_lock], [token])
    return report
