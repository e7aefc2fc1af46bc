"""StreamWorker on real Redis: every job accounted for (done, retried, dead-lettered), rollback
stops canary work within a heartbeat, a dead worker's jobs are taken over."""

from __future__ import annotations

import threading
import time

import pytest

from pycanary import queue_config
from pycanary.backends import streams
from pycanary.backends.stream_worker import StreamWorker
from pycanary.keys import STREAM_GROUP
from pycanary.producer import Producer

Q = "payments"


def _streams_queue(conn, weight_bp: int = 0, canary: str | None = None) -> None:
    queue_config.configure(conn, Q, backend="streams", stable_version="v1",
                           canary_version=canary)
    if weight_bp:
        queue_config.set_weight(conn, Q, weight_bp)


def _run(worker: StreamWorker) -> threading.Thread:
    t = threading.Thread(target=worker.run, daemon=True)
    t.start()
    assert worker.ready.wait(10)
    return t


def _until(cond, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def test_every_job_is_done_retried_or_dead_lettered(real_conn) -> None:
    conn = real_conn
    _streams_queue(conn)
    seen: list[tuple[str, int]] = []
    lock = threading.Lock()

    def handler(job) -> None:
        with lock:
            seen.append((job.id, job.attempt))
        n = job.payload["n"]
        if n % 10 == 0:
            raise RuntimeError("poison")  # every attempt fails: dead-lettered
        if n % 7 == 0 and job.attempt == 1:
            raise RuntimeError("flaky")  # retried once, then ok

    ids = [r.job_id for r in Producer(conn).enqueue_many(Q, [{"n": i} for i in range(200)])]
    w = StreamWorker(conn, [Q], "v1", handler, concurrency=4, heartbeat_s=0.25,
                     max_attempts=3, backoff_s=0.01, backoff_max_s=0.02)
    t = _run(w)
    poison = sum(1 for i in range(200) if i % 10 == 0)
    _until(lambda: w.stats.done + w.stats.dead == 200 and w.stats.dead == poison)
    w.stop()
    t.join(10)
    assert not t.is_alive()
    qk = conn.keys.queue(Q)
    assert conn.client.llen(qk.dlq) == poison
    assert streams.depth(conn, Q, "stable") == 0
    assert conn.client.zcard(qk.delayed_stable) == 0
    assert {jid for jid, _a in seen} == set(ids)
    flaky = sum(1 for i in range(200) if i % 7 == 0 and i % 10 != 0)
    assert w.stats.retried == flaky + 2 * poison
    # deregistered: the worker left no consumer holding anything
    assert conn.client.xpending(qk.stream_stable, STREAM_GROUP)["pending"] == 0


def test_rollback_stops_canary_work_and_unstarted_jobs_go_to_stable(real_conn) -> None:
    conn = real_conn
    _streams_queue(conn, 10_000, canary="v2")
    started = threading.Event()
    release = threading.Event()
    ran: dict[str, list[str]] = {"v1": [], "v2": []}

    def handler_for(version: str):
        def handler(job) -> None:
            ran[version].append(job.id)
            if version == "v2":
                started.set()
                release.wait(10)
        return handler

    ids = [r.job_id for r in Producer(conn).enqueue_many(Q, [{"n": i} for i in range(30)])]
    canary = StreamWorker(conn, [Q], "v2", handler_for("v2"), concurrency=1, prefetch=5,
                          heartbeat_s=0.25)
    stable = StreamWorker(conn, [Q], "v1", handler_for("v1"), concurrency=2, heartbeat_s=0.25)
    tc, ts = _run(canary), _run(stable)
    assert started.wait(10)
    from pycanary.rollouts import rollback  # the same call the CLI's rollback makes

    rollback(conn, Q)
    t0 = time.monotonic()
    _until(lambda: canary.state == "retiring", 5)
    assert time.monotonic() - t0 < 1.0  # within one heartbeat-ish tick
    release.set()
    _until(lambda: len(ran["v1"]) + len(ran["v2"]) >= 30)
    _until(lambda: streams.depth(conn, Q, "canary") == 0 and streams.depth(conn, Q, "stable") == 0)
    canary.stop()
    stable.stop()
    tc.join(10)
    ts.join(10)
    assert len(ran["v2"]) == 1  # only the job running at the rollback
    assert sorted(ran["v1"] + ran["v2"]) == sorted(ids)  # nothing lost or run twice


def test_dead_letters_are_requeued_to_the_stable_stream(real_conn) -> None:
    from pycanary import dlq

    conn = real_conn
    _streams_queue(conn)
    fixed = threading.Event()

    def handler(job) -> None:
        if not fixed.is_set():
            raise RuntimeError("bug")

    [jid] = [r.job_id for r in Producer(conn).enqueue_many(Q, [{}])]
    w = StreamWorker(conn, [Q], "v1", handler, heartbeat_s=0.25, max_attempts=1)
    t = _run(w)
    _until(lambda: w.stats.dead == 1)
    fixed.set()
    report = dlq.requeue(conn, Q, [jid])
    assert report.done == 1
    _until(lambda: w.stats.done == 1)
    w.stop()
    t.join(10)
    assert conn.client.llen(conn.keys.queue(Q).lane_stable) == 0  # not to the list lane
    assert dlq.count(conn, Q) == 0


def test_a_job_running_longer_than_the_ttl_is_not_taken_by_another_worker(real_conn) -> None:
    """Live workers touch every entry they hold, running ones included: XAUTOCLAIM's idle
    time singles out dead workers only, so a long job runs once."""
    conn = real_conn
    _streams_queue(conn)
    runs: list[str] = []

    def slow(job) -> None:
        runs.append(job.id)
        time.sleep(2.0)  # > 2 TTLs at heartbeat 0.25 s (TTL 0.75 s)

    ids = [r.job_id for r in Producer(conn).enqueue_many(Q, [{}])]
    a = StreamWorker(conn, [Q], "v1", slow, heartbeat_s=0.25)
    ta = _run(a)
    _until(lambda: runs)
    b = StreamWorker(conn, [Q], "v1", slow, heartbeat_s=0.25)
    tb = _run(b)
    _until(lambda: a.stats.done == 1, 10)
    time.sleep(0.5)
    for w, t in ((a, ta), (b, tb)):
        w.stop()
        t.join(10)
    assert runs == ids and b.stats.done == 0


def test_the_worker_engine_follows_the_queues_backend(real_conn) -> None:
    from pycanary import service
    from pycanary.errors import ValidationError
    from pycanary.worker import Worker

    conn = real_conn
    _streams_queue(conn)
    assert service.worker_class(conn, [Q]) is StreamWorker
    assert service.worker_class(conn, ["other"]) is Worker
    with pytest.raises(ValidationError) as err:
        service.worker_class(conn, [Q, "other"])
    assert err.value.field == "queues" and "payments: streams, other: lists" in str(err.value)


def test_a_canary_worker_dying_after_the_drain_strands_nothing(real_conn) -> None:
    """Registered (alive) at the rollback's drain, so its entries were left to it; it dies
    later. A stable worker moves them from the closed canary stream to stable and runs them."""
    from pycanary import registry, rollouts

    conn = real_conn
    _streams_queue(conn, 10_000, canary="v2")
    ids = [r.job_id for r in Producer(conn).enqueue_many(Q, [{"n": i} for i in range(5)])]
    held = streams.fetch(conn, Q, "canary", "v2", "ghost", 3)  # a canary worker holds 3
    registry.heartbeat(conn, "ghost", version="v2", queues={Q: "canary"},
                       info={"state": "active"}, ttl_ms=1000)  # beats no more: dead in 1 s
    rollouts.rollback(conn, Q)
    assert streams.depth(conn, Q, "canary") == len(held)  # left to the live worker
    ran: list[str] = []
    w = StreamWorker(conn, [Q], "v1", lambda job: ran.append(job.id), heartbeat_s=0.25)
    t = _run(w)
    _until(lambda: sorted(ran) == sorted(ids), 15)  # the ghost never touches: idle > TTL
    w.stop()
    t.join(10)
    assert streams.depth(conn, Q, "canary") == 0 and streams.depth(conn, Q, "stable") == 0


def test_a_live_worker_with_a_longer_heartbeat_keeps_its_entries(real_conn) -> None:
    """Reclaim waits for the longest TTL the live consumers advertise: a worker beating every
    2 s (TTL 6 s) is not robbed by one beating every 0.25 s (TTL 0.75 s)."""
    conn = real_conn
    _streams_queue(conn)
    runs: list[str] = []

    def slow(job) -> None:
        runs.append(job.id)
        time.sleep(3.0)

    ids = [r.job_id for r in Producer(conn).enqueue_many(Q, [{}])]
    a = StreamWorker(conn, [Q], "v1", slow, heartbeat_s=2.0)
    ta = _run(a)
    _until(lambda: runs)
    b = StreamWorker(conn, [Q], "v1", slow, heartbeat_s=0.25)
    tb = _run(b)
    _until(lambda: a.stats.done == 1, 10)
    for w, t in ((a, ta), (b, tb)):
        w.stop()
        t.join(10)
    assert runs == ids and b.stats.done == 0
