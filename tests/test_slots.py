"""One cluster slot per script call, checked on the keys each script is REALLY called with.

tests/test_atomicity.py checks a hand-typed list of KEYS per script; a caller that builds its
keys differently (a key moved out of the queue's hash tag) passes that test. Here every EVALSHA
that reaches the wire during real flows on a real Redis is recorded (script name and KEYS), and
every recorded call must touch one slot; every script in lua/ must have been called, so a new
script cannot hide from the check.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from pycanary import deployments, dlq, registry, rollouts, service
from pycanary.controller import Controller
from pycanary.job import Job
from pycanary.leader import Leadership
from pycanary.notify import Sender
from pycanary.producer import Producer
from pycanary.scripts import BoundScript, load_all
from pycanary.worker import Worker

from .test_worker import run_until  # one helper that runs a worker until a condition holds

# Scripts that no code path calls (kept for operators / older clients). The test below checks
# that pycanary really never calls them, so this list cannot hide a used script.
UNUSED = {"promote_canary"}
#: Scripts whose KEYS are a broker's lists (no pycanary hash tag; single Redis only).
BROKER_SCRIPTS = {"drain_broker"}

PLAN = {"stages": [
    {"percentage": 10, "duration": "1m", "auto_promote": True},
    {"percentage": 20, "duration": "1m", "auto_promote": False},
], "interval": "30s", "statistical": {"enabled": False}}


class Recorder:
    """Wraps execute_command of the client and of its pipelines: every EVALSHA/EVAL sent."""

    def __init__(self) -> None:
        self.by_sha = {s.sha: s.name for s in load_all().values()}
        self.calls: list[tuple[str, list[str]]] = []
        self.lock = threading.Lock()

    def record(self, args: tuple[Any, ...]) -> None:
        if not args or str(args[0]).upper() not in ("EVALSHA", "EVAL"):
            return
        sha, n = str(args[1]), int(args[2])
        name = self.by_sha.get(sha, f"<unknown {sha[:8]}>")
        with self.lock:
            self.calls.append((name, [str(k) for k in args[3:3 + n]]))


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    rec = Recorder()
    for cls in (redis.client.Redis, redis.client.Pipeline):
        orig = cls.execute_command

        def wrapped(self: Any, *args: Any, _orig: Any = orig, **kw: Any) -> Any:
            rec.record(args)
            return _orig(self, *args, **kw)

        monkeypatch.setattr(cls, "execute_command", wrapped)
    # Producer.enqueue's BoundScript sends on a connection itself, not through
    # execute_command (issue 15): its calls are recorded where it sends them
    orig_send = BoundScript._send

    def send(self: Any, args: tuple[Any, ...], _orig: Any = orig_send) -> Any:
        if self._pool is not None:  # the direct path (else execute_command, recorded above)
            rec.record((*self._head, *args))
        return _orig(self, args)

    monkeypatch.setattr(BoundScript, "_send", send)
    return rec


def _flows(conn: Any) -> None:
    """Every flow that runs a script: producing, working, reaping, deployments, leadership."""
    qk = conn.keys.queue("payments")
    p = Producer(conn)
    # a worker with no stable version configured adopts its own (adopt_stable_version)
    p.enqueue("payments", {"i": -1})
    w0 = Worker(conn, ["payments"], "v1", lambda job: None, heartbeat_s=0.2)
    run_until(w0, lambda: w0.stats.done == 1)
    service.configure_queue(conn, "payments", max_weight="90", salt="s1")
    service.set_weight(conn, "payments", "20")
    service.explain_route(conn, "payments", "order-1", tenant="acme")
    p.enqueue("payments", {"i": 0}, sticky_key="order-1", tenant="acme")
    p.enqueue_many("payments", [{"i": i} for i in range(1, 120)])
    # rollback of a manual weight (rollback_canary) moves everything to stable
    rollouts.rollback(conn, "payments", actor="test")

    # worker: fetch, ack, fail, retry (promote_delayed), dead letter, garbage, bounce
    conn.client.lpush(qk.lane_stable, "not json")
    p.enqueue("payments", {"i": 999}, schema=2)

    def handler(job: Job) -> None:
        if job.payload.get("i", 0) % 10 == 0:
            raise ValueError("bad")

    w = Worker(conn, ["payments"], "v1", handler, schemas=[1], backoff_s=0.001,
               heartbeat_s=0.2, max_attempts=2)
    dlq_done = lambda: conn.client.llen(qk.dlq) >= 13 and conn.client.zcard(  # noqa: E731
        qk.delayed_stable) == 0 and w.stats.bounced >= 1
    run_until(w, dlq_done)
    conn.client.lrem(qk.lane_stable, 0, conn.client.lindex(qk.lane_stable, 0) or "")
    # dead letters: one requeued by id, the rest purged (dead_letters)
    letter = next(d for d in dlq.list_dead(conn, "payments", limit=50)[1] if d.envelope)
    dlq.requeue(conn, "payments", [letter.job_id])
    dlq.purge(conn, "payments", all_=True)

    # a worker stopped with fetched-but-unstarted jobs returns them (return_job); a dead
    # worker's jobs come back through the reaper (requeue_jobs, forget_worker, release_lock)
    p.enqueue_many("payments", [{"i": 1}] * 40)
    gate = threading.Event()
    started = threading.Event()

    def slow(job: Job) -> None:
        started.set()
        gate.wait(10)

    w2 = Worker(conn, ["payments"], "v1", slow, concurrency=1, prefetch=40, heartbeat_s=0.2)
    t = threading.Thread(target=w2.run, daemon=True)
    t.start()
    assert started.wait(10)
    report = registry.reap(conn, ttl_ms=1, now=registry.now_ms() + 60_000)
    assert report.workers >= 1
    w2.stop()
    gate.set()
    t.join(15)
    assert not t.is_alive()

    # a plan deployment driven by a leader-elected controller: start, update (stage), fence,
    # leader acquire/renew/release, final promotion, drain, finish
    clock = [time.time()]
    lead = Leadership(conn, lease_s=30, controller_id="c1")
    ctl = Controller(conn, clock=lambda: clock[0], leadership=lead)
    rollouts.ramp(conn, "payments", "v2", PLAN, actor="test", allow_schema_change=True, force=True)
    p.enqueue_many("payments", [{}] * 50)
    for _ in range(4):
        clock[0] += 31
        ctl.tick()
    rollouts.pause(conn, "payments", actor="test")
    rollouts.resume(conn, "payments", actor="test")
    res = rollouts.promote(conn, "payments", actor="test")
    while res.get("state") != "completed":
        res = rollouts.promote(conn, "payments", actor="test")
    lead.release()
    # a deployment rolled back by the operator: deployment_rollback, drain, finish
    rollouts.ramp(conn, "payments", "v3", PLAN, actor="test", allow_schema_change=True, force=True)
    p.enqueue_many("payments", [{}] * 50)
    rollouts.rollback(conn, "payments", reason="test", actor="test")
    rollouts.drain(conn, "payments")
    assert deployments.get(conn, "payments").state == "rolled_back"
    # the notification sender acknowledges the outboxes (no webhooks: nothing to deliver)
    assert Sender(conn).run_once().acknowledged > 0
    # a busy canary worker stopped after a rollback gives back the canary jobs it holds:
    # return_job from a closed canary lane, to stable
    service.set_weight(conn, "payments", "90")
    p.enqueue_many("payments", [{}] * 20)
    gate3, started3 = threading.Event(), threading.Event()

    def blocked(job: Job) -> None:
        started3.set()
        gate3.wait(10)

    w3 = Worker(conn, ["payments"], "v1", blocked, lane="canary", prefetch=5, heartbeat_s=0.2)
    t3 = threading.Thread(target=w3.run, daemon=True)
    t3.start()
    assert started3.wait(10)
    rollouts.rollback(conn, "payments", actor="test")
    w3.stop()
    gate3.set()
    t3.join(15)
    assert not t3.is_alive()
    assert conn.client.llen(qk.lane_canary) == 0
    _stream_flows(conn)
    _integration_flows(conn)


def _integration_flows(conn: Any) -> None:
    """Celery/RQ integrations (pycanary/integrations/core.py): route_decide, bind_broker,
    record_outcomes, and a rollback's drain_broker of the broker's own lists."""
    from pycanary.integrations import core

    q = "celeryq"
    service.configure_queue(conn, q, stable_version="v1")
    rollouts.start_canary(conn, q, "v2", weight="50", force=True, actor="test")
    stable, canary = f"{conn.keys.prefix}:broker:{q}", f"{conn.keys.prefix}:broker:{q}.canary"
    core.bind(conn, q, kind="rq", stable_key=stable, canary_key=canary, stable_name=q,
              canary_name=f"{q}.canary")
    for i in range(20):
        d = core.decide(conn, q, f"order-{i}")
        conn.client.rpush(canary if d.lane == "canary" else stable, f"job-{i}")
    core.record(conn, q, "v2", "canary", [core.Attempt("ok", 1500, True, "|3")])
    rollouts.rollback(conn, q, actor="test")  # drain_lane, then drain_broker
    assert conn.client.llen(canary) == 0 and conn.client.llen(stable) == 20


def _stream_flows(conn: Any) -> None:
    """The Streams backend's flows on its own queue: set_backend, route_xadd(_many), a
    StreamWorker's fetch/ack/fail/retry/dead letter/touch/reclaim/give-back, dlq requeue,
    rollback drain."""
    from pycanary.backends.stream_worker import StreamWorker

    q = "orders"
    qs = conn.keys.queue(q)
    service.configure_queue(conn, q, backend="streams", stable_version="v1",
                            canary_version="v2")
    p = Producer(conn)
    p.enqueue(q, {"i": 0})
    p.enqueue_many(q, [{"i": i} for i in range(1, 40)])  # weight 0: all on stable

    def handler(job: Job) -> None:
        if job.payload.get("i", 0) % 10 == 0:
            raise ValueError("bad")

    w = StreamWorker(conn, [q], "v1", handler, backoff_s=0.001, heartbeat_s=0.2,
                     max_attempts=2)
    run_until(w, lambda: conn.client.llen(qs.dlq) >= 2 and conn.client.zcard(
        qs.delayed_stable) == 0)
    dlq.requeue(conn, q, all_=True)
    service.set_weight(conn, q, "100")
    p.enqueue_many(q, [{}] * 10)  # to the canary lane, for v2
    gate, started = threading.Event(), threading.Event()

    def blocked(job: Job) -> None:
        started.set()
        gate.wait(10)

    w2 = StreamWorker(conn, [q], "v2", blocked, prefetch=5, heartbeat_s=0.2)
    t = threading.Thread(target=w2.run, daemon=True)
    t.start()
    assert started.wait(10)
    time.sleep(0.5)  # heartbeats: touch_stream (a running job), reclaim_stream
    rollouts.rollback(conn, q, actor="test")  # rollback_canary, drain_stream; give back
    w2.stop()
    gate.set()
    t.join(15)
    assert not t.is_alive()


@pytest.fixture
def recorded(real_conn: Any, recorder: Recorder) -> Iterator[tuple[Any, Recorder]]:
    _flows(real_conn)
    yield real_conn, recorder


def test_every_real_script_call_touches_one_slot(recorded: tuple[Any, Recorder]) -> None:
    conn, rec = recorded
    assert rec.calls, "no script call was recorded"
    unknown = {name for name, _ in rec.calls if name.startswith("<unknown")}
    assert not unknown, f"EVALSHA of a script not in lua/: {unknown}"
    # drain_broker moves a Celery/RQ application's own lists, which carry no hash tag: the
    # integrations are for a single Redis (docs/integrations.md), the one exception here
    calls = [(name, keys) for name, keys in rec.calls if name not in BROKER_SCRIPTS]
    assert len(calls) < len(rec.calls), "the broker drain was not called"
    bad = {(name, tuple(keys)) for name, keys in calls
           if len({key_slot(k.encode()) for k in keys}) != 1}
    assert not bad, f"script calls spanning several slots: {sorted(bad)}"
    prefix = conn.keys.prefix
    for name, keys in calls:
        tags = {re.search(r"\{[^}]*\}", k).group(0) if "{" in k else None for k in keys}
        assert len(tags) == 1 and None not in tags, (name, keys)
        assert all(k.startswith(prefix + ":") for k in keys), (name, keys)


def test_every_script_is_called_by_some_flow(recorded: tuple[Any, Recorder]) -> None:
    _, rec = recorded
    called = {name for name, _ in rec.calls}
    missing = set(load_all()) - called - UNUSED
    assert not missing, f"scripts never called by the flows here (add a flow): {missing}"
    assert not (called & UNUSED), f"now called, remove from UNUSED: {called & UNUSED}"


def test_unused_scripts_are_really_unused() -> None:
    src = "\n".join(p.read_text() for p in (Path(__file__).parents[1] / "pycanary").glob("*.py"))
    for name in UNUSED:
        assert f'"{name}"' not in src and f"'{name}'" not in src, name
