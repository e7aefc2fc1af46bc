"""Deployment operations on both backends: start guards, manual canary, promote, rollback,
pause/resume, set-weight during a deployment, compare-and-set and fencing."""

from __future__ import annotations

import pytest

from pycanary import deployments, queue_config, registry, rollouts, service
from pycanary.controller import Controller
from pycanary.errors import (
    ConflictError,
    FencedError,
    MaxWeightBelowWeightError,
    StateError,
    ValidationError,
    WeightAboveMaxError,
)
from pycanary.producer import Producer

PLAN = {"stages": [
    {"percentage": 5, "duration": "10m", "conditions": {"max_error_rate": 5}},
    {"percentage": 20, "duration": "10m", "auto_promote": False},
], "interval": "30s"}


@pytest.fixture
def queue(conn):
    service.configure_queue(conn, "payments", stable_version="v1")
    return conn


def test_start_sets_routing_and_refuses_a_second(queue) -> None:
    conn = queue
    dep = rollouts.ramp(conn, "payments", "v2", PLAN, actor="test", force=True)
    cfg = queue_config.read_config(conn, "payments")
    assert (cfg.canary_version, cfg.weight_bp, dep.state, dep.stage) == ("v2", 500, "active", 0)
    assert deployments.active_queues(conn) == ["payments"]
    with pytest.raises(StateError):
        rollouts.ramp(conn, "payments", "v3", PLAN, actor="test", force=True)
    events = deployments.events(conn, "payments", dep.id)
    assert [e["type"] for e in events] == ["started"] and events[0]["actor"] == "test"


def test_start_guards_change_nothing(conn) -> None:
    with pytest.raises(StateError):  # no stable version yet
        rollouts.ramp(conn, "payments", "v2", PLAN, force=True)
    service.configure_queue(conn, "payments", stable_version="v1", max_weight="10")
    before = queue_config.read_config(conn, "payments")
    with pytest.raises(ValidationError) as exc:
        rollouts.ramp(conn, "payments", "v2", PLAN, force=True)  # stage 1 at 20% > max 10%
    assert exc.value.field == "stages[1].percentage"
    with pytest.raises(ValidationError) as exc:
        rollouts.start_canary(conn, "payments", "v1", weight="5", force=True)  # already stable
    assert exc.value.field == "version"
    with pytest.raises(ValidationError):
        rollouts.start_canary(conn, "payments", "v2", weight="150", force=True)
    assert queue_config.read_config(conn, "payments") == before
    assert deployments.get(conn, "payments") is None


def test_schema_guard(queue) -> None:
    conn = queue
    p = Producer(conn)
    p.enqueue("payments", {}, schema=1)
    p.enqueue("payments", {}, schema=2)
    assert rollouts.schemas_in_queue(conn, "payments") == {1, 2}
    with pytest.raises(ValidationError, match="no worker of v2"):
        rollouts.start_canary(conn, "payments", "v2", weight="5", force=True)
    registry.heartbeat(conn, "w-v2", version="v2", queues={"payments": "stable"},
                       info={"state": "standby", "schemas": "1"}, ttl_ms=60_000)
    with pytest.raises(ValidationError, match=r"holds \[2\]"):
        rollouts.start_canary(conn, "payments", "v2", weight="5", force=True)
    dep = rollouts.start_canary(conn, "payments", "v2", weight="5", allow_schema_change=True,
                                force=True)
    assert dep.state == "active"


def test_manual_canary_promote_full(queue) -> None:
    conn = queue
    dep = rollouts.start_canary(conn, "payments", "v2", weight="12.5",
                                tenants={"internal": "100"}, actor="test", force=True)
    cfg = queue_config.read_config(conn, "payments")
    assert (cfg.weight_bp, cfg.tenant_weights_bp) == (1250, {"internal": 10_000})
    Producer(conn).enqueue_many("payments", [{}] * 200, tenant="internal")  # all canary
    res = rollouts.promote(conn, "payments", actor="test")
    assert res["state"] == "completed"
    cfg = queue_config.read_config(conn, "payments")
    assert (cfg.stable_version, cfg.canary_version, cfg.weight_bp, cfg.tenant_weights_bp) == (
        "v2", None, 0, {})
    qk = conn.keys.queue("payments")
    assert conn.client.llen(qk.lane_canary) == 0 and conn.client.llen(qk.lane_stable) == 200
    assert conn.client.zscore(qk.former_stable, "v1") is not None
    dep = deployments.get(conn, "payments")
    assert dep.state == "completed" and dep.drain["moved"] == 200
    assert deployments.history(conn, "payments")[0]["id"] == dep.id
    assert conn.client.hget(qk.counters, "promotions:completed") == "1"
    assert deployments.active_queues(conn) == []


def test_promote_advances_one_stage_then_completes(queue) -> None:
    conn = queue
    rollouts.ramp(conn, "payments", "v2", PLAN, actor="test", force=True)
    res = rollouts.promote(conn, "payments", actor="test")
    assert (res["action"], res["stage"]) == ("stage", 1)
    assert queue_config.read_config(conn, "payments").weight_bp == 2000
    res = rollouts.promote(conn, "payments", actor="test")  # last stage: to stable
    assert res["action"] == "promoted" and res["state"] == "completed"
    with pytest.raises(StateError):
        rollouts.promote(conn, "payments")


def test_rollback_is_immediate_and_drains(queue) -> None:
    conn = queue
    rollouts.ramp(conn, "payments", "v2", {"stages": [{"percentage": 50, "duration": "1m"}]},
                  force=True)
    p = Producer(conn)
    lanes = [r.lane for r in p.enqueue_many("payments", [{"i": i} for i in range(400)])]
    canary_n = lanes.count("canary")
    assert canary_n > 100
    res = rollouts.rollback(conn, "payments", reason="errors spiked", actor="sre")
    assert res["state"] == "rolled_back" and res["drained_jobs"] == canary_n
    assert {p.enqueue("payments", {}).lane for _ in range(50)} == {"stable"}
    qk = conn.keys.queue("payments")
    assert conn.client.llen(qk.lane_canary) == 0
    assert conn.client.llen(qk.lane_stable) == 450
    assert conn.client.sismember(qk.rolled_back, "v2")
    dep = deployments.get(conn, "payments")
    assert dep.reason == "errors spiked" and dep.state == "rolled_back"
    types = [e["type"] for e in deployments.events(conn, "payments", dep.id)]
    assert types == ["started", "rollback", "rolled_back"]
    assert conn.client.hget(qk.counters, "rollbacks:manual") == "1"
    again = rollouts.rollback(conn, "payments")  # already done: said so, nothing changed
    assert (again["rollback"], again["deployment_id"]) == ("already", dep.id)
    assert conn.client.hget(qk.counters, "rollbacks:manual") == "1"


def test_rollback_of_a_manual_weight_without_deployment(queue) -> None:
    conn = queue
    service.set_weight(conn, "payments", "100")
    Producer(conn).enqueue_many("payments", [{}] * 30)
    res = rollouts.rollback(conn, "payments", actor="sre")
    assert res["deployment_id"] is None and res["drained_jobs"] == 30
    assert queue_config.read_config(conn, "payments").weight_bp == 0


def test_pause_freezes_and_resume_shifts_timers(queue) -> None:
    conn = queue
    dep = rollouts.ramp(conn, "payments", "v2", PLAN, now_ms=1_000_000, actor="test", force=True)
    dep = rollouts.pause(conn, "payments", now_ms=1_060_000, actor="test")
    assert dep.state == "paused"
    clock = [1_000.0 + 3600]
    ctl = Controller(conn, clock=lambda: clock[0])
    ctl.tick()  # a paused deployment is left alone
    assert deployments.get(conn, "payments").weight_bp == 500
    dep = rollouts.resume(conn, "payments", now_ms=1_660_000, actor="test")
    assert dep.state == "active" and dep.paused_ms == 600_000
    assert dep.stage_started_at == 1_600_000
    with pytest.raises(StateError):
        rollouts.resume(conn, "payments")


def test_set_weight_during_deployment_pauses_it(queue) -> None:
    conn = queue
    rollouts.ramp(conn, "payments", "v2", PLAN, actor="test", force=True)
    change = service.set_weight(conn, "payments", "2")
    assert change.paused_deployment and change.weight_bp == 200
    dep = deployments.get(conn, "payments")
    assert (dep.state, dep.weight_bp) == ("paused", 200)
    assert queue_config.read_config(conn, "payments").weight_bp == 200
    assert deployments.events(conn, "payments", dep.id)[-1]["type"] == "weight"
    # below the plan's stage 1 (20%): refused, nothing written
    with pytest.raises(MaxWeightBelowWeightError) as err:
        service.configure_queue(conn, "payments", max_weight="10")
    assert err.value.field == "max_weight"
    assert queue_config.read_config(conn, "payments").max_weight_bp == 10000
    service.configure_queue(conn, "payments", max_weight="20")
    with pytest.raises(WeightAboveMaxError):
        service.set_weight(conn, "payments", "21")
    assert rollouts.resume(conn, "payments").state == "active"


def test_compare_and_set_and_fencing(queue) -> None:
    conn = queue
    dep = rollouts.ramp(conn, "payments", "v2", PLAN, actor="test", force=True)
    stale = deployments.get(conn, "payments")
    rollouts.pause(conn, "payments", actor="sre")
    with pytest.raises(ConflictError):  # decided on state read before the pause
        deployments.update(conn, stale, {"stage": 1}, now=1, weight_bp=2000)
    assert deployments.get(conn, "payments").state == "paused"
    fresh = deployments.get(conn, "payments")
    deployments.update(conn, fresh, {"reason": "x"}, now=2, epoch=7)
    fresh = deployments.get(conn, "payments")
    with pytest.raises(FencedError):  # an older leader epoch is refused
        deployments.update(conn, fresh, {"reason": "y"}, now=3, epoch=6)
    with pytest.raises(FencedError):
        deployments.rollback(conn, fresh, reason="old leader", actor="c", now=4, epoch=5)
    assert deployments.get(conn, "payments").reason == "x"
    assert queue_config.read_config(conn, "payments").weight_bp == 500
    assert dep.id == fresh.id


def test_each_deployment_draws_its_own_salt_and_a_key_keeps_its_lane(queue) -> None:
    """Issue 10: a fresh random salt per deployment (so the same customers are not the first
    to get every canary), sticky within one deployment; a plan or `salt=` still pins it."""
    conn = queue
    from pycanary.routing import sticky_bucket

    p = Producer(conn)
    keys = [f"customer-{i}" for i in range(400)]
    salts, first_lanes = [], []
    for version in ("v2", "v3"):
        dep = rollouts.start_canary(conn, "payments", version, weight="30", actor="test",
                                    allow_schema_change=True, force=True)
        cfg = queue_config.read_config(conn, "payments")
        assert cfg.salt == dep.salt and len(dep.salt) == 8
        lanes = [p.enqueue("payments", {}, sticky_key=k).lane for k in keys]
        again = [p.enqueue("payments", {}, sticky_key=k).lane for k in keys]
        assert lanes == again  # sticky within the deployment
        assert lanes == ["canary" if sticky_bucket(k, dep.salt) < 3000 else "stable"
                         for k in keys]
        salts.append(dep.salt)
        first_lanes.append({k for k, lane in zip(keys, lanes, strict=True) if lane == "canary"})
        rollouts.rollback(conn, "payments", actor="test")
    assert salts[0] != salts[1]
    assert first_lanes[0] != first_lanes[1]  # other customers go first
    pinned = rollouts.ramp(conn, "payments", "v4", {**PLAN, "salt": "fixed"}, actor="test",
                           allow_schema_change=True, force=True)
    assert pinned.salt == "fixed" == queue_config.read_config(conn, "payments").salt
    rollouts.rollback(conn, "payments", actor="test")
    assert rollouts.start_canary(conn, "payments", "v5", salt="", actor="test",
                                 allow_schema_change=True, force=True).salt == ""


def test_event_log_is_a_capped_list_with_stable_ids(queue) -> None:
    """Issue 15: the event log is a list ("<seq> <JSON>", newest first), not a stream (4 KB at
    its first entry); ids stay stable and ``after`` returns exactly the newer events, in order,
    ``count`` at a time."""
    conn = queue
    dep = rollouts.ramp(conn, "payments", "v2", PLAN, actor="test", force=True)
    for i in range(6):
        deployments.update(conn, dep, {}, now=1_000 + i, ev=deployments.event(
            "note", f"n{i}", actor="t", now=1_000 + i))
    key = conn.keys.queue("payments").events(dep.id)
    assert conn.client.type(key) == "list" and conn.client.llen(key) == 7
    evs = deployments.events(conn, "payments", dep.id)
    assert [e["message"] for e in evs[1:]] == [f"n{i}" for i in range(6)]
    assert [e["id"].split("-")[1] for e in evs] == [str(i) for i in range(1, 8)]
    assert evs[3]["id"] == "1002-4"
    newer = deployments.events(conn, "payments", dep.id, after=evs[3]["id"], count=2)
    assert [e["message"] for e in newer] == ["n3", "n4"]
    assert deployments.events(conn, "payments", dep.id, after=evs[-1]["id"]) == []
    assert deployments.events(conn, "payments", dep.id, count=2) == evs[-2:]


def test_event_log_of_an_older_deployment_stream_is_still_read_and_written(queue) -> None:
    """A deployment started before issue 15 keeps its stream log: read by XRANGE, appended to
    by XADD."""
    conn = queue
    dep = rollouts.ramp(conn, "payments", "v2", PLAN, actor="test", force=True)
    key = conn.keys.queue("payments").events(dep.id)
    first = conn.client.lindex(key, 0).split(" ", 1)[1]
    conn.client.delete(key)
    conn.client.xadd(key, {"e": first})
    deployments.update(conn, dep, {}, now=5, ev=deployments.event("note", "later", actor="t",
                                                                  now=5))
    assert conn.client.type(key) == "stream"
    evs = deployments.events(conn, "payments", dep.id)
    assert [e["type"] for e in evs] == ["started", "note"]
    assert deployments.events(conn, "payments", dep.id, after=evs[0]["id"])[0]["message"] == \
        "later"


def test_event_log_after_an_id_the_cap_dropped_resumes_at_the_oldest_kept(queue) -> None:
    """A follower whose last id was trimmed away (more than 2000 events since) gets the oldest
    kept ones next, in order, never nothing forever."""
    conn = queue
    dep = rollouts.ramp(conn, "payments", "v2", PLAN, actor="test", force=True)
    key = conn.keys.queue("payments").events(dep.id)
    kept = deployments.EVENTS_KEPT
    conn.client.delete(key)
    entries = [f'{n} {{"ts":{n},"type":"note","message":"m{n}"}}'
               for n in range(1000 + kept, 1000, -1)]
    for i in range(0, len(entries), 500):
        conn.client.rpush(key, *entries[i:i + 500])  # newest first, seq 1001..3000 kept
    got = deployments.events(conn, "payments", dep.id, after="5-5", count=3)
    assert [e["message"] for e in got] == ["m1001", "m1002", "m1003"]
    got = deployments.events(conn, "payments", dep.id, after=got[-1]["id"], count=2)
    assert [e["id"] for e in got] == ["1004-1004", "1005-1005"]
    assert deployments.events(conn, "payments", dep.id, after="3000-3000") == []


def test_a_long_deployment_id_stays_in_the_deployment_hash(queue) -> None:
    """Only free-form values move to deployment:large: the id (long with a long queue name)
    stays where the scripts, /metrics and status read it, and the outbox entry names it."""
    conn = queue
    q = "q" * 120
    service.configure_queue(conn, q, stable_version="v1")
    dep = rollouts.ramp(conn, q, "v2", PLAN, actor="test", force=True)
    qk = conn.keys.queue(q)
    assert len(dep.id) > 64 and conn.client.hget(qk.deployment, "id") == dep.id
    assert "plan" in conn.client.hgetall(qk.deployment_large)
    (entry,) = conn.client.xrange(qk.outbox)
    assert entry[1]["deployment"] == dep.id
