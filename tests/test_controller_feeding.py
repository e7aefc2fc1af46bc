"""What the controller feeds the analysis (issue 10 items 2, 4, 5; issue 11 item 3), on a real
Redis: the job-level counts, crashed attempts, analysis units, routed jobs, the weight in
force, CPU and RSS come from the running totals and the registry exactly; a paused deployment
is still checked and a failing check rolls it back; a `pause` decision pauses it with the
reason. Outcomes are written by the real ack/fail/requeue scripts (as a worker and the reaper
do), so each window holds exactly what the test decides."""

from __future__ import annotations

import enum
from dataclasses import replace
from typing import Any

import pytest

from pycanary import controller as controller_mod
from pycanary import deployments, metrics, registry, rollouts, service
from pycanary.analysis import LaneStats
from pycanary.controller import Controller, strata_weights
from pycanary.job import Envelope
from pycanary.producer import Producer

Q = "payments"
PLAN = {
    "stages": [{"percentage": 10, "duration": "10m", "auto_promote": True,
                "conditions": {"max_error_rate": 5}}],
    "interval": "30s", "min_samples": 50, "failure_threshold": 1, "tenants": {"acme": 50},
}


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _env(job_id: str, *, attempts: int = 0, tenant: str | None = None,
         sticky: str | None = None) -> str:
    return Envelope(id=job_id, queue=Q, payload={}, tenant=tenant, sticky_key=sticky,
                    attempts=attempts, enqueued_at=1).encode()


def record(conn, version: str, lane: str, *, ok: list[str] = (), failed: list[str] = (),
           strata: frozenset[str] = frozenset(), cpu_bucket: int = 40) -> None:
    """Ack and fail envelopes through the real scripts, with the fields a worker sends."""
    qk = conn.keys.queue(Q)
    wid = f"w-{version}"
    slot = metrics.slot_of(registry.now_ms())
    if ok or failed:
        conn.client.lpush(qk.processing(wid), *ok, *failed)

    def fields(raw: str) -> list[Any]:
        e = Envelope.decode(raw)
        return [cpu_bucket, "1" if e.attempts == 0 else "0",
                metrics.unit_of(e.id, e.sticky_key, e.tenant, strata)]

    if ok:
        args: list[Any] = [3600]
        for raw in ok:
            args += [raw, 30, 20, *fields(raw)]
        assert conn.scripts.call("ack_jobs", qk.ack_keys(wid, version, lane, slot),
                                 args) == [len(ok), 0]
    if failed:
        args = [3600]
        for raw in failed:
            args += [raw, "dead", '{"dead":1}', "", 30, 20, *fields(raw)]
        assert conn.scripts.call("fail_jobs", qk.fail_keys(wid, version, lane, slot),
                                 args) == [len(failed), 0]


@pytest.fixture
def seen(monkeypatch) -> list[dict[str, Any]]:
    """Every evaluate() call of the controller, with its arguments."""
    calls: list[dict[str, Any]] = []
    real = controller_mod.evaluate

    def spy(stage, plan, stable, canary, state, now_s, **kw):
        calls.append({"stable": stable, "canary": canary, **kw})
        return real(stage, plan, stable, canary, state, now_s)

    monkeypatch.setattr(controller_mod, "evaluate", spy)
    monkeypatch.setattr(controller_mod, "_EVALUATE_TAKES_STRATA", True)
    return calls


def _start(conn, clock: Clock) -> Controller:
    service.configure_queue(conn, Q, stable_version="v1")
    rollouts.ramp(conn, Q, "v2", PLAN, allow_schema_change=True, actor="t", force=True,
                  now_ms=int(clock() * 1000))
    ctl = Controller(conn, clock=clock)
    assert "baseline" in ctl.tick().actions[0]
    return ctl


def test_lane_stats_carry_job_level_counts_units_routed_weight_cpu_rss(real_conn,
                                                                      seen) -> None:
    conn = real_conn
    clock = Clock(1_800_000_000.0)
    ctl = _start(conn, clock)
    qk = conn.keys.queue(Q)
    # traffic routed in the window: what route_enqueue counts per lane
    lanes = [Producer(conn).enqueue(Q, {}, job_id=f"r{i}").lane for i in range(60)]
    strata = frozenset({"acme"})
    record(conn, "v1", "stable", ok=[_env(f"s{i}") for i in range(30)],
           failed=[_env("sf1"), _env("sf2", attempts=1)], strata=strata)
    record(conn, "v2", "canary", ok=[_env(f"c{i}", tenant="acme", sticky="k1") for i in range(5)]
           + [_env("c-retry", attempts=2)], failed=[_env("cf", tenant="other")], strata=strata,
           cpu_bucket=45)
    # a canary worker dies running one job (first attempt) and holding another unstarted
    running = _env("crash-1", tenant="acme", sticky="k1")
    conn.client.lpush(qk.processing("w-dead"), _env("unstarted"), running)
    conn.client.hset(qk.running("w-dead"), running,
                     f"1 {metrics.unit_of('crash-1', 'k1', 'acme', strata)}")
    registry.heartbeat(conn, "w-dead", version="v2", queues={Q: "canary"}, info={},
                       ttl_ms=300, now=1)
    assert registry.reap(conn, queues=[Q]).crashed == 1
    # live workers report their memory
    for wid, version, lane, rss in (("a", "v1", "stable", 100), ("b", "v1", "stable", 50),
                                    ("c", "v2", "canary", 70)):
        registry.heartbeat(conn, wid, version=version, queues={Q: lane},
                           info={"state": "active", "rss": rss}, ttl_ms=60_000)
    clock.t += 31
    ctl.tick()
    call = seen[-1]
    st: LaneStats = call["stable"]
    ca: LaneStats = call["canary"]
    assert (st.ok, st.failed, st.first_attempts, st.first_failed, st.crashed) == (30, 2, 31, 1, 0)
    assert (ca.ok, ca.failed, ca.first_attempts, ca.first_failed, ca.crashed) == (6, 2, 7, 2, 1)
    k1 = metrics.unit_of("x", "k1", "acme", strata)
    assert k1.startswith("acme|")
    assert ca.units == {k1: (6, 1), metrics.unit_of("cf", None, "other", strata): (1, 1)}
    assert sum(n for n, _ in st.units.values()) == st.first_attempts
    assert sum(x for _, x in st.units.values()) == st.first_failed
    assert (st.routed, ca.routed) == (lanes.count("stable"), lanes.count("canary"))
    assert st.weight_bp == ca.weight_bp == 1000
    assert st.cpu_hist == {40: 32} and ca.cpu_hist == {45: 7}  # crashes have no CPU time
    assert (st.rss_bytes, ca.rss_bytes) == (150, 70)
    assert call["strata_weights"] == {"": 1000, "acme": 5000}
    # the next window holds only what came after: nothing
    clock.t += 31
    ctl.tick()
    nxt = seen[-1]["canary"]
    assert (nxt.first_attempts, nxt.crashed, nxt.units, nxt.routed, nxt.cpu_hist) == (
        0, 0, {}, 0, {})


def test_strata_weights_follow_the_deployment() -> None:
    dep = deployments.Deployment(id="d", queue=Q, stable_version="v1", canary_version="v2",
                                 state="active", plan_raw={}, weight_bp=500,
                                 tenants_bp={"acme": 10000, "bigbank": 0})
    assert strata_weights(dep) == {"": 500, "acme": 10000, "bigbank": 0}


def test_a_paused_deployment_is_still_checked_and_a_failing_check_rolls_it_back(
        real_conn, seen) -> None:
    conn = real_conn
    clock = Clock(1_800_000_000.0)
    ctl = _start(conn, clock)
    rollouts.pause(conn, Q, actor="t", now_ms=int(clock() * 1000))
    # healthy while paused: checked, nothing acted on, even after the stage's time
    record(conn, "v1", "stable", ok=[_env(f"s{i}") for i in range(100)])
    record(conn, "v2", "canary", ok=[_env(f"c{i}") for i in range(100)])
    clock.t += 700
    ctl.tick()
    dep = deployments.get(conn, Q)
    assert len(seen) == 1 and (dep.state, dep.stage, dep.weight_bp) == ("paused", 0, 1000)
    assert dep.last_analysis is not None
    # the canary starts failing every job: the next check rolls back, paused or not
    record(conn, "v1", "stable", ok=[_env(f"s2-{i}") for i in range(100)])
    record(conn, "v2", "canary", failed=[_env(f"f{i}") for i in range(100)])
    clock.t += 31
    ctl.tick()
    dep = deployments.get(conn, Q)
    assert dep.state in ("rolling_back", "rolled_back"), dep.state
    assert conn.client.hget(conn.keys.queue(Q).config, "weight_bp") == "0"


class _Act(enum.StrEnum):
    PAUSE = "pause"


def test_a_pause_decision_pauses_the_deployment_with_its_reason(real_conn, monkeypatch) -> None:
    conn = real_conn
    clock = Clock(1_800_000_000.0)
    ctl = _start(conn, clock)
    real = controller_mod.decide

    def pausing(*a, **kw):
        d = real(*a, **kw)
        return replace(d, action=_Act.PAUSE, reason="3 inconclusive checks", cause="analysis")

    monkeypatch.setattr(controller_mod, "decide", pausing)
    clock.t += 31
    ctl.tick()
    dep = deployments.get(conn, Q)
    assert dep.state == "paused" and dep.paused_at == int(clock.t * 1000)
    assert dep.meta["paused_from"] == "active"
    ev = [e for e in deployments.events(conn, Q, dep.id, count=20) if e["type"] == "paused"]
    assert len(ev) == 1 and "3 inconclusive checks" in ev[0]["message"]
    # resume returns it to where it was, as after an operator's pause
    rollouts.resume(conn, Q, actor="t", now_ms=int(clock.t * 1000) + 5_000)
    assert deployments.get(conn, Q).state == "active"


def test_status_shows_cpu_per_job_and_rss_of_both_lanes(real_conn) -> None:
    """Issue 11 item 3: status puts both versions' CPU per job (p50/p95) and live memory
    side by side."""
    from pycanary import histogram

    conn = real_conn
    clock = Clock(1_800_000_000.0)
    _start(conn, clock)
    record(conn, "v1", "stable", ok=[_env(f"s{i}") for i in range(20)], cpu_bucket=40)
    record(conn, "v2", "canary", ok=[_env(f"c{i}") for i in range(20)], cpu_bucket=60)
    for wid, version, lane, rss in (("a", "v1", "stable", 100), ("b", "v1", "stable", 50),
                                    ("c", "v2", "canary", 70)):
        registry.heartbeat(conn, wid, version=version, queues={Q: lane},
                           info={"state": "active", "rss": rss}, ttl_ms=60_000)
    registry.heartbeat(conn, "gone", version="v2", queues={Q: "canary"},
                       info={"state": "active", "rss": 999}, ttl_ms=300, now=1)  # dead
    (row,) = rollouts.status(conn, Q)
    lanes = row["lanes"]
    for lane, b in (("stable", 40), ("canary", 60)):
        # status reads the slots: CPU there is one bucket per pair (issue 15)
        want = {p: round(histogram.quantile({metrics.slot_pair_bucket(b): 20}, q) / 1000, 3)
                for p, q in (("p50", 0.5), ("p95", 0.95))}
        assert lanes[lane]["cpu_ms"] == want
    assert lanes["canary"]["cpu_ms"]["p50"] > lanes["stable"]["cpu_ms"]["p50"]
    assert (lanes["stable"]["rss_bytes"], lanes["canary"]["rss_bytes"]) == (150, 70)
