"""A deployment never starts only to wait forever: `ramp` and `canary start` refuse without a
live worker of the canary version on the queue (and `ramp` without a controller), unless
forced; the controller rolls back a canary lane nobody reads; all on real Redis with real
worker registrations."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from pycanary import defaults, deployments, queue_config, registry, rollouts, service
from pycanary.connection import Connection
from pycanary.controller import Controller
from pycanary.errors import StateError
from pycanary.leader import Leadership
from pycanary.worker import Worker
from tests.test_cli import run

PLAN = {"interval": "1s", "stages": [{"percentage": 20, "duration": "10m"}]}


@contextmanager
def running(conn: Connection, version: str, *, lane: str | None = None,
            queue: str = "payments", handler=lambda job: None) -> Iterator[Worker]:
    """A real worker of ``version`` in a thread, registered (first heartbeat) on entry."""
    w = Worker(conn, [queue], version, handler, heartbeat_s=0.2, block_s=0.1, lane=lane)
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    assert w.ready.wait(10)
    try:
        yield w
    finally:
        w.stop()
        t.join(10)


@contextmanager
def leading(conn: Connection) -> Iterator[Leadership]:
    lead = Leadership(conn, controller_id="test-controller")
    assert lead.tick()
    try:
        yield lead
    finally:
        lead.release()


def test_ramp_refused_without_canary_worker_nothing_written(real_conn: Connection) -> None:
    conn = real_conn
    service.configure_queue(conn, "payments", stable_version="v1")
    before = queue_config.read_config(conn, "payments")
    # a stable worker is not a canary worker
    with leading(conn), running(conn, "v1"), pytest.raises(StateError) as err:
        rollouts.ramp(conn, "payments", "v2", PLAN, actor="t")
    assert str(err.value) == (
        "version: no live worker of version v2 consumes queue payments: start one with "
        "`pycanary worker payments --version v2 --handler MODULE:FN` (it waits in standby for "
        "the canary lane), or pass --force")
    assert deployments.get(conn, "payments") is None
    assert queue_config.read_config(conn, "payments") == before


def test_ramp_refused_without_controller(real_conn: Connection) -> None:
    conn = real_conn
    service.configure_queue(conn, "payments", stable_version="v1")
    with running(conn, "v2"):
        with pytest.raises(StateError) as err:
            rollouts.ramp(conn, "payments", "v2", PLAN, actor="t")
        assert str(err.value) == ("controller: no controller is running: start "
                                  "`pycanary controller`, or pass --force")
        # a manual canary needs no controller to start (the worker is enough)
        dep = rollouts.start_canary(conn, "payments", "v2", weight="5", actor="t")
    assert dep.state == "active"


def test_ramp_starts_with_standby_worker_and_controller(real_conn: Connection) -> None:
    conn = real_conn
    service.configure_queue(conn, "payments", stable_version="v1")
    with leading(conn), running(conn, "v2") as w:
        rec = next(r for r in registry.list_workers(conn, ttl_ms=5000) if r.id == w.id)
        assert rec.state == "standby"  # waits for its version to become the canary
        dep = rollouts.ramp(conn, "payments", "v2", PLAN, actor="t")
    assert dep.state == "active" and dep.weight_bp == 2000
    msgs = [e["message"] for e in deployments.events(conn, "payments", dep.id, count=10)]
    assert not any("forced" in m for m in msgs)


def test_workers_that_do_not_count(real_conn: Connection) -> None:
    """Pinned to stable, of another queue, or gone: none of them reads the canary lane."""
    conn = real_conn
    service.configure_queue(conn, "payments", stable_version="v1")
    with leading(conn):
        with running(conn, "v2", lane="stable"), running(conn, "v2", queue="other"), \
                pytest.raises(StateError, match="no live worker of version v2"):
            rollouts.ramp(conn, "payments", "v2", PLAN, actor="t")
        with running(conn, "v2"):
            pass  # stopped: deregistered
        with pytest.raises(StateError, match="no live worker of version v2"):
            rollouts.start_canary(conn, "payments", "v2", weight="5", actor="t")
        with running(conn, "v2", lane="canary"):  # pinned to canary counts
            assert rollouts.start_canary(conn, "payments", "v2", weight="5", actor="t")


def test_dead_worker_does_not_count(real_conn: Connection) -> None:
    conn = real_conn
    service.configure_queue(conn, "payments", stable_version="v1")
    # a registration whose heartbeat deadline has passed (a worker killed with -9)
    registry.heartbeat(conn, "ghost", version="v2", queues={"payments": "stable"},
                       info={"state": "standby", "lanes": "payments=-"}, ttl_ms=600,
                       now=1_000)
    assert [w.state for w in registry.list_workers(conn, ttl_ms=600)] == ["dead"]
    with pytest.raises(StateError, match="no live worker of version v2"):
        rollouts.start_canary(conn, "payments", "v2", weight="5", actor="t")


def test_force_overrides_and_is_recorded(real_conn: Connection) -> None:
    conn = real_conn
    service.configure_queue(conn, "payments", stable_version="v1")
    dep = rollouts.ramp(conn, "payments", "v2", PLAN, actor="t", force=True)
    msgs = [e["message"] for e in deployments.events(conn, "payments", dep.id, count=10)]
    assert any(m.endswith("(forced past the preflight: no live worker of version v2 consumes "
                          "queue payments; no controller is running)") for m in msgs), msgs


def test_cli_ramp_and_canary_start_refused_exit_2(real_conn: Connection, tmp_path) -> None:
    conn = real_conn
    prefix = conn.keys.prefix
    service.configure_queue(conn, "payments", stable_version="v1")
    plan = tmp_path / "plan.yaml"
    plan.write_text("canary_config:\n  stages:\n    - percentage: 10\n      duration: 1m\n")
    res = run("ramp", "payments", "--version", "v2", "--plan", str(plan), prefix=prefix)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        "error: version: no live worker of version v2 consumes queue payments: start one with "
        "`pycanary worker payments --version v2 --handler MODULE:FN` (it waits in standby for "
        "the canary lane), or pass --force"]
    res = run("canary", "start", "payments", "--version", "v2", prefix=prefix)
    assert res.returncode == 2 and "no live worker of version v2" in res.stderr
    assert deployments.get(conn, "payments") is None
    with running(conn, "v2"):
        res = run("ramp", "payments", "--version", "v2", "--plan", str(plan), prefix=prefix)
        assert res.returncode == 2
        assert res.stderr.strip() == ("error: controller: no controller is running: start "
                                      "`pycanary controller`, or pass --force")
    res = run("ramp", "payments", "--version", "v2", "--plan", str(plan), "--force",
              prefix=prefix)
    assert res.returncode == 0, res.stderr
    assert deployments.get(conn, "payments").state == "active"


def test_controller_runs_are_seen_by_preflight(real_conn: Connection) -> None:
    """The leadership a real Controller loop takes is what `ramp` looks for."""
    conn = real_conn
    service.configure_queue(conn, "payments", stable_version="v1")
    stop = threading.Event()
    lead = Leadership(conn, controller_id="ctl")
    ctl = Controller(conn, leadership=lead)
    t = threading.Thread(target=ctl.run, args=(stop, 0.1), daemon=True)
    t.start()
    try:
        with running(conn, "v2"):
            for _ in range(100):
                if conn.client.get(conn.keys.leader):
                    break
                stop.wait(0.05)
            assert rollouts.ramp(conn, "payments", "v2", PLAN, actor="t").state == "active"
    finally:
        stop.set()
        t.join(10)


# -- a stalled canary lane rolls back ----------------------------------------------------------
STALL_PLAN = {"interval": "1s", "on_no_data": "hold",
              "stages": [{"percentage": 50, "duration": "1h"}]}


def test_stalled_canary_lane_rolls_back_and_stable_processes_everything(
        real_conn: Connection) -> None:
    conn = real_conn
    service.configure_queue(conn, "payments", stable_version="v1")
    done: list[str] = []
    lock = threading.Lock()

    def record(job) -> None:
        with lock:
            done.append(job.id)

    t = [1_000_000.0]
    qk = conn.keys.queue("payments")
    from pycanary.producer import Producer

    with leading(conn) as lead, running(conn, "v1", handler=record):
        # the grace runs on the wall clock (worker liveness is real time): 2 s here
        ctl = Controller(conn, clock=lambda: t[0], leadership=lead, stall_grace_s=2)
        with running(conn, "v2"):
            dep = rollouts.ramp(conn, "payments", "v2", STALL_PLAN, actor="t",
                                now_ms=int(t[0] * 1000))
        # the only v2 worker stopped (deregistered): canary jobs now wait for nobody
        ids = [r.job_id for r in Producer(conn).enqueue_many("payments", [{}] * 200)]
        waiting = conn.client.llen(qk.lane_canary)
        assert 50 < waiting < 150
        ctl.tick()  # baseline
        t[0] += 1
        seen = defaults.now_ms()
        ctl.tick()  # stall first seen
        since = deployments.get(conn, "payments").meta["stalled_since"]
        assert seen <= since <= defaults.now_ms()
        t[0] += 3600  # policy time alone does not make a stall
        ctl.tick()
        assert deployments.get(conn, "payments").state == "active"
        time.sleep(max(0.0, (since + 2000 - defaults.now_ms()) / 1000) + 0.05)
        t[0] += 1
        ctl.tick()
        dep = deployments.get(conn, "payments")
        assert dep.state == "rolled_back", dep.state
        assert dep.reason == (f"stalled: {waiting} canary jobs waiting, no live v2 worker "
                              "for 2s")
        assert conn.client.llen(qk.lane_canary) == 0 and dep.weight_bp == 0
        evs = deployments.events(conn, "payments", dep.id, count=20)
        assert any(e["type"] == "rollback" and e["message"].endswith(dep.reason)
                   for e in evs), evs
        row = rollouts.status(conn, "payments")[0]
        assert row["deployment"]["reason"] == dep.reason
        for _ in range(200):
            with lock:
                if len(done) >= len(ids):
                    break
            threading.Event().wait(0.05)
    assert sorted(done) == sorted(ids)  # every job ran once on stable, none lost


def test_stall_clears_when_a_canary_worker_comes_back(real_conn: Connection) -> None:
    conn = real_conn
    service.configure_queue(conn, "payments", stable_version="v1")
    t = [1_000_000.0]
    from pycanary.producer import Producer

    with leading(conn) as lead:
        ctl = Controller(conn, clock=lambda: t[0], leadership=lead, stall_grace_s=1)
        rollouts.ramp(conn, "payments", "v2", STALL_PLAN, actor="t", now_ms=int(t[0] * 1000),
                      force=True)
        Producer(conn).enqueue_many("payments", [{}] * 40)
        ctl.tick()
        t[0] += 1
        ctl.tick()
        assert "stalled_since" in deployments.get(conn, "payments").meta
        with running(conn, "v2"):
            for _ in range(200):
                if conn.client.llen(conn.keys.queue("payments").lane_canary) == 0:
                    break
                threading.Event().wait(0.05)
            time.sleep(1.1)
            t[0] += 100
            ctl.tick()
            dep = deployments.get(conn, "payments")
        assert dep.state == "active" and "stalled_since" not in (dep.meta or {})


# -- overflow after a rollback: the stable lane's net growth in status -------------------------
def test_stable_growth_math() -> None:
    first = ({"stable": 100, "canary": 0}, {"stable": 1000, "canary": 50})
    second = ({"stable": 130, "canary": 0}, {"stable": 1050, "canary": 50})
    assert rollouts.stable_growth(first, second, 2.0) == {
        "window_s": 2.0, "depth": 130, "inflow_per_s": 25.0, "outflow_per_s": 10.0,
        "net_per_s": 15.0}


def test_status_shows_stable_growth_after_rollback(real_conn: Connection) -> None:
    from pycanary.producer import Producer

    conn = real_conn
    service.configure_queue(conn, "payments", stable_version="v1")
    rollouts.start_canary(conn, "payments", "v2", weight="10", actor="t", force=True)
    assert "stable_growth" not in rollouts.status(conn, "payments")[0]  # not rolled back
    rollouts.rollback(conn, "payments", actor="t")
    producer = Producer(conn)
    stop = threading.Event()

    def produce() -> None:  # no worker runs: everything routed stays on the stable lane
        while not stop.is_set():
            producer.enqueue_many("payments", [{}] * 20)
            stop.wait(0.02)

    t = threading.Thread(target=produce, daemon=True)
    t.start()
    try:
        row = rollouts.status(conn, "payments", growth_sample_s=0.5)[0]
    finally:
        stop.set()
        t.join(10)
    g = row["stable_growth"]
    assert g["window_s"] >= 0.5 and g["inflow_per_s"] > 0
    assert g["outflow_per_s"] == 0 and g["net_per_s"] == g["inflow_per_s"]
    assert "stable_growth" not in rollouts.status(conn, "payments", growth_sample_s=0)[0]


@pytest.mark.slow
def test_canary_worker_killed_mid_ramp_is_rolled_back_nothing_lost(real_conn: Connection) -> None:
    """Real processes: the only v2 worker is SIGKILLed while it holds jobs and more wait in
    the canary lane. The controller rolls back as stalled once the worker is past its deadline
    and the grace is over; the reaper returns what it held, the drain what waited, and the v1
    worker runs every job."""
    import json
    import signal

    from pycanary.producer import Producer
    from tests.test_worker_processes import start_worker, stop_all, wait_for

    conn = real_conn
    qk = conn.keys.queue("payments")
    done_key, started_key = (f"{conn.keys.prefix}:test:done", f"{conn.keys.prefix}:test:started")
    service.configure_queue(conn, "payments", stable_version="v1")
    v1 = start_worker(conn, "payments", "--version", "v1", "--handler", "tests.handlers:slow",
                      "--concurrency", "4", env={"SLOW_S": "0.002"})
    v2 = start_worker(conn, "payments", "--version", "v2", "--handler", "tests.handlers:slow",
                      "--concurrency", "1", env={"SLOW_S": "5"})
    procs = [v1, v2]
    try:
        wait_for(lambda: len(service.list_workers(conn)) == 2, 30, "2 workers registered")
        with leading(conn) as lead:
            ctl = Controller(conn, leadership=lead, stall_grace_s=2)
            dep = rollouts.ramp(conn, "payments", "v2", STALL_PLAN, actor="t")  # no --force
            wait_for(lambda: any(w["version"] == "v2" and w["queues"].get("payments") ==
                                 "canary" and w["state"] == "active"
                                 for w in service.list_workers(conn)), 10, "v2 on canary")
            producer = Producer(conn)
            ids = [r.job_id for r in producer.enqueue_many("payments", [{}] * 100)]
            wait_for(lambda: conn.client.llen(started_key) > 0, 10, "v2 running a job")
            v2.send_signal(signal.SIGKILL)
            v2.wait(10)
            ids += [r.job_id for r in producer.enqueue_many("payments", [{}] * 100)]
            assert conn.client.llen(qk.lane_canary) > 0
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                ctl.tick()
                dep = deployments.get(conn, "payments")
                if not dep.active:
                    break
                time.sleep(0.2)
        assert dep.state == "rolled_back", dep.state
        assert dep.reason.startswith("stalled: ") and "canary jobs waiting, no live v2 worker " \
            "for " in dep.reason, dep.reason
        assert (dep.meta or {}).get("rollback_rule") == "stalled"

        def finished() -> bool:
            c = conn.client
            if c.llen(qk.lane_stable) or c.llen(qk.lane_canary) or c.zcard(qk.delayed_stable):
                return False
            dead = {json.loads(x)["job"]["id"] for x in c.lrange(qk.dlq, 0, -1)}
            return set(ids) <= set(c.lrange(done_key, 0, -1)) | dead

        wait_for(finished, 60, "every job processed on stable")
        done = conn.client.lrange(done_key, 0, -1)
        assert set(ids) <= set(done) and conn.client.llen(qk.dlq) == 0  # nothing lost
        assert len(done) - len(set(done)) <= 1  # only the job v2 ran when killed, at most
    finally:
        stop_all(procs)


def test_retry_counts_a_worker_retiring_because_its_version_was_rolled_back(
        real_conn: Connection) -> None:
    """The README tour: v2 rolled back, its worker restarted with the fix (it comes up
    retiring: v2 is rolled back), then `retry`. The preflight counts that worker, and once the
    retry takes v2 off the rolled-back list the worker takes the canary lane."""
    conn = real_conn
    service.configure_queue(conn, "payments", stable_version="v1")

    def v2_states() -> list[str]:
        return [r.state for r in registry.list_workers(conn, ttl_ms=defaults.TTL_MS)
                if r.version == "v2"]

    def wait_until(pred, what: str) -> None:
        deadline = time.monotonic() + 10
        while not pred():
            assert time.monotonic() < deadline, what
            time.sleep(0.05)

    with leading(conn):
        rollouts.ramp(conn, "payments", "v2", PLAN, actor="t", force=True)
        rollouts.rollback(conn, "payments", reason="bad build", actor="t")
        with running(conn, "v2"):
            wait_until(lambda: v2_states() == ["retiring"], "the restarted v2 worker retires")
            dep = rollouts.retry(conn, "payments", actor="t")
            assert (dep.canary_version, dep.weight_bp) == ("v2", 2000)
            wait_until(lambda: v2_states() == ["active"], "v2 back on the canary lane")
