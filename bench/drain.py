"""Rollback and drain: how fast a rolled-back canary lane empties into stable, under load.

  .venv/bin/python bench/drain.py [--redis-url URL] [--jobs 100000] [--quick] [--json]

By default a private redis-server is started on a free loopback port (bench/_common.py
PrivateRedis), so SLOWLOG and INFO commandstats hold this benchmark's calls only; --redis-url
uses that server instead (its figures then include other clients' calls; its slowlog settings
are changed for the measured windows only and restored, and nothing is flushed or reset).

For each batch size (500, 1000, 2000), on a queue of its own:

1. weight 100%, then --jobs real envelopes via Producer.enqueue_many: all land in canary;
2. rollback_canary.lua (weight 0); timed until the next Producer.enqueue returns lane stable;
3. --producers processes (multiprocessing, spawn) enqueue continuously, now routed to stable;
4. drain_lane(batch=...) with every command logged by SLOWLOG (slowlog-log-slower-than 0):
   the slowest drain_lane call's server duration is the "no script runs longer than a few ms"
   figure; client-side wall time of the whole drain is the "< 1 s" figure;
5. producers stopped; every envelope of the queue is read back: count = enqueued, no id twice,
   the drained jobs first and in their order, nothing routed to canary after the rollback;
6. a quiet pass (no producers) drains the same lane back the other way, so INFO commandstats'
   EVALSHA usec_per_call is the drain script's alone (during step 4 it mixes in the
   producers' route_enqueue_many calls); EVALSHA and LPOP calls there must equal the calls
   sent (a check that the window holds the drain alone)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import sys
import time
from collections.abc import Iterator
from typing import Any

from _common import (
    CpuMeter,
    PrivateRedis,
    clean_up,
    commandstats,
    md_table,
    pass_fail,
    raise_on_sigterm,
    stats_delta,
    unique_prefix,
)

import pycanary
from pycanary import queue_config
from pycanary.drain import drain_lane

BATCHES = (500, 1000, 2000)
DRAIN_TARGET_S = 1.0
CALL_TARGET_MS = 5.0
SLOWLOG_MAX_LEN = 50_000  # entries in a measured window: a few thousand at most


# -- producer processes ------------------------------------------------------------------------
def _produce(url: str, prefix: str, queue: str, go: Any, stop: Any, count: Any,
             canary_hits: Any, rate: float) -> None:
    """Enqueue continuously (batches of 50; `rate` jobs/s, 0 = as fast as it goes)."""
    conn = pycanary.connect(url, prefix=prefix)
    producer = pycanary.Producer(conn)
    payloads = [{"bench": "drain", "n": i} for i in range(50)]
    go.wait()
    t0 = time.perf_counter()
    sent = 0
    while not stop.is_set():
        if rate and sent > (time.perf_counter() - t0) * rate:
            time.sleep(0.001)
            continue
        res = producer.enqueue_many(queue, payloads, batch_size=50)
        sent += len(res)
        with count.get_lock():
            count.value += len(res)
        hits = sum(r.lane == "canary" for r in res)
        if hits:
            with canary_hits.get_lock():
                canary_hits.value += hits
    conn.close()


# -- server-side capture -----------------------------------------------------------------------
@contextlib.contextmanager
def slowlog_capture(client: Any, out: list[dict[str, Any]]) -> Iterator[None]:
    """Log every command during the block (threshold 0) and collect the entries logged in it.

    Entries are told apart by id (no SLOWLOG RESET, so a shared server keeps its own log);
    the previous settings are restored afterwards.
    """
    prev = client.config_get("slowlog-*")
    client.config_set("slowlog-max-len", SLOWLOG_MAX_LEN)
    last = client.slowlog_get(1)
    watermark = last[0]["id"] if last else -1
    client.config_set("slowlog-log-slower-than", 0)
    try:
        yield
    finally:
        client.config_set("slowlog-log-slower-than", prev["slowlog-log-slower-than"])
        out.extend(e for e in client.slowlog_get(-1) if e["id"] > watermark)
        client.config_set("slowlog-max-len", prev["slowlog-max-len"])


def script_entries(entries: list[dict[str, Any]], sha: str) -> list[int]:
    """Durations (us) of the EVALSHA/EVAL calls of one script."""
    out = []
    for e in entries:
        cmd = e["command"]
        if isinstance(cmd, bytes):
            cmd = cmd.decode(errors="replace")
        words = cmd.split(" ", 2)
        if words[0].upper() in ("EVALSHA", "EVAL") and len(words) > 1 and words[1] == sha:
            out.append(int(e["duration"]))
    return out


# -- one batch size ------------------------------------------------------------------------------
def _ids_taken_in_order(client: Any, key: str) -> list[str]:
    """Job ids of a lane in the order workers take them (from the right end)."""
    ids: list[str] = []
    n = client.llen(key)
    for start in range(0, n, 10_000):
        ids.extend(json.loads(raw)["id"] for raw in client.lrange(key, start, start + 9_999))
    ids.reverse()
    return ids


def run_batch(conn: pycanary.Connection, url: str, batch: int, jobs: int, producers: int,
              rate: float) -> dict[str, Any]:
    client = conn.client
    queue = f"drain-{batch}"
    qk = conn.keys.queue(queue)
    sha = conn.scripts["drain_lane"].sha
    r: dict[str, Any] = {"batch": batch, "jobs": jobs}

    # 1. fill the canary lane with real envelopes
    queue_config.set_weight(conn, queue, 10_000)
    producer = pycanary.Producer(conn)
    t0 = time.perf_counter()
    filled: list[str] = []
    for start in range(0, jobs, 20_000):
        res = producer.enqueue_many(queue, [{"fill": i} for i in range(start, min(jobs, start
                                                                                  + 20_000))],
                                    batch_size=1000)
        if any(x.lane != "canary" for x in res):
            raise SystemExit("fill: a job was not routed to canary at weight 100%")
        filled.extend(x.job_id for x in res)
    r["fill_s"] = time.perf_counter() - t0

    # producer processes wait for `go` (spawn start-up is not part of any timing)
    ctx = mp.get_context("spawn")
    go, stop = ctx.Event(), ctx.Event()
    counts = [ctx.Value("q", 0) for _ in range(producers)]
    hits = ctx.Value("q", 0)
    procs = [ctx.Process(target=_produce, args=(url, conn.keys.prefix, queue, go, stop, c, hits,
                                                rate), daemon=True) for c in counts]
    for p in procs:
        p.start()
    try:
        # 2. rollback -> weight 0 effective
        routed_canary = int(client.hget(qk.routed, "canary") or 0)
        t0 = time.perf_counter()
        conn.scripts.call("rollback_canary", [qk.config, qk.tenant_weights, qk.rolled_back],
                          ["", int(time.time() * 1000)])
        t1 = time.perf_counter()
        probe = producer.enqueue(queue, {"probe": True})
        t2 = time.perf_counter()
        r["rollback_ms"] = (t1 - t0) * 1000
        r["weight0_effective_ms"] = (t2 - t0) * 1000
        r["probe_lane"] = probe.lane

        # 3. producers running
        go.set()
        deadline = time.monotonic() + 60
        while any(c.value == 0 for c in counts):
            if time.monotonic() > deadline or not all(p.is_alive() for p in procs):
                raise SystemExit("producer processes did not start")
            time.sleep(0.01)
        time.sleep(0.2)  # let them reach a steady pace

        # 4. the drain
        entries: list[dict[str, Any]] = []
        before_n = sum(c.value for c in counts)
        with slowlog_capture(client, entries):
            report = drain_lane(conn, queue, batch=batch)
        during = sum(c.value for c in counts) - before_n
    finally:
        stop.set()
        go.set()
        for p in procs:
            p.join(30)
            if p.is_alive():  # pragma: no cover - only our own child
                p.terminate()
                p.join(5)
    produced = sum(c.value for c in counts)
    drain_us = script_entries(entries, sha)
    r.update(drain_s=report.seconds, moved=report.moved, remaining=report.remaining,
             calls=report.calls, round_trips=report.round_trips,
             client_max_call_ms=report.max_call_ms,
             client_max_round_trip_ms=report.max_round_trip_ms,
             slowlog_calls=len(drain_us),
             slowlog_max_ms=max(drain_us) / 1000 if drain_us else None,
             slowlog_mean_us=sum(drain_us) / len(drain_us) if drain_us else None,
             produced=produced, produced_during_drain=during,
             producer_rate_during_drain=during / report.seconds if report.seconds else None,
             producer_canary_hits=hits.value)

    # 5. nothing lost, nothing twice, drained jobs first and in order
    ids = _ids_taken_in_order(client, qk.lane_stable)
    canary_left = client.llen(qk.lane_canary)
    expected = jobs + 1 + produced
    r["envelopes"] = len(ids) + canary_left
    r["expected"] = expected
    r["unique_ids"] = len(set(ids))
    r["duplicates"] = len(ids) - r["unique_ids"]
    r["order_ok"] = ids[:jobs] == filled
    r["routed_canary_after_rollback"] = int(client.hget(qk.routed, "canary") or 0) - routed_canary
    r["no_loss"] = (r["envelopes"] == expected and r["unique_ids"] == len(ids)
                    and canary_left == 0 and report.remaining == 0)
    r["closed"] = (probe.lane == "stable" and hits.value == 0
                   and r["routed_canary_after_rollback"] == 0)

    # 6. quiet pass: commandstats of the drain script alone
    n_quiet = client.llen(qk.lane_stable)
    quiet_entries: list[dict[str, Any]] = []
    s0 = commandstats(client)
    with slowlog_capture(client, quiet_entries):
        quiet = drain_lane(conn, queue, from_lane="stable", to_lane="canary", batch=batch)
    s1 = commandstats(client)
    ev_calls, ev_us = stats_delta(s0, s1, "evalsha")
    lp_calls, _ = stats_delta(s0, s1, "lpop")
    quiet_us = script_entries(quiet_entries, sha)
    r.update(quiet_jobs=n_quiet, quiet_s=quiet.seconds, quiet_calls=quiet.calls,
             cmdstat_evalsha_calls=ev_calls,
             cmdstat_usec_per_call=ev_us / ev_calls if ev_calls else None,
             cmdstat_lpop_calls=lp_calls,
             quiet_slowlog_max_ms=max(quiet_us) / 1000 if quiet_us else None)
    r["quiet_window_clean"] = (ev_calls == lp_calls == quiet.calls
                               and quiet.moved == n_quiet)
    client.delete(*qk.all())
    return r


def _ms(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--redis-url", default=None,
                    help="use this server instead of a private one (server stats then include "
                         "other clients' calls)")
    ap.add_argument("--jobs", type=int, default=100_000, help="jobs in the canary lane")
    ap.add_argument("--quick", action="store_true", help="10,000 jobs (smoke test)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)))
    ap.add_argument("--producers", type=int, default=2)
    ap.add_argument("--producer-rate", type=float, default=0,
                    help="jobs/s per producer process (default 0: as fast as it goes)")
    args = ap.parse_args()
    jobs = 10_000 if args.quick else args.jobs
    batches = [int(b) for b in args.batches.split(",") if b]
    raise_on_sigterm()
    prefix = unique_prefix("pycanary-bench-drain")
    server = None if args.redis_url else PrivateRedis()
    url = args.redis_url or server.url
    conn = pycanary.connect(url, prefix=prefix)
    results: dict[str, Any] = {"jobs": jobs, "producers": args.producers,
                               "producer_rate": args.producer_rate or "max",
                               "server": "private redis-server" if server else url,
                               "redis_version": None, "runs": []}
    try:
        conn.ping()
        results["redis_version"] = conn.client.info("server").get("redis_version")
        meter = CpuMeter(conn.client)
        for batch in batches:
            results["runs"].append(run_batch(conn, url, batch, jobs, args.producers,
                                             args.producer_rate))
        results["cpu"] = meter.stop()
    finally:
        clean_up(conn, prefix, server)

    runs = results["runs"]
    targets = []
    for r in runs:
        b = f"batch {r['batch']}"
        targets += [
            {"target": f"{b}: drain {jobs:,} jobs < {DRAIN_TARGET_S:g} s",
             "measured": f"{r['drain_s']:.3f} s", "ok": r["drain_s"] < DRAIN_TARGET_S},
            {"target": f"{b}: slowest drain_lane call (SLOWLOG) < {CALL_TARGET_MS:g} ms",
             "measured": f"{_ms(r['slowlog_max_ms'], 3)} ms",
             "ok": None if r["slowlog_max_ms"] is None or r["slowlog_calls"] != r["calls"]
             else r["slowlog_max_ms"] < CALL_TARGET_MS},
            {"target": f"{b}: no job lost or duplicated, drained in order",
             "measured": f"{r['envelopes']:,}/{r['expected']:,}, unique {r['unique_ids']:,}",
             "ok": r["no_loss"] and r["order_ok"]},
            {"target": f"{b}: weight 0 effective for the next enqueue, nothing to canary after",
             "measured": f"{r['weight0_effective_ms']:.2f} ms, {r['probe_lane']}",
             "ok": r["closed"]},
        ]
    results["targets"] = targets
    if args.json:
        print(json.dumps(results, indent=2))
        return 0 if all(t["ok"] is not False for t in targets) else 1

    print(f"## Drain of {jobs:,} canary jobs into stable, {args.producers} producers running "
          f"({results['server']}, Redis {results['redis_version']})\n")
    print(md_table(
        ["batch", "drain s", "calls", "round trips", "SLOWLOG max ms", "SLOWLOG mean us",
         "cmdstats us/call (quiet)", "client max ms/call", "rollback->w0 ms",
         "producer jobs/s", "lost", "dup", "order"],
        [[f"{r['batch']:,}", f"{r['drain_s']:.3f}", r["calls"], r["round_trips"],
          _ms(r["slowlog_max_ms"], 3), _ms(r["slowlog_mean_us"], 0),
          _ms(r["cmdstat_usec_per_call"], 0), _ms(r["client_max_call_ms"], 2),
          f"{r['weight0_effective_ms']:.2f}", f"{r['producer_rate_during_drain'] or 0:,.0f}",
          r["expected"] - r["envelopes"], r["duplicates"], "ok" if r["order_ok"] else "WRONG"]
         for r in runs]))
    print("\nSLOWLOG: server duration of each drain_lane EVALSHA (every call logged; "
          "calls logged = calls sent: "
          + ", ".join(f"{r['slowlog_calls']}/{r['calls']}" for r in runs) + "). "
          "cmdstats: INFO commandstats EVALSHA usec_per_call over a quiet pass (no producers) "
          "draining the same lane back (EVALSHA calls = LPOP calls = calls sent: "
          + ", ".join("yes" if r["quiet_window_clean"] else "NO" for r in runs) + "). "
          "rollback->w0: rollback_canary call until the next Producer.enqueue returned "
          "(lane: " + ", ".join(r["probe_lane"] for r in runs) + ").")
    print("\n## Targets\n")
    print(md_table(["target", "measured", "verdict"],
                   [[t["target"], t["measured"], pass_fail(t["ok"])] for t in targets],
                   align=["l", "r", "l"]))
    print(f"\n{CpuMeter.describe(results['cpu'])}")
    return 0 if all(t["ok"] is not False for t in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
