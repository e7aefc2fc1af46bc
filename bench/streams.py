"""The Streams backend beside the lists backend, measured in the same run on the same Redis:
route cost, worker throughput and drain, so the ratios are comparable even on a busy host.

  .venv/bin/python bench/streams.py [--redis-url URL] [--jobs N] [--quick] [--json]

Without --redis-url it starts a private redis-server (server times are then only its own).

1. Route: Producer.enqueue (one job per call) and Producer.enqueue_many (100 per call) on a
   lists queue and on a streams queue at weight 10% sticky: client-side µs per job, and server
   time per job from INFO commandstats (EVALSHA). On streams enqueue_many sends one route_xadd
   per job (no batched script yet).
2. Worker: one engine in this process (Worker / StreamWorker) drains a backlog of no-op jobs
   at concurrency 8, prefetch 64: jobs/s.
3. Drain: a closed canary lane of N jobs into stable with drain_lane (the same call for both:
   it dispatches to drain_stream on a streams queue), batch 1000: jobs/s and the slowest call.

Keys live under a unique prefix and are deleted at the end. Nothing is flushed.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

from _common import PrivateRedis, commandstats, delete_prefix, md_table, unique_prefix

import pycanary
from pycanary import queue_config
from pycanary.backends.stream_worker import StreamWorker
from pycanary.drain import drain_lane
from pycanary.job import Job
from pycanary.producer import Producer
from pycanary.worker import Worker

BACKENDS = ("lists", "streams")
PAYLOAD = {"order_id": "ord-000123456", "amount_cents": 1999, "currency": "EUR"}


def _queue(conn: pycanary.Connection, name: str, backend: str, weight_bp: int) -> str:
    queue_config.configure(conn, name, backend=backend, stable_version="v1")
    if weight_bp:
        queue_config.set_weight(conn, name, weight_bp)
    return name


def route(conn: pycanary.Connection, backend: str, n: int, tag: str) -> dict[str, float]:
    q = _queue(conn, f"route-{backend}-{tag}", backend, 1000)
    p = Producer(conn)
    p.enqueue(q, PAYLOAD)  # warm: registration, script cache
    s0 = commandstats(conn.client)
    t0 = time.perf_counter()
    for _ in range(n):
        p.enqueue(q, PAYLOAD)
    single = (time.perf_counter() - t0) / n * 1e6
    s1 = commandstats(conn.client)
    t0 = time.perf_counter()
    for _ in range(n // 100):
        p.enqueue_many(q, [PAYLOAD] * 100)
    batched = (time.perf_counter() - t0) / (n // 100 * 100) * 1e6
    s2 = commandstats(conn.client)

    def server_us(a: dict, b: dict, jobs: int, calls: int) -> float:
        """Server µs per job, or NaN when other clients' EVALSHAs ran meanwhile (the server
        may be shared: then the call count differs from what this run sent)."""
        calls0, us0 = a.get("evalsha", (0, 0))
        calls1, us1 = b.get("evalsha", (0, 0))
        return (us1 - us0) / jobs if calls1 - calls0 == calls else float("nan")

    many_calls = n // 100  # one script call per batch of 100 on both backends
    return {"enqueue_us": single, "enqueue_server_us": server_us(s0, s1, n, n),
            "enqueue_many_us": batched,
            "enqueue_many_server_us": server_us(s1, s2, n // 100 * 100, many_calls)}


def worker(conn: pycanary.Connection, backend: str, n: int, tag: str) -> float:
    q = _queue(conn, f"work-{backend}-{tag}", backend, 0)
    Producer(conn).enqueue_many(q, [{"i": i} for i in range(n)])
    done = 0
    lock = threading.Lock()
    finished_at = 0.0

    def handler(job: Job) -> None:
        nonlocal done
        with lock:
            done += 1

    engine = StreamWorker if backend == "streams" else Worker
    w = engine(conn, [q], "v1", handler, concurrency=8, prefetch=64)

    def watch() -> None:
        nonlocal finished_at
        while done < n:
            time.sleep(0.001)
        finished_at = time.perf_counter()
        w.stop()

    threading.Thread(target=watch, daemon=True).start()
    t0 = time.perf_counter()
    w.run()
    return n / (finished_at - t0)


def drain(conn: pycanary.Connection, backend: str, n: int, tag: str) -> dict[str, float]:
    q = _queue(conn, f"drain-{backend}-{tag}", backend, 10_000)
    Producer(conn).enqueue_many(q, [{"i": i} for i in range(n)])
    queue_config.set_weight(conn, q, 0)  # closed: no canary version, weight 0
    s0 = commandstats(conn.client)
    rep = drain_lane(conn, q, batch=1000)
    s1 = commandstats(conn.client)
    assert rep.moved == n and rep.complete, rep
    calls = s1["evalsha"][0] - s0["evalsha"][0]
    server = (s1["evalsha"][1] - s0["evalsha"][1]) / calls / 1000 if calls == rep.calls \
        else float("nan")  # other clients' EVALSHAs ran meanwhile (a shared server)
    return {"jobs_per_s": n / rep.seconds, "max_call_ms": rep.max_call_ms, "calls": rep.calls,
            "server_ms_per_call": server}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--redis-url", default=None,
                    help="default: a private redis-server on a free loopback port, so INFO "
                         "commandstats (server time) counts only this run's calls")
    ap.add_argument("--jobs", type=int, default=20_000)
    ap.add_argument("--quick", action="store_true", help="2,000 jobs per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per figure")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    n = 2_000 if a.quick else a.jobs
    prefix = unique_prefix("pycanary-bench-streams")
    server = None if a.redis_url else PrivateRedis()
    conn = pycanary.connect(a.redis_url or server.url, prefix=prefix)
    out: dict[str, Any] = {"jobs": n, "rounds": a.rounds, "route": {}, "worker": {},
                           "drain": {}}
    try:
        runs: dict[str, dict[str, list]] = {b: {"route": [], "worker": [], "drain": []}
                                            for b in BACKENDS}
        for r in range(a.rounds):  # alternate, so host noise hits both alike
            order = BACKENDS if r % 2 == 0 else tuple(reversed(BACKENDS))
            for b in order:
                runs[b]["route"].append(route(conn, b, n, str(r)))
                runs[b]["worker"].append(worker(conn, b, n, str(r)))
                runs[b]["drain"].append(drain(conn, b, n, str(r)))
        for b in BACKENDS:
            def med(rows: list[dict[str, float]], k: str) -> float:
                vals = sorted(x[k] for x in rows if x[k] == x[k])  # NaN: left out
                return vals[len(vals) // 2] if vals else float("nan")
            out["route"][b] = {k: med(runs[b]["route"], k) for k in runs[b]["route"][0]}
            out["worker"][b] = sorted(runs[b]["worker"])[len(runs[b]["worker"]) // 2]
            out["drain"][b] = {k: med(runs[b]["drain"], k) for k in runs[b]["drain"][0]}
    finally:
        delete_prefix(conn.client, prefix)
        conn.close()
        if server is not None:
            server.stop()
    if a.json:
        print(json.dumps(out, indent=2))
        return
    rl, rs = out["route"]["lists"], out["route"]["streams"]
    rows = [[k, f"{rl[k]:.1f}", f"{rs[k]:.1f}", f"{rs[k] / rl[k]:.2f}x"] for k in rl]
    rows.append(["worker no-op jobs/s (c8, prefetch 64)", f"{out['worker']['lists']:,.0f}",
                 f"{out['worker']['streams']:,.0f}",
                 f"{out['worker']['streams'] / out['worker']['lists']:.2f}x"])
    dl, ds = out["drain"]["lists"], out["drain"]["streams"]
    rows.append(["drain jobs/s (batch 1000)", f"{dl['jobs_per_s']:,.0f}",
                 f"{ds['jobs_per_s']:,.0f}", f"{ds['jobs_per_s'] / dl['jobs_per_s']:.2f}x"])
    rows.append(["drain slowest call ms", f"{dl['max_call_ms']:.2f}", f"{ds['max_call_ms']:.2f}",
                 f"{ds['max_call_ms'] / max(dl['max_call_ms'], 1e-9):.2f}x"])
    rows.append(["drain server ms per call (1000 jobs)", f"{dl['server_ms_per_call']:.2f}",
                 f"{ds['server_ms_per_call']:.2f}",
                 f"{ds['server_ms_per_call'] / dl['server_ms_per_call']:.2f}x"])
    print(f"{n:,} jobs per measurement, median of {a.rounds} alternating rounds\n")
    print(md_table(["figure", "lists", "streams", "streams / lists"], rows))


if __name__ == "__main__":
    main()
