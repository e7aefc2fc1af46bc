"""Guards that Python pre-checks shadow, exercised on their own: the Lua scripts' refusals,
late acks, fencing of promote/finish, and two controller rules (the deadline at a manual gate,
the manual-only fallback) driven with a policy clock."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from pycanary import deployments, metrics, queue_config, registry, rollouts, service
from pycanary.controller import Controller
from pycanary.errors import FencedError, WeightAboveMaxError
from pycanary.job import Job
from pycanary.plan import parse_plan
from pycanary.producer import Producer
from pycanary.worker import Worker

PLAN = {"stages": [
    {"percentage": 10, "duration": "10m"},
    {"percentage": 40, "duration": "10m", "auto_promote": False},
], "interval": "30s"}


@pytest.fixture
def queue(conn: Any) -> Any:
    service.configure_queue(conn, "payments", stable_version="v1", max_weight="50")
    return conn


def snapshot(conn: Any) -> dict[str, Any]:
    """Everything a refused script must leave as it was."""
    qk = conn.keys.queue("payments")
    c = conn.client
    return {"config": c.hgetall(qk.config), "tenants": c.hgetall(qk.tenant_weights),
            "deployment": c.hgetall(qk.deployment), "rolled_back": c.smembers(qk.rolled_back),
            "former": c.zrange(qk.former_stable, 0, -1), "history": c.lrange(qk.history, 0, -1),
            "counters": c.hgetall(qk.counters), "fence": c.get(qk.fence)}


# -- the scripts' own max-weight guard (Python pre-checks never let such a call through) -----
def test_deployment_start_script_refuses_a_weight_above_max(queue: Any) -> None:
    conn = queue
    before = snapshot(conn)
    plan = parse_plan({"stages": [{"percentage": 60, "duration": "1m"}]})
    with pytest.raises(WeightAboveMaxError):  # deployments.start has no pre-check of its own
        deployments.start(conn, "payments", "v2", plan, kind="plan", actor="t", now=1,
                          message="x")
    plan = parse_plan({"stages": [{"percentage": 10, "duration": "1m",
                                   "tenants": {"acme": 70}}]})
    with pytest.raises(WeightAboveMaxError):
        deployments.start(conn, "payments", "v2", plan, kind="plan", actor="t", now=1,
                          message="x")
    assert snapshot(conn) == before
    assert deployments.get(conn, "payments") is None


def test_deployment_update_script_refuses_a_weight_above_max(queue: Any) -> None:
    conn = queue
    rollouts.ramp(conn, "payments", "v2", PLAN, actor="t", force=True)
    dep = deployments.get(conn, "payments")
    before = snapshot(conn)
    with pytest.raises(WeightAboveMaxError):
        deployments.update(conn, dep, {"stage": 1}, now=5, weight_bp=5001)
    with pytest.raises(WeightAboveMaxError):
        deployments.update(conn, dep, {"stage": 1}, now=5, weight_bp=4000,
                           tenants_bp={"acme": 5001})
    assert snapshot(conn) == before
    # the boundary itself is allowed
    deployments.update(conn, dep, {"stage": 1}, now=6, weight_bp=5000)
    assert queue_config.read_config(conn, "payments").weight_bp == 5000


def test_config_scripts_refuse_on_their_own(queue: Any) -> None:
    conn = queue
    qk = conn.keys.queue("payments")
    service.set_weight(conn, "payments", "30")
    before = snapshot(conn)
    call = conn.scripts.call
    assert call("set_weight", qk.config_keys(), ["5001", "", 9, "set", "0"]) == -2
    assert call("set_weight", qk.config_keys(), ["5001", "acme", 9, "set", "0"]) == -2
    assert call("set_weight", qk.config_keys(), ["10001", "", 9, "set", "1"]) == -1
    assert call("configure_queue", qk.config_keys(), [9, "max_weight_bp", "2999"]) == -3
    assert snapshot(conn) == before
    assert call("set_weight", qk.config_keys(), ["5000", "", 9, "set", "0"])[1] == 5000


# -- late acks -------------------------------------------------------------------------------
def test_ack_after_the_reaper_requeued_the_job_counts_late(conn: Any) -> None:
    """A worker that was taken for dead finishes jobs the reaper already returned: the acks
    count as `late` (exactly those), in the metrics and in the worker's stats."""
    service.configure_queue(conn, "payments", stable_version="v1")
    rollouts.start_canary(conn, "payments", "v2", weight="5", tenants={"t": "100"}, actor="t",
                          force=True)
    p = Producer(conn)
    gate, started = threading.Event(), []

    def handler(job: Job) -> None:
        if job.payload["block"]:
            started.append(job.id)
            assert gate.wait(20)

    w = Worker(conn, ["payments"], "v2", handler, concurrency=4, heartbeat_s=0.2)
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    try:
        p.enqueue("payments", {"block": False}, tenant="t")
        _wait(lambda: w.stats.done == 1, "first ack")
        p.enqueue_many("payments", [{"block": True}] * 2, tenant="t")
        _wait(lambda: len(started) == 2, "two blocked jobs")
        # the canary lane closes (the worker retires, so it takes nothing more), then the
        # reaper takes the worker for dead and returns its two jobs to stable
        rollouts.rollback(conn, "payments", actor="t")
        report = registry.reap(conn, ttl_ms=1, now=registry.now_ms() + 600_000)
        assert report.jobs == 2
        qk = conn.keys.queue("payments")
        assert conn.client.llen(qk.lane_stable) == 2
        gate.set()
        _wait(lambda: w.stats.done == 3, "late acks")
    finally:
        gate.set()
        w.stop()
        t.join(15)
    assert not t.is_alive()
    assert (w.stats.done, w.stats.late) == (3, 1 + 1)
    now = registry.now_ms()
    st = metrics.read_window(conn, "payments", "v2", "canary", now - 120_000, now + 1_000)
    # a late ack counts only as late: the job was returned and runs again elsewhere, where its
    # outcome is counted, so ok stays at the one ack that was in time
    assert (st.ok, st.late) == (1, 2)
    total = conn.client.hgetall(conn.keys.queue("payments").metrics_total("v2", "canary"))
    assert (total.get("ok"), total.get("late")) == ("1", "2")
    # the two jobs the reaper took from the (seemingly dead) worker mid-run are crashed first
    # attempts of v2 on the canary lane; their late acks add nothing but `late`
    assert {k: total.get(k) for k in ("crashed", "failed", "first_attempts",
                                      "first_failed")} == {
        "crashed": "2", "failed": "2", "first_attempts": "3", "first_failed": "2"}
    assert st.crashed == 2 and st.first_attempts == 3
    f = metrics.decode(total)
    assert sum(n for n, _ in f.units.values()) == 3 and sum(x for _, x in f.units.values()) == 2
    assert {u.split("|")[0] for u in f.units} == {"t"}  # tenant t has an override: its stratum


def _wait(cond: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# -- fencing of promote and finish -----------------------------------------------------------
def test_promote_and_finish_refuse_an_older_epoch(queue: Any) -> None:
    conn = queue
    rollouts.ramp(conn, "payments", "v2", PLAN, actor="t", force=True)
    dep = deployments.get(conn, "payments")
    deployments.update(conn, dep, {"reason": "leader 7"}, now=2, epoch=7)
    before = snapshot(conn)
    stale = deployments.get(conn, "payments")
    with pytest.raises(FencedError):
        deployments.promote_final(conn, stale, actor="old", now=3, reason="x", epoch=6)
    assert snapshot(conn) == before
    # the current leader promotes; a deposed one may not finish it
    dep = deployments.get(conn, "payments")
    assert deployments.promote_final(conn, dep, actor="c7", now=4, reason="ok", epoch=7)
    before = snapshot(conn)
    assert before["deployment"]["state"] == "promoting"
    with pytest.raises(FencedError):
        deployments.finish(conn, dep, actor="old", now=5, message="x",
                           counter="promotions:completed", values={}, epoch=6)
    assert snapshot(conn) == before
    assert deployments.finish(conn, dep, actor="c7", now=6, message="done",
                              counter="promotions:completed", values={}, epoch=7) == "completed"
    assert conn.client.hget(conn.keys.queue("payments").counters, "promotions:completed") == "1"


# -- controller rules, driven with a policy clock and fed running totals --------------------
class Driven:
    """A controller on a driven clock; lanes get `ok` attempts written to their running totals
    (what ack_jobs writes), so each check sees exactly the data the test decides."""

    def __init__(self, conn: Any, plan: dict[str, Any]) -> None:
        self.conn = conn
        self.t = 1_000_000.0
        rollouts.ramp(conn, "payments", "v2", plan, actor="t", now_ms=int(self.t * 1000),
                      force=True)
        self.ctl = Controller(conn, clock=lambda: self.t)
        self.qk = conn.keys.queue("payments")

    def tick(self, lanes: tuple[str, ...] = ("stable", "canary"), step: float = 30) -> Any:
        for lane, version in (("stable", "v1"), ("canary", "v2")):
            if lane in lanes:
                self.conn.client.hincrby(self.qk.metrics_total(version, lane), "ok", 50)
        self.t += step
        self.ctl.tick()
        return deployments.get(self.conn, "payments")


GATE_PLAN = {"stages": [{"percentage": 10, "duration": "1m", "auto_promote": False}],
             "interval": "30s", "deadline": "2m", "statistical": {"enabled": False}}


def test_deadline_does_not_roll_back_a_deployment_waiting_at_its_manual_gate(
        real_conn: Any) -> None:
    conn = real_conn
    service.configure_queue(conn, "payments", stable_version="v1")
    d = Driven(conn, GATE_PLAN)
    dep = None
    for _ in range(6):
        dep = d.tick()
        if dep.state == "awaiting_promotion":
            break
    assert dep is not None and dep.state == "awaiting_promotion"
    # no data any more (INCONCLUSIVE checks) long past the deadline: a person is awaited
    for _ in range(12):
        dep = d.tick(lanes=())
        assert dep.state == "awaiting_promotion", (dep.state, dep.reason)
    cfg = queue_config.read_config(conn, "payments")
    assert (cfg.canary_version, cfg.weight_bp) == ("v2", 1000)
    assert not conn.client.sismember(d.qk.rolled_back, "v2")
    assert dep.manual_only == ""  # quiet lanes with nothing waiting are not a metrics outage
    # decide itself holds at the gate, and says the deadline is why
    last = dep.last_decision or {}
    assert (last.get("action"), last.get("cause")) == ("hold", "deadline"), last


def test_deadline_still_rolls_back_before_the_gate(real_conn: Any) -> None:
    """The counterpart: the same silence before the gate is rolled back at the deadline."""
    conn = real_conn
    service.configure_queue(conn, "payments", stable_version="v1")
    d = Driven(conn, GATE_PLAN)
    states = [d.tick(lanes=()).state for _ in range(12)]
    assert states[-1] == "rolled_back" and "awaiting_promotion" not in states


FALLBACK_PLAN = {"stages": [{"percentage": 10, "duration": "2m"},
                            {"percentage": 20, "duration": "1m", "auto_promote": False}],
                 "interval": "30s", "statistical": {"enabled": False}}


def test_manual_only_fallback_blocks_an_automatic_stage_step(real_conn: Any) -> None:
    conn = real_conn
    service.configure_queue(conn, "payments", stable_version="v1")
    d = Driven(conn, FALLBACK_PLAN)
    d.tick()  # baseline
    d.tick()  # both lanes deliver
    conn.client.lpush(d.qk.lane_canary, "job-a", "job-b")  # canary backlog
    for _ in range(3):  # canary metrics stop for > 2 intervals while its lane holds jobs
        dep = d.tick(lanes=("stable",))
    assert dep.manual_only and "canary" in dep.manual_only
    assert dep.state == "active" and dep.stage == 0
    for _ in range(4):  # data is back, the stage time is up, checks PASS: still manual
        dep = d.tick()
    assert (dep.state, dep.stage) == ("awaiting_promotion", 0), dep.last_decision
    assert queue_config.read_config(conn, "payments").weight_bp == 1000
    assert dep.manual_only


def test_without_the_fallback_the_same_plan_steps_automatically(real_conn: Any) -> None:
    """The counterpart: with data all along the stage step is automatic."""
    conn = real_conn
    service.configure_queue(conn, "payments", stable_version="v1")
    d = Driven(conn, FALLBACK_PLAN)
    conn.client.lpush(d.qk.lane_canary, "job-a", "job-b")
    for _ in range(7):
        dep = d.tick()
        if dep.stage == 1:
            break
    assert (dep.state, dep.stage, dep.manual_only) == ("active", 1, "")
    assert queue_config.read_config(conn, "payments").weight_bp == 2000


# -- worker-side scripts whose guards the worker's own lane rules shadow -----------------------
def test_fetch_refuses_a_rolled_back_version_and_moves_nothing(conn: Any) -> None:
    """A retiring worker never asks, but a stale one (or another client) may: the script
    itself refuses the rolled-back version (-5) and leaves the lane as it was."""
    service.configure_queue(conn, "payments", stable_version="v1")
    rollouts.start_canary(conn, "payments", "v2", weight="5", tenants={"t": "100"}, actor="t",
                          force=True)
    Producer(conn).enqueue_many("payments", [{}] * 3, tenant="t")
    qk = conn.keys.queue("payments")
    keys = [qk.lane_canary, qk.processing("w-1"), qk.rolled_back, qk.processing_index]
    conn.client.sadd(qk.rolled_back, "v2")  # as deployment_rollback marks it
    assert conn.scripts.call("fetch_jobs", keys, [10, "v2", "w-1", "canary"]) == -5
    assert conn.client.llen(qk.lane_canary) == 3
    assert conn.client.llen(qk.processing("w-1")) == 0
    envelopes, bad = conn.scripts.call("fetch_jobs", keys, [10, "v3", "w-1", "canary"])
    assert (len(envelopes), bad) == (3, [])  # other versions may


def test_due_retries_of_a_closed_canary_lane_go_to_stable(conn: Any) -> None:
    service.configure_queue(conn, "payments", stable_version="v1")
    rollouts.start_canary(conn, "payments", "v2", weight="5", actor="t", force=True)
    qk = conn.keys.queue("payments")
    keys = [qk.delayed_stable, qk.delayed_canary, qk.lane_stable, qk.lane_canary, qk.config]
    conn.client.zadd(qk.delayed_canary, {"retry-a": 10})
    assert list(conn.scripts.call("promote_delayed", keys, [100, 50])) == [0, 1, 0]
    assert conn.client.lrange(qk.lane_canary, 0, -1) == ["retry-a"]  # open: back to canary
    rollouts.rollback(conn, "payments", actor="t")
    conn.client.zadd(qk.delayed_canary, {"retry-b": 10})
    assert list(conn.scripts.call("promote_delayed", keys, [100, 50])) == [0, 1, 0]
    assert conn.client.lrange(qk.lane_stable, 0, -1)[0] == "retry-b"
    assert conn.client.llen(qk.lane_canary) == 0 and conn.client.zcard(qk.delayed_canary) == 0


def _return_keys(conn: Any, lane: str) -> list[str]:
    qk = conn.keys.queue("payments")
    return [qk.processing("w-1"), qk.lane(lane), qk.lane_stable, qk.config]


@pytest.mark.parametrize("script", ["return_job", "bounce_job"])
def test_jobs_given_back_from_a_closed_canary_lane_go_to_the_stable_head(
        conn: Any, script: str) -> None:
    """Stopping a rolled-back worker as the runbook says once left its jobs in the canary
    lane, which nobody reads after a rollback: the scripts now send them to stable's head."""
    service.configure_queue(conn, "payments", stable_version="v1")
    rollouts.start_canary(conn, "payments", "v2", weight="5", actor="t", force=True)
    qk = conn.keys.queue("payments")
    c = conn.client
    c.lpush(qk.lane_stable, "stable-old", "stable-new")  # the head is the right end
    c.lpush(qk.processing("w-1"), "job-a", "job-b", "job-c")
    # open canary lane: back to the canary lane (head for return, tail for bounce)
    assert conn.scripts.call(script, _return_keys(conn, "canary"), ["job-c"]) == 1
    assert c.lrange(qk.lane_canary, 0, -1) == ["job-c"]
    rollouts.rollback(conn, "payments", actor="t")  # drains job-c to stable's head
    # closed: to the head of stable, newest given back first so the oldest ends at the head
    assert conn.scripts.call(script, _return_keys(conn, "canary"), ["job-b"]) == 2
    assert conn.scripts.call(script, _return_keys(conn, "canary"), ["job-a"]) == 2
    assert c.lrange(qk.lane_stable, 0, -1) == ["stable-new", "stable-old", "job-c", "job-b",
                                               "job-a"]
    assert c.llen(qk.lane_canary) == 0 and c.llen(qk.processing("w-1")) == 0
    # a job no longer held moves nothing
    assert conn.scripts.call(script, _return_keys(conn, "canary"), ["job-a"]) == 0
    assert c.llen(qk.lane_stable) == 5
    # stable-lane jobs stay in the stable lane whatever the canary lane's state
    c.lpush(qk.processing("w-1"), "job-s")
    assert conn.scripts.call(script, _return_keys(conn, "stable"), ["job-s"]) == 1
    assert "job-s" in c.lrange(qk.lane_stable, 0, -1)


@pytest.mark.parametrize("script", ["return_job", "bounce_job"])
def test_return_scripts_refuse_a_config_of_the_wrong_type_before_any_write(
        conn: Any, script: str) -> None:
    qk = conn.keys.queue("payments")
    c = conn.client
    c.lpush(qk.processing("w-1"), "job-a")
    c.set(qk.config, "oops")
    with pytest.raises(Exception, match="WRONGTYPE"):
        conn.scripts.call(script, _return_keys(conn, "canary"), ["job-a"])
    assert c.lrange(qk.processing("w-1"), 0, -1) == ["job-a"]
    assert c.llen(qk.lane_stable) == 0 and c.llen(qk.lane_canary) == 0
