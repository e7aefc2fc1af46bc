"""Controller tick cost over many active deployments, and Redis memory per deployment.

  .venv/bin/python bench/controller.py [--redis-url URL] [--deployments 50] [--ticks 20]
                                       [--quick] [--json]

By default a private redis-server is started on a free loopback port (bench/_common.py
PrivateRedis, stock settings), so INFO commandstats holds this benchmark's calls only;
--redis-url uses that server instead (under a unique key prefix, deleted at the end; nothing
is flushed).

Setup, per queue (--deployments of them):

1. `queue configure --stable-version v1`, then `rollouts.ramp(..., "v2",
   examples/plans/design-card.yaml, allow_schema_change=True)`: an active deployment;
2. one hour of metrics history for both lanes (v1 stable, v2 canary) as the workers write it:
   60 slots of 60 s per lane (defaults.SLOT_S), each slot hash holding the outcome counts, the
   run-time histogram and the coarse queue-wait one (`r<bucket>`, `w<bucket>`) of ~6,000 jobs
   (100 jobs/s, 15% canary), and the running totals the controller reads (fine buckets). The
   hashes are written with HSET/HINCRBY of exactly the fields ack_jobs.lua / fail_jobs.lua
   would increment for the same jobs; a check at start-up writes a few slots both ways (the
   real scripts on one side) and requires the hashes to be identical, field for field, and
   the same size;
3. two registered workers (v1 and v2), heartbeating.

Then the controller: one untimed tick takes every deployment's baseline; each measured tick
first gets one plan interval (30 s) of new traffic into the totals and the current slot
(100 jobs/s split by the deployment's current weight), advances the driven clock by one
interval, and times `Controller(conn, clock=...).tick()`, which checks all deployments (real
analysis, real fenced writes). Measured twice: without leadership (the brief's call) and with
a `Leadership` (lease renewal + fencing of every active queue each tick, the CLI's path).
More untimed ticks follow until each deployment has ANALYSES_KEPT analyses, the steady state
of its analyses list.

Memory: MEMORY USAGE (SAMPLES 0) of every key of one queue, grouped; per deployment with
10 minutes of metrics history (newest 60 slots per lane) and with 1 hour (360 per lane).
If the 10-minute figure misses the design card's ~12 KB, alternatives are written to scratch
keys and measured (longer slots, no wait histogram in slots, fewer analyses kept).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from _common import (
    REPO,
    CpuMeter,
    PrivateRedis,
    clean_up,
    commandstats,
    fmt_num,
    md_table,
    pass_fail,
    percentile,
    raise_on_sigterm,
    unique_prefix,
)

import pycanary
from pycanary import defaults, deployments, histogram, metrics, registry, rollouts, service
from pycanary.controller import Controller
from pycanary.deployments import Deployment
from pycanary.leader import Leadership
from pycanary.plan import load_plan

PLAN_PATH = REPO / "examples" / "plans" / "design-card.yaml"
SLOT_S = defaults.SLOT_S
KEEP_S = defaults.KEEP_S
HISTORY_SLOTS = KEEP_S // SLOT_S  # 60 per lane: one hour
TEN_MIN_SLOTS = 600 // SLOT_S  # 10 per lane
RATE = 100  # jobs/s per queue
HISTORY_CANARY_SHARE = 0.15  # the design card's second stage
FAIL_RATE = 0.002  # within the card's max_error_rate 0.5%: a healthy canary
RETRY_SHARE = 0.9  # failed attempts retried (the rest dead-lettered)
RUN_MEDIAN_MS, RUN_SIGMA = 20.0, 0.45
WAIT_MEDIAN_MS, WAIT_SIGMA = 4.0, 0.6
TICK_TARGET_MS_PER_DEPLOYMENT = 1.0  # 50 ms at 50 deployments, 500 ms at 500
MEMORY_TARGET_B = 12 * 1024
TEMPLATES = 24  # distinct sampled slots per job count, reused at random


# -- traffic -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    outcome: str  # ok | retry | dead
    run_b: int
    wait_b: int


def to_slot(fields: Counter) -> Counter:
    """The slot's form of totals fields: wait buckets coarse (metrics.slot_wait_bucket), run
    and CPU buckets by pairs (metrics.slot_pair_bucket), the rest as is, as ack_jobs.lua /
    fail_jobs.lua write them."""
    out: Counter = Counter()
    for f, n in fields.items():
        if f[0] == "w" and f[1:].isdigit():
            out[f"w{metrics.slot_wait_bucket(int(f[1:]))}"] += n
        elif f[0] in "rc" and f[1:].isdigit():
            out[f"{f[0]}{metrics.slot_pair_bucket(int(f[1:]))}"] += n
        else:
            out[f] += n
    return out


def slot_fields(jobs: list[Job]) -> Counter:
    """The fields ack_jobs.lua / fail_jobs.lua increment in the running totals for these jobs
    (late: none); the slot gets to_slot() of them."""
    c: Counter = Counter()
    for j in jobs:
        c[f"r{j.run_b}"] += 1
        c[f"w{j.wait_b}"] += 1
        if j.outcome == "ok":
            c["ok"] += 1
        else:
            c["failed"] += 1
            c["retried" if j.outcome == "retry" else "dead"] += 1
    return c


def _bucket_cdf(median_ms: float, sigma: float) -> tuple[list[int], list[float]]:
    """Buckets of histogram.py and the cumulative probability of a lognormal run time
    falling in each: sampling a bucket is then one draw, exactly distributed."""
    mu = math.log(median_ms * 1000)

    def cdf(us: float) -> float:
        if us <= 0:
            return 0.0
        if math.isinf(us):
            return 1.0
        return 0.5 * (1 + math.erf((math.log(us) - mu) / (sigma * math.sqrt(2))))

    buckets, cum = [], []
    for i in range(histogram.N_BUCKETS):
        lo, hi = histogram.bucket_bounds(i)
        p = cdf(hi) - cdf(lo)
        if p > 1e-12:
            buckets.append(i)
            cum.append(cdf(hi))
    return buckets, cum


class Traffic:
    """Jobs with lognormal run times and queue waits and rare failures, drawn bucket by bucket
    (the same histograms a worker records for such jobs). History slots reuse a pool of
    sampled templates per job count (fast set-up; the controller never reads old slots); the
    traffic the controller judges is drawn fresh every interval, so no template bias can make
    identical versions look different."""

    def __init__(self, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.run = _bucket_cdf(RUN_MEDIAN_MS, RUN_SIGMA)
        self.wait = _bucket_cdf(WAIT_MEDIAN_MS, WAIT_SIGMA)
        self.outcomes = (["ok", "retry", "dead"],
                         [1 - FAIL_RATE, 1 - FAIL_RATE * (1 - RETRY_SHARE), 1.0])
        self._pools: dict[int, list[tuple[list[Job], Counter]]] = {}

    def _draw(self, n: int) -> tuple[list[int], list[int], list[str]]:
        ch = self.rng.choices
        return (ch(self.run[0], cum_weights=self.run[1], k=n),
                ch(self.wait[0], cum_weights=self.wait[1], k=n),
                ch(self.outcomes[0], cum_weights=self.outcomes[1], k=n))

    def jobs(self, n: int) -> list[Job]:
        return [Job(o, r, w) for r, w, o in zip(*self._draw(n), strict=True)]

    def fresh_fields(self, n: int) -> Counter:
        """slot_fields(self.jobs(n)), without building the jobs."""
        run, wait, outcomes = self._draw(n)
        c: Counter = Counter()
        for b, k in Counter(run).items():
            c[f"r{b}"] = k
        for b, k in Counter(wait).items():
            c[f"w{b}"] = k
        o = Counter(outcomes)
        c["ok"] = o["ok"]
        if o["retry"] or o["dead"]:
            c["failed"] = o["retry"] + o["dead"]
        if o["retry"]:
            c["retried"] = o["retry"]
        if o["dead"]:
            c["dead"] = o["dead"]
        return +c

    def template(self, n: int) -> tuple[list[Job], Counter]:
        pool = self._pools.get(n)
        if pool is None:
            pool = []
            for _ in range(TEMPLATES):
                jobs = self.jobs(n)
                pool.append((jobs, slot_fields(jobs)))
            self._pools[n] = pool
        return self.rng.choice(pool)


def split(total: int, weight_bp: int) -> dict[str, int]:
    canary = round(total * weight_bp / 10_000)
    return {"stable": total - canary, "canary": canary}


VERSIONS = {"stable": "v1", "canary": "v2"}


# -- writing metrics as the workers do -----------------------------------------------------------
def write_slot_direct(pipe: Any, qk: Any, version: str, lane: str, slot: int,
                      fields: Counter) -> None:
    key = qk.metrics_slot(version, lane, slot)
    pipe.hset(key, mapping=dict(to_slot(fields)))
    pipe.expire(key, KEEP_S)


def write_slot_scripts(conn: pycanary.Connection, queue: str, version: str, lane: str,
                       slot: int, jobs: list[Job], worker_id: str = "bench-w") -> None:
    """What a worker does: the envelopes sit in its processing list, ack_jobs / fail_jobs take
    them out and record the outcome."""
    qk = conn.keys.queue(queue)
    envs = [f'{{"id":"j{i}"}}' for i in range(len(jobs))]
    conn.client.rpush(qk.processing(worker_id), *envs)
    ack: list[Any] = [KEEP_S]
    fail: list[Any] = [KEEP_S]
    for env, j in zip(envs, jobs, strict=True):
        if j.outcome == "ok":
            ack += [env, j.run_b, j.wait_b, "", "0", ""]  # no job-level fields
        elif j.outcome == "retry":
            fail += [env, "retry", env, str(slot * 1000 + 5000), j.run_b, j.wait_b, "", "0", ""]
        else:
            fail += [env, "dead", '{"dead":1}', "", j.run_b, j.wait_b, "", "0", ""]
    if len(ack) > 1:
        conn.scripts.call("ack_jobs", qk.ack_keys(worker_id, version, lane, slot), ack)
    if len(fail) > 1:
        conn.scripts.call("fail_jobs", qk.fail_keys(worker_id, version, lane, slot), fail)


def mem(client: Any, key: str) -> int:
    return int(client.memory_usage(key, samples=0) or 0)


def verify_equivalence(conn: pycanary.Connection, traffic: Traffic) -> dict[str, Any]:
    """A few slots written by the real scripts and by HSET of the counted fields: identical
    hashes (slots and totals), identical sizes."""
    c = conn.client
    a, b = conn.keys.queue("verify-scripts"), conn.keys.queue("verify-direct")
    totals: dict[str, Counter] = {"stable": Counter(), "canary": Counter()}
    slot0 = metrics.slot_of(defaults.now_ms())
    same = True
    sizes = [0, 0]
    for lane, n in split(RATE * SLOT_S, round(HISTORY_CANARY_SHARE * 10_000)).items():
        v = VERSIONS[lane]
        for k in range(3):
            slot = slot0 - k * SLOT_S
            jobs, fields = traffic.template(n)
            write_slot_scripts(conn, "verify-scripts", v, lane, slot, jobs)
            pipe = c.pipeline(transaction=False)
            write_slot_direct(pipe, b, v, lane, slot, fields)
            pipe.execute()
            totals[lane].update(fields)
            ka, kb = a.metrics_slot(v, lane, slot), b.metrics_slot(v, lane, slot)
            same &= c.hgetall(ka) == c.hgetall(kb)
            sizes[0] += mem(c, ka)
            sizes[1] += mem(c, kb)
        c.hset(b.metrics_total(v, lane), mapping=dict(totals[lane]))
        same &= c.hgetall(a.metrics_total(v, lane)) == c.hgetall(b.metrics_total(v, lane))
    return {"identical": bool(same), "bytes_scripts": sizes[0], "bytes_direct": sizes[1]}


def fill_history(conn: pycanary.Connection, queue: str, traffic: Traffic, now_ms: int) -> None:
    qk = conn.keys.queue(queue)
    pipe = conn.client.pipeline(transaction=False)
    newest = metrics.slot_of(now_ms)
    for lane, n in split(RATE * SLOT_S, round(HISTORY_CANARY_SHARE * 10_000)).items():
        v = VERSIONS[lane]
        totals: Counter = Counter()
        for k in range(HISTORY_SLOTS):
            _jobs, fields = traffic.template(n)
            write_slot_direct(pipe, qk, v, lane, newest - k * SLOT_S, fields)
            totals.update(fields)
        pipe.hset(qk.metrics_total(v, lane), mapping=dict(totals))
        pipe.expire(qk.metrics_total(v, lane), KEEP_S)
    pipe.execute()


def feed_interval(conn: pycanary.Connection, queues: list[str], weights: dict[str, int],
                  traffic: Traffic, seconds: int) -> int:
    """One interval of traffic: HINCRBY into the current slot and the totals, as ack_jobs and
    fail_jobs do. Returns the jobs recorded."""
    pipe = conn.client.pipeline(transaction=False)
    slot = metrics.slot_of(defaults.now_ms())
    n_jobs = 0
    for q in queues:
        qk = conn.keys.queue(q)
        for lane, n in split(RATE * seconds, weights[q]).items():
            if n == 0:
                continue
            v = VERSIONS[lane]
            fields = traffic.fresh_fields(n)
            n_jobs += n
            for key, kfields in ((qk.metrics_slot(v, lane, slot), to_slot(fields)),
                                 (qk.metrics_total(v, lane), fields)):
                for f, cnt in kfields.items():
                    pipe.hincrby(key, f, cnt)
                pipe.expire(key, KEEP_S)
    pipe.execute()
    return n_jobs


def heartbeat_workers(conn: pycanary.Connection, queues: list[str]) -> None:
    """Two live workers: v1 on every queue's stable lane, v2 on every canary lane."""
    now = defaults.now_ms()
    for v, lane in (("v1", "stable"), ("v2", "canary")):
        info = {"host": "bench", "pid": 1, "version": v, "state": "active",
                "queues": ",".join(queues), "lanes": ",".join(f"{q}={lane}" for q in queues),
                "concurrency": 8, "started_at": now, "current": 0, "done": 0, "failed": 0,
                "schemas": "any", "last_seen": now}
        registry.heartbeat(conn, f"bench-{v}", version=v, queues=dict.fromkeys(queues, lane),
                           info=info, ttl_ms=60_000, now=now)


# -- ticks -------------------------------------------------------------------------------------
class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def server_delta(before: dict[str, tuple[int, int]],
                 after: dict[str, tuple[int, int]]) -> tuple[int, int]:
    calls = us = 0
    for cmd, (c1, u1) in after.items():
        if cmd == "info":
            continue
        c0, u0 = before.get(cmd, (0, 0))
        calls += c1 - c0
        us += u1 - u0
    return calls, us


def run_ticks(conn: pycanary.Connection, ctl: Controller, clock: Clock, queues: list[str],
              traffic: Traffic, n: int, interval: int, measure_server: bool) -> dict[str, Any]:
    ms: list[float] = []
    cmds: list[int] = []
    server_us: list[int] = []
    actions: Counter = Counter()
    active: list[int] = []
    for _ in range(n):
        deps = deployments.get_many(conn, queues)
        weights = {q: (d.weight_bp if d is not None and d.active else 0)
                   for q, d in deps.items()}
        feed_interval(conn, queues, weights, traffic, interval)
        heartbeat_workers(conn, queues)
        clock.t += interval
        before = commandstats(conn.client) if measure_server else {}
        t0 = time.perf_counter()
        report = ctl.tick()
        dt = (time.perf_counter() - t0) * 1000
        if measure_server:
            calls, us = server_delta(before, commandstats(conn.client))
            cmds.append(calls)
            server_us.append(us)
        ms.append(dt)
        active.append(report.deployments)
        for a in report.actions:
            actions[a.split(": ", 1)[1].split(" (")[0].split(":")[0]] += 1
    s = sorted(ms)
    return {"ticks": n, "ms": ms, "median_ms": percentile(s, 50), "p95_ms": percentile(s, 95),
            "max_ms": s[-1] if s else math.nan, "deployments": active,
            "commands_per_tick": (sum(cmds) / len(cmds)) if cmds else None,
            "server_ms_per_tick": (sum(server_us) / len(server_us) / 1000) if server_us
            else None,
            "actions": dict(actions)}


def breakdown(conn: pycanary.Connection, ctl: Controller, clock: Clock, queues: list[str],
              traffic: Traffic, n: int, interval: int) -> dict[str, float]:
    """Where a tick's time goes: wall ms per tick in each step, by timing wrappers installed
    for these ticks only (the measured ticks above ran without them)."""
    import pycanary.controller as cmod

    spent: Counter = Counter()
    patches: list[tuple[Any, str, Any]] = []
    inside = [False]  # count only the controller's own calls (the bench reads deployments too)

    def wrap(owner: Any, name: str, label: str) -> None:
        orig = getattr(owner, name)

        def timed(*a: Any, **kw: Any) -> Any:
            if not inside[0]:
                return orig(*a, **kw)
            t0 = time.perf_counter()
            try:
                return orig(*a, **kw)
            finally:
                spent[label] += time.perf_counter() - t0

        patches.append((owner, name, vars(owner).get(name, orig)))  # a classmethod as such
        setattr(owner, name, timed)

    def flagged(orig: Any) -> Any:
        def tick(self: Any) -> Any:
            inside[0] = True
            try:
                return orig(self)
            finally:
                inside[0] = False
        return tick

    patches.append((Controller, "tick", Controller.tick))
    Controller.tick = flagged(Controller.tick)  # type: ignore[method-assign]
    wrap(deployments, "active_queues", "read deployments (2 round trips)")
    wrap(Controller, "_read", "read deployments (2 round trips)")
    wrap(Deployment, "from_hash", "decode deployment hashes (ctl only when not ours)")
    wrap(Controller, "_worker_counts", "worker registry (2 round trips)")
    wrap(Controller, "_snapshots", "lane totals snapshots (1 pipelined round trip)")
    wrap(Controller, "_lane_stats", "lane windows: totals diffed and decoded")
    wrap(cmod, "evaluate", "analysis: evaluate + decide (pure Python)")
    wrap(cmod, "decide", "analysis: evaluate + decide (pure Python)")
    wrap(deployments, "encode_ctl", "encode the ctl field (JSON + zlib)")
    wrap(cmod, "run_scripts", "fenced CAS writes with analyses (1 pipelined round trip)")
    try:
        res = run_ticks(conn, ctl, clock, queues, traffic, n, interval, measure_server=False)
    finally:
        for owner, name, orig in reversed(patches):
            setattr(owner, name, orig)
    total = sum(res["ms"]) / n
    out = {k: v * 1000 / n for k, v in spent.items()}
    out["other (analysis state, records, events, bookkeeping)"] = total - sum(out.values())
    out["total"] = total
    return out


# -- memory ------------------------------------------------------------------------------------
GROUPS = ("deployment hashes (2)", "events list", "analyses list",
          "queue config, fence, counters", "metric totals (2)", "metric slots, stable",
          "metric slots, canary")
#: The queue's notification outbox: a stream (4 KB at its first entry) shared by every
#: deployment of the queue, shown apart and not counted per deployment.
OUTBOX = "outbox (the queue's, not counted)"


def group_of(qk: Any, key: str) -> tuple[str, int | None]:
    rest = key[len(qk.base) + 1:]
    if rest in ("deployment", "deployment:large"):
        return "deployment hashes (2)", None
    if rest.startswith("events:"):
        return "events list", None
    if rest == "outbox":
        return OUTBOX, None
    if rest.startswith("analyses:"):
        return "analyses list", None
    if rest.startswith("mt:"):
        return "metric totals (2)", None
    if rest.startswith("m:"):
        _m, _v, lane, slot = rest.split(":")
        return f"metric slots, {lane}", int(slot)
    return "queue config, fence, counters", None


def memory_of_queue(conn: pycanary.Connection, queue: str) -> dict[str, Any]:
    c = conn.client
    qk = conn.keys.queue(queue)
    keys = sorted(c.scan_iter(match=f"{qk.base}:*", count=1000))  # admin path: bench only
    fixed: dict[str, dict[str, Any]] = {}
    slots: dict[str, list[tuple[int, int, int]]] = {"stable": [], "canary": []}
    for key in keys:
        group, slot = group_of(qk, key)
        size = mem(c, key)
        if slot is not None:
            lane = group.rsplit(", ", 1)[1]
            slots[lane].append((slot, size, c.hlen(key)))
            continue
        g = fixed.setdefault(group, {"keys": 0, "bytes": 0, "encodings": set(), "items": 0})
        g["keys"] += 1
        g["bytes"] += size
        g["encodings"].add(c.object("encoding", key))
        kind = c.type(key)
        g["types"] = sorted({*g.get("types", []), kind})
        g["items"] += {"hash": c.hlen, "list": c.llen, "stream": c.xlen}.get(
            kind, lambda _k: 0)(key)
    fixed_total = sum(g["bytes"] for k, g in fixed.items() if k != OUTBOX)
    out: dict[str, Any] = {"queue": queue, "fixed": {k: {**v, "encodings": sorted(v["encodings"])}
                                                     for k, v in fixed.items()},
                           "fixed_bytes": fixed_total}
    for label, n in (("10min", TEN_MIN_SLOTS), ("1h", HISTORY_SLOTS)):
        per_lane = {}
        for lane, rows in slots.items():
            newest = sorted(rows, reverse=True)[:n]
            per_lane[lane] = {"slots": len(newest), "bytes": sum(r[1] for r in newest),
                              "mean_fields": (sum(r[2] for r in newest) / len(newest))
                              if newest else 0}
        out[label] = {"lanes": per_lane,
                      "total": fixed_total + sum(x["bytes"] for x in per_lane.values())}
    return out


def hist_buckets(fields: dict[str, str], kind: str) -> int:
    return sum(1 for f in fields if f[0] == kind and f[1:].isdigit())


def slot_shape(conn: pycanary.Connection, queue: str) -> dict[str, Any]:
    """Mean non-empty run / wait buckets per slot and lane over the newest 60 slots."""
    c = conn.client
    qk = conn.keys.queue(queue)
    now_slot = metrics.slot_of(defaults.now_ms())
    out = {}
    for lane, v in VERSIONS.items():
        run = wait = n = 0
        for k in range(1, TEN_MIN_SLOTS + 1):  # skip the current slot (it also got the feed)
            f = c.hgetall(qk.metrics_slot(v, lane, now_slot - k * SLOT_S))
            if f:
                run += hist_buckets(f, "r")
                wait += hist_buckets(f, "w")
                n += 1
        out[lane] = {"run_buckets": run / max(1, n), "wait_buckets": wait / max(1, n)}
    return out


def what_ifs(conn: pycanary.Connection, queue: str, prefix: str) -> list[dict[str, Any]]:
    """Alternatives measured on scratch keys built from the queue's newest 10 minutes."""
    c = conn.client
    qk = conn.keys.queue(queue)
    now_slot = metrics.slot_of(defaults.now_ms())
    lanes = {lane: [c.hgetall(qk.metrics_slot(v, lane, now_slot - k * SLOT_S))
                    for k in range(1, TEN_MIN_SLOTS + 1)] for lane, v in VERSIONS.items()}
    scratch = f"{prefix}:scratch"
    n = 0

    def measure(hashes: list[dict[str, int]]) -> int:
        nonlocal n
        total = 0
        for h in hashes:
            if not h:
                continue
            n += 1
            key = f"{scratch}:{n}"
            c.hset(key, mapping=h)
            total += mem(c, key)
        return total

    def merge(hs: list[dict[str, str]], group: int, drop_wait: bool) -> list[dict[str, int]]:
        out = []
        for i in range(0, len(hs), group):
            m: Counter = Counter()
            for h in hs[i:i + group]:
                m.update({f: int(x) for f, x in h.items()
                          if not (drop_wait and f[0] == "w" and f[1:].isdigit())})
            out.append(dict(m))
        return out

    def coarse(hs: list[dict[str, int]], factor: int) -> list[dict[str, int]]:
        out = []
        for h in hs:
            m: Counter = Counter()
            for f, x in h.items():
                if f[0] in "rw" and f[1:].isdigit():
                    m[f"{f[0]}{int(f[1:]) // factor}"] += x
                else:
                    m[f] += x
            out.append(dict(m))
        return out

    rows = []
    base = sum(measure(merge(hs, 1, False)) for hs in lanes.values())
    rows.append({"change": f"as built: {SLOT_S} s slots, run + CPU histograms by pairs "
                           "(growth 1.21), wait at 1/8 resolution", "bytes": base})
    rows.append({"change": "no wait histogram in slots",
                 "bytes": sum(measure(merge(hs, 1, True)) for hs in lanes.values())})
    rows.append({"change": "no wait histogram, run + CPU buckets by 4 (growth 1.46)",
                 "bytes": sum(measure(coarse(merge(hs, 1, True), 2)) for hs in lanes.values())})
    rows.append({"change": f"{2 * SLOT_S} s slots",
                 "bytes": sum(measure(merge(hs, 2, False)) for hs in lanes.values())})
    keys = [f"{scratch}:{i}" for i in range(1, n + 1)]
    for i in range(0, len(keys), 500):
        c.delete(*keys[i:i + 500])
    return rows


def analyses_what_if(conn: pycanary.Connection, queue: str, prefix: str,
                     keep: int) -> tuple[int, int, int]:
    """(bytes of the list now, entries, bytes if only `keep` were kept)."""
    c = conn.client
    dep = deployments.get(conn, queue)
    key = conn.keys.queue(queue).analyses(dep.id)
    items = c.lrange(key, 0, keep - 1)
    scratch = f"{prefix}:scratch:analyses"
    if items:
        c.rpush(scratch, *items)
    kept = mem(c, scratch) if items else 0
    c.delete(scratch)
    return mem(c, key), c.llen(key), kept


# -- main --------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--redis-url", default=None,
                    help="use this server instead of a private one (server-time figures then "
                         "include other clients' calls)")
    ap.add_argument("--deployments", default="50,500",
                    help="deployment counts, comma-separated (default 50,500: the tick must "
                         "stay linear)")
    ap.add_argument("--ticks", type=int, default=20, help="measured ticks per variant")
    ap.add_argument("--quick", action="store_true", help="8 measured ticks per variant")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n_ticks = 8 if args.quick else args.ticks
    raise_on_sigterm()
    logging.basicConfig(level=logging.ERROR)  # the controller's per-check log lines
    runs = []
    for n in (int(x) for x in str(args.deployments).split(",") if x.strip()):
        runs.append(measure(args, n, n_ticks))
    if args.json:
        print(json.dumps(runs if len(runs) > 1 else runs[0], indent=2, default=str))
        return 0
    for i, results in enumerate(runs):
        report(results, n_ticks, memory=i == 0)
    return 0


def measure(args: argparse.Namespace, n_deployments: int, n_ticks: int) -> dict[str, Any]:
    """One full run (set-up, ticks, breakdown, memory) over n_deployments queues."""
    prefix = unique_prefix("pycanary-bench-controller")
    server = None if args.redis_url else PrivateRedis()
    url = args.redis_url or server.url
    conn = pycanary.connect(url, prefix=prefix)
    results: dict[str, Any] = {"deployments": n_deployments,
                               "server": "private redis-server" if server else url}
    try:
        conn.ping()
        c = conn.client
        info = c.info("server")
        results["redis_version"] = info.get("redis_version")
        results["hash_max_listpack"] = {k: v for k, v in
                                        c.config_get("hash-max-listpack-*").items()}
        meter = CpuMeter(c)
        traffic = Traffic()
        plan = load_plan(PLAN_PATH)
        interval = int(plan.interval)
        results["plan"] = {"file": str(PLAN_PATH.relative_to(REPO)),
                           "interval_s": interval,
                           "stages": [s.percentage for s in plan.stages]}
        results["equivalence"] = verify_equivalence(conn, traffic)
        if not results["equivalence"]["identical"]:
            raise SystemExit(f"metric hashes differ from the scripts': {results['equivalence']}")

        clock = Clock(time.time())
        queues = [f"bench-q{i:03d}" for i in range(n_deployments)]
        t0 = time.perf_counter()
        for q in queues:
            service.configure_queue(conn, q, stable_version="v1")
            rollouts.ramp(conn, q, "v2", plan, allow_schema_change=True, actor="bench",
                          now_ms=int(clock() * 1000), force=True)
            fill_history(conn, q, traffic, defaults.now_ms())
        heartbeat_workers(conn, queues)
        results["setup_s"] = time.perf_counter() - t0

        plain = Controller(conn, clock=clock)
        clock.t += interval
        baseline = plain.tick()  # every deployment's first look: its baseline
        results["baseline_tick_ms"] = baseline.seconds * 1000
        results["ticks"] = {}
        results["ticks"]["no leadership"] = run_ticks(
            conn, plain, clock, queues, traffic, n_ticks, interval, measure_server=server
            is not None)
        lead = Leadership(conn, lease_s=defaults.LEASE_S, controller_id="bench")
        leader = Controller(conn, clock=clock, leadership=lead)
        results["ticks"]["with leadership"] = run_ticks(
            conn, leader, clock, queues, traffic, n_ticks, interval,
            measure_server=server is not None)
        results["breakdown"] = breakdown(conn, plain, clock, queues, traffic, 5, interval)
        # steady state of the analyses list (capped), for the memory figures
        extra = 0
        while True:
            dep = deployments.get(conn, queues[0])
            have = c.llen(conn.keys.queue(queues[0]).analyses(dep.id))
            if have >= deployments.ANALYSES_KEPT or not dep.active or extra > 100:
                break
            run_ticks(conn, plain, clock, queues, traffic, 1, interval, measure_server=False)
            extra += 1
        results["extra_ticks"] = extra
        final = deployments.get_many(conn, queues)
        results["final_states"] = dict(Counter(
            f"{d.state} stage {d.stage}" for d in final.values() if d is not None))

        results["memory"] = memory_of_queue(conn, queues[0])
        qk0 = conn.keys.queue(queues[0])
        dep_hash = deployments.merged(c.hgetall(qk0.deployment), c.hgetall(qk0.deployment_large))
        results["deployment_fields"] = sorted(((f, len(v)) for f, v in dep_hash.items()),
                                              key=lambda x: -x[1])[:6]
        results["slot_shape"] = slot_shape(conn, queues[0])
        results["what_if_slots_10min"] = what_ifs(conn, queues[0], prefix)
        a_now, a_n, a_10 = analyses_what_if(conn, queues[0], prefix, 2)
        results["analyses"] = {"bytes": a_now, "entries": a_n, "bytes_if_10_kept": a_10}
        results["cpu"] = meter.stop()
    finally:
        clean_up(conn, prefix, server)

    return results


def kb(b: float) -> str:
    return f"{b / 1024:,.1f} KB"


def report(r: dict[str, Any], n_ticks: int, memory: bool = True) -> None:
    n = r["deployments"]
    tick_target = n * TICK_TARGET_MS_PER_DEPLOYMENT
    print(f"## Controller tick over {n} active deployments "
          f"({r['plan']['file']}, interval {r['plan']['interval_s']} s)\n")
    rows = []
    for label, t in r["ticks"].items():
        dep_counts = sorted(set(t["deployments"]))
        rows.append([label, t["ticks"], "/".join(map(str, dep_counts)),
                     f"{t['median_ms']:.1f}", f"{t['p95_ms']:.1f}", f"{t['max_ms']:.1f}",
                     fmt_num(t["commands_per_tick"]),
                     "n/a" if t["server_ms_per_tick"] is None else
                     f"{t['server_ms_per_tick']:.1f}",
                     ", ".join(f"{k} {v}" for k, v in sorted(t["actions"].items()))])
    print(md_table(["controller", "ticks", "deployments", "median ms", "p95 ms", "max ms",
                    "Redis cmds/tick", "Redis server ms/tick", "actions"], rows,
                   align=["l", "r", "r", "r", "r", "r", "r", "r", "l"]))
    print(f"\nEach measured tick checks every deployment (snapshot of both lanes' totals, "
          f"analysis, fenced CAS write, analysis record) on one interval of new traffic "
          f"({RATE} jobs/s per queue). Untimed: the baseline tick "
          f"({r['baseline_tick_ms']:.1f} ms) and {r['extra_ticks']} ticks to fill the analyses "
          f"lists. States at the end: {r['final_states']}.")

    bd = r["breakdown"]
    print("\nWhere a tick goes (5 more ticks with timing wrappers, ms per tick):\n")
    print(md_table(["step", "ms per tick", "share"],
                   [[k, f"{v:.1f}", f"{100 * v / bd['total']:.0f}%"] for k, v in
                    sorted(bd.items(), key=lambda kv: -kv[1]) if k != "total"]
                   + [["total", f"{bd['total']:.1f}", ""]]))

    m = r["memory"]
    if memory:
        print(f"\n## Redis memory per deployment (queue {m['queue']}, MEMORY USAGE of every key)\n")
        rows = []
        for g in GROUPS:
            if g in m["fixed"]:
                f = m["fixed"][g]
                rows.append([g, f["keys"], f["items"], ",".join(f["encodings"]), f["bytes"],
                             f["bytes"]])
        for lane in ("stable", "canary"):
            a, b = m["10min"]["lanes"][lane], m["1h"]["lanes"][lane]
            rows.append([f"metric slots, {lane}", f"{a['slots']} / {b['slots']}",
                         f"{a['mean_fields']:.0f} fields/slot", "listpack", a["bytes"], b["bytes"]])
        rows.append(["**total per deployment**", "", "", "", kb(m["10min"]["total"]),
                     kb(m["1h"]["total"])])
        if OUTBOX in m["fixed"]:
            f = m["fixed"][OUTBOX]
            rows.append([OUTBOX, f["keys"], f["items"], ",".join(f["encodings"]), f["bytes"],
                         f["bytes"]])
        print(md_table(["keys", "count", "items", "encoding", "bytes, 10 min history",
                        "bytes, 1 h history"], rows, align=["l", "r", "r", "l", "r", "r"]))
        shape = r["slot_shape"]
        print(f"\nSlots: {SLOT_S} s, ~{RATE * SLOT_S} jobs each ({100 * HISTORY_CANARY_SHARE:g}% "
              f"canary); mean non-empty buckets per slot: stable run "
              f"{shape['stable']['run_buckets']:.0f} / wait {shape['stable']['wait_buckets']:.0f}, "
              f"canary run {shape['canary']['run_buckets']:.0f} / wait "
              f"{shape['canary']['wait_buckets']:.0f}. Written like ack_jobs/fail_jobs: verified "
              f"identical on sample slots ({r['equivalence']['bytes_scripts']} B via the scripts, "
              f"{r['equivalence']['bytes_direct']} B direct). Server: {r['server']}, Redis "
              f"{r['redis_version']}, {r['hash_max_listpack']}.")

    ticks = list(r["ticks"].values())
    plain = ticks[0]
    mem10, mem1h = m["10min"]["total"], m["1h"]["total"]
    print("\n## Targets\n")
    targets = [
        [f"one tick over {n} deployments, median < {tick_target:g} ms",
         f"{plain['median_ms']:.1f} ms", pass_fail(plain["median_ms"] < tick_target)],
        [f"one tick over {n} deployments, p95 < {tick_target:g} ms ({n_ticks} ticks)",
         f"{plain['p95_ms']:.1f} ms", pass_fail(plain["p95_ms"] < tick_target)],
        ["(same, with leader lease renewal and fencing: the CLI path), p95",
         f"{ticks[1]['p95_ms']:.1f} ms", pass_fail(ticks[1]["p95_ms"] < tick_target)],
    ]
    memory_targets = [
        ["memory per deployment, 10 min of metrics history <= 12 KB (design card)",
         kb(mem10), pass_fail(mem10 <= MEMORY_TARGET_B)],
        ["(memory per deployment, 1 h of metrics history: what is kept by default)",
         kb(mem1h), "n/a"],
    ]
    print(md_table(["target", "measured", "verdict"],
                   targets + (memory_targets if memory else []), align=["l", "r", "l"]))

    if memory and mem10 > MEMORY_TARGET_B:
        parts = {g: f["bytes"] for g, f in m["fixed"].items() if g != OUTBOX}
        for lane in ("stable", "canary"):
            parts[f"metric slots, {lane} ({TEN_MIN_SLOTS})"] = \
                m["10min"]["lanes"][lane]["bytes"]
        top = sorted(parts.items(), key=lambda kv: -kv[1])
        print("\n### Where the 10-minute figure goes\n")
        print(md_table(["keys", "bytes", "share"],
                       [[k, v, f"{100 * v / mem10:.0f}%"] for k, v in top]))
        a = r["analyses"]
        print("\nLargest fields of the deployment hash (bytes): " + ", ".join(
            f"{f} {n}" for f, n in r["deployment_fields"]) + "; analyses list: "
            f"{a['bytes'] / max(1, a['entries']):,.0f} B per entry (compact records: verdict, "
            "reason, each rule's verdict, the decision).")
        print("\nWhat would shrink it (measured on scratch copies of this queue's data):\n")
        rows = [[w["change"], kb(w["bytes"])] for w in r["what_if_slots_10min"]]
        rows.append([f"analyses list: keep 2 instead of {a['entries']} "
                     f"({kb(a['bytes'])} now)", kb(a["bytes_if_10_kept"])])
        print(md_table(["change (metric slots of both lanes, 10 min)", "bytes"], rows))
    print(f"\n{CpuMeter.describe(r['cpu'])}. Set-up {r['setup_s']:.1f} s.")


if __name__ == "__main__":
    sys.exit(main())
