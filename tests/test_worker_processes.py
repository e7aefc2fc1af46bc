"""Worker processes against a real Redis: SIGKILL recovery with nothing lost, SIGTERM drain,
a second signal exiting at once, and a rolled-back version stopping within one heartbeat."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pycanary import defaults, queue_config, service
from pycanary.producer import Producer
from tests.conftest import REAL_URL

ROOT = Path(__file__).resolve().parents[1]
HEARTBEAT = 0.5


def start_worker(conn, *args: str, env: dict | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pycanary.cli", "--redis-url", REAL_URL, "--prefix",
           conn.keys.prefix, "worker", "--heartbeat", str(HEARTBEAT), "--log-level", "warning",
           *args]
    full_env = {**os.environ, "PYCANARY_REDIS_URL": REAL_URL,
                "PYCANARY_PREFIX": conn.keys.prefix, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def queue_empty(conn, queue: str) -> bool:
    """Nothing waiting, delayed or held, on either backend (a stream entry is deleted when it
    is acked, so its length counts waiting and held entries)."""
    qk = conn.keys.queue(queue)
    c = conn.client
    held = sum(c.llen(qk.processing(w["id"])) for w in service.list_workers(conn))
    return (c.llen(qk.lane_stable) == 0 and c.llen(qk.lane_canary) == 0
            and c.zcard(qk.delayed_stable) == 0 and c.zcard(qk.delayed_canary) == 0
            and c.xlen(qk.stream_stable) == 0 and c.xlen(qk.stream_canary) == 0
            and held == 0)


def stop_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(10)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["lists", "streams"])
def test_sigkill_loses_nothing(real_conn, backend: str) -> None:
    """10,000 jobs, 10% random handler failures, two workers SIGKILLed mid-run: every job id
    ends acknowledged or dead-lettered, none missing; duplicates are counted. On streams the
    killed workers' pending entries are reclaimed (XAUTOCLAIM) by the live ones."""
    conn = real_conn
    queue_config.configure(conn, "payments", backend=backend)
    n = 10_000
    ids = [r.job_id for r in Producer(conn).enqueue_many("payments", [{"n": i} for i in range(n)])]
    common = ["payments", "--version", "v1", "--handler", "tests.handlers:flaky",
              "--concurrency", "4"]
    procs = [start_worker(conn, *common) for _ in range(3)]
    try:
        done_key = f"{conn.keys.prefix}:test:done"
        wait_for(lambda: conn.client.llen(done_key) > 1_500, 60, "work to start")
        procs[0].send_signal(signal.SIGKILL)
        wait_for(lambda: conn.client.llen(done_key) > 4_000, 60, "more work")
        procs[1].send_signal(signal.SIGKILL)
        procs.append(start_worker(conn, *common))
        wait_for(lambda: queue_empty(conn, "payments") and
                 len(set(conn.client.lrange(done_key, 0, -1))) + conn.client.llen(
                     conn.keys.queue("payments").dlq) >= n, 180, "all jobs to finish")
        done = conn.client.lrange(done_key, 0, -1)
        dead = [json.loads(x)["job"]["id"]
                for x in conn.client.lrange(conn.keys.queue("payments").dlq, 0, -1)]
        finished = set(done) | set(dead)
        missing = set(ids) - finished
        assert not missing, f"{len(missing)} jobs lost"
        assert finished == set(ids)
        duplicates = len(done) - len(set(done))
        print(f"\n{backend}: 10,000 jobs, 2 SIGKILLs: {len(set(done))} acknowledged, {len(dead)} "
              f"dead-lettered, {duplicates} duplicate runs")
        # duplicates come only from jobs the killed workers held (prefetch 32 each at most)
        assert duplicates <= 2 * 32 + 2 * 4
        assert len(dead) < 60  # 0.1^3 of 10,000 is 10 expected
    finally:
        stop_all(procs)


def test_sigterm_drains_in_flight_jobs(real_conn) -> None:
    conn = real_conn
    Producer(conn).enqueue_many("payments", [{"n": i} for i in range(20)])
    p = start_worker(conn, "payments", "--version", "v1", "--handler", "tests.handlers:slow",
                     "--concurrency", "4", env={"SLOW_S": "0.5"})
    started = f"{conn.keys.prefix}:test:started"
    done = f"{conn.keys.prefix}:test:done"
    try:
        wait_for(lambda: conn.client.llen(started) >= 4, 30, "4 jobs in flight")
        p.send_signal(signal.SIGTERM)
        assert p.wait(15) == 0, p.stderr.read()
        in_flight = conn.client.lrange(started, 0, -1)
        assert sorted(conn.client.lrange(done, 0, -1)) == sorted(in_flight)
        qk = conn.keys.queue("payments")
        assert conn.client.llen(qk.lane_stable) == 20 - len(in_flight)
        assert service.list_workers(conn) == []  # deregistered on a clean exit
        assert "stopped:" in p.stderr.read()
    finally:
        stop_all([p])


def test_second_signal_exits_at_once_and_reaper_recovers(real_conn) -> None:
    conn = real_conn
    Producer(conn).enqueue_many("payments", [{"n": i} for i in range(4)])
    p = start_worker(conn, "payments", "--version", "v1", "--handler", "tests.handlers:slow",
                     "--concurrency", "2", env={"SLOW_S": "30"})
    started = f"{conn.keys.prefix}:test:started"
    try:
        wait_for(lambda: conn.client.llen(started) >= 2, 30, "2 jobs in flight")
        p.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        p.send_signal(signal.SIGTERM)
        assert p.wait(5) == 128 + signal.SIGTERM
        qk = conn.keys.queue("payments")
        assert conn.client.llen(qk.lane_stable) < 4  # it still held jobs when it died
        from pycanary import registry

        time.sleep(defaults.ttl_ms(HEARTBEAT) / 1000 + 0.2)
        report = registry.reap(conn, ttl_ms=defaults.ttl_ms(HEARTBEAT))
        assert report.workers == 1 and report.jobs >= 2
        assert conn.client.llen(qk.lane_stable) == 4
    finally:
        stop_all([p])


def waiting(conn, queue: str, lane: str) -> int:
    """Jobs of a lane no worker has taken yet: the list's length, or on streams the entries
    after the consumer group's last-delivered id."""
    qk = conn.keys.queue(queue)
    c = conn.client
    if queue_config.read_config(conn, queue).backend == "lists":
        return c.llen(qk.lane(lane))
    key = qk.stream(lane)
    groups = c.xinfo_groups(key) if c.exists(key) else []
    last = groups[0]["last-delivered-id"] if groups else "0-0"
    return len(c.xrange(key, f"({last}", "+"))


@pytest.mark.parametrize("backend", ["lists", "streams"])
def test_rolled_back_version_stops_fetching_within_one_heartbeat(real_conn, backend) -> None:
    conn = real_conn
    queue_config.configure(conn, "payments", stable_version="v1", canary_version="v2",
                           backend=backend)
    queue_config.set_weight(conn, "payments", 10_000)
    Producer(conn).enqueue_many("payments", [{"n": i} for i in range(400)])
    p = start_worker(conn, "payments", "--version", "v2", "--handler", "tests.handlers:slow",
                     "--concurrency", "2", env={"SLOW_S": "0.05"})
    qk = conn.keys.queue("payments")
    try:
        wait_for(lambda: waiting(conn, "payments", "canary") < 390, 30, "canary work to start")
        conn.scripts.call("rollback_canary", [qk.config, qk.tenant_weights, qk.rolled_back],
                          ["", 1])
        time.sleep(HEARTBEAT)
        left = waiting(conn, "payments", "canary")
        time.sleep(3 * HEARTBEAT)
        assert waiting(conn, "payments", "canary") == left, "still fetching after a heartbeat"
        wait_for(lambda: any(w["state"] == "retiring" for w in service.list_workers(conn)),
                 5, "state retiring")
        assert p.poll() is None  # it retires, it does not exit
    finally:
        stop_all([p])


def test_worker_rides_out_dropped_connections(tmp_path) -> None:
    """Connections killed under a worker (as in a failover): it reconnects and finishes every
    job; nothing is lost. On a private server, so only our own clients are killed."""
    import threading

    import pycanary
    from pycanary.worker import Worker
    from tests.redis_servers import RedisProcess

    server = RedisProcess(tmp_path)
    try:
        conn = pycanary.connect(f"redis://127.0.0.1:{server.port}/0", prefix="outage")
        Producer(conn).enqueue_many("payments", [{"i": i} for i in range(3000)])
        done: list[int] = []
        w = Worker(conn, ["payments"], "v1", lambda job: (time.sleep(0.0005),
                                                          done.append(job.payload["i"])),
                   heartbeat_s=0.2, block_s=0.2)
        t = threading.Thread(target=w.run, daemon=True)
        t.start()
        for _ in range(5):
            time.sleep(0.15)
            server.client.client_kill_filter(_type="normal", skipme=True)
        wait_for(lambda: len(set(done)) == 3000, 60, "every job after the outages")
        w.stop()
        t.join(10)
        assert not t.is_alive()
        assert set(done) == set(range(3000))
    finally:
        server.stop()
