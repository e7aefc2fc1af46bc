"""Worker throughput, ack cost and reaper cost, against a real Redis.

  .venv/bin/python bench/worker_throughput.py [--redis-url URL] [--jobs N] [--quick] [--json]

1. Throughput: one Worker (this process) drains a pre-filled backlog of no-op jobs at
   concurrency 1 and 8, and of 1 ms jobs at concurrency 8, each with the default prefetch (the
   concurrency: a worker holds only the jobs it can run) and with --prefetch 64 (a batch per
   fetch, for throughput; a rollback returns the unstarted ones within a heartbeat either way).
2. Latency: a producer process enqueues at a steady rate (half the measured no-op rate) while
   the worker runs; enqueue-to-done p50/p99 come from the handler's finish time.
3. Ack cost: INFO commandstats server time of ack_jobs per job (batches of 100 and of 1),
   metrics included.
4. Reaper: one reap() pass over 1,000 live workers (and with 10 dead ones), no SCAN.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import threading
import time
from typing import Any

from _common import (
    CpuMeter,
    PrivateRedis,
    commandstats,
    delete_prefix,
    md_table,
    pass_fail,
    percentiles,
    raise_on_sigterm,
    stats_delta,
    unique_prefix,
)

import pycanary
from pycanary import defaults, registry
from pycanary.job import Job
from pycanary.worker import Worker


def drain(conn: pycanary.Connection, queue: str, n: int, concurrency: int,
          handler_ms: float, prefetch: int | None = None) -> float:
    """Fill a backlog of n jobs, run one worker until it is empty; returns jobs/s."""
    pycanary.Producer(conn).enqueue_many(queue, [{"i": i} for i in range(n)])
    done = 0
    lock = threading.Lock()

    def handler(job: Job) -> None:
        nonlocal done
        if handler_ms:
            time.sleep(handler_ms / 1000)
        with lock:
            done += 1

    w = Worker(conn, [queue], "v1", handler, concurrency=concurrency, prefetch=prefetch)

    finished_at = 0.0

    def watch() -> None:
        nonlocal finished_at
        while done < n:
            time.sleep(0.001)
        finished_at = time.perf_counter()
        w.stop()

    threading.Thread(target=watch, daemon=True).start()
    t0 = time.perf_counter()
    w.run()  # returns after its idle BLMOVE times out; the rate counts until the last job
    return n / (finished_at - t0)


def _produce(url: str, prefix: str, queue: str, rate: float, seconds: float) -> None:
    conn = pycanary.connect(url, prefix=prefix)
    p = pycanary.Producer(conn)
    t0 = time.perf_counter()
    sent = 0
    while (elapsed := time.perf_counter() - t0) < seconds:
        due = int(elapsed * rate) - sent
        if due > 0:
            p.enqueue_many(queue, [{}] * due)
            sent += due
        time.sleep(0.002)


def latency(conn: pycanary.Connection, url: str, queue: str, rate: float, seconds: float,
            concurrency: int) -> list[float]:
    lat: list[float] = []

    def handler(job: Job) -> None:
        lat.append(time.time() * 1000 - job.enqueued_at)

    w = Worker(conn, [queue], "v1", handler, concurrency=concurrency)
    proc = mp.get_context("spawn").Process(
        target=_produce, args=(url, conn.keys.prefix, queue, rate, seconds))
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    proc.start()
    proc.join()
    deadline = time.monotonic() + 10
    qk = conn.keys.queue(queue)
    while conn.client.llen(qk.lane_stable) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    w.stop()
    t.join()
    return [x * 1000 for x in lat]  # microseconds


def ack_cost(conn: pycanary.Connection, queue: str, batch: int, rounds: int) -> float:
    """Server microseconds per acknowledged job (ack_jobs, metrics included)."""
    qk = conn.keys.queue(queue)
    pycanary.Producer(conn).enqueue_many(queue, [{"i": i} for i in range(batch * rounds)])
    wid = "bench-ack"
    total_calls = total_us = 0
    ack_keys = qk.ack_keys(wid, "v1", "stable", 0)
    for _ in range(rounds):
        jobs, _bad = conn.scripts.call("fetch_jobs", qk.fetch_keys(wid, "stable"),
                                       [batch, "v1", wid, "stable"])
        args: list[Any] = [defaults.KEEP_S]
        for i, raw in enumerate(jobs):
            # as a worker sends them: CPU bucket, first attempt, analysis unit
            args += [raw, 40 + i % 7, 30 + i % 5, 35 + i % 3, "1", f"|{i % 32}"]
        before = commandstats(conn.client)
        conn.scripts.call("ack_jobs", ack_keys, args)
        calls, us = stats_delta(before, commandstats(conn.client), "evalsha")
        total_calls += calls
        total_us += us
    return total_us / (batch * rounds)


def reaper_cost(conn: pycanary.Connection, live: int, dead: int) -> tuple[float, float]:
    """ms of a reap() pass with `live` live workers and `dead` dead ones (empty lists)."""
    now = defaults.now_ms()
    pipe = conn.scripts.pipeline()
    for i in range(live + dead):
        seen = now if i < live else now - 60_000
        pipe.call("heartbeat", conn.keys.heartbeat_keys(f"w{i}"),
                  [f"w{i}", seen, 60_000, '{"version":"v1","queues":{"payments":"stable"}}',
                   "state", "active"])
    pipe.execute()
    t0 = time.perf_counter()
    report = registry.reap(conn, ttl_ms=defaults.TTL_MS)
    with_dead = (time.perf_counter() - t0) * 1000
    assert report.workers == dead, report
    t0 = time.perf_counter()
    registry.reap(conn, ttl_ms=defaults.TTL_MS)
    only_live = (time.perf_counter() - t0) * 1000
    return only_live, with_dead


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--redis-url", default=None,
                    help="use this server instead of a private one (server-time figures from "
                         "INFO commandstats then include other clients' calls)")
    ap.add_argument("--jobs", type=int, default=20_000)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n = 3_000 if args.quick else args.jobs
    raise_on_sigterm()
    prefix = unique_prefix("pycanary-bench-worker")
    server = None if args.redis_url else PrivateRedis()
    url = args.redis_url or server.url
    conn = pycanary.connect(url, prefix=prefix)
    conn.ping()
    meter = CpuMeter(conn.client)
    results: dict[str, Any] = {"jobs": n}
    try:
        rows = []
        for label, conc, ms, jobs in (("no-op", 1, 0.0, n), ("no-op", 8, 0.0, n),
                                      ("1 ms sleep", 8, 1.0, n // 4), ("1 ms sleep", 1, 1.0,
                                                                       n // 10)):
            for pf in (None, 64):
                rate = drain(conn, f"tp-{int(ms)}-{conc}-{pf}", jobs, conc, ms, prefetch=pf)
                results[f"{label} c{conc}" + ("" if pf is None else f" prefetch {pf}")] = rate
                rows.append([label, conc, "default" if pf is None else pf, f"{jobs:,}",
                             f"{rate:,.0f}"])
        best_default = max(results["no-op c1"], results["no-op c8"])
        best_noop = max(results["no-op c1 prefetch 64"], results["no-op c8 prefetch 64"])
        lat_rate = best_noop / 2
        lat = latency(conn, url, "latency", lat_rate, 3 if args.quick else 8, 1)
        p50, p95, p99 = percentiles(lat)
        results["latency"] = {"rate": lat_rate, "jobs": len(lat), "p50_us": p50, "p95_us": p95,
                              "p99_us": p99}
        ack100 = ack_cost(conn, "ack", 100, 10 if args.quick else 50)
        ack1 = ack_cost(conn, "ack1", 1, 200 if args.quick else 1000)
        results["ack_us_per_job"] = {"batch100": ack100, "batch1": ack1}
        live_ms, dead_ms = reaper_cost(conn, 1_000, 10)
        results["reaper_ms"] = {"live_1000": live_ms, "live_1000_dead_10": dead_ms}
        results["cpu"] = meter.stop()
    finally:
        delete_prefix(conn.client, prefix, extra=[])
        if server is not None:
            server.stop()
    results["server"] = "private redis-server" if server else url
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print("## Worker throughput (one worker process, backlog pre-filled)\n")
    print(md_table(["handler", "concurrency", "prefetch", "jobs", "jobs/s"], rows))
    print(f"\nEnqueue-to-done latency at a steady {lat_rate:,.0f} jobs/s (half the best no-op "
          f"rate), concurrency 1, {len(lat):,} jobs: p50 {p50 / 1000:.2f} ms, "
          f"p95 {p95 / 1000:.2f} ms, p99 {p99 / 1000:.2f} ms")
    print("\n## Targets\n")
    print(md_table(["target", "measured", "verdict"], [
        [">= 5,000 no-op jobs/s, one worker process (--prefetch 64)", f"{best_noop:,.0f}/s",
         pass_fail(best_noop >= 5_000)],
        ["(same, default prefetch = concurrency: one job per fetch)", f"{best_default:,.0f}/s",
         pass_fail(best_default >= 5_000)],
        ["ack script, metrics included, < 30 us server time per job (batch 100)",
         f"{ack100:.1f} us", pass_fail(ack100 < 30)],
        ["(same, batch of 1: one script call per job)", f"{ack1:.1f} us", pass_fail(ack1 < 30)],
        ["reaper pass over 1,000 live workers < 50 ms", f"{live_ms:.1f} ms",
         pass_fail(live_ms < 50)],
        ["(same, with 10 dead workers to reap)", f"{dead_ms:.1f} ms", pass_fail(dead_ms < 50)],
    ], align=["l", "r", "l"]))
    print(f"\nRedis: {results['server']}. {CpuMeter.describe(results['cpu'])}")


if __name__ == "__main__":
    main()
