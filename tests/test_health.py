"""/healthz (observability.health): Redis reachability within a bounded time, the controller
leader's holder and age, 503 when Redis is down or hangs. A private redis-server is stopped and
SIGSTOPped mid-test; the shared one on 6379 is never touched."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import pycanary
from pycanary import observability
from pycanary.api import create_app
from pycanary.api.auth import parse_tokens
from pycanary.leader import Leadership
from tests.redis_servers import RedisProcess

TOKENS = "viewer:" + "v" * 24

#: A probe's bound (1 s timeout, 1.5 s deadline) with room for a busy 2-core host; without the
#: timeouts a SIGSTOPped Redis would hold the probe forever, so any bound proves the point.
BOUND_S = 4.0


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path)
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            os.kill(server.proc.pid, signal.SIGCONT)  # a stopped process ignores TERM
        server.stop()


def timed_health(conn) -> tuple[dict, float]:
    started = time.monotonic()
    report = observability.health(conn)
    return report, time.monotonic() - started


def test_health_reports_the_leader_and_its_age(conn) -> None:
    report = observability.health(conn)
    assert report["ok"] is True and report["redis"]["ok"] is True
    assert report["redis"]["ping_ms"] >= 0
    assert report["leader"] is None  # no controller: still ok

    lead = Leadership(conn, controller_id="ctl-1")
    assert lead.tick()
    report = observability.health(conn)
    assert report["ok"] is True
    assert report["leader"]["holder"] == f"1:{lead.token}"
    assert report["leader"]["epoch"] == 1
    assert 0 <= report["leader"]["age_s"] < 30
    since = conn.client.get(conn.keys.leader_since).split(":")[1]
    conn.client.set(conn.keys.leader_since, f"1:{int(since) - 3_600_000}")
    assert 3600 <= observability.health(conn)["leader"]["age_s"] < 3630
    lead.release()


def test_down_and_hung_redis_answer_within_the_bound(private_redis: RedisProcess) -> None:
    conn = pycanary.connect(f"redis://127.0.0.1:{private_redis.port}/0", prefix="health")
    client = TestClient(create_app(conn, tokens=parse_tokens(TOKENS)))
    r = client.get("/healthz")  # no token needed
    assert r.status_code == 200 and r.json()["ok"] is True

    # SIGSTOP: the kernel still accepts connections, Redis never answers
    os.kill(private_redis.proc.pid, signal.SIGSTOP)
    try:
        report, took = timed_health(conn)
        assert report["ok"] is False and report["redis"]["ok"] is False, report
        assert took < BOUND_S, took
        assert "Timeout" in report["redis"]["error"] or "within" in report["redis"]["error"]
        started = time.monotonic()
        r = client.get("/healthz")
        assert r.status_code == 503 and r.json()["redis"]["ok"] is False
        assert time.monotonic() - started < BOUND_S
    finally:
        os.kill(private_redis.proc.pid, signal.SIGCONT)

    # back: the same probe recovers
    deadline = time.monotonic() + 10
    while not observability.health(conn)["ok"]:
        assert time.monotonic() < deadline, "health did not recover after SIGCONT"
        time.sleep(0.1)

    private_redis.stop()
    report, took = timed_health(conn)
    assert report == {"ok": False, "redis": {"ok": False, "error": report["redis"]["error"]},
                      "leader": None}
    assert "ConnectionError" in report["redis"]["error"], report
    assert took < BOUND_S, took
    r = client.get("/healthz")
    assert r.status_code == 503 and r.json()["ok"] is False
    conn.close()


def test_the_probe_never_shows_the_password(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path)
    server.client.config_set("requirepass", "s3cret-pass-word")
    try:
        url = f"redis://:s3cret-pass-word@127.0.0.1:{server.port}/0"
        conn = pycanary.connect(url, prefix="health")
        assert observability.health(conn)["ok"] is True
        server.stop()
        report = observability.health(conn)
        assert report["ok"] is False
        assert "s3cret" not in str(report)
        conn.close()
    finally:
        server.stop()
