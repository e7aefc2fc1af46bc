"""What a real worker records per job (issue 10 item 2, issue 11 item 3): one first attempt per
job whatever its retries, per analysis unit (sticky keys share a cluster, overridden tenants
are their own stratum); the handler's own CPU time, for sync handlers (its thread) and async
ones (its coroutine's steps only, not those of jobs interleaved with it); RSS in heartbeats."""

from __future__ import annotations

import asyncio
import threading
import time

from pycanary import histogram, metrics, registry, service
from pycanary.producer import Producer
from pycanary.worker import Worker

Q = "payments"


def _run(conn, handler, n_done, **kw) -> Worker:
    w = Worker(conn, [Q], "v1", handler, heartbeat_s=0.2, backoff_s=0.01, backoff_max_s=0.02,
               **kw)
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while w.stats.done + w.stats.dead < n_done:
        assert time.monotonic() < deadline, w.stats
        time.sleep(0.02)
    w.stop()
    t.join(15)
    assert not t.is_alive()
    return w


def test_first_attempts_once_per_job_and_units(real_conn) -> None:
    conn = real_conn
    service.configure_queue(conn, Q, stable_version="v1")
    conn.client.hset(conn.keys.queue(Q).tenant_weights, "acme", 0)  # an override: a stratum
    p = Producer(conn)
    p.enqueue_many(Q, [{"fail": True}] * 2, sticky_keys=["poison", "poison"])
    p.enqueue_many(Q, [{"fail": False}] * 5, tenant="acme", sticky_keys=["k"] * 5)
    # tenant "other" has no override (stratum ""): its jobs get sticky keys outside poison's
    # cluster, so the per-unit counts below do not depend on random job ids (1 in 32 each)
    others = [k for k in (f"o{i}" for i in range(200))
              if metrics.unit_of("x", k, None) != metrics.unit_of("x", "poison", None)][:3]
    p.enqueue_many(Q, [{"fail": False}] * 3, tenant="other", sticky_keys=others)

    def handler(job) -> None:
        if job.payload["fail"]:
            raise RuntimeError("poison")

    _run(conn, handler, 10, max_attempts=3)
    t = metrics.read_totals(conn, Q, "v1", "stable")
    # 2 poison jobs x 3 attempts: 6 failed attempts but 2 failed first attempts
    assert {k: t.counts.get(k) for k in ("ok", "failed", "dead", "first_attempts",
                                         "first_failed")} == {
        "ok": 8, "failed": 6, "dead": 2, "first_attempts": 10, "first_failed": 2}
    poison = metrics.unit_of("x", "poison", None)
    acme = metrics.unit_of("x", "k", "acme", {"acme"})
    assert acme.startswith("acme|") and poison.startswith("|")
    assert t.units[poison] == [2, 2] and t.units[acme] == [5, 0]
    assert sum(n for n, _ in t.units.values()) == 10
    assert sum(x for _, x in t.units.values()) == 2
    assert all(not u.startswith("other|") for u in t.units)  # no override: no stratum
    assert sum(t.cpu_hist.values()) == 14  # every attempt's CPU time


def _burn(seconds: float) -> None:
    t0 = time.thread_time()
    while time.thread_time() - t0 < seconds:
        pass


def test_sync_handler_cpu_is_its_own_thread_time(real_conn) -> None:
    conn = real_conn
    service.configure_queue(conn, Q, stable_version="v1")
    Producer(conn).enqueue_many(Q, [{"busy": i % 2 == 0} for i in range(6)])

    def handler(job) -> None:
        if job.payload["busy"]:
            _burn(0.05)
        else:
            time.sleep(0.05)

    _run(conn, handler, 6, concurrency=2)
    cpu = metrics.read_totals(conn, Q, "v1", "stable").cpu_hist
    busy = {b: n for b, n in cpu.items() if histogram.bucket_bounds(b)[1] > 40_000}
    idle = {b: n for b, n in cpu.items() if histogram.bucket_bounds(b)[1] <= 20_000}
    assert sum(busy.values()) == 3 and sum(idle.values()) == 3, cpu


def test_async_handler_cpu_excludes_interleaved_jobs(real_conn) -> None:
    conn = real_conn
    service.configure_queue(conn, Q, stable_version="v1")
    Producer(conn).enqueue_many(Q, [{"busy": i % 2 == 0} for i in range(4)])

    async def handler(job) -> None:
        if job.payload["busy"]:
            for _ in range(10):  # 50 ms of CPU in steps, yielding to the others between them
                _burn(0.005)
                await asyncio.sleep(0)
        else:
            await asyncio.sleep(0.1)  # runs while the busy ones burn: not its CPU

    _run(conn, handler, 4, concurrency=4)
    cpu = metrics.read_totals(conn, Q, "v1", "stable").cpu_hist
    busy = {b: n for b, n in cpu.items() if histogram.bucket_bounds(b)[1] > 40_000}
    idle = {b: n for b, n in cpu.items() if histogram.bucket_bounds(b)[1] <= 20_000}
    assert sum(busy.values()) == 2 and sum(idle.values()) == 2, cpu


def test_heartbeat_reports_rss(real_conn) -> None:
    conn = real_conn
    service.configure_queue(conn, Q, stable_version="v1")
    w = Worker(conn, [Q], "v1", lambda job: None, heartbeat_s=0.2)
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    try:
        assert w.ready.wait(10)
        info = conn.client.hgetall(conn.keys.worker_info(w.id))
        assert int(info["rss"]) > 1_000_000  # this test process: megabytes, in bytes
        (row,) = [r.to_dict() for r in registry.list_workers(conn, ttl_ms=60_000)]
        assert row["rss_bytes"] == int(info["rss"])
    finally:
        w.stop()
        t.join(15)
