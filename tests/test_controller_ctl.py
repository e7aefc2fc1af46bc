"""The controller's compact state (issue 15 item 2): the per-check fields live in one `ctl`
field, and a controller that wrote it last does not decode it again (its analysis state is
still rebuilt from the stored dict, as a restarted controller would: float sums then run in
the same order, bit for bit). The shortcut must change nothing: the same traffic checked by
one long-lived controller and by a fresh controller per tick (which decodes everything) gives
the same records, verdicts and state, check for check, through a pause and a rollback, on
real Redis."""

from __future__ import annotations

import random
from typing import Any

import pytest

from pycanary import deployments, metrics, registry, rollouts, service
from pycanary.controller import Controller
from pycanary.deployments import CorruptDeploymentError, Deployment
from pycanary.job import Envelope

PLAN = {
    "stages": [{"percentage": 10, "duration": "2m", "auto_promote": True,
                "conditions": {"max_error_rate": 5, "max_latency_increase": 50}},
               {"percentage": 30, "duration": "5m", "auto_promote": False,
                "conditions": {"max_error_rate": 5}}],
    "interval": "30s", "min_samples": 20, "failure_threshold": 2,
    "on_inconclusive": "pause", "inconclusive_checks": 2,
}
VERSIONS = {"stable": "v1", "canary": "v2"}


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _feed(conn, queue: str, rng: random.Random, tick: int) -> None:
    """One interval of outcomes through the real ack/fail scripts, as a worker sends them."""
    qk = conn.keys.queue(queue)
    slot = metrics.slot_of(registry.now_ms())
    for lane, n in (("stable", 90), ("canary", 10 + tick % 3)):
        v = VERSIONS[lane]
        wid = f"w-{v}"
        envs = [Envelope(id=f"{lane}-{tick}-{i}", queue=queue, payload={}, tenant=None,
                         sticky_key=None, attempts=0, enqueued_at=1).encode()
                for i in range(n)]
        conn.client.lpush(qk.processing(wid), *envs)
        ok: list[Any] = [3600]
        failed: list[Any] = [3600]
        for i, env in enumerate(envs):
            run_b, wait_b = rng.randrange(20, 60), rng.randrange(0, 90)
            unit = metrics.unit_of(f"{lane}-{tick}-{i}", None, None)
            if rng.random() < (0.5 if lane == "canary" and tick >= 10 else 0.03):
                failed += [env, "dead", '{"dead":1}', "", run_b, wait_b, "", "1", unit]
            else:
                ok += [env, run_b, wait_b, rng.randrange(0, 30), "1", unit]
        if len(ok) > 1:
            conn.scripts.call("ack_jobs", qk.ack_keys(wid, v, lane, slot), ok)
        if len(failed) > 1:
            conn.scripts.call("fail_jobs", qk.fail_keys(wid, v, lane, slot), failed)


def _run(conn, queue: str, *, fresh_each_tick: bool, ticks: int = 14) -> list[Any]:
    service.configure_queue(conn, queue, stable_version="v1")
    clock = Clock(1_800_000_000.0)
    rollouts.ramp(conn, queue, "v2", PLAN, allow_schema_change=True, actor="t", force=True,
                  now_ms=int(clock() * 1000), salt="00c0ffee")
    for v, lane in VERSIONS.items():
        registry.heartbeat(conn, f"w-{v}", version=v, queues={queue: lane},
                           info={"state": "active"}, ttl_ms=600_000)
    ctl = Controller(conn, clock=clock)
    rng = random.Random(20)
    seen: list[Any] = []
    for tick in range(ticks):
        if fresh_each_tick:
            ctl = Controller(conn, clock=clock)
        _feed(conn, queue, rng, tick)
        clock.t += 30
        ctl.tick()
        dep = deployments.get(conn, queue)
        assert dep is not None
        seen.append((dep.state, dep.stage, dep.weight_bp, dep.analysis_state, dep.last_analysis,
                     dep.last_decision, {k: v for k, v in dep.totals.items()}))
    records = deployments.analyses(conn, queue, dep.id, count=50)
    return [seen, records]


def test_cached_and_fresh_controllers_decide_the_same(real_conn) -> None:
    long_lived = _run(real_conn, "cached", fresh_each_tick=False)
    fresh = _run(real_conn, "fresh", fresh_each_tick=True)
    assert long_lived == fresh
    states = [s[0] for s in long_lived[0]]
    # checked while active, paused by on_inconclusive, rolled back once the canary fails
    assert {"active", "paused"} <= set(states) and states[-1] == "rolled_back", states
    rec = long_lived[1][0]
    assert set(rec) == {"ts", "stage", "analysis", "decision"}
    assert set(rec["analysis"]) == {"verdict", "reason", "decisive", "fail_streak", "rules"}
    assert set(rec["decision"]) == {"action", "reason", "cause", "next_stage"}


def test_ctl_is_one_compressed_field_and_a_corrupt_one_names_itself(real_conn) -> None:
    conn = real_conn
    _run(conn, "payments", fresh_each_tick=False, ticks=2)
    qk = conn.keys.queue("payments")
    small, large = conn.client.hgetall(qk.deployment), conn.client.hgetall(qk.deployment_large)
    # the long values (plan, ctl) live in deployment:large: the deployment hash is a listpack
    assert {"plan", "ctl"} <= set(large) and not set(large) & set(small), (small, large)
    assert all(len(v) <= 64 for v in small.values())
    assert conn.client.object("encoding", qk.deployment) == "listpack"
    raw = deployments.merged(small, large)
    assert raw["ctl"].startswith("z2:")
    assert not set(deployments.CTL_FIELDS) & set(raw)
    ctl = deployments.decode_ctl(raw["ctl"])
    assert set(ctl) == set(deployments.CTL_FIELDS)
    assert ctl["last_analysis"]["verdict"] in ("PASS", "FAIL", "INCONCLUSIVE")
    # plain JSON is read too (a person may write it), garbage is reported by field
    plain = dict(raw, ctl=deployments.json.dumps(ctl))
    assert Deployment.from_hash("payments", plain).last_analysis == ctl["last_analysis"]
    with pytest.raises(CorruptDeploymentError) as exc:
        Deployment.from_hash("payments", dict(raw, ctl="z2:not base64!"))
    assert exc.value.field == "ctl"


def test_ctl_forms_z1_and_z2_read_the_same_and_the_dictionary_is_frozen() -> None:
    """z2 (preset dictionary, issue 15) is what is written; z1 (plain zlib, written before it)
    is still read. The dictionary is part of the stored format: changing it would make every
    stored z2 value unreadable, so its digest is pinned here."""
    import base64
    import hashlib
    import json
    import zlib

    value = {"totals": {"stable": {"r12": "40", "n1||3": "7"}, "routed": {"stable": 9}},
             "analysis_state": {"v": 2, "err_s": -1.043053188641424, "checks": 19},
             "last_analysis": {"verdict": "PASS", "rules": []}, "last_decision": None,
             "last_data_at": {"stable": 1}}
    z2 = deployments.encode_ctl(value)
    z1 = "z1:" + base64.b64encode(zlib.compress(json.dumps(value).encode(), 1)).decode()
    assert z2.startswith("z2:") and len(z2) < len(z1)
    assert deployments.decode_ctl(z2) == deployments.decode_ctl(z1) == value
    assert hashlib.sha256(deployments._CTL_ZDICT_V2).hexdigest() == \
        "914247153e08ec5b6863bef48a0716c234a1e33bae2507e65dd2827f3463a84b"
    with pytest.raises(zlib.error):  # a z2 value is not plain zlib
        zlib.decompress(base64.b64decode(z2[3:]))


def test_a_deployment_written_before_the_split_moves_its_long_values_on_the_next_write(
        real_conn) -> None:
    """Before issue 15 plan and ctl sat in the deployment hash itself: such a hash reads as
    before, and its next write moves a long value to deployment:large (and a value that became
    short back), each field in one of the two."""
    conn = real_conn
    _run(conn, "payments", fresh_each_tick=False, ticks=2)
    qk = conn.keys.queue("payments")
    c = conn.client
    before = deployments.get(conn, "payments")
    old = deployments.merged(c.hgetall(qk.deployment), c.hgetall(qk.deployment_large))
    c.delete(qk.deployment_large)
    c.hset(qk.deployment, mapping=old)  # the old layout: one hash
    dep = deployments.get(conn, "payments")
    assert dep is not None and dep.plan_raw == before.plan_raw
    assert dep.last_analysis == before.last_analysis
    deployments.update(conn, dep, {"reason": "r" * 80, "last_decision": {"action": "hold"}},
                       now=1)
    small, large = c.hgetall(qk.deployment), c.hgetall(qk.deployment_large)
    assert {"ctl", "reason"} <= set(large) and "ctl" not in small and "reason" not in small
    deployments.update(conn, dep, {"reason": "short"}, now=2)
    small, large = c.hgetall(qk.deployment), c.hgetall(qk.deployment_large)
    assert small["reason"] == "short" and "reason" not in large
    assert deployments.get(conn, "payments").last_decision == {"action": "hold"}
