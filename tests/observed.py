"""A real queue with history, so that every metric family /metrics serves has samples: a
rolled-back canary (v2), then an active 50% deployment of v3 whose jobs real workers of v1 and
v3 processed (some failed, retried and went to the DLQ), a live canary worker in the registry
and a controller leader. Shared by the Prometheus and Grafana tests."""

from __future__ import annotations

from dataclasses import dataclass

from pycanary import registry, rollouts, service
from pycanary.connection import Connection
from pycanary.job import Job
from pycanary.leader import Leadership
from pycanary.producer import Producer
from pycanary.worker import Worker
from tests.test_worker import run_until

QUEUE = "payments"
PLAN = {"stages": [{"percentage": 50, "duration": "10m"}]}


@dataclass
class Observed:
    deployment_id: str
    jobs: dict[str, int]      # lane -> jobs of the v3 deployment routed there
    failing: dict[str, int]   # lane -> of those, jobs whose handler always fails
    leader: Leadership


def handler(job: Job) -> None:
    if job.payload["fail"]:
        raise ValueError("induced")


def _finished(conn: Connection, version: str, lane: str, n: int):
    key = conn.keys.queue(QUEUE).metrics_total(version, lane)

    def check() -> bool:
        ok, dead = conn.client.hmget(key, ["ok", "dead"])
        return int(ok or 0) + int(dead or 0) == n

    return check


def observed_deployment(conn: Connection) -> Observed:
    """Build the queue's history on ``conn`` (its own prefix); see the module docstring."""
    service.configure_queue(conn, QUEUE, stable_version="v1")
    rollouts.ramp(conn, QUEUE, "v2", PLAN, allow_schema_change=True, actor="test", force=True)
    rollouts.rollback(conn, QUEUE, reason="test", actor="test")

    # a pinned salt: the same jobs take the same lanes in every run (a fresh salt made the
    # split, and which lane had failures, differ from run to run)
    dep = rollouts.ramp(conn, QUEUE, "v3", PLAN, allow_schema_change=True, actor="test",
                        force=True, salt="observed")
    producer = Producer(conn)
    jobs = {"stable": 0, "canary": 0}
    failing = {"stable": 0, "canary": 0}
    for i in range(40):
        res = producer.enqueue(QUEUE, {"i": i, "fail": i % 5 == 0}, job_id=f"job-{i}")
        jobs[res.lane] += 1
        failing[res.lane] += i % 5 == 0
    assert jobs["stable"] and jobs["canary"] and failing["canary"] and failing["stable"]
    for version, lane in (("v1", "stable"), ("v3", "canary")):
        w = Worker(conn, [QUEUE], version, handler, max_attempts=2, backoff_s=0.001,
                   heartbeat_s=0.2)
        run_until(w, _finished(conn, version, lane, jobs[lane]))
    # a live canary worker and a live stable one, as the registry shows them between beats
    for wid, version, lane in (("w-canary", "v3", "canary"), ("w-stable", "v1", "stable")):
        registry.heartbeat(conn, wid, version=version, queues={QUEUE: lane},
                           info={"state": "active", "rss": 50_000_000}, ttl_ms=600_000)
    # a long lease: nothing renews it while the test scrapes
    lead = Leadership(conn, controller_id="observed", lease_s=600)
    assert lead.tick()
    return Observed(dep.id, jobs, failing, lead)
