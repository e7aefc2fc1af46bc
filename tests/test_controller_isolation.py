"""One bad record never stops the rest (issue 8): the controller tick isolates each deployment.

A tick over seven queues, five of them broken in a different way (a name that is no queue name
in deployments:active, a fence that is not a number, a plan that is not JSON, an analysis state
that is not JSON, a metrics key of the wrong type) and one whose next stage is refused by the
max_weight guard: the one healthy queue whose deadline passed is rolled back and drained in
the same tick, and every broken one is reported (TickReport.errors, the errors hash read by
status, one event on the deployment, the Prometheus counter), once per tick for the counter
and once per new error for the event.

Also here: an operator's rollback whose drain fails afterwards is reported as done with the
drain pending (not as a failed rollback), and the controller finishes it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pycanary import controller as controller_mod
from pycanary import deployments, prom, queue_config, rollouts, service
from pycanary.controller import Controller
from pycanary.errors import MaxWeightBelowWeightError
from pycanary.leader import Leadership
from pycanary.producer import Producer
from tests.conftest import REAL_URL

T0 = 1_800_000_000.0

#: Rolled back by its deadline at the second check (no data needed).
DEADLINE_PLAN = {"canary_config": {"interval": "1s", "deadline": "1m", "stages": [
    {"percentage": 10, "duration": "1m"}]}}
#: Stage 0 passes with no data and steps to 50% after 1 s: a timed ramp (every check off), the
#: only plan in which no data may pass (issue 10).
STEP_PLAN = {"canary_config": {"interval": "1s", "on_no_data": "pass",
                               "statistical": {"enabled": False}, "stages": [
    {"percentage": 5, "duration": "1s", "auto_promote": True},
    {"percentage": 50, "duration": "1m"}]}}

BROKEN = {
    "bad{name}": "invalid_queue_name",
    "badfence": "fence",
    "corruptplan": "corrupt_deployment",
    "corruptstate": "corrupt_deployment",
    "badstate": "corrupt_deployment",
    "wrongtype": "snapshot",
    "refused": "weight_above_max",
}


def ramp(conn, queue: str, plan: dict) -> deployments.Deployment:
    service.configure_queue(conn, queue, stable_version="v1")
    return rollouts.ramp(conn, queue, "v2", plan, actor="test", now_ms=int(T0 * 1000), force=True)


def errors_total(conn) -> dict[tuple[str, str], float]:
    out = {}
    for fam in text_string_to_metric_families(prom.render(conn).decode()):
        if fam.name == "pycanary_controller_errors":
            for s in fam.samples:
                out[(s.labels["queue"], s.labels["reason"])] = s.value
    return out


def error_events(conn, queue: str, dep_id: str) -> list[dict]:
    return [e for e in deployments.events(conn, queue, dep_id, count=200)
            if e["type"] == "controller_error"]


def test_broken_deployments_are_reported_and_skipped_the_rest_goes_on(real_conn) -> None:
    conn = real_conn
    c = conn.client
    ramp(conn, "good", DEADLINE_PLAN)
    Producer(conn).enqueue_many("good", [{"n": i} for i in range(200)])
    canary_before = c.llen(conn.keys.queue("good").lane_canary)
    assert canary_before > 0
    deps = {q: ramp(conn, q, DEADLINE_PLAN)
            for q in ("badfence", "corruptplan", "corruptstate", "badstate", "wrongtype")}
    deps["refused"] = ramp(conn, "refused", STEP_PLAN)
    now = [T0]
    ctl = Controller(conn, clock=lambda: now[0],
                     leadership=Leadership(conn, lease_s=30, controller_id="ctl"))

    rep = ctl.tick()
    assert rep.leader and not rep.errors, rep
    assert sorted(rep.actions) == sorted(f"{q}: baseline taken"
                                         for q in ["good", *deps])
    # now break them (directly, as a bug or a hand edit would)
    c.sadd(conn.keys.active_deployments, "bad{name}")
    c.set(conn.keys.queue("badfence").fence, "abc")
    c.hset(conn.keys.queue("corruptplan").deployment, "plan", "{not json")
    c.hset(conn.keys.queue("corruptstate").deployment, "analysis_state", "{\"a\":")
    c.hset(conn.keys.queue("badstate").deployment, "state", "activ")  # not "finished"
    wrong = conn.keys.queue("wrongtype").metrics_total("v1", "stable")
    c.delete(wrong)
    c.set(wrong, "not a hash")
    # a max_weight below the next stage, set behind configure's back (configure refuses it)
    c.hset(conn.keys.queue("refused").config, "max_weight_bp", 1000)

    now[0] += 61  # past every deadline and the refused queue's stage 0
    rep = ctl.tick()
    assert {e["queue"]: e["reason"] for e in rep.errors} == BROKEN, rep
    # the healthy queue was rolled back and drained in the same tick
    assert rep.actions == ["good: rolled back: rolled_back"], rep
    final = deployments.get(conn, "good")
    assert (final.state, final.weight_bp, final.drain["moved"]) == (
        "rolled_back", 0, canary_before)
    assert c.llen(conn.keys.queue("good").lane_canary) == 0
    assert c.llen(conn.keys.queue("good").lane_stable) == 200
    assert queue_config.read_config(conn, "good").weight_bp == 0
    assert final.meta["rollback_rule"] == "deadline"
    # the refused step left the ramp where it was
    refused = deployments.get(conn, "refused")
    assert (refused.state, refused.stage, refused.weight_bp) == ("active", 0, 500)
    assert queue_config.read_config(conn, "refused").weight_bp == 500

    now[0] += 2
    rep = ctl.tick()
    assert {e["queue"]: e["reason"] for e in rep.errors} == BROKEN, rep

    # status shows every error, and a row for each queue, broken ones included
    rows = {r["queue"]: r for r in rollouts.status(conn)}
    assert set(rows) == {"good", *BROKEN}
    for q, reason in BROKEN.items():
        assert rows[q]["controller_error"]["reason"] == reason, rows[q]
    assert "is not a queue name" in rows["bad{name}"]["error"]
    assert rows["corruptplan"]["deployment"]["error"].startswith(
        "deployment of corruptplan: field plan:")
    assert rows["refused"]["deployment"]["last_error"]["reason"] == "weight_above_max"
    assert "above the queue's max_weight (10%)" in \
        rows["refused"]["deployment"]["last_error"]["message"]
    assert rows["good"]["controller_error"] is None
    assert rows["badstate"]["deployment"]["error"] == (
        "deployment of badstate: field state: unknown state 'activ'")
    assert c.sismember(conn.keys.active_deployments, "badstate"), "kept, not forgotten"
    # one event per deployment per new error (not one per tick)
    for q in ("corruptplan", "corruptstate", "wrongtype", "refused"):
        evs = error_events(conn, q, deps[q].id)
        assert [e["data"]["reason"] for e in evs] == [BROKEN[q]], (q, evs)
        assert evs[0]["actor"] == "ctl"
    # none where the scripts cannot write: a fence that is no number, a state that is no state
    assert error_events(conn, "badfence", deps["badfence"].id) == []
    assert error_events(conn, "badstate", deps["badstate"].id) == []
    # the counter: one per tick that skipped the queue
    assert errors_total(conn) == {(q, r): 2.0 for q, r in BROKEN.items()}

    # fixed: the next tick goes on from where it stopped, and the stored error is gone
    c.hset(conn.keys.queue("refused").config, "max_weight_bp", 10000)
    c.srem(conn.keys.active_deployments, "bad{name}")
    now[0] += 2
    rep = ctl.tick()
    assert "refused: stage 2 (50%)" in rep.actions, rep
    assert {e["queue"] for e in rep.errors} == set(BROKEN) - {"refused", "bad{name}"}
    stored = rollouts.controller_errors(conn)
    assert set(stored) == set(BROKEN) - {"refused", "bad{name}"}
    assert deployments.get(conn, "refused").weight_bp == 5000


def test_an_unexpected_error_in_one_check_is_that_deployments_alone(real_conn, monkeypatch,
                                                                   caplog) -> None:
    conn = real_conn
    ramp(conn, "good", DEADLINE_PLAN)
    ramp(conn, "buggy", DEADLINE_PLAN)
    now = [T0]
    ctl = Controller(conn, clock=lambda: now[0])
    ctl.tick()
    real_check = Controller._check

    def check(self, dep, snaps, now_s):
        if dep.queue == "buggy":
            raise ZeroDivisionError("a bug in the analysis")
        return real_check(self, dep, snaps, now_s)

    monkeypatch.setattr(Controller, "_check", check)
    now[0] += 61
    rep = ctl.tick()
    assert rep.actions == ["good: rolled back: rolled_back"]
    assert [(e["queue"], e["reason"], e["message"]) for e in rep.errors] == [
        ("buggy", "evaluation", "ZeroDivisionError: a bug in the analysis")]
    assert deployments.get(conn, "buggy").state == "active"
    skipped = [r for r in caplog.records if r.getMessage().startswith("deployment skipped")]
    assert [(r.levelname, r.exc_info is not None) for r in skipped] == [("ERROR", True)]
    assert skipped[0].fields == {"queue": "buggy", "reason": "evaluation",
                                 "deployment_id": deployments.get(conn, "buggy").id,
                                 "controller": "controller"}
    caplog.clear()
    caplog.set_level("DEBUG", logger="pycanary.controller")
    now[0] += 2
    assert [e["queue"] for e in ctl.tick().errors] == ["buggy"]
    skipped = [r for r in caplog.records if r.getMessage().startswith("deployment skipped")]
    assert [r.levelname for r in skipped] == ["DEBUG"], "a repeat is not logged loudly"


def test_configure_refuses_max_weight_below_a_stage_of_the_active_plan(conn) -> None:
    ramp(conn, "payments", STEP_PLAN)
    before = conn.client.hgetall(conn.keys.queue("payments").config)
    with pytest.raises(MaxWeightBelowWeightError) as err:
        service.configure_queue(conn, "payments", max_weight="49.99")
    assert err.value.field == "max_weight"
    assert "below stage 2 (50%)" in str(err.value)
    assert conn.client.hgetall(conn.keys.queue("payments").config) == before
    assert service.configure_queue(conn, "payments", max_weight="50").max_weight_bp == 5000
    # once the deployment is over, any max_weight at or above the weights in force goes
    rollouts.rollback(conn, "payments", actor="test")
    assert service.configure_queue(conn, "payments", max_weight="1").max_weight_bp == 100


def test_cli_configure_max_weight_below_a_stage_exits_2(real_conn) -> None:
    ramp(real_conn, "payments", STEP_PLAN)
    res = subprocess.run(
        [sys.executable, "-m", "pycanary.cli", "--redis-url", REAL_URL, "--prefix",
         real_conn.keys.prefix, "queue", "configure", "payments", "--max-weight", "20"],
        capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res
    assert res.stderr.strip().splitlines() == [
        res.stderr.strip()], "one line, no traceback"
    assert res.stderr.startswith("error: max_weight: 20% is below stage 2 (50%)"), res.stderr
    assert queue_config.read_config(real_conn, "payments").max_weight_bp == 10000


def test_rollback_whose_drain_fails_is_reported_done_and_finished_later(conn, monkeypatch
                                                                        ) -> None:
    dep = ramp(conn, "payments", DEADLINE_PLAN)
    Producer(conn).enqueue_many("payments", [{"n": i} for i in range(100)])
    in_canary = conn.client.llen(conn.keys.queue("payments").lane_canary)

    def broken_drain(*args, **kwargs):
        raise ConnectionError("Redis went away mid-drain")

    monkeypatch.setattr(controller_mod, "drain_lane", broken_drain)
    res = rollouts.rollback(conn, "payments", actor="test")
    assert (res["rollback"], res["state"], res["drain_complete"]) == (
        "done", "rolling_back", False)
    assert res["warning"].startswith("drain incomplete (ConnectionError: Redis went away")
    assert "the controller will finish it" in res["message"]
    assert queue_config.read_config(conn, "payments").weight_bp == 0
    monkeypatch.undo()
    rep = Controller(conn, clock=lambda: T0).tick()
    assert rep.actions == ["payments: rolled_back"] and not rep.errors
    final = deployments.get(conn, "payments")
    assert (final.id, final.state, final.drain["moved"]) == (dep.id, "rolled_back", in_canary)
    assert conn.client.llen(conn.keys.queue("payments").lane_stable) == 100


def test_rollback_reports_a_drain_cut_short(conn, monkeypatch) -> None:
    ramp(conn, "payments", DEADLINE_PLAN)
    Producer(conn).enqueue_many("payments", [{"n": i} for i in range(100)])
    real = controller_mod.drain_lane
    monkeypatch.setattr(controller_mod, "drain_lane",
                        lambda *a, **kw: real(*a, **{**kw, "batch": 1, "max_seconds": 1e-9}))
    res = rollouts.rollback(conn, "payments", actor="test")
    assert (res["rollback"], res["state"], res["drain_complete"]) == (
        "done", "rolling_back", False)
    assert res["warning"].startswith("drain incomplete (draining, ")
    assert json.dumps(res)  # plain data for --json


def test_controller_rollback_whose_drain_fails_reports_drain_pending(conn, monkeypatch) -> None:
    """The controller's own rollback: the weight change stands and is reported as done; the
    drain failure is an error of its own, and the next tick finishes the drain."""
    ramp(conn, "payments", DEADLINE_PLAN)
    Producer(conn).enqueue_many("payments", [{"n": i} for i in range(50)])
    now = [T0]
    ctl = Controller(conn, clock=lambda: now[0])
    ctl.tick()

    def broken_drain(*args, **kwargs):
        raise ConnectionError("Redis went away mid-drain")

    monkeypatch.setattr(controller_mod, "drain_lane", broken_drain)
    now[0] += 61
    rep = ctl.tick()
    assert rep.actions == ["payments: rolled back: drain pending (retried next tick)"]
    assert [(e["reason"], e["message"]) for e in rep.errors] == [
        ("drain", "rolling_back: weight change done, drain or finish failed (ConnectionError: "
                  "Redis went away mid-drain); retried next tick")]
    assert deployments.get(conn, "payments").state == "rolling_back"
    assert queue_config.read_config(conn, "payments").weight_bp == 0
    monkeypatch.undo()
    now[0] += 1
    rep = ctl.tick()
    assert rep.actions == ["payments: rolled_back"] and not rep.errors
    assert rollouts.controller_errors(conn) == {}
