"""An existing Celery application (tests/integ_celery_app.py) gets a staged canary rollout and
an automatic rollback, driven by `pycanary ramp`, with real Celery workers of two versions on
real Redis, and every task accounted for (issue 17)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from pycanary import deployments, queue_config, registry, rollouts
from tests.conftest import REAL_URL
from tests.processes import ROOT, child_env, start_controller, wait_until
from tests.test_worker_processes import stop_all

PLAN = """
canary_config:
  interval: 1s
  min_samples: 20
  statistical: {enabled: false}  # a healthy build has no failures to compare; thresholds judge
  stages:
    - percentage: 20
      duration: 4s
      conditions: {max_error_rate: 10}
    - percentage: 50
      duration: 4s
      conditions: {max_error_rate: 10}
"""


def start_worker(conn, version: str, queue: str, log: Path, *, fail: bool = False,
                 sleep: float = 0.002, pool: str = "solo") -> subprocess.Popen:
    env = child_env()
    env.update(PYCANARY_PREFIX=conn.keys.prefix, PYCANARY_VERSION=version,
               PYCANARY_TEST_REDIS_URL=REAL_URL, INTEG_FAIL="1" if fail else "0",
               INTEG_SLEEP=str(sleep))
    with log.open("w") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.integ_celery_app", "worker", "-Q",
             queue, "--pool", pool, "-c", "1", "-n", f"{version}-{uuid.uuid4().hex[:6]}@%h",
             "--without-gossip", "--without-mingle", "-l", "warning"],
            cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)


class Publisher:
    """The application's producer (tests/integ_celery_publish.py) in its own process."""

    def __init__(self, conn, log: Path) -> None:
        self.conn = conn
        env = child_env()
        env.update(PYCANARY_PREFIX=conn.keys.prefix, PYCANARY_TEST_REDIS_URL=REAL_URL)
        with log.open("w") as fh:
            self.proc = subprocess.Popen([sys.executable, "-m", "tests.integ_celery_publish",
                                          "150"], cwd=ROOT, env=env, stdout=fh,
                                         stderr=subprocess.STDOUT)
        self.sent: list[tuple[str, str]] = []

    def stop(self) -> None:
        p = self.conn.keys.prefix
        self.conn.client.set(f"{p}:integ:stop", 1)
        wait_until(lambda: self.conn.client.exists(f"{p}:integ:stopped"), 20,
                   "the publisher stopped")
        self.proc.wait(10)
        self.sent = [tuple(x.split(" ", 1)) for x in  # type: ignore[misc]
                     self.conn.client.lrange(f"{p}:integ:sent", 0, -1)]


def consumed_by(conn, version: str) -> list[str] | None:
    """The queues the Celery worker of ``version`` consumes now (`celery inspect`)."""
    env = child_env()
    env.update(PYCANARY_PREFIX=conn.keys.prefix, PYCANARY_TEST_REDIS_URL=REAL_URL)
    out = subprocess.run([sys.executable, "-m", "celery", "-A", "tests.integ_celery_app",
                          "inspect", "active_queues", "--json", "--timeout", "2"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    try:
        replies = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    for name, queues in replies.items():
        if name.startswith(f"{version}-"):
            return sorted(q["name"] for q in queues)
    return None


def ramp(conn, plan: Path, log: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pycanary.cli", "--redis-url", REAL_URL, "--prefix",
         conn.keys.prefix, "ramp", "payments", "--version", "v2", "--plan", str(plan),
         "--watch", "--timeout", "60s", "--json"],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=90)


def setup(conn, tmp_path: Path, *, fail: bool) -> tuple[list, Publisher, Path]:
    queue_config.configure(conn, "payments", stable_version="v1")
    procs = [start_worker(conn, "v1", "payments", tmp_path / "v1.log"),
             # a failing v2 is also slow (50 ms a task, fewer than its lane receives): its
             # list has a backlog when it is rolled back, which the drain moves to stable
             start_worker(conn, "v2", "payments.canary", tmp_path / "v2.log", fail=fail,
                          sleep=0.05 if fail else 0.002),
             start_controller(conn, tmp_path / "ctl.log", lease=3.0, poll=0.2)]

    def diag() -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}"
                         for p in tmp_path.glob("*.log"))

    wait_until(lambda: {w.version for w in registry.list_workers(conn, ttl_ms=10_000)}
               >= {"v1", "v2"}, 40, "both Celery workers registered", diag)
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN)
    pub = Publisher(conn, tmp_path / "publisher.log")
    procs.append(pub.proc)
    return procs, pub, plan


def account(conn, pub: Publisher, tmp_path: Path) -> tuple[dict[str, int], dict[str, set[str]]]:
    """Wait until every published task ran to success once; returns runs per task id and the
    ids each version completed."""
    p = conn.keys.prefix
    r = conn.client
    ids = [tid for tid, _ in pub.sent]

    def missing() -> list[str]:
        runs = r.hgetall(f"{p}:integ:runs")
        return [t for t in ids if t not in runs]

    wait_until(lambda: not missing(), 40, "every task run to success",
               lambda: f"{len(missing())} of {len(ids)} missing; lists: "
                       f"{r.llen(p + ':celery:payments')} / "
                       f"{r.llen(p + ':celery:payments.canary')}")
    runs = {k: int(v) for k, v in r.hgetall(f"{p}:integ:runs").items()}
    done = {v: r.smembers(f"{p}:integ:done:{v}") for v in ("v1", "v2")}
    return runs, done


@pytest.mark.slow
def test_celery_healthy_ramp_is_promoted_sticky_and_loses_nothing(real_conn, tmp_path
                                                                   ) -> None:
    conn = real_conn
    procs, pub, plan = setup(conn, tmp_path, fail=False)
    try:
        out = ramp(conn, plan, tmp_path / "ramp.log")
        pub.stop()
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        runs, done = account(conn, pub, tmp_path)
        lost = [t for t, _ in pub.sent if t not in runs]
        dups = sum(n - 1 for n in runs.values() if n > 1)
        print(f"celery healthy: {len(pub.sent)} tasks, lost {len(lost)}, duplicates {dups}, "
              f"v1 {len(done['v1'])}, v2 {len(done['v2'])}")
        assert not lost
        assert done["v2"], "the canary ran nothing"
        cfg = queue_config.read_config(conn, "payments")
        assert cfg.stable_version == "v2"
        # sticky: until the promotion, an order that reached v2 never went back to v1 (the
        # tasks that ran before it, each on its routed lane's version)
        promoted_at = int(deployments.history(conn, "payments")[0]["promoted_at"])
        ran_at = {k: int(v) for k, v in
                  conn.client.hgetall(f"{conn.keys.prefix}:integ:ran_at").items()}
        by_order: dict[str, list[str]] = {}
        for tid, order in pub.sent:
            if ran_at[tid] < promoted_at:
                by_order.setdefault(order, []).append("v2" if tid in done["v2"] else "v1")
        moved = [o for o, seq in by_order.items() if "v2" in seq]
        assert len(moved) >= 10, by_order  # 50% of 60 orders at the last stage
        for order in moved:
            seq = by_order[order]
            assert "v1" not in seq[seq.index("v2"):], (order, seq)
        # promoted, the canary worker moves to the stable list, as a pycanary worker does
        wait_until(lambda: consumed_by(conn, "v2") == ["payments"], 20,
                   "the promoted v2 worker to consume payments",
                   lambda: str(consumed_by(conn, "v2")))
        wait_until(lambda: {(w.version, w.state, w.to_dict()["lanes"].get("payments"))
                            for w in registry.list_workers(conn, ttl_ms=10_000)} ==
                   {("v2", "active", "stable"), ("v1", "outdated", "stable")}, 10,
                   "v2 active and v1 outdated on stable")
        routed = conn.client.hgetall(conn.keys.queue("payments").routed)
        # every canary decision ran on v2, except what the promotion drained to stable
        assert int(routed["canary"]) >= sum(
            1 for t in done["v2"] if ran_at[t] < promoted_at)
    finally:
        stop_all(procs)


@pytest.mark.slow
def test_celery_failing_canary_rolled_back_nothing_lost(real_conn, tmp_path) -> None:
    conn = real_conn
    procs, pub, plan = setup(conn, tmp_path, fail=True)
    try:
        out = ramp(conn, plan, tmp_path / "ramp.log")
        assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
        time.sleep(1.0)  # traffic after the rollback: all to stable
        pub.stop()
        runs, done = account(conn, pub, tmp_path)
        lost = [t for t, _ in pub.sent if t not in runs]
        dups = sum(n - 1 for n in runs.values() if n > 1)
        failed = conn.client.hgetall(f"{conn.keys.prefix}:integ:failed")
        print(f"celery rollback: {len(pub.sent)} tasks, lost {len(lost)}, duplicates {dups}, "
              f"v2 failed attempts {failed}, v1 {len(done['v1'])}, v2 {len(done['v2'])}")
        assert not lost
        assert not done["v2"]
        assert int(failed.get("v2", 0)) > 0
        cfg = queue_config.read_config(conn, "payments")
        assert cfg.stable_version == "v1" and cfg.weight_bp == 0
        assert conn.client.llen(f"{conn.keys.prefix}:celery:payments.canary") == 0
        states = {w.version: w.state for w in registry.list_workers(conn, ttl_ms=10_000)}
        assert states.get("v2") == "retiring", states
        # the retiring canary worker no longer consumes payments.canary (remote control)
        wait_until(lambda: consumed_by(conn, "v2") == [], 20, "v2 to stop consuming",
                   lambda: str(consumed_by(conn, "v2")))
        assert consumed_by(conn, "v1") == ["payments"]
        history = json.loads(subprocess.run(
            [sys.executable, "-m", "pycanary.cli", "--redis-url", REAL_URL, "--prefix",
             conn.keys.prefix, "history", "payments", "--json"], cwd=ROOT, env=child_env(),
            capture_output=True, text=True, timeout=30).stdout)
        assert "rolled_back" in json.dumps(history)
        record = deployments.history(conn, "payments")[0]
        drain = record["drain"]
        drained = (json.loads(drain) if isinstance(drain, str) else drain)["moved"]
        print(f"celery rollback: the drain moved {drained} kombu messages to payments")
        assert drained > 0, "the slow v2 left no backlog: the drain was not exercised"
        # a new canary of the same version (a retry) puts the worker back on its list
        rollouts.start_canary(conn, "payments", "v2", weight="10")
        wait_until(lambda: consumed_by(conn, "v2") == ["payments.canary"], 20,
                   "v2 to consume payments.canary again", lambda: str(consumed_by(conn, "v2")))
        rollouts.rollback(conn, "payments", reason="end of test")
    finally:
        stop_all(procs)


def test_celery_pool_child_killed_mid_task_is_a_crashed_attempt(real_conn, tmp_path) -> None:
    """A prefork child SIGKILLed under its task (WorkerLostError in the main process) is
    counted as a crashed attempt of the worker's version and lane, as pycanary's reaper
    counts a dead worker's started jobs."""
    conn = real_conn
    queue_config.configure(conn, "payments", stable_version="v1")
    queue_config.set_weight(conn, "payments", 10_000)  # everything to canary
    proc = start_worker(conn, "v2", "payments.canary", tmp_path / "v2.log", pool="prefork")
    try:
        log = tmp_path / "v2.log"
        wait_until(lambda: any(w.version == "v2" for w in
                               registry.list_workers(conn, ttl_ms=10_000)), 40,
                   "the prefork worker registered", lambda: log.read_text()[-3000:])
        env = child_env()
        env.update(PYCANARY_PREFIX=conn.keys.prefix, PYCANARY_TEST_REDIS_URL=REAL_URL)
        subprocess.run([sys.executable, "-c", "from tests.integ_celery_app import crash; "
                        "crash.delay(order_id='o-1')"], cwd=ROOT, env=env, check=True,
                       timeout=60)
        totals = conn.keys.queue("payments").metrics_total("v2", "canary")
        wait_until(lambda: conn.client.hget(totals, "crashed") == "1", 30,
                   "the crashed attempt counted", lambda: log.read_text()[-3000:])
        assert conn.client.hget(totals, "failed") == "1"
        assert conn.client.scard(f"{conn.keys.prefix}:integ:crash_started") == 1
    finally:
        stop_all([proc])


def test_a_killed_celery_worker_is_reaped_from_the_registry(real_conn, tmp_path) -> None:
    """kill -9 of a Celery worker: it never deregisters, so the live worker's agent reaps it
    once its own deadline (3 heartbeats) has passed; `pycanary workers` stops listing it."""
    conn = real_conn
    queue_config.configure(conn, "payments", stable_version="v1")
    procs = [start_worker(conn, "v1", "payments", tmp_path / "v1.log"),
             start_worker(conn, "v2", "payments.canary", tmp_path / "v2.log")]
    try:
        def versions() -> set[str]:
            return {w.version for w in registry.list_workers(conn, ttl_ms=10_000)}

        wait_until(lambda: versions() == {"v1", "v2"}, 40, "both workers registered")
        procs[1].kill()
        procs[1].wait(10)
        wait_until(lambda: versions() == {"v1"}, 20, "the killed v2 worker reaped",
                   lambda: str(registry.list_workers(conn, ttl_ms=10_000)))
    finally:
        stop_all(procs)
