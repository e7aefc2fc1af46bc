"""The integrations' shared pieces on fakeredis and real Redis: the lane decision agrees with
pycanary's routing contract and counts `routed`; outcomes land in the fields the controller
reads; a bound queue's drain moves the broker's own messages in order; a worker's state
follows the rollout (docs/integrations.md)."""

from __future__ import annotations

import json

import pytest

from pycanary import drain, metrics, queue_config, rollouts
from pycanary.errors import ValidationError
from pycanary.integrations import core
from pycanary.routing import sticky_bucket


def _salt(conn) -> str:
    return conn.client.hget(conn.keys.queue("payments").config, "salt") or ""


def test_decide_follows_the_sticky_contract_and_counts_routed(conn) -> None:
    queue_config.configure(conn, "payments", stable_version="v1")
    queue_config.set_weight(conn, "payments", 3000)
    salt = _salt(conn)
    lanes = {}
    for i in range(300):
        key = f"order-{i}"
        d = core.decide(conn, "payments", key)
        assert d.lane == ("canary" if sticky_bucket(key, salt) < 3000 else "stable"), key
        lanes[key] = d.lane
    routed = conn.client.hgetall(conn.keys.queue("payments").routed)
    assert int(routed["canary"]) == sum(v == "canary" for v in lanes.values()) > 0
    assert int(routed["stable"]) == sum(v == "stable" for v in lanes.values()) > 0
    # monotone ramp: a key on canary at 30% stays there at 60%
    queue_config.set_weight(conn, "payments", 6000)
    for key, lane in lanes.items():
        if lane == "canary":
            assert core.decide(conn, "payments", key).lane == "canary"
    # weight 0: stable for the very next decision
    queue_config.set_weight(conn, "payments", 0)
    assert {core.decide(conn, "payments", k).lane for k in lanes} == {"stable"}


def test_decide_honours_a_tenant_override(conn) -> None:
    queue_config.configure(conn, "payments", stable_version="v1")
    queue_config.set_weight(conn, "payments", 0)
    queue_config.set_weight(conn, "payments", 10_000, tenant="internal")
    assert core.decide(conn, "payments", "k", "internal").lane == "canary"
    assert core.decide(conn, "payments", "k", "acme").lane == "stable"


def test_record_counts_what_ack_and_fail_would(conn) -> None:
    attempts = [core.Attempt("ok", 1500, True, "|3"), core.Attempt("ok", 2500, False),
                core.Attempt("retry", 900, True, "|4"), core.Attempt("dead", 800, False),
                core.Attempt("crashed", None, True, "|5")]
    assert core.record(conn, "payments", "v2", "canary", attempts) == 5
    f = metrics.read_totals(conn, "payments", "v2", "canary")
    c = f.counts
    assert (c["ok"], c["failed"], c["retried"], c["dead"], c["crashed"]) == (2, 3, 1, 1, 1)
    assert (c["first_attempts"], c["first_failed"]) == (3, 2)
    assert sum(f.run_hist.values()) == 4  # the crash has no run time
    assert list(f.units["|4"]) == [1, 1] and list(f.units["|3"]) == [1, 0]


def test_record_refuses_a_bad_outcome_and_writes_nothing(conn) -> None:
    with pytest.raises(ValidationError):
        core.record(conn, "payments", "v2", "canary", [core.Attempt("maybe", 1, True)])
    assert not conn.client.exists(conn.keys.queue("payments").metrics_total("v2", "canary"))


def _kombu(task_id: str, queue: str) -> str:
    """A kombu message as the Redis transport stores it (the parts drain_broker looks at)."""
    return json.dumps({"body": "W10=", "headers": {"id": task_id, "argsrepr": "('x',)"},
                       "properties": {"delivery_info": {"exchange": "", "routing_key": queue},
                                      "delivery_tag": task_id}})


def test_drain_moves_celery_messages_in_order_and_renames_their_queue(conn) -> None:
    queue_config.configure(conn, "payments", stable_version="v1")
    p = conn.keys.prefix
    stable, canary = f"{p}:celery:payments", f"{p}:celery:payments.canary"
    core.bind(conn, "payments", kind="celery", stable_key=stable, canary_key=canary,
              stable_name="payments", canary_name="payments.canary")
    for i in range(5):  # kombu LPUSHes; BRPOP takes from the right
        conn.client.lpush(stable, _kombu(f"s{i}", "payments"))
    for i in range(1203):
        conn.client.lpush(canary, _kombu(f"c{i}", "payments.canary"))
    report = drain.drain_lane(conn, "payments", batch=100)
    assert report.complete and report.moved == 1203
    assert conn.client.llen(canary) == 0
    taken = [json.loads(m) for m in reversed(conn.client.lrange(stable, 0, -1))]
    ids = [m["headers"]["id"] for m in taken]
    # drained messages next, oldest first, then the stable ones already waiting
    assert ids == [f"c{i}" for i in range(1203)] + [f"s{i}" for i in range(5)]
    assert {m["properties"]["delivery_info"]["routing_key"] for m in taken} == {"payments"}


def test_drain_moves_rq_job_ids_in_order(conn) -> None:
    queue_config.configure(conn, "payments", stable_version="v1")
    p = conn.keys.prefix
    stable, canary = f"{p}:rq:queue:payments", f"{p}:rq:queue:payments.canary"
    core.bind(conn, "payments", kind="rq", stable_key=stable, canary_key=canary,
              stable_name="payments", canary_name="payments.canary")
    conn.client.rpush(stable, "s0", "s1")  # RQ RPUSHes; workers take from the left
    conn.client.rpush(canary, *[f"c{i}" for i in range(250)])
    assert drain.drain_lane(conn, "payments", batch=64).moved == 250
    assert conn.client.lrange(stable, 0, -1) == [f"c{i}" for i in range(250)] + ["s0", "s1"]


def test_an_unbound_queue_drains_as_before(conn) -> None:
    qk = conn.keys.queue("payments")
    conn.client.lpush(qk.lane_canary, "a", "b")
    r = drain.drain_lane(conn, "payments")
    assert (r.moved, r.calls) == (2, 1)


def test_bind_refuses_the_same_list_for_both_lanes(conn) -> None:
    with pytest.raises(ValidationError):
        core.bind(conn, "payments", kind="celery", stable_key="x", canary_key="x",
                  stable_name="payments", canary_name="payments.canary")


def test_a_worker_state_follows_the_rollout(conn) -> None:
    queue_config.configure(conn, "payments", stable_version="v1")
    assert core.assignment(conn, "payments", "v2", consumes="canary").state == "standby"
    assert core.assignment(conn, "payments", "v1", consumes="stable").state == "active"
    # a v1 worker on the canary list is not counted there
    assert core.assignment(conn, "payments", "v1", consumes="canary").lane is None
    agent = core.Agent(conn, "v2", {"payments": "canary"}, kind="celery", heartbeat_s=1)
    agent.beat()
    assert rollouts.canary_consumers(conn, "payments", "v2")  # the ramp's preflight sees it
    rollouts.start_canary(conn, "payments", "v2", weight="10")
    a = core.assignment(conn, "payments", "v2", consumes="canary")
    assert (a.lane, a.state) == ("canary", "active")
    rollouts.rollback(conn, "payments", reason="test")
    assert core.assignment(conn, "payments", "v2", consumes="canary").state == "retiring"
    agent.stop()


def test_an_unconfigured_queue_adopts_a_stable_worker_version(conn) -> None:
    assert core.assignment(conn, "payments", "v7", consumes="stable").state == "active"
    assert queue_config.read_config(conn, "payments").stable_version == "v7"


def test_a_bound_queue_reports_the_broker_backlog(conn) -> None:
    """status / `queue show` depths (and the controller's backlog, through the same helper)
    count the messages waiting in the broker's lists."""
    from pycanary import service

    queue_config.configure(conn, "payments", stable_version="v1")
    p = conn.keys.prefix
    core.bind(conn, "payments", kind="rq", stable_key=f"{p}:rq:s", canary_key=f"{p}:rq:c",
              stable_name="payments", canary_name="payments.canary")
    conn.client.rpush(f"{p}:rq:s", "a", "b", "c")
    conn.client.rpush(f"{p}:rq:c", "d")
    conn.client.lpush(conn.keys.queue("payments").lane_stable, "{}")
    depth, _ = service.lanes_of(conn, "payments")
    assert depth == {"stable": 4, "canary": 1}
    assert drain.broker_backlogs(conn, {"payments": conn.client.hgetall(
        conn.keys.queue("payments").broker), "other": {}}) == {
        ("payments", "stable"): 3, ("payments", "canary"): 1}
    # and the /metrics depth gauge, the same figures
    from prometheus_client.parser import text_string_to_metric_families

    from pycanary import prom

    text = prom.render(conn).decode()
    got = {s.labels["lane"]: s.value for fam in text_string_to_metric_families(text)
           if fam.name == "pycanary_queue_depth" for s in fam.samples
           if s.labels.get("queue") == "payments"}
    assert got == {"stable": 4.0, "canary": 1.0}
