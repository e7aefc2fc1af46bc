"""An existing RQ application (tests/integ_rq_app.py) gets a staged canary rollout and an
automatic rollback driven by `pycanary ramp`, with real RQ workers of two versions and every
job accounted for (issue 17). RQ's keys have no prefix option: the test runs on a private
redis-server of its own."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import pycanary
from pycanary import deployments, queue_config, registry
from tests.processes import ROOT, child_env, wait_until
from tests.redis_servers import RedisProcess
from tests.test_integ_celery import PLAN
from tests.test_worker_processes import stop_all


@pytest.fixture
def private(tmp_path: Path) -> Iterator[tuple[pycanary.Connection, str]]:
    server = RedisProcess(tmp_path / "redis")
    url = f"redis://127.0.0.1:{server.port}/0"
    try:
        yield pycanary.connect(url, prefix=f"integ-{uuid.uuid4().hex[:8]}"), url
    finally:
        server.stop()


def _env(conn, url: str, **extra: str) -> dict[str, str]:
    env = child_env()
    env.update(PYCANARY_PREFIX=conn.keys.prefix, PYCANARY_REDIS_URL=url, **extra)
    return env


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as fh:
        return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=fh,
                                stderr=subprocess.STDOUT)


def run_rollout(conn, url: str, tmp_path: Path, *, fail: bool) -> tuple[int, str, list, dict]:
    queue_config.configure(conn, "payments", stable_version="v1")
    worker = ["-m", "rq.cli", "worker", "-w", "pycanary.integrations.rq.SimpleWorker",
              "--url", url]
    procs = [
        _start([*worker, "payments"], _env(conn, url, PYCANARY_VERSION="v1"),
               tmp_path / "v1.log"),
        _start([*worker, "payments.canary"],
               # a failing v2 is slow too: a backlog in its list for the drain to move
               _env(conn, url, PYCANARY_VERSION="v2", INTEG_FAIL="1" if fail else "0",
                    INTEG_SLEEP="0.05" if fail else "0.002"),
               tmp_path / "v2.log"),
        _start(["-m", "pycanary.cli", "--redis-url", url, "--prefix", conn.keys.prefix,
                "controller", "--lease", "3", "--poll", "0.2", "--log-format", "json"],
               _env(conn, url), tmp_path / "ctl.log"),
    ]

    def diag() -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}"
                         for p in tmp_path.glob("*.log"))

    try:
        wait_until(lambda: {w.version for w in registry.list_workers(conn, ttl_ms=10_000)}
                   >= {"v1", "v2"}, 40, "both RQ workers registered", diag)
        procs.append(_start(["-m", "tests.integ_rq_app", "150"], _env(conn, url),
                            tmp_path / "publisher.log"))
        plan = tmp_path / "plan.yaml"
        plan.write_text(PLAN)
        out = subprocess.run(
            [sys.executable, "-m", "pycanary.cli", "--redis-url", url, "--prefix",
             conn.keys.prefix, "ramp", "payments", "--version", "v2", "--plan", str(plan),
             "--watch", "--timeout", "60s"],
            cwd=ROOT, env=_env(conn, url), capture_output=True, text=True, timeout=90)
        p, r = conn.keys.prefix, conn.client
        r.set(f"{p}:integ:stop", 1)
        wait_until(lambda: r.exists(f"{p}:integ:stopped"), 20, "the publisher stopped", diag)
        sent = [x.split(" ", 1) for x in r.lrange(f"{p}:integ:sent", 0, -1)]

        def missing() -> int:
            runs = r.hgetall(f"{p}:integ:runs")
            return sum(t not in runs for t, _ in sent)

        wait_until(lambda: missing() == 0, 40, "every job run to success",
                   lambda: f"{missing()} missing\n{diag()}")
        runs = {k: int(v) for k, v in r.hgetall(f"{p}:integ:runs").items()}
        done = {v: r.smembers(f"{p}:integ:done:{v}") for v in ("v1", "v2")}
        return out.returncode, out.stdout + out.stderr, sent, {"runs": runs, **done}
    finally:
        stop_all(procs)


@pytest.mark.slow
def test_rq_healthy_ramp_is_promoted_and_sticky(private, tmp_path) -> None:
    conn, url = private
    rc, out, sent, seen = run_rollout(conn, url, tmp_path, fail=False)
    assert rc == 0, out[-3000:]
    lost = [t for t, _ in sent if t not in seen["runs"]]
    dups = sum(n - 1 for n in seen["runs"].values() if n > 1)
    print(f"rq healthy: {len(sent)} jobs, lost {len(lost)}, duplicates {dups}, "
          f"v1 {len(seen['v1'])}, v2 {len(seen['v2'])}")
    assert not lost and seen["v2"]
    assert queue_config.read_config(conn, "payments").stable_version == "v2"
    by_order: dict[str, list[str]] = {}
    for tid, order in sent:
        by_order.setdefault(order, []).append("v2" if tid in seen["v2"] else "v1")
    for order, seq in by_order.items():
        if "v2" in seq:
            first, last = seq.index("v2"), len(seq) - 1 - seq[::-1].index("v2")
            assert "v1" not in seq[first:last + 1], (order, seq)


@pytest.mark.slow
def test_rq_failing_canary_rolled_back_nothing_lost(private, tmp_path) -> None:
    conn, url = private
    rc, out, sent, seen = run_rollout(conn, url, tmp_path, fail=True)
    assert rc == 1, out[-3000:]
    lost = [t for t, _ in sent if t not in seen["runs"]]
    failed = conn.client.hgetall(f"{conn.keys.prefix}:integ:failed")
    print(f"rq rollback: {len(sent)} jobs, lost {len(lost)}, v2 failed attempts {failed}, "
          f"v1 {len(seen['v1'])}, v2 {len(seen['v2'])}")
    assert not lost and not seen["v2"] and int(failed.get("v2", 0)) > 0
    cfg = queue_config.read_config(conn, "payments")
    assert cfg.stable_version == "v1" and cfg.weight_bp == 0
    assert conn.client.llen("rq:queue:payments.canary") == 0
    drain = deployments.history(conn, "payments")[0]["drain"]
    moved = (json.loads(drain) if isinstance(drain, str) else drain)["moved"]
    print(f"rq rollback: the drain moved {moved} job ids to payments")
    assert moved > 0
