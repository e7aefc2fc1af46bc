"""The admin API's routes on a real Redis (TestClient): every endpoint once, with exact
assertions on the Redis state it leaves, its JSON against the CLI's --json, and its errors
(one envelope naming the field, 4xx for every user mistake, nothing half-applied)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from pycanary import defaults, deployments, dlq, queue_config, registry, rollouts, service
from pycanary.api import create_app
from pycanary.api.auth import parse_tokens
from pycanary.api.models import API_MAX_COUNT, API_MAX_RUNS
from pycanary.connection import Connection
from pycanary.plan_check import check_plan
from pycanary.producer import Producer
from tests.test_cli import run
from tests.test_dlq import _dead_letters

VIEWER = "viewer-token-0123456789abcdef"
OPERATOR = "operator-token-0123456789abcdef"
OP = {"Authorization": f"Bearer {OPERATOR}"}
VW = {"Authorization": f"Bearer {VIEWER}"}
TWO_STAGES = {"interval": "10s", "stages": [
    {"percentage": 5, "duration": "1m"},
    {"percentage": 25, "duration": "1m", "auto_promote": False}]}


@pytest.fixture
def api(real_conn: Connection) -> Iterator[TestClient]:
    app = create_app(real_conn, tokens=parse_tokens(f"viewer:{VIEWER},operator:{OPERATOR}"))
    with TestClient(app) as client:
        yield client


def cli_json(conn: Connection, *args: str) -> Any:
    res = run(*args, "--json", prefix=conn.keys.prefix)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def unclocked(data: Any) -> Any:
    """``data`` without the read window's bounds (start_ms/end_ms: "now" when it was read),
    the only fields two reads of an unchanged status differ in."""
    if isinstance(data, dict):
        return {k: unclocked(v) for k, v in data.items() if k not in ("start_ms", "end_ms")}
    if isinstance(data, list):
        return [unclocked(v) for v in data]
    return data


def assert_error(res: Any, status: int, code: str, field: str | None) -> dict[str, Any]:
    assert res.status_code == status, res.text
    body = res.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "field"}
    assert body["error"]["code"] == code, body
    assert body["error"]["field"] == field, body
    assert body["error"]["message"]
    return body["error"]


def fake_worker(conn: Connection, wid: str, version: str, queue: str = "payments",
                lane: str = "-") -> None:
    """A live registration (a worker of ``version`` in standby for the canary lane)."""
    registry.heartbeat(conn, wid, version=version, queues={queue: "stable"},
                       info={"state": "standby", "lanes": f"{queue}={lane}", "host": "h1",
                             "pid": "42", "concurrency": "2", "done": "7"},
                       ttl_ms=600_000, now=defaults.now_ms())


# -- queues -------------------------------------------------------------------------------------
def test_configure_show_list_match_the_cli(api: TestClient, real_conn: Connection) -> None:
    res = api.patch("/v1/queues/payments", headers=OP,
                    json={"stable_version": "v1", "max_weight": 50, "max_backlog": "1000",
                          "sticky": False, "salt": "s1"})
    assert res.status_code == 200, res.text
    cfg = queue_config.read_config(real_conn, "payments")
    assert (cfg.stable_version, cfg.max_weight_bp, cfg.max_backlog, cfg.sticky, cfg.salt) == \
        ("v1", 5000, 1000, False, "s1")
    assert res.json() == service.queue_info(real_conn, "payments")
    shown = api.get("/v1/queues/payments", headers=VW)
    assert shown.status_code == 200
    assert shown.json() == cli_json(real_conn, "queue", "show", "payments")
    listed = api.get("/v1/queues", headers=VW)
    assert listed.json() == cli_json(real_conn, "queue", "list") == [shown.json()]
    # guards: a max_weight below the weight in force is refused, nothing changes
    service.set_weight(real_conn, "payments", "20")
    err = assert_error(api.patch("/v1/queues/payments", headers=OP, json={"max_weight": 10}),
                       422, "max_below_weight", "max_weight")
    assert "20%" in err["message"]
    assert queue_config.read_config(real_conn, "payments").max_weight_bp == 5000
    assert_error(api.patch("/v1/queues/payments", headers=OP, json={}), 422, "invalid",
                 "options")
    # a backend is chosen before first use: refused once the queue holds a job
    Producer(real_conn).enqueue("payments", {"n": 1})
    err = assert_error(api.patch("/v1/queues/payments", headers=OP, json={"backend": "streams"}),
                       422, "invalid", "backend")
    assert "holds jobs (1 in lists" in err["message"]
    assert_error(api.patch("/v1/queues/payments", headers=OP, json={"max_wieght": 5}),
                 422, "invalid", "max_wieght")
    assert_error(api.patch("/v1/queues/payments", headers=OP,
                           json={"stable_version": "bad version"}),
                 422, "invalid", "stable_version")
    assert_error(api.get("/v1/queues/paymnts", headers=VW), 404, "not_found", "queue")
    assert_error(api.get("/v1/queues/bad%20name", headers=VW), 422, "invalid", "queue")


def test_weights_of_the_queue_and_its_tenants(api: TestClient, real_conn: Connection) -> None:
    service.configure_queue(real_conn, "payments", stable_version="v1", max_weight="50")
    res = api.put("/v1/queues/payments/weight", headers=OP, json={"percent": "12.5"})
    assert res.status_code == 200, res.text
    assert res.json() == {"queue": "payments", "tenant": None, "previous_percent": None,
                          "percent": 12.5, "rev": res.json()["rev"],
                          "paused_deployment": False}
    assert queue_config.read_config(real_conn, "payments").weight_bp == 1250
    err = assert_error(api.put("/v1/queues/payments/weight", headers=OP, json={"percent": 60}),
                       422, "above_max_weight", "percent")  # the body's name, not the CLI's
    assert "max_weight of 50%" in err["message"]
    assert_error(api.put("/v1/queues/payments/weight", headers=OP, json={"percent": 1.234}),
                 422, "invalid", "percent")
    assert_error(api.put("/v1/queues/payments/tenants/acme", headers=OP,
                         json={"percent": "-1"}), 422, "invalid", "percent")
    assert_error(api.put("/v1/queues/payments/weight", headers=OP, json={"percent": True}),
                 422, "invalid", "percent")
    assert queue_config.read_config(real_conn, "payments").weight_bp == 1250
    # one tenant
    res = api.put("/v1/queues/payments/tenants/acme", headers=OP, json={"percent": 5})
    assert res.status_code == 200 and res.json()["tenant"] == "acme"
    assert queue_config.read_config(real_conn, "payments").tenant_weights_bp == {"acme": 500}
    res = api.delete("/v1/queues/payments/tenants/acme", headers=OP)
    assert res.status_code == 200 and res.json()["percent"] is None
    assert res.json()["previous_percent"] == 5.0
    assert queue_config.read_config(real_conn, "payments").tenant_weights_bp == {}
    # several: every entry is checked before any is written
    for weights, field in (({"a": 5, "b": 60}, "tenants.b"), ({"a": 5, "bad name": 1}, "tenants"),
                           ({"a": 5, "b": "x"}, "tenants.b"), ({}, "tenants")):
        assert_error(api.patch("/v1/queues/payments/tenants", headers=OP,
                               json={"weights": weights}), 422,
                     "above_max_weight" if field == "tenants.b" and weights["b"] == 60
                     else "invalid", field)
        assert queue_config.read_config(real_conn, "payments").tenant_weights_bp == {}
    res = api.patch("/v1/queues/payments/tenants", headers=OP,
                    json={"weights": {"a": 5, "b": "7.5"}})
    assert res.status_code == 200, res.text
    assert [c["percent"] for c in res.json()["changes"]] == [5.0, 7.5]
    assert queue_config.read_config(real_conn, "payments").tenant_weights_bp == \
        {"a": 500, "b": 750}
    res = api.patch("/v1/queues/payments/tenants", headers=OP, json={"weights": {"a": None}})
    assert res.status_code == 200
    assert queue_config.read_config(real_conn, "payments").tenant_weights_bp == {"b": 750}


def test_route_explain_and_enqueue(api: TestClient, real_conn: Connection) -> None:
    service.configure_queue(real_conn, "payments", stable_version="v1")
    res = api.get("/v1/queues/payments/route", headers=VW,
                  params={"key": "order-42", "tenant": "acme"})
    assert res.status_code == 200
    assert res.json() == service.explain_route(real_conn, "payments", "order-42",
                                               tenant="acme")
    assert res.json() == cli_json(real_conn, "route", "explain", "payments", "order-42",
                                  "--tenant", "acme")
    assert_error(api.get("/v1/queues/payments/route", headers=VW), 422, "invalid", "key")
    # enqueue: no body is one job with {}
    res = api.post("/v1/queues/payments/jobs", headers=OP)
    assert res.status_code == 201, res.text
    assert res.json()["enqueued"] == 1 and res.json()["lanes"] == {"stable": 1, "canary": 0}
    res = api.post("/v1/queues/payments/jobs", headers=OP,
                   json={"payload": {"amount": 10}, "count": 3, "tenant": "acme"})
    assert res.status_code == 201, res.text
    assert res.json()["enqueued"] == 3 and len(res.json()["jobs"]) == 3
    assert service.lanes_of(real_conn, "payments")[0] == {"stable": 4, "canary": 0}
    raw = real_conn.client.lindex(real_conn.keys.queue("payments").lane("stable"), 0)
    assert json.loads(raw)["payload"] == {"amount": 10} and json.loads(raw)["tenant"] == "acme"
    res = api.post("/v1/queues/payments/jobs", headers=OP,
                   json={"payload": [1], "job_id": "order-1"})
    assert res.json()["jobs"] == [{"job_id": "order-1", "lane": "stable"}]
    for body, field in (({"count": 0}, "count"), ({"count": API_MAX_COUNT + 1}, "count"),
                        ({"count": 100, "rate": 1}, "rate"),
                        ({"count": 2, "job_id": "x"}, "job_id"),
                        ({"tenant": "bad tenant"}, "tenant"), ({"count": "3"}, "count")):
        assert_error(api.post("/v1/queues/payments/jobs", headers=OP, json=body), 422,
                     "invalid", field)
    assert_error(api.post("/v1/queues/bad%20q/jobs", headers=OP, json={}), 422, "invalid",
                 "queue")
    assert service.lanes_of(real_conn, "payments")[0] == {"stable": 5, "canary": 0}
    # a full queue: 429, nothing landed
    service.configure_queue(real_conn, "payments", max_backlog=5)
    assert_error(api.post("/v1/queues/payments/jobs", headers=OP, json={}), 429,
                 "queue_full", None)
    assert service.lanes_of(real_conn, "payments")[0] == {"stable": 5, "canary": 0}


def test_drain_moves_the_canary_lane(api: TestClient, real_conn: Connection) -> None:
    service.configure_queue(real_conn, "payments", stable_version="v1", canary_version="v2")
    service.set_weight(real_conn, "payments", "100")
    service.enqueue(real_conn, "payments", {}, count=5)
    assert service.lanes_of(real_conn, "payments")[0] == {"stable": 0, "canary": 5}
    err = assert_error(api.post("/v1/queues/payments/drain", headers=OP), 409, "state", "queue")
    assert "still routes 100% to canary" in err["message"]
    service.set_weight(real_conn, "payments", "0")
    res = api.post("/v1/queues/payments/drain", headers=OP)
    assert res.status_code == 200, res.text
    assert res.json()["moved"] == 5 and res.json()["complete"] is True
    assert service.lanes_of(real_conn, "payments")[0] == {"stable": 5, "canary": 0}
    assert_error(api.post("/v1/queues/paymnts/drain", headers=OP), 404, "not_found", "queue")


# -- workers ------------------------------------------------------------------------------------
def test_workers_match_the_cli(api: TestClient, real_conn: Connection) -> None:
    service.configure_queue(real_conn, "payments", stable_version="v1")
    service.configure_queue(real_conn, "emails", stable_version="v1")
    fake_worker(real_conn, "w-pay", "v2")
    fake_worker(real_conn, "w-mail", "v1", queue="emails")
    res = api.get("/v1/workers", headers=VW)
    assert res.status_code == 200
    assert sorted(w["id"] for w in res.json()) == ["w-mail", "w-pay"]
    assert res.json() == cli_json(real_conn, "workers")
    res = api.get("/v1/workers", headers=VW, params={"queue": "payments"})
    assert [(w["id"], w["version"], w["done"], w["host"]) for w in res.json()] == \
        [("w-pay", "v2", 7, "h1")]
    assert res.json() == cli_json(real_conn, "workers", "--queue", "payments")
    assert_error(api.get("/v1/workers", headers=VW, params={"queue": "paymnts"}), 404,
                 "not_found", "queue")


# -- deployments --------------------------------------------------------------------------------
def test_manual_canary_pause_resume_promote(api: TestClient, real_conn: Connection) -> None:
    conn = real_conn
    service.configure_queue(conn, "payments", stable_version="v1")
    # preflight: no live v2 worker -> 409 naming the fix; force maps to --force
    err = assert_error(api.post("/v1/deployments/payments/canary", headers=OP,
                                json={"version": "v2", "weight": 5}), 409, "state", "version")
    assert "no live worker of version v2" in err["message"]
    assert deployments.get(conn, "payments") is None
    fake_worker(conn, "w2", "v2")
    assert_error(api.post("/v1/deployments/payments/canary", headers=OP,
                          json={"version": "v2", "salt": "a\nb"}), 422, "invalid", "salt")
    res = api.post("/v1/deployments/payments/canary", headers=OP,
                   json={"version": "v2", "weight": 5, "tenants": {"acme": "50"},
                         "salt": "pinned"})
    assert res.status_code == 201, res.text
    assert res.json()["salt"] == "pinned"
    dep = deployments.get(conn, "payments")
    assert dep is not None and dep.id == res.json()["id"] and dep.state == "active"
    assert dep.actor == "api:operator#1" and dep.kind == "manual"
    cfg = queue_config.read_config(conn, "payments")
    assert (cfg.weight_bp, cfg.tenant_weights_bp, cfg.canary_version) == \
        (500, {"acme": 5000}, "v2")
    # one deployment per queue
    err = assert_error(api.post("/v1/deployments/payments/canary", headers=OP,
                                json={"version": "v3", "force": True}), 409, "state", "queue")
    assert f"deployment {dep.id} of v2 is already active" in err["message"]
    status = api.get("/v1/deployments/payments", headers=VW)
    assert status.status_code == 200
    assert unclocked(status.json()) == unclocked(cli_json(conn, "status", "payments")[0])
    assert status.json()["deployment"]["id"] == dep.id and status.json()["lanes"]
    assert [r["queue"] for r in api.get("/v1/deployments", headers=VW).json()] == ["payments"]
    # a weight set during a deployment goes through it and pauses it, as set-weight does
    res = api.put("/v1/queues/payments/weight", headers=OP, json={"percent": 7})
    assert res.status_code == 200 and res.json()["paused_deployment"] is True
    paused = deployments.get(conn, "payments")
    assert paused.state == "paused" and paused.weight_bp == 700
    last = rollouts.events(conn, "payments")[1][-1]
    assert last["type"] == "weight" and last["actor"] == "api:operator#1"
    assert api.post("/v1/deployments/payments/resume", headers=OP).json()["state"] == "active"
    res = api.post("/v1/deployments/payments/pause", headers=OP)
    assert res.status_code == 200 and res.json()["state"] == "paused"
    assert deployments.get(conn, "payments").state == "paused"
    res = api.post("/v1/deployments/payments/resume", headers=OP)
    assert res.status_code == 200 and res.json()["state"] == "active"
    assert deployments.get(conn, "payments").state == "active"
    assert_error(api.post("/v1/deployments/payments/resume", headers=OP), 409, "state", "queue")
    res = api.post("/v1/deployments/payments/promote", headers=OP, json={})
    assert res.status_code == 200, res.text
    assert res.json()["action"] == "promoted" and res.json()["stable_version"] == "v2"
    assert queue_config.read_config(conn, "payments").stable_version == "v2"
    assert deployments.get(conn, "payments").state == "completed"
    assert_error(api.post("/v1/deployments/payments/pause", headers=OP), 409, "state", "queue")
    assert_error(api.post("/v1/deployments/paymnts/pause", headers=OP), 404, "not_found",
                 "queue")
    types = [e["type"] for e in api.get("/v1/deployments/payments/events", headers=VW)
             .json()["events"]]
    assert types[0] == "started" and "paused" in types and "resumed" in types


def test_events_of_a_queue_that_never_had_a_deployment_are_not_found(
        api: TestClient, real_conn: Connection) -> None:
    service.configure_queue(real_conn, "payments", stable_version="v1")
    err = assert_error(api.get("/v1/deployments/payments/events", headers=VW), 404,
                       "not_found", "queue")
    assert err["message"] == "no deployment on payments yet"


def test_ramp_rollback_retry_history_events(api: TestClient, real_conn: Connection) -> None:
    conn = real_conn
    service.configure_queue(conn, "payments", stable_version="v1")
    body = {"version": "v2", "plan": TWO_STAGES, "force": True, "allow_schema_change": True}
    res = api.post("/v1/deployments/payments/ramp", headers=OP, json=body)
    assert res.status_code == 201, res.text
    first = deployments.get(conn, "payments")
    assert first.stage == 0 and [s.percentage for s in first.plan.stages] == [5.0, 25.0]
    assert queue_config.read_config(conn, "payments").weight_bp == 500
    # promote advances one stage
    res = api.post("/v1/deployments/payments/promote", headers=OP)
    assert res.status_code == 200 and res.json()["action"] == "stage"
    assert res.json()["stage"] == 1 and res.json()["percent"] == 25.0
    assert deployments.get(conn, "payments").stage == 1
    assert queue_config.read_config(conn, "payments").weight_bp == 2500
    res = api.post("/v1/deployments/payments/rollback", headers=OP,
                   json={"reason": "errors spiked"})
    assert res.status_code == 200, res.text
    assert res.json()["rollback"] == "done" and res.json()["deployment_id"] == first.id
    gone = deployments.get(conn, "payments")
    assert gone.state == "rolled_back" and gone.reason == "errors spiked"
    assert queue_config.read_config(conn, "payments").weight_bp == 0
    res = api.post("/v1/deployments/payments/rollback", headers=OP)
    assert res.status_code == 200 and res.json()["rollback"] == "already"
    # retry: the rolled-back version with its plan
    res = api.post("/v1/deployments/payments/retry", headers=OP,
                   json={"force": True, "allow_schema_change": True})
    assert res.status_code == 201, res.text
    again = deployments.get(conn, "payments")
    assert again.id != first.id and again.canary_version == "v2" and again.active
    assert again.plan_raw == first.plan_raw
    rollouts.rollback(conn, "payments", reason="again", actor="t")
    # a plan by name, and as YAML text
    res = api.post("/v1/deployments/payments/ramp", headers=OP,
                   json={"version": "v3", "plan_name": "quick", "force": True,
                         "allow_schema_change": True})
    assert res.status_code == 201, res.text
    assert deployments.get(conn, "payments").canary_version == "v3"
    rollouts.rollback(conn, "payments", reason="third", actor="t")
    yaml_plan = "canary_config:\n  stages:\n    - percentage: 7\n      duration: 1m\n"
    res = api.post("/v1/deployments/payments/ramp", headers=OP,
                   json={"version": "v4", "plan": yaml_plan, "force": True,
                         "allow_schema_change": True})
    assert res.status_code == 201 and res.json()["stages"] == [7.0]
    rollouts.rollback(conn, "payments", reason="fourth", actor="t")
    # history and events as the CLI shows them
    hist = api.get("/v1/deployments/payments/history", headers=VW)
    assert hist.status_code == 200
    assert hist.json() == cli_json(conn, "history", "payments")
    assert [r["version"] for r in hist.json()] == ["v4", "v3", "v2", "v2"]
    assert hist.json()[3]["reason"] == "errors spiked"
    assert_error(api.get("/v1/deployments/payments/history", headers=VW,
                         params={"limit": 0}), 422, "invalid", "limit")
    evs = api.get("/v1/deployments/payments/events", headers=VW,
                  params={"deployment": first.id})
    assert evs.status_code == 200 and evs.json()["deployment_id"] == first.id
    events = evs.json()["events"]
    assert events[0]["type"] == "started"
    assert events == rollouts.events(conn, "payments", deployment_id=first.id, count=1000)[1]
    newer = api.get("/v1/deployments/payments/events", headers=VW,
                    params={"deployment": first.id, "after": events[0]["id"]})
    assert newer.json()["events"] == events[1:]
    assert_error(api.get("/v1/deployments/payments/events", headers=VW,
                         params={"after": "nope"}), 422, "invalid", "after")
    assert_error(api.get("/v1/deployments/payments/events", headers=VW,
                         params={"deployment": "nope"}), 404, "not_found", "deployment")
    # plan mistakes: 422 naming the field, nothing started
    for bad, field in (({"plan": TWO_STAGES, "plan_name": "quick"}, "plan"),
                       ({}, "plan"), ({"plan_name": "../etc/passwd"}, "plan_name"),
                       ({"plan": {"stages": [{"percentage": 500, "duration": "1m"}]}},
                        "plan.stages[0].percentage")):
        err = assert_error(api.post("/v1/deployments/payments/ramp", headers=OP,
                                    json={"version": "v5", "force": True, **bad}),
                           422, "invalid_plan", field)
        assert "Traceback" not in err["message"]
    assert deployments.get(conn, "payments").canary_version == "v4"


# -- dead letters -------------------------------------------------------------------------------
def test_dead_letters_list_show_requeue_purge(api: TestClient, real_conn: Connection) -> None:
    conn = real_conn
    _dead_letters(conn, 3)
    qk = conn.keys.queue("payments")
    res = api.get("/v1/queues/payments/dead-letters", headers=VW)
    assert res.status_code == 200
    assert res.json() == cli_json(conn, "dlq", "list", "payments")
    assert res.json()["total"] == 3
    assert_error(api.get("/v1/queues/payments/dead-letters", headers=VW,
                         params={"offset": 2**63}), 422, "invalid", "offset")
    res = api.get("/v1/queues/payments/dead-letters", headers=VW,
                  params={"offset": 1, "limit": 1})
    assert res.json()["total"] == 3 and len(res.json()["dead_letters"]) == 1
    res = api.get("/v1/queues/payments/dead-letters/job-0", headers=VW)
    assert res.status_code == 200
    assert res.json() == cli_json(conn, "dlq", "show", "payments", "job-0")
    assert res.json()[0]["payload"] == {"i": 0}
    assert_error(api.get("/v1/queues/payments/dead-letters/job-9", headers=VW), 404,
                 "not_found", "job_id")
    assert_error(api.post("/v1/queues/payments/dead-letters/requeue", headers=OP, json={}),
                 422, "invalid", "job_id")
    assert_error(api.post("/v1/queues/payments/dead-letters/requeue", headers=OP,
                          json={"job_ids": ["job-0", "job-9"]}), 404, "not_found", "job_id")
    assert conn.client.llen(qk.dlq) == 3  # nothing moved
    res = api.post("/v1/queues/payments/dead-letters/requeue", headers=OP,
                   json={"job_ids": ["job-0"]})
    assert res.status_code == 200 and res.json()["done"] == 1
    assert conn.client.llen(qk.dlq) == 2 and conn.client.llen(qk.lane("stable")) == 1
    assert json.loads(conn.client.lindex(qk.lane("stable"), 0))["id"] == "job-0"
    res = api.post("/v1/queues/payments/dead-letters/purge", headers=OP, json={"all": True})
    assert res.status_code == 200 and res.json()["done"] == 2
    assert conn.client.llen(qk.dlq) == 0
    assert dlq.count(conn, "payments") == 0


# -- plans --------------------------------------------------------------------------------------
def test_plans_and_plan_check(api: TestClient) -> None:
    res = api.get("/v1/plans", headers=VW)
    assert res.status_code == 200 and "design-card" in res.json()["plans"]
    res = api.get("/v1/plans/quick", headers=VW)
    assert res.status_code == 200 and res.json()["plan"]["canary_config"]["stages"]
    assert_error(api.get("/v1/plans/nope", headers=VW), 422, "invalid_plan", "name")
    res = api.post("/v1/plans/check", headers=VW,
                   json={"plan_name": "quick", "rate": "2000/min", "error_rate": "1%",
                         "runs": 4})
    assert res.status_code == 200, res.text
    assert res.json() == check_plan("quick", 2000, 0.01, runs=4, name="quick").to_dict()
    res = api.post("/v1/plans/check", headers=VW,
                   json={"plan": TWO_STAGES, "rate": "30/s", "runs": 2})
    assert res.status_code == 200 and res.json()["rate_per_min"] == 1800
    assert res.json()["plan"] == "<request body>"
    for body, field in (({"plan_name": "quick", "rate": "fast"}, "rate"),
                        ({"plan_name": "quick", "rate": "1/s", "error_rate": "90%"},
                         "error_rate"),
                        ({"plan_name": "quick", "rate": "1/s", "runs": API_MAX_RUNS + 1},
                         "runs"),
                        ({"rate": "1/s"}, "plan")):
        assert_error(api.post("/v1/plans/check", headers=VW, json=body), 422,
                     "invalid_plan" if field == "plan" else "invalid", field)


# -- the envelope for malformed requests --------------------------------------------------------
def test_malformed_and_oversized_bodies(api: TestClient, real_conn: Connection) -> None:
    service.configure_queue(real_conn, "payments", stable_version="v1")
    res = api.put("/v1/queues/payments/weight", headers={**OP, "Content-Type":
                                                         "application/json"},
                  content=b"{not json")
    assert assert_error(res, 422, "invalid", "body")["message"] == \
        "body: not valid JSON (at character 1)"
    assert_error(api.put("/v1/queues/payments/weight", headers=OP, json=[1]), 422, "invalid",
                 "body")
    assert_error(api.put("/v1/queues/payments/weight", headers=OP), 422, "invalid", "body")
    big = b'{"percent": "' + b"1" * (300 * 1024) + b'"}'
    res = api.put("/v1/queues/payments/weight", headers={**OP, "Content-Type":
                                                         "application/json"}, content=big)
    assert_error(res, 413, "payload_too_large", "body")

    def chunks() -> Iterator[bytes]:  # no Content-Length: a chunked body
        yield b'{"percent": "'
        for _ in range(300):
            yield b"1" * 1024
        yield b'"}'

    res = api.put("/v1/queues/payments/weight", headers={**OP, "Content-Type":
                                                         "application/json"}, content=chunks())
    assert_error(res, 413, "payload_too_large", "body")

    def small() -> Iterator[bytes]:
        yield b'{"percent": '
        yield b'3}'

    res = api.put("/v1/queues/payments/weight", headers={**OP, "Content-Type":
                                                         "application/json"}, content=small())
    assert res.status_code == 200, res.text
    assert queue_config.read_config(real_conn, "payments").weight_bp == 300


def test_redis_unreachable_is_503() -> None:
    import pycanary
    from tests.api_server import free_port

    down = pycanary.connect(f"redis://127.0.0.1:{free_port()}/0", prefix="x")
    app = create_app(down, tokens=parse_tokens(f"operator:{OPERATOR}"))
    with TestClient(app) as client:
        assert_error(client.get("/v1/queues", headers=OP), 503, "unavailable", None)
        assert_error(client.put("/v1/queues/payments/weight", headers=OP,
                                json={"percent": 1}), 503, "unavailable", None)


def test_the_cli_and_the_api_share_plan_names(api: TestClient) -> None:
    from pathlib import Path

    from pycanary.plan import load_plan, named_plans, resolve_plan

    root = Path(__file__).resolve().parents[1] / "examples" / "plans"
    assert named_plans() == sorted(p.stem for p in root.glob("*.yaml"))
    assert resolve_plan("quick") == load_plan(root / "quick.yaml")
    res = run("plan", "check", "quick", "--rate", "12000/min", "--error-rate", "5%",
              "--runs", "2", "--json")
    assert res.returncode in (0, 1), res.stderr
    cli = json.loads(res.stdout)
    assert cli["plan"] == "quick"
    res = api.post("/v1/plans/check", headers=VW,
                   json={"plan_name": "quick", "rate": "12000/min", "error_rate": "5%",
                         "runs": 2})
    assert res.json() == cli


def test_a_garbled_dead_letter_is_shown_not_a_500(api: TestClient, real_conn: Connection) -> None:
    service.configure_queue(real_conn, "payments", stable_version="v1")
    qk = real_conn.keys.queue("payments")
    real_conn.client.lpush(qk.dlq, json.dumps({"error": 3, "version": 2, "attempts": "x",
                                               "failed_at": None, "lane": ["stable"]}))
    real_conn.client.lpush(qk.dlq, "not json")
    res = api.get("/v1/queues/payments/dead-letters", headers=VW)
    assert res.status_code == 200, res.text
    letters = res.json()["dead_letters"]
    assert [d["requeueable"] for d in letters] == [False, False]
    assert letters[1]["version"] == "2" and letters[1]["attempts"] is None
    assert letters[0]["problem"] == "not a JSON object"
