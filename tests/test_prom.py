"""The Prometheus collector on fakeredis and real Redis: exact values of every family after real
routing, real workers, a rollback and a promotion, parsed back from the exposition text."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from pycanary import histogram, metrics, prom, registry, rollouts, service
from pycanary.deployments import ACTIVE_STATES
from pycanary.job import Job
from pycanary.producer import Producer
from pycanary.worker import Worker
from tests.test_worker import run_until

PLAN = {"stages": [{"percentage": 50, "duration": "10m"}]}
FAMILIES = [
    "canary_deployments_active", "canary_traffic_split_percentage", "canary_promotions",
    "canary_rollbacks", "pycanary_lane_version", "pycanary_jobs_routed", "pycanary_jobs_processed",
    "pycanary_job_first_attempts", "pycanary_job_duration_seconds", "pycanary_job_cpu_seconds",
    "pycanary_queue_depth", "pycanary_retries_waiting", "pycanary_dlq_length",
    "pycanary_workers", "pycanary_worker_rss_bytes", "pycanary_controller_errors",
    "pycanary_controller_leader_epoch", "pycanary_controller_leader_age_seconds",
]

Samples = dict[tuple[str, frozenset], float]


def scrape(conn) -> Samples:
    out: Samples = {}
    for fam in text_string_to_metric_families(prom.render(conn).decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def val(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def series(samples: Samples, name: str) -> dict[frozenset, float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def all_finished(conn, version: str, lane: str, n_jobs: int) -> Callable[[], bool]:
    """Every job of the lane ended (ok or dead), read from the totals the ack scripts write.

    Checking that the lane, retry set and processing list are empty one key after the other
    races with a retry moving from the retry set to the lane between two reads."""
    key = conn.keys.queue("payments").metrics_total(version, lane)

    def check() -> bool:
        ok, dead = conn.client.hmget(key, ["ok", "dead"])
        return int(ok or 0) + int(dead or 0) == n_jobs

    return check


def handler(job: Job) -> None:
    if job.payload["fail"]:
        raise ValueError("induced")


def ack_direct(conn, version: str, lane: str, run_buckets: list[int]) -> None:
    """Record successful attempts with chosen run-time buckets, as a worker's ack would."""
    qk = conn.keys.queue("payments")
    slot = metrics.slot_of(registry.now_ms())
    args: list = [3600]
    for i, b in enumerate(run_buckets):
        args += [f"raw-{version}-{lane}-{i}", b, 0, b, "1", ""]
    # held first: an ack of a job no longer held counts only as `late` (issue 8)
    conn.client.lpush(qk.processing("w-direct"), *args[1::6])
    conn.scripts.call("ack_jobs", qk.ack_keys("w-direct", version, lane, slot), args)


def test_routing_processing_depth_split_and_workers(conn) -> None:
    service.configure_queue(conn, "payments", stable_version="v1")
    dep = rollouts.ramp(conn, "payments", "v2", PLAN, allow_schema_change=True,
                        actor="test", force=True)
    producer = Producer(conn)
    jobs = {"stable": 0, "canary": 0}
    failing = {"stable": 0, "canary": 0}
    for i in range(40):
        res = producer.enqueue("payments", {"i": i, "fail": i % 5 == 0}, job_id=f"job-{i}")
        jobs[res.lane] += 1
        failing[res.lane] += i % 5 == 0
    assert jobs["stable"] and jobs["canary"]  # 50% sticky over 40 ids: both lanes have jobs

    for version, lane in (("v1", "stable"), ("v2", "canary")):
        w = Worker(conn, ["payments"], version, handler, max_attempts=2, backoff_s=0.001,
                   heartbeat_s=0.2)
        run_until(w, all_finished(conn, version, lane, jobs[lane]))

    waiting = {"stable": 0, "canary": 0}
    for i in range(7):
        waiting[producer.enqueue("payments", {"i": i, "fail": False},
                                 job_id=f"later-{i}").lane] += 1
    registry.heartbeat(conn, "w-canary-1", version="v2", queues={"payments": "canary"},
                       info={"state": "active", "rss": 1000}, ttl_ms=60_000)
    registry.heartbeat(conn, "w-canary-2", version="v2", queues={"payments": "canary"},
                       info={"state": "active", "rss": 2500}, ttl_ms=60_000)
    registry.heartbeat(conn, "w-next", version="v9", queues={"payments": "stable"},
                       info={"state": "standby"}, ttl_ms=60_000)

    s = scrape(conn)
    for status in ACTIVE_STATES:
        assert val(s, "canary_deployments_active", queue="payments",
                   status=status) == (1.0 if status == "active" else 0.0)
    assert series(s, "canary_traffic_split_percentage") == {
        frozenset({"queue": "payments", "deployment_id": dep.id, "lane": lane}.items()): 50.0
        for lane in ("stable", "canary")}
    assert series(s, "pycanary_lane_version") == {
        frozenset({"queue": "payments", "lane": "stable", "version": "v1"}.items()): 1.0,
        frozenset({"queue": "payments", "lane": "canary", "version": "v2"}.items()): 1.0}
    assert series(s, "canary_promotions_total") == {
        frozenset({"queue": "payments", "outcome": "completed"}.items()): 0.0}
    assert series(s, "canary_rollbacks_total") == {}

    for lane in ("stable", "canary"):
        assert val(s, "pycanary_jobs_routed_total", queue="payments",
                   lane=lane) == jobs[lane] + waiting[lane]
        assert val(s, "pycanary_queue_depth", queue="payments", lane=lane) == waiting[lane]

    # every failing job failed twice: retried after the first attempt, dead after the second
    processed = series(s, "pycanary_jobs_processed_total")
    expected = {}
    for version, lane in (("v1", "stable"), ("v2", "canary")):
        f = failing[lane]
        for outcome, n in (("ok", jobs[lane] - f), ("failed", 2 * f), ("retried", f),
                           ("dead", f), ("crashed", 0)):
            expected[frozenset({"queue": "payments", "lane": lane, "version": version,
                                "outcome": outcome}.items())] = float(n)
    assert processed == expected  # v9 has no totals: no series

    for version, lane in (("v1", "stable"), ("v2", "canary")):
        attempts = jobs[lane] + failing[lane]  # ok + failed
        assert val(s, "pycanary_job_duration_seconds_count", queue="payments", lane=lane,
                   version=version) == attempts
        assert val(s, "pycanary_job_duration_seconds_bucket", queue="payments", lane=lane,
                   version=version, le="+Inf") == attempts
        assert val(s, "pycanary_job_duration_seconds_sum", queue="payments", lane=lane,
                   version=version) > 0
        # every attempt's handler CPU time is recorded; each job had one first attempt
        assert val(s, "pycanary_job_cpu_seconds_count", queue="payments", lane=lane,
                   version=version) == attempts
        assert val(s, "pycanary_job_first_attempts_total", queue="payments", lane=lane,
                   version=version, outcome="all") == jobs[lane]
        assert val(s, "pycanary_job_first_attempts_total", queue="payments", lane=lane,
                   version=version, outcome="failed") == failing[lane]
    assert series(s, "pycanary_worker_rss_bytes") == {
        frozenset({"queue": "payments", "version": "v2", "lane": "canary"}.items()): 3500.0}

    assert series(s, "pycanary_workers") == {
        frozenset({"queue": "payments", "version": "v2", "lane": "canary",
                   "state": "active"}.items()): 2.0,
        frozenset({"queue": "payments", "version": "v9", "lane": "stable",
                   "state": "standby"}.items()): 1.0,
    }


def test_rollback_then_promotion_counters_and_remembered_versions(conn) -> None:
    service.configure_queue(conn, "payments", stable_version="v1")
    rollouts.ramp(conn, "payments", "v2", PLAN, allow_schema_change=True, actor="test", force=True)
    producer = Producer(conn)
    lanes = [producer.enqueue("payments", {"i": i}, job_id=f"job-{i}").lane for i in range(20)]
    ack_direct(conn, "v2", "canary", [5, 5])
    ack_direct(conn, "v1", "stable", [7])
    ack_direct(conn, "v-forgotten", "canary", [1])  # no key names it: not exported

    rollouts.rollback(conn, "payments", reason="x", actor="test")
    s = scrape(conn)
    assert series(s, "canary_rollbacks_total") == {
        frozenset({"queue": "payments", "reason": "manual"}.items()): 1.0}
    assert val(s, "canary_promotions_total", queue="payments", outcome="completed") == 0
    assert series(s, "canary_traffic_split_percentage") == {
        frozenset({"queue": "payments", "deployment_id": "", "lane": "canary"}.items()): 0.0,
        frozenset({"queue": "payments", "deployment_id": "", "lane": "stable"}.items()): 100.0}
    assert all(v == 0 for v in series(s, "canary_deployments_active").values())
    # the canary lane drained into stable; routed counts keep what routing decided
    assert val(s, "pycanary_queue_depth", queue="payments", lane="canary") == 0
    assert val(s, "pycanary_queue_depth", queue="payments", lane="stable") == 20
    assert val(s, "pycanary_jobs_routed_total", queue="payments",
               lane="canary") == lanes.count("canary")

    rollouts.ramp(conn, "payments", "v3", PLAN, allow_schema_change=True, actor="test", force=True)
    assert val(scrape(conn), "canary_deployments_active", queue="payments", status="active") == 1
    rollouts.promote(conn, "payments", full=True, actor="test")
    s = scrape(conn)
    assert val(s, "canary_promotions_total", queue="payments", outcome="completed") == 1
    assert val(s, "canary_rollbacks_total", queue="payments", reason="manual") == 1
    assert series(s, "canary_traffic_split_percentage") == {
        frozenset({"queue": "payments", "deployment_id": "", "lane": "canary"}.items()): 0.0,
        frozenset({"queue": "payments", "deployment_id": "", "lane": "stable"}.items()): 100.0}
    # v1 (former stable) and v2 (rolled back) are still found with no worker naming them
    ok = {(dict(k)["version"], dict(k)["lane"]): v
          for k, v in series(s, "pycanary_jobs_processed_total").items()
          if dict(k)["outcome"] == "ok"}
    assert ok == {("v1", "stable"): 1.0, ("v2", "canary"): 2.0}


def test_duration_histogram_buckets_in_seconds(conn) -> None:
    service.configure_queue(conn, "payments", stable_version="v1")
    ack_direct(conn, "v1", "stable", [0, 0, 10, 10, 10])
    ack_direct(conn, "v1", "canary", [histogram.N_BUCKETS - 1])  # >= 10 min: only in +Inf
    s = scrape(conn)
    buckets = {dict(k)["le"]: v for k, v in series(s, "pycanary_job_duration_seconds_bucket")
               .items() if dict(k)["lane"] == "stable"}
    canary = {dict(k)["le"]: v for k, v in series(s, "pycanary_job_duration_seconds_bucket")
              .items() if dict(k)["lane"] == "canary"}
    # the canary lane's one run of 10 min or more: only in +Inf
    assert canary == {le: (1.0 if le == "+Inf" else 0.0) for le in prom.BUCKET_LE}
    les = list(buckets)
    assert les == prom.BUCKET_LE and len(les) == histogram.N_BUCKETS
    bounds = [float(le) for le in les]
    assert bounds == sorted(bounds) and len(set(bounds)) == len(bounds)
    assert les[0] == "0.0001" and les[-2] == "600.0"
    b10 = f"{histogram.bucket_bounds(10)[1] / 1e6:.6g}"
    b9 = f"{histogram.bucket_bounds(9)[1] / 1e6:.6g}"
    assert (buckets["0.0001"], buckets[b9], buckets[b10]) == (2, 2, 5)
    assert (buckets["600.0"], buckets["+Inf"]) == (5, 5)
    counts = list(buckets.values())
    assert all(a <= b for a, b in itertools.pairwise(counts))  # cumulative
    assert val(s, "pycanary_job_duration_seconds_count", queue="payments", lane="stable",
               version="v1") == 5
    expected_sum = (2 * histogram.bucket_value(0) + 3 * histogram.bucket_value(10)) / 1e6
    assert val(s, "pycanary_job_duration_seconds_sum", queue="payments", lane="stable",
               version="v1") == pytest.approx(expected_sum)
    assert val(s, "pycanary_job_duration_seconds_sum", queue="payments", lane="canary",
               version="v1") == pytest.approx(
                   histogram.bucket_value(histogram.N_BUCKETS - 1) / 1e6)


def test_empty_redis_exports_every_family_without_samples(conn) -> None:
    families = list(text_string_to_metric_families(prom.render(conn).decode()))
    assert [f.name for f in families] == FAMILIES
    # nobody leads: the leader gauges say 0 (so `== 0` alerts need no absent()), nothing else
    leader_families = {"pycanary_controller_leader_epoch",
                       "pycanary_controller_leader_age_seconds"}
    assert all(not f.samples for f in families if f.name not in leader_families)
    assert {f.name: [s.value for s in f.samples] for f in families
            if f.name in leader_families} == {n: [0.0] for n in leader_families}


def test_registering_reads_nothing() -> None:
    broken = SimpleNamespace(client=None, keys=None)  # any Redis access would raise
    reg = CollectorRegistry(auto_describe=True)
    reg.register(prom.RedisCollector(broken))  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        list(reg.collect())


def test_dead_letters_retries_waiting_and_the_leader(conn) -> None:
    """DLQ length and waiting retries per queue and lane, the leader's epoch and age."""
    from pycanary.leader import Leadership

    service.configure_queue(conn, "payments", stable_version="v1")
    producer = Producer(conn)
    for i in range(3):
        producer.enqueue("payments", {"i": i, "fail": True}, job_id=f"dead-{i}")
    # one attempt each: every job goes to the DLQ
    w = Worker(conn, ["payments"], "v1", handler, max_attempts=1, heartbeat_s=0.2)
    run_until(w, all_finished(conn, "v1", "stable", 3))
    for i in range(2):
        producer.enqueue("payments", {"i": i, "fail": True}, job_id=f"retry-{i}")
    # a backoff of an hour: both failed jobs wait in the stable lane's delayed set
    w = Worker(conn, ["payments"], "v1", handler, max_attempts=3, backoff_s=3600,
               backoff_max_s=3600, heartbeat_s=0.2)
    key = conn.keys.queue("payments").metrics_total("v1", "stable")
    run_until(w, lambda: int(conn.client.hget(key, "retried") or 0) == 2)

    s = scrape(conn)
    assert series(s, "pycanary_dlq_length") == {
        frozenset({"queue": "payments"}.items()): 3.0}
    assert val(s, "pycanary_retries_waiting", queue="payments", lane="stable") == 2
    assert val(s, "pycanary_retries_waiting", queue="payments", lane="canary") == 0
    assert val(s, "pycanary_jobs_processed_total", queue="payments", lane="stable",
               version="v1", outcome="retried") == 2
    assert val(s, "pycanary_controller_leader_epoch") == 0
    assert val(s, "pycanary_controller_leader_age_seconds") == 0

    lead = Leadership(conn, controller_id="c")
    assert lead.tick()
    since = int(conn.client.get(conn.keys.leader_since).split(":")[1])
    conn.client.set(conn.keys.leader_since, f"1:{since - 90_000}")  # as if acquired 90 s ago
    s = scrape(conn)
    assert val(s, "pycanary_controller_leader_epoch") == 1
    assert 90 <= val(s, "pycanary_controller_leader_age_seconds") < 120
    lead.release()


class _CountingClient:
    """Wraps a client: counts round trips (each direct command, each pipeline execute)."""

    def __init__(self, client) -> None:
        self._client = client
        self.round_trips = 0

    def pipeline(self, *args, **kwargs):
        pipe = self._client.pipeline(*args, **kwargs)
        execute = pipe.execute

        def counted(*a, **k):
            self.round_trips += 1
            return execute(*a, **k)

        pipe.execute = counted
        return pipe

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        if callable(attr):
            def counted(*a, **k):
                self.round_trips += 1
                return attr(*a, **k)
            return counted
        return attr


@pytest.mark.parametrize("n_queues", [1, 6])
def test_a_scrape_costs_five_round_trips_whatever_the_number_of_queues(conn, n_queues) -> None:
    producer = Producer(conn)
    for i in range(n_queues):
        service.configure_queue(conn, f"q{i}", stable_version="v1")
        producer.enqueue(f"q{i}", {"i": i})
    registry.heartbeat(conn, "w-1", version="v1", queues={"q0": "stable"},
                       info={"state": "active"}, ttl_ms=60_000)
    counting = _CountingClient(conn.client)
    collector = prom.RedisCollector(SimpleNamespace(client=counting, keys=conn.keys))
    families = {f.name: f for f in collector.collect()}
    assert counting.round_trips == 5
    assert len(families["pycanary_dlq_length"].samples) == n_queues
