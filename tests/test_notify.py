"""Notifications (issue 13 item 5): the outbox written by the deployment scripts, the sender's
deliveries to a local receiver (retries, a receiver that is down, a sender that dies), the
Slack body, the webhook gate, settings and plan errors, and one end-to-end rollback.

Real Redis; the receivers are http.server instances on free loopback ports."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pycanary import defaults, deployments, notify, rollouts, service
from pycanary.cli import app
from pycanary.controller import Controller
from pycanary.errors import ValidationError
from pycanary.notify import Notification, Sender, Target, parse_webhooks
from pycanary.plan import PlanError, parse_plan
from pycanary.scripts import lua_dir
from tests.test_cli import assert_user_error, run
from tests.test_controller_feeding import Clock, _env, record

Q = "payments"
SECRET = "T000/B000/s3cr3t-token"


# -- a local receiver ---------------------------------------------------------------------------
class Receiver:
    """An HTTP server on a loopback port: answers each POST with the next of ``statuses``
    (the last one repeats), after ``delay_s``; keeps every body it got."""

    def __init__(self, statuses: list[int] | None = None, *, port: int = 0,
                 delay_s: float = 0.0) -> None:
        self.statuses = list(statuses or [200])
        self.delay_s = delay_s
        self.bodies: list[Any] = []
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n) or b"null")
                if outer.delay_s:
                    time.sleep(outer.delay_s)
                with lock:
                    outer.bodies.append(body)
                    outer.paths.append(self.path)
                    status = outer.statuses.pop(0) if len(outer.statuses) > 1 \
                        else outer.statuses[0]
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for r in made:
        r.close()


def receiver(made: list[Receiver], *args: Any, **kw: Any) -> Receiver:
    r = Receiver(*args, **kw)
    made.append(r)
    return r


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


PLAN = {"stages": [{"percentage": 10, "duration": "1m", "auto_promote": True,
                    "conditions": {"max_error_rate": 5}}],
        "interval": "30s", "min_samples": 50, "failure_threshold": 1}


def start(conn, plan: dict | None = None, clock: Clock | None = None) -> deployments.Deployment:
    service.configure_queue(conn, Q, stable_version="v1")
    now = int((clock() if clock else time.time()) * 1000)
    return rollouts.ramp(conn, Q, "v2", plan or PLAN, allow_schema_change=True, actor="t",
                         force=True, now_ms=now)


def outbox(conn) -> list[dict[str, str]]:
    return [f for _, f in conn.client.xrange(conn.keys.queue(Q).outbox)]


def pending(conn) -> int:
    key = conn.keys.queue(Q).outbox
    return int(conn.client.xpending(key, defaults.NOTIFY_GROUP)["pending"])


def sender(conn, hooks: list[Target], **kw: Any) -> Sender:
    kw.setdefault("backoff_s", 0.01)
    kw.setdefault("timeout_s", 2.0)
    return Sender(conn, webhooks=hooks, **kw)


# -- the outbox -----------------------------------------------------------------------------------
def test_notable_types_in_the_include_match_defaults() -> None:
    text = (lua_dir() / "includes" / "deployment.lua").read_text()
    table = re.search(r"local NOTIFY = \{(.*?)\}", text, re.S).group(1)
    assert tuple(re.findall(r"(\w+) = true", table)) == defaults.NOTIFY_EVENT_TYPES
    assert int(re.search(r"local OUTBOX_MAXLEN = (\d+)", text).group(1)) == \
        defaults.OUTBOX_MAXLEN


def test_outbox_is_written_by_the_same_scripts_as_the_events(conn) -> None:
    dep = start(conn)
    rollouts.pause(conn, Q, actor="t")
    rollouts.resume(conn, Q, actor="t")  # "resumed" is not notable
    rollouts.rollback(conn, Q, reason="error rate 12% above 5%")
    types = [e["type"] for e in deployments.events(conn, Q, dep.id)]
    assert types == ["started", "paused", "resumed", "rollback", "rolled_back"]
    got = outbox(conn)
    assert [f["type"] for f in got] == ["started", "paused", "rollback", "rolled_back"]
    rb = got[2]
    assert rb["deployment"] == dep.id and rb["version"] == "v2" and rb["stable_version"] == "v1"
    assert rb["queue"] == Q
    assert (rb["stage"], rb["weight_bp"], rb["state"]) == ("0", "0", "rolling_back")
    assert json.loads(rb["e"])["message"] == "rollback: error rate 12% above 5%"
    assert got[0]["weight_bp"] == "1000" and got[0]["webhooks"] == ""


def test_a_refused_write_leaves_no_notification(conn) -> None:
    dep = start(conn)
    before = outbox(conn)
    stale = deployments.get(conn, Q)
    rollouts.pause(conn, Q, actor="t")  # rev moves on
    ev = deployments.event("paused", "again", actor="t", now=1)
    from pycanary.errors import ConflictError

    with pytest.raises(ConflictError):
        deployments.update(conn, stale, {"state": "paused"}, now=1, ev=ev)
    assert len(outbox(conn)) == len(before) + 1  # only the accepted pause
    assert dep.id


def test_a_fail_verdict_is_notified_as_check_failed(conn) -> None:
    dep = start(conn)
    fail = deployments.event("verdict", "FAIL: error rate", actor="c", now=1,
                             data={"verdict": "FAIL"})
    ok = deployments.event("verdict", "PASS: fine", actor="c", now=2, data={"verdict": "PASS"})
    deployments.update(conn, dep, {}, now=3, events=[fail, ok])
    assert [f["type"] for f in outbox(conn)] == ["started", "check_failed"]


# -- deliveries -----------------------------------------------------------------------------------
def test_a_rolled_back_canary_is_delivered_with_its_reason(real_conn, receivers) -> None:
    conn = real_conn
    r = receiver(receivers)
    dep = start(conn)
    rollouts.rollback(conn, Q, reason="error rate 12% above 5%")
    rep = sender(conn, [Target("json", r.url())]).run_once()
    assert (rep.read, rep.delivered, rep.failed, rep.acknowledged) == (3, 3, 0, 3)
    assert [b["type"] for b in r.bodies] == ["started", "rollback", "rolled_back"]
    body = r.bodies[1]
    assert set(body) >= {"queue", "deployment", "version", "type", "reason", "stage", "weight",
                         "at"}
    assert (body["queue"], body["deployment"], body["version"]) == (Q, dep.id, "v2")
    assert body["reason"] == "rollback: error rate 12% above 5%"
    assert (body["stage"], body["weight"], body["state"]) == (1, 0.0, "rolling_back")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["at"])
    assert body["id"].startswith(f"{Q}/")
    assert pending(conn) == 0
    # nothing new: a second run reads nothing
    assert sender(conn, [Target("json", r.url())]).run_once().read == 0


def test_500_twice_then_200_is_delivered_after_retries(real_conn, receivers) -> None:
    conn = real_conn
    r = receiver(receivers, [500, 500, 200])
    start(conn)
    rep = sender(conn, [Target("json", r.url())], max_attempts=5).run_once()
    assert (rep.delivered, rep.failed, rep.acknowledged) == (1, 0, 1)
    assert len(r.bodies) == 3 and len({b["id"] for b in r.bodies}) == 1
    assert notify.failed_notifications(conn, Q) == []


def test_a_receiver_that_is_down_keeps_it_pending_until_it_comes_up(real_conn,
                                                                    receivers) -> None:
    conn = real_conn
    port = free_port()
    start(conn)
    t = [0.0]
    s = sender(conn, [Target("json", f"http://127.0.0.1:{port}/hook")], max_attempts=10,
               backoff_s=1.0, clock=lambda: t[0])
    rep = s.pass_once()
    assert (rep.read, rep.delivered, rep.pending) == (1, 0, 1)
    assert pending(conn) == 1  # read, not acknowledged
    t[0] += 0.5
    assert s.pass_once().delivered == 0  # backoff not over: not even tried
    r = receiver(receivers, port=port)
    t[0] += 1.0
    rep = s.pass_once()
    assert (rep.delivered, rep.acknowledged, rep.pending) == (1, 1, 0)
    assert [b["type"] for b in r.bodies] == ["started"]
    assert pending(conn) == 0


def test_a_receiver_that_stays_down_is_recorded_failed(real_conn) -> None:
    conn = real_conn
    port = free_port()
    dep = start(conn)
    url = f"http://user:pw@127.0.0.1:{port}/services/{SECRET}?token=abc"
    rep = sender(conn, [Target("json", url)], max_attempts=3).run_once()
    assert (rep.delivered, rep.failed, rep.acknowledged) == (0, 1, 1)
    failed = notify.failed_notifications(conn, Q)
    assert len(failed) == 1
    rec = failed[0]
    assert rec["attempts"] == 3 and rec["error"] == "connection refused"
    assert rec["webhook"] == f"http://127.0.0.1:{port}/..."
    assert rec["notification"]["type"] == "started" and rec["notification"]["deployment"] == dep.id
    raw = json.dumps(conn.client.xrange(conn.keys.queue(Q).outbox_dead))
    assert SECRET not in raw and "pw" not in raw and "token" not in raw
    assert pending(conn) == 0
    # what an operator sees: the CLI and the API list it, secrets left out
    res = run("notifications", Q, prefix=conn.keys.prefix)
    assert res.returncode == 0, res.stderr
    assert f"{Q}: 1 notification(s) given up on" in res.stdout
    assert f"started of {dep.id} to http://127.0.0.1:{port}/...: connection refused after 3" \
        in " ".join(res.stdout.split())
    res = run("notifications", Q, "--json", prefix=conn.keys.prefix)
    assert json.loads(res.stdout) == failed and SECRET not in res.stdout
    assert_user_error(run("notifications", Q, "--limit", "0", prefix=conn.keys.prefix),
                      "limit")
    from fastapi.testclient import TestClient

    from pycanary.api.app import create_app
    from pycanary.api.auth import parse_tokens
    from tests.test_api import OP, OPERATOR, VIEWER, VW

    app = create_app(conn, tokens=parse_tokens(f"viewer:{VIEWER},operator:{OPERATOR}"))
    with TestClient(app) as api:
        got = api.get(f"/v1/deployments/{Q}/notifications/failed", headers=VW)
        assert got.status_code == 200 and got.json() == failed
        assert api.get(f"/v1/deployments/{Q}/notifications/failed?limit=5000",
                       headers=OP).status_code == 422


def test_a_sender_killed_mid_delivery_is_replaced_and_it_still_delivers(real_conn,
                                                                        receivers) -> None:
    conn = real_conn
    r = receiver(receivers)
    start(conn)

    class Killed(BaseException):
        pass

    def dies(url: str, body: bytes, timeout: float) -> notify.Answer:
        raise Killed  # the process dies between reading the entry and acknowledging it

    first = sender(conn, [Target("json", r.url())], consumer="a", post_fn=dies)
    with pytest.raises(Killed):
        first.pass_once()
    assert pending(conn) == 1 and r.bodies == []
    second = sender(conn, [Target("json", r.url())], consumer="b", claim_idle_s=0.2)
    assert second.run_once().read == 0  # not idle long enough yet: still a's
    time.sleep(0.3)
    rep = second.run_once()
    assert (rep.claimed, rep.delivered, rep.acknowledged) == (1, 1, 1)
    assert [b["type"] for b in r.bodies] == ["started"]
    assert pending(conn) == 0
    # the dead sender's consumer name stays in the group until it has been idle long enough
    key = conn.keys.queue(Q).outbox
    names = lambda: sorted(c["name"] for c in conn.client.xinfo_consumers(key, second.group))  # noqa: E731
    assert names() == ["a", "b"] and rep.forgotten == 0
    third = sender(conn, [Target("json", r.url())], consumer="c", claim_idle_s=0.2,
                   forget_idle_s=0.2)
    time.sleep(0.3)
    rep = third.run_once()
    assert rep.forgotten == 2 and not {"a", "b"} & set(names())  # a dead, b idle and empty
    assert (rep.read, rep.delivered) == (0, 0) and pending(conn) == 0


def test_slack_body_and_plan_webhooks(real_conn, receivers) -> None:
    conn = real_conn
    slack = receiver(receivers)
    generic = receiver(receivers)
    plan = {**PLAN, "notifications": {"webhooks": [{"url": slack.url("/services/x"),
                                                    "kind": "slack"}]}}
    dep = start(conn, plan)
    rollouts.rollback(conn, Q, reason="p95 +40%")
    rep = sender(conn, [Target("json", generic.url())]).run_once()  # settings + the plan's
    assert rep.delivered == 6 and rep.failed == 0
    assert len(generic.bodies) == 3
    assert all(set(b) == {"text"} for b in slack.bodies) and len(slack.bodies) == 3
    text = slack.bodies[1]["text"]
    assert text == (f"[pycanary] {Q}: v2 rollback: rollback: p95 +40% (stage 1, canary 0%, "
                    f"deployment {dep.id})")
    assert slack.paths == ["/services/x"] * 3


def test_readers_see_webhook_urls_redacted_while_the_sender_uses_them_whole(
        real_conn, receivers) -> None:
    """A webhook URL's path is its secret (Slack, CI triggers): status, history and the API's
    viewers get scheme://host:port/... only; the sender still posts to the whole URL."""
    conn = real_conn
    hook = receiver(receivers)
    secret = "/services/T000/B000/XXXXsecretXXXX"
    plan = {**PLAN, "notifications": {"webhooks": [{"url": hook.url(secret), "kind": "json"}]}}
    plan["stages"] = [{**PLAN["stages"][0], "gate": {"webhook": hook.url(secret + "gate")}},
                      *PLAN["stages"][1:]]
    start(conn, plan)
    shown = json.dumps([rollouts.status(conn, Q, growth_sample_s=0),
                        deployments.get(conn, Q).to_dict()])
    assert "secret" not in shown
    cfg = deployments.get(conn, Q).to_dict()["plan"]["canary_config"]
    assert cfg["notifications"]["webhooks"][0]["url"] == f"http://127.0.0.1:{hook.port}/..."
    assert cfg["stages"][0]["gate"]["webhook"] == f"http://127.0.0.1:{hook.port}/..."
    rollouts.rollback(conn, Q, reason="x")
    assert "secret" not in json.dumps(rollouts.history(conn, Q))
    sender(conn, []).run_once()
    assert hook.paths and set(hook.paths) == {secret}


def test_notification_bodies_from_an_entry() -> None:
    n = Notification.from_entry(Q, "1700000000000-0", {
        "type": "stage", "e": json.dumps({"ts": 1700000000123, "type": "stage", "actor": "c",
                                           "message": "stage 1 passed"}),
        "deployment": "d1", "version": "v2", "stable_version": "v1", "stage": "1",
        "weight_bp": "5000", "state": "active", "webhooks": ""})
    assert n.body() == {"id": f"{Q}/1700000000000-0", "queue": Q, "deployment": "d1",
                        "version": "v2", "stable_version": "v1", "type": "stage",
                        "reason": "stage 1 passed", "stage": 2, "weight": 50.0,
                        "state": "active", "actor": "c", "at": "2023-11-14T22:13:20.123Z"}
    assert n.slack() == {"text": f"[pycanary] {Q}: v2 stage: stage 1 passed (stage 2, canary "
                                 "50%, deployment d1)"}


def test_the_sender_thread_delivers_and_stops(real_conn, receivers) -> None:
    conn = real_conn
    r = receiver(receivers)
    start(conn)
    stop = threading.Event()
    t = sender(conn, [Target("json", r.url())]).start(stop, poll_s=0.05)
    wait_for(lambda: len(r.bodies) == 1, what="a delivery by the thread")
    rollouts.rollback(conn, Q, reason="x")
    wait_for(lambda: len(r.bodies) == 3, what="the rollback's deliveries")
    stop.set()
    t.join(timeout=2)
    assert not t.is_alive()


# -- settings and plans ---------------------------------------------------------------------------
def test_webhook_settings_parse_with_errors_naming_the_field(monkeypatch) -> None:
    got = parse_webhooks("json:http://127.0.0.1:9000/hook, slack:https://hooks.example/x,"
                         "http://127.0.0.1:1/bare")
    assert [(t.kind, t.url) for t in got] == [("json", "http://127.0.0.1:9000/hook"),
                                             ("slack", "https://hooks.example/x"),
                                             ("json", "http://127.0.0.1:1/bare")]
    assert parse_webhooks("") == [] and parse_webhooks(None) == []
    for text, msg in [("teams:http://h/x", "entry 1: must be KIND:URL"),
                      ("json:http://h/x,json:ftp://h/" + SECRET, "entry 2: URL must be an http"),
                      ("json:http:///" + SECRET, "entry 1: URL must name a host"),
                      ("json:http://h:port/" + SECRET, "entry 1: URL is not a valid URL")]:
        with pytest.raises(ValidationError) as exc:
            parse_webhooks(text)
        assert exc.value.field == "PYCANARY_WEBHOOKS"
        assert msg in str(exc.value) and SECRET not in str(exc.value)
    monkeypatch.setenv("PYCANARY_WEBHOOKS", "json:ftp://h/" + SECRET)
    res = CliRunner().invoke(app, ["notify", "--once"])
    assert res.exit_code == 2
    assert res.output.startswith("error: PYCANARY_WEBHOOKS: entry 1: URL must be an http")
    assert SECRET not in res.output and "Traceback" not in res.output


def test_plan_notification_and_gate_errors_name_the_field() -> None:
    stage = {"percentage": 10, "duration": "1m"}
    cases = [
        ({"notifications": {"webhooks": [{"url": "ftp://h/" + SECRET}]}},
         "notifications.webhooks[0].url: must be an http:// or https:// URL, got ftp://h/..."),
        ({"notifications": {"webhooks": [{"url": "http://h/x", "kind": "teams"}]}},
         "notifications.webhooks[0].kind: must be one of json, slack, got 'teams'"),
        ({"notifications": {"webhooks": [{"uri": "http://h/x"}]}},
         "notifications.webhooks[0].uri: unknown field; did you mean 'url'?"),
        ({"stages": [{**stage, "gate": {"webhook": "http:///x"}}]},
         "stages[0].gate.webhook: must name a host, got http://?/..."),
        ({"stages": [{**stage, "gate": {"webhook": "http://h/x", "timeout_s": 0}}]},
         "stages[0].gate.timeout_s: must be above 0 and at most 300 seconds, got 0"),
        ({"stages": [{**stage, "gate": {"webhook": "http://h/x", "timeout": 3}}]},
         "stages[0].gate.timeout: unknown field; did you mean 'timeout_s'?"),
        ({"stages": [{**stage, "auto_promote": False, "gate": {"webhook": "http://h/x"}}]},
         "stages[0].gate: auto_promote: false already waits for a person's promote"),
    ]
    for extra, line in cases:
        with pytest.raises(PlanError) as exc:
            parse_plan({"stages": [stage], **extra})
        assert str(exc.value).splitlines()[0].startswith(line), str(exc.value)
        assert SECRET not in str(exc.value)
    ok = parse_plan({"stages": [{**stage, "gate": {"webhook": "http://h/x", "timeout_s": 2.5}}],
                     "notifications": {"webhooks": [{"url": "https://h/y", "kind": "slack"}]}})
    assert ok.stages[0].gate.timeout_s == 2.5 and ok.notifications.webhooks[0].kind == "slack"
    assert parse_plan(ok.to_dict()) == ok
    assert "notifications" not in parse_plan({"stages": [stage]}).to_dict()["canary_config"]


# -- the webhook gate -----------------------------------------------------------------------------
def gate_plan(url: str, timeout_s: float = 2) -> dict:
    return {"stages": [{"percentage": 10, "duration": "1m",
                        "gate": {"webhook": url, "timeout_s": timeout_s}},
                       {"percentage": 50, "duration": "1m"}],
            "interval": "30s", "min_samples": 20, "statistical": {"enabled": False}}


def healthy_window(conn, n: int) -> None:
    record(conn, "v1", "stable", ok=[_env(f"s{n}-{j}") for j in range(100)])
    record(conn, "v2", "canary", ok=[_env(f"c{n}-{j}") for j in range(100)])


def test_webhook_gate_holds_on_500_and_advances_on_200(real_conn, receivers) -> None:
    conn = real_conn
    r = receiver(receivers, [500])
    clock = Clock(1_800_000_000.0)
    dep = start(conn, gate_plan(r.url("/confirm")), clock)
    ctl = Controller(conn, clock=clock)
    ctl.tick()  # baseline
    for n in range(2):  # the stage passes at 60 s
        healthy_window(conn, n)
        clock.t += 31
        ctl.tick()
    d = deployments.get(conn, Q)
    assert d.stage == 0 and d.meta["gate"]["stage"] == 0
    wait_for(lambda: len(r.bodies) == 1 and not ctl.gates._running, what="the gate call")
    asked = r.bodies[0]
    assert (asked["type"], asked["queue"], asked["deployment"], asked["stage"],
            asked["next"]) == ("confirm_promotion", Q, dep.id, 1, "stage 2 (50%)")
    healthy_window(conn, 2)
    clock.t += 31
    ctl.tick()  # sees the 500: still waiting, asks again
    d = deployments.get(conn, Q)
    assert d.stage == 0 and d.weight_bp == 1000 and d.meta["gate"]["last"] == "HTTP 500"
    assert (d.last_decision["action"], d.last_decision["cause"]) == ("hold", "gate")
    from pycanary.watch import gate_line

    assert gate_line(Q, d.to_dict()) == (
        "waiting at the webhook gate of stage 1: last answer HTTP 500 (asked 2 times); it "
        f"advances at the first check after a 2xx, or `pycanary promote {Q}` now")
    wait_for(lambda: len(r.bodies) == 2 and not ctl.gates._running, what="the second call")
    r.statuses = [200]
    healthy_window(conn, 3)
    clock.t += 31
    ctl.tick()  # sees the second 500 (no new event: same answer), asks again
    assert deployments.get(conn, Q).stage == 0
    wait_for(lambda: len(r.bodies) == 3 and not ctl.gates._running, what="the third call")
    healthy_window(conn, 4)
    clock.t += 31
    ctl.tick()
    d = deployments.get(conn, Q)
    assert (d.stage, d.weight_bp) == (1, 5000) and "gate" not in d.meta
    evs = [(e["type"], e["message"]) for e in deployments.events(conn, Q, dep.id)]
    types = [t for t, _ in evs]
    assert types.count("gate_waiting") == 1 and types.count("gate_refused") == 1
    assert types.index("gate_waiting") < types.index("gate_refused") < \
        types.index("gate_passed") < types.index("stage")
    refused = next(m for t, m in evs if t == "gate_refused")
    assert refused == ("webhook gate of stage 1 (10%) answered HTTP 500: the stage keeps "
                       "waiting (asked again)")
    waiting = next(m for t, m in evs if t == "gate_waiting")
    assert f"http://127.0.0.1:{r.port}/..." in waiting and "/confirm" not in waiting
    assert [f["type"] for f in outbox(conn)] == ["started", "gate_waiting", "stage"]


def test_a_hanging_gate_never_holds_up_the_tick(real_conn, receivers) -> None:
    conn = real_conn
    r = receiver(receivers, [200], delay_s=5)
    clock = Clock(1_800_000_000.0)
    start(conn, gate_plan(r.url(), timeout_s=10), clock)
    ctl = Controller(conn, clock=clock)
    ctl.tick()
    seconds = []
    for n in range(4):
        healthy_window(conn, n)
        clock.t += 31
        rep = ctl.tick()
        seconds.append(rep.seconds)
    d = deployments.get(conn, Q)
    assert d.stage == 0 and d.meta["gate"]["asked"] == 1  # one call, still running
    assert "waiting at the webhook gate" in rep.actions[0]
    assert max(seconds) < 1.0, seconds


# -- end to end -----------------------------------------------------------------------------------
def test_a_failing_canary_under_the_controller_produces_a_delivery_naming_the_reason(
        real_conn, receivers) -> None:
    conn = real_conn
    r = receiver(receivers)
    clock = Clock(1_800_000_000.0)
    dep = start(conn, PLAN, clock)
    ctl = Controller(conn, clock=clock)
    ctl.tick()
    record(conn, "v1", "stable", ok=[_env(f"s{i}") for i in range(100)])
    record(conn, "v2", "canary", ok=[_env(f"c{i}") for i in range(60)],
           failed=[_env(f"cf{i}") for i in range(40)])
    clock.t += 31
    ctl.tick()
    d = deployments.get(conn, Q)
    assert d.state == "rolled_back" and d.reason
    rep = sender(conn, [Target("json", r.url())]).run_once()
    assert rep.failed == 0
    by_type = {b["type"]: b for b in r.bodies}
    assert list(by_type) == ["started", "check_failed", "rollback", "rolled_back"]
    assert by_type["rollback"]["reason"] == f"rollback: {d.reason}"
    assert "max_error_rate" in d.reason or "error rate" in d.reason
    assert by_type["rollback"]["deployment"] == dep.id
    assert by_type["check_failed"]["reason"].startswith("FAIL: ")


def test_docs_name_every_notification_type() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "notifications.md").read_text()
    for t in defaults.NOTIFY_EVENT_TYPES:
        assert f"`{t}`" in doc, t


def test_plan_check_lints_webhook_gates(tmp_path) -> None:
    from pycanary.plan_check import check_plan

    path = tmp_path / "gated.yaml"
    path.write_text("""canary_config:
  interval: 30s
  stages:
    - percentage: 10
      duration: 10m
      gate: {webhook: "http://ci.example.com/confirm/abc", timeout_s: 30}
    - percentage: 50
      duration: 10m
      gate: {webhook: "https://ci.example.com/confirm/abc", timeout_s: 5}
  notifications:
    webhooks:
      - {url: "http://127.0.0.1:9000/hook"}
      - {url: "http://chat.example.com/hook", kind: slack}
""")
    report = check_plan(path, 10_000, 0.01, runs=2)
    gate = [w for w in report.warnings if "gate" in w or "webhooks" in w]
    assert gate == [
        "stages[0].gate.timeout_s: 30s is not below the interval 30s: a slow gate makes the "
        "stage wait at least one more check per call",
        "stages[0].gate.webhook: plain http to a remote host; use https",
        "notifications.webhooks[1].url: plain http to a remote host; use https"]
    assert report.notes == ["the simulation takes the webhook gates of stages 1, 2 as "
                            "answering 2xx at once"]


def test_cli_notify_once_delivers_and_reports(real_conn, receivers, monkeypatch) -> None:
    conn = real_conn
    r = receiver(receivers)
    start(conn)
    rollouts.rollback(conn, Q, reason="canary errors")
    monkeypatch.setenv("PYCANARY_WEBHOOKS", f"json:{r.url()}")
    res = CliRunner().invoke(app, ["--redis-url", conn.url, "--prefix", conn.keys.prefix,
                                   "notify", "--once", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert (out["read"], out["delivered"], out["failed"], out["acknowledged"]) == (3, 3, 0, 3)
    assert [b["type"] for b in r.bodies] == ["started", "rollback", "rolled_back"]
    monkeypatch.setenv("PYCANARY_WEBHOOKS", f"json:http://127.0.0.1:{free_port()}/x")
    rollouts.ramp(conn, Q, "v3", PLAN, allow_schema_change=True, actor="t", force=True)
    res = CliRunner().invoke(app, ["--redis-url", conn.url, "--prefix", conn.keys.prefix,
                                   "notify", "--once", "--max-attempts", "1"])
    assert res.exit_code == 1
    assert res.output.strip() == ("read 1 notifications (0 taken over), delivered 0, failed 1, "
                                  "acknowledged 1")


def test_the_controller_role_may_run_the_sender(tmp_path, receivers) -> None:
    """The least-privilege controller user (pycanary/security.py) reads the outboxes and
    settles them: the sender's commands and notify_settle's are in its rules."""
    import pycanary
    from pycanary.security import acl_rules
    from tests.redis_servers import RedisProcess

    proc = RedisProcess(tmp_path)
    try:
        for role in ("operator", "controller"):
            proc.client.execute_command("ACL", "SETUSER", role, "reset", "on", ">pw",
                                        *acl_rules(role, "pc"))
        op = pycanary.connect(f"redis://operator:pw@127.0.0.1:{proc.port}/0", prefix="pc")
        ctl = pycanary.connect(f"redis://controller:pw@127.0.0.1:{proc.port}/0", prefix="pc")
        start(op)
        rollouts.rollback(op, Q, reason="x")
        r = receiver(receivers)
        rep = sender(ctl, [Target("json", r.url())]).run_once()
        assert (rep.delivered, rep.acknowledged, rep.errors) == (3, 3, [])
        op.close()
        ctl.close()
    finally:
        proc.stop()
