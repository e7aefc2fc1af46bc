"""Prometheus metrics (docs/design.md section 8), read from Redis on every scrape.

Why a custom collector instead of prometheus-client's Counter/Gauge objects: the numbers are
written by Lua scripts in many worker, producer and controller processes, atomically with the
state change they count. Redis already holds the truth, so the API process that serves
``/metrics`` only translates it; it never counts anything itself, and any number of API
replicas export the same values.

A scrape costs five round trips whatever the number of queues (every read is pipelined) and
never SCANs: queues come from the ``Keys.queues`` set (plus the active-deployment set), each
queue's deployment from its deployment hash, workers from the registry sorted set
(tests/test_prom.py counts the round trips).

Per-version series carry ``lane`` (the lane that ran the attempts: totals are kept per version
and lane) as well as ``version``, so a dashboard compares the lanes with ``sum by (lane)`` and
follows one version across its promotion with ``sum by (version)``. ``pycanary_lane_version``
says which version each lane is configured to run now. The leader gauges come from the lease
and its start record (``Keys.leader_since``, written by leader_acquire.lua).

Known limits, on purpose:

* ``pycanary_jobs_processed_total`` and ``pycanary_job_duration_seconds`` come from the running
  totals ``mt:<version>:<lane>``. Key names cannot be listed without SCAN, so the versions read
  are the ones Redis still names for the queue: its stable and canary version, the current
  deployment's two versions, former stable versions, rolled-back versions and the versions of
  registered workers. Totals of any other version (an old canary whose name was forgotten, a
  worker that was reaped) are not exported.
* The totals expire ``keep_s`` (default 1 h) after their last write, so a version idle for that
  long restarts from zero. Prometheus treats that as a counter reset, which ``rate()`` handles.
* Worker liveness uses the default heartbeat TTL (as ``pycanary workers`` does); pass
  ``heartbeat_s`` when the workers run with another interval.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from . import defaults, histogram, leader, metrics, registry, service
from .connection import Connection
from .deployments import ACTIVE_STATES
from .drain import broker_backlogs
from .keys import LANES

#: Outcomes exported by pycanary_jobs_processed_total. `ok` and `failed` count attempts;
#: `retried` and `dead` split the failed ones by what happened next; `crashed` are the failed
#: ones lost with their worker (reaped mid-run: they have no run time, so ok + failed - crashed
#: is the histogram's _count). `late` (a duplicate ack) is not an outcome of its own; the
#: job-level first-attempt counts are pycanary_job_first_attempts_total.
OUTCOMES = ("ok", "failed", "retried", "dead", "crashed")

_US_PER_S = 1_000_000


def _bucket_bounds_le() -> list[str]:
    """The exported ``le`` of every internal bucket, in seconds.

    Bucket i of `histogram.py` holds [low, high) microseconds, so "at most high" is exact for
    its cumulative count. The second-to-last bucket stops at HIGH_US (longer runs land in the
    last, open-ended one, exported as +Inf). Bounds are rounded to six significant digits so the
    exposition reads ``0.000121`` rather than float noise; adjacent bounds are 10% apart, so the
    rounding never reorders them.
    """
    out = []
    for i in range(histogram.N_BUCKETS - 1):
        high_us = min(histogram.bucket_bounds(i)[1], histogram.HIGH_US)
        out.append(floatToGoString(float(f"{high_us / _US_PER_S:.6g}")))
    out.append("+Inf")
    return out


BUCKET_LE = _bucket_bounds_le()


def duration_buckets(run_hist: dict[int, int]) -> tuple[list[tuple[str, float]], float]:
    """Cumulative Prometheus buckets and an estimated sum (seconds) from bucket counts.

    The sum is estimated from each bucket's geometric midpoint, because the exact run times are
    not stored. Quantiles are not computed here: Prometheus derives them from these buckets,
    and pycanary's own views use histogram.quantile (the analysis's function).
    """
    counts = [0] * histogram.N_BUCKETS
    for i, n in run_hist.items():
        counts[min(max(i, 0), histogram.N_BUCKETS - 1)] += n
    buckets: list[tuple[str, float]] = []
    running = 0
    for le, n in zip(BUCKET_LE, counts, strict=True):
        running += n
        buckets.append((le, float(running)))
    total_us = sum(n * histogram.bucket_value(i) for i, n in enumerate(counts) if n)
    return buckets, total_us / _US_PER_S


@dataclass
class QueueSnapshot:
    """Everything one scrape read about one queue."""

    name: str
    weight_bp: int = 0
    stable_version: str = ""
    canary_version: str = ""
    deployment_id: str = ""
    deployment_state: str = ""
    counters: dict[str, int] = field(default_factory=dict)
    routed: dict[str, int] = field(default_factory=dict)
    depth: dict[str, int] = field(default_factory=dict)
    #: lane -> retries waiting out their backoff (the lane's delayed set)
    delayed: dict[str, int] = field(default_factory=dict)
    dlq: int = 0
    versions: set[str] = field(default_factory=set)
    #: (version, lane) -> running totals; pairs with no totals hash are left out.
    totals: dict[tuple[str, str], metrics.Fields] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.deployment_state in ACTIVE_STATES


def _per_lane(family: CounterMetricFamily | GaugeMetricFamily, queues: list[QueueSnapshot],
              values: Callable[[QueueSnapshot], dict[str, int]]) -> Metric:
    """Fill a (queue, lane) family: one sample per lane of every queue, 0 when absent."""
    for qs in queues:
        got = values(qs)
        for lane in LANES:
            family.add_metric([qs.name, lane], got.get(lane, 0))
    return family


class RedisCollector(Collector):
    """A prometheus-client collector exporting pycanary's state, read fresh on each scrape."""

    def __init__(self, conn: Connection, *,
                 heartbeat_s: float = defaults.HEARTBEAT_S) -> None:
        self.conn = conn
        self.worker_ttl_ms = defaults.ttl_ms(heartbeat_s)
        #: (queue, reason) -> deployments the controller skipped, as of the last read()
        self.controller_errors: dict[tuple[str, str], int] = {}
        #: the controller leader as of the last read(), None when nobody leads
        self.leader: leader.LeaderInfo | None = None
        #: this process's clock at the last read(), the "now" of the leader's age
        self.read_at_ms = 0

    # -- reading ------------------------------------------------------------------------------
    def read(self) -> tuple[list[QueueSnapshot], list[registry.WorkerRecord]]:
        """All of Redis a scrape needs: queue list, workers, per-queue state, then totals."""
        client, keys = self.conn.client, self.conn.keys
        pipe = client.pipeline(transaction=False)
        pipe.smembers(keys.queues)
        pipe.smembers(keys.active_deployments)
        pipe.hgetall(keys.controller_errors_total)
        leader.read_leader_on(pipe, keys)
        listed, active, errors, lease, since = pipe.execute()
        self.read_at_ms = defaults.now_ms()
        self.leader = leader.decode_leader(lease, since)
        self.controller_errors = {}
        for name, n in errors.items():
            reason, _, queue = name.partition(":")
            self.controller_errors[(queue, reason)] = int(n)
        queues = [QueueSnapshot(q) for q in sorted(set(listed) | set(active))]
        workers = registry.list_workers(self.conn, ttl_ms=self.worker_ttl_ms)

        pipe = client.pipeline(transaction=False)
        for qs in queues:
            qk = keys.queue(qs.name)
            pipe.hmget(qk.config, ["weight_bp", "stable_version", "canary_version"])
            pipe.hmget(qk.deployment, ["id", "state", "stable_version", "canary_version"])
            pipe.hgetall(qk.counters)
            service.read_lanes(pipe, qk)
            pipe.zrange(qk.former_stable, 0, -1)
            pipe.smembers(qk.rolled_back)
            pipe.llen(qk.dlq)
            for lane in LANES:
                pipe.zcard(qk.delayed(lane))
            pipe.hgetall(qk.broker)
        replies = iter(pipe.execute())
        bindings: dict[str, dict[str, str]] = {}
        for qs in queues:
            (weight, stable, canary), (dep_id, state, dep_stable, dep_canary) = (
                next(replies), next(replies))
            qs.weight_bp = int(weight or 0)
            qs.stable_version, qs.canary_version = stable or "", canary or ""
            qs.deployment_id, qs.deployment_state = dep_id or "", state or ""
            qs.counters = {k: int(v) for k, v in next(replies).items()}
            qs.depth, qs.routed = service.decode_lanes(replies)
            former, rolled_back = next(replies), next(replies)
            qs.dlq = int(next(replies))
            qs.delayed = {lane: int(next(replies)) for lane in LANES}
            bindings[qs.name] = next(replies)
            qs.versions = {v for v in (stable, canary, dep_stable, dep_canary) if v}
            qs.versions |= set(former) | set(rolled_back)
            qs.versions |= {w.version for w in workers if qs.name in w.queues}
            qs.versions.discard("?")  # a worker whose meta was lost

        # a Celery or RQ queue (pycanary/integrations/): its jobs wait in the broker's lists,
        # counted in the depth gauge as status and the controller count them
        by_name = {qs.name: qs for qs in queues}
        for (name, lane), n in broker_backlogs(self.conn, bindings).items():
            by_name[name].depth[lane] = by_name[name].depth.get(lane, 0) + n

        pairs = [(qs, v, lane) for qs in queues for v in sorted(qs.versions) for lane in LANES]
        pipe = client.pipeline(transaction=False)
        for qs, version, lane in pairs:
            metrics.read_totals_on(pipe, keys.queue(qs.name), version, lane)
        # one corrupt totals key (wrong type) must not fail the whole scrape: it is left out
        for (qs, version, lane), raw in zip(pairs, pipe.execute(raise_on_error=False),
                                            strict=True):
            if raw and not isinstance(raw, Exception):
                qs.totals[(version, lane)] = metrics.decode(raw)
        return queues, workers

    # -- exporting ----------------------------------------------------------------------------
    def describe(self) -> Iterable[Metric]:
        """The families without samples, so registering the collector reads nothing."""
        return self._families([], [])

    def collect(self) -> Iterable[Metric]:
        queues, workers = self.read()
        return self._families(queues, workers, self.controller_errors, self.leader,
                              self.read_at_ms)

    def _families(self, queues: list[QueueSnapshot], workers: list[registry.WorkerRecord],
                  errors: dict[tuple[str, str], int] | None = None,
                  lead: leader.LeaderInfo | None = None, now_ms: int = 0) -> Iterator[Metric]:
        yield self._deployments_active(queues)
        yield self._traffic_split(queues)
        yield from self._deployment_counters(queues)
        yield self._lane_version(queues)
        yield self._routed(queues)
        yield self._processed(queues)
        yield self._first_attempts(queues)
        yield self._duration(queues)
        yield self._cpu(queues)
        yield self._depth(queues)
        yield self._delayed(queues)
        yield self._dlq(queues)
        yield self._workers(workers)
        yield self._rss(workers)
        yield self._controller_errors(errors or {})
        yield from self._leader(lead, now_ms)

    @staticmethod
    def _deployments_active(queues: list[QueueSnapshot]) -> Metric:
        # A state set: every active status of every queue, 1 for the one in force. Emitting the
        # zeros keeps the series alive when a deployment ends, so `== 0` alerts and graphs work.
        g = GaugeMetricFamily(
            "canary_deployments_active",
            "1 for the status of the queue's deployment while it is active, 0 for the others",
            labels=["queue", "status"])
        for qs in queues:
            for status in ACTIVE_STATES:
                g.add_metric([qs.name, status], 1.0 if qs.deployment_state == status else 0.0)
        return g

    @staticmethod
    def _traffic_split(queues: list[QueueSnapshot]) -> Metric:
        # The queue config's weight is what route_enqueue uses, so it is the truth even when an
        # operator set it without a deployment (deployment_id is then empty).
        # Both lanes, so that a graph or a query by lane shows the split side by side; the
        # canary sample is the weight (what the design card calls the traffic split). Tenant
        # overrides are not reflected: this is the queue's own weight.
        g = GaugeMetricFamily(
            "canary_traffic_split_percentage",
            "Share of the queue's new jobs routed to each lane, in percent (canary = the "
            "queue's weight, stable = 100 - weight)",
            labels=["queue", "deployment_id", "lane"])
        for qs in queues:
            dep = qs.deployment_id if qs.active else ""
            g.add_metric([qs.name, dep, "canary"], qs.weight_bp / 100)
            g.add_metric([qs.name, dep, "stable"], (10_000 - qs.weight_bp) / 100)
        return g

    @staticmethod
    def _lane_version(queues: list[QueueSnapshot]) -> Metric:
        # The versions in force, to join per-version series with their role today
        # (`* on(queue, version) group_left(lane)`): stable_version serves the stable lane, the
        # canary version (config, else the deployment's) the canary lane.
        g = GaugeMetricFamily(
            "pycanary_lane_version",
            "1 for the version each lane of the queue is configured to run now",
            labels=["queue", "lane", "version"])
        for qs in queues:
            if qs.stable_version:
                g.add_metric([qs.name, "stable", qs.stable_version], 1.0)
            if qs.canary_version:
                g.add_metric([qs.name, "canary", qs.canary_version], 1.0)
        return g

    @staticmethod
    def _deployment_counters(queues: list[QueueSnapshot]) -> Iterator[Metric]:
        # deployment_finish.lua increments `promotions:<outcome>` and `rollbacks:<rule>`.
        promotions = CounterMetricFamily(
            "canary_promotions", "Deployments finished by promotion, by outcome",
            labels=["queue", "outcome"])
        rollbacks = CounterMetricFamily(
            "canary_rollbacks", "Deployments finished by rollback, by the rule that fired",
            labels=["queue", "reason"])
        for qs in queues:
            outcomes = {"completed": 0}
            for name, n in sorted(qs.counters.items()):
                kind, _, label = name.partition(":")
                if kind == "promotions":
                    outcomes[label] = n
                elif kind == "rollbacks":
                    rollbacks.add_metric([qs.name, label], n)
            for outcome, n in outcomes.items():
                promotions.add_metric([qs.name, outcome], n)
        yield promotions
        yield rollbacks

    @staticmethod
    def _routed(queues: list[QueueSnapshot]) -> Metric:
        c = CounterMetricFamily("pycanary_jobs_routed", "Jobs enqueued, by the lane they got",
                                labels=["queue", "lane"])
        return _per_lane(c, queues, lambda qs: qs.routed)

    @staticmethod
    def _processed(queues: list[QueueSnapshot]) -> Metric:
        c = CounterMetricFamily(
            "pycanary_jobs_processed",
            "Job attempts finished (ok, failed) and what became of failed ones (retried, dead)",
            labels=["queue", "lane", "version", "outcome"])
        for qs in queues:
            for (version, lane), totals in sorted(qs.totals.items()):
                for outcome in OUTCOMES:
                    c.add_metric([qs.name, lane, version, outcome],
                                 totals.counts.get(outcome, 0))
        return c

    @staticmethod
    def _first_attempts(queues: list[QueueSnapshot]) -> Metric:
        c = CounterMetricFamily(
            "pycanary_job_first_attempts",
            "Jobs whose first attempt finished (outcome all), and those whose first attempt "
            "failed or crashed (outcome failed): the unit the error tests judge",
            labels=["queue", "lane", "version", "outcome"])
        for qs in queues:
            for (version, lane), totals in sorted(qs.totals.items()):
                c.add_metric([qs.name, lane, version, "all"],
                             totals.counts.get("first_attempts", 0))
                c.add_metric([qs.name, lane, version, "failed"],
                             totals.counts.get("first_failed", 0))
        return c

    @staticmethod
    def _per_version_histogram(queues: list[QueueSnapshot], name: str, doc: str,
                               hist_of: Callable[[metrics.Fields], dict[int, int]]) -> Metric:
        # Per (version, lane) as the totals are kept: a graph of "canary vs stable" is then a
        # `sum by (lane, le)`, and one of a version across a promotion a `sum by (version, le)`.
        h = HistogramMetricFamily(name, doc, labels=["queue", "lane", "version"])
        for qs in queues:
            for (version, lane), totals in sorted(qs.totals.items()):
                hist = hist_of(totals)
                if hist:
                    buckets, total_s = duration_buckets(hist)
                    h.add_metric([qs.name, lane, version], buckets, total_s)
        return h

    @classmethod
    def _duration(cls, queues: list[QueueSnapshot]) -> Metric:
        return cls._per_version_histogram(
            queues, "pycanary_job_duration_seconds",
            "Handler run time of job attempts (sum estimated from bucket midpoints)",
            lambda t: t.run_hist)

    @classmethod
    def _cpu(cls, queues: list[QueueSnapshot]) -> Metric:
        return cls._per_version_histogram(
            queues, "pycanary_job_cpu_seconds",
            "Handler CPU time of job attempts, the handler thread's (sum estimated from "
            "bucket midpoints)", lambda t: t.cpu_hist)

    @staticmethod
    def _depth(queues: list[QueueSnapshot]) -> Metric:
        g = GaugeMetricFamily("pycanary_queue_depth", "Jobs waiting in the lane (not retries)",
                              labels=["queue", "lane"])
        return _per_lane(g, queues, lambda qs: qs.depth)

    @staticmethod
    def _delayed(queues: list[QueueSnapshot]) -> Metric:
        g = GaugeMetricFamily(
            "pycanary_retries_waiting",
            "Failed jobs waiting out their retry backoff, by the lane they return to",
            labels=["queue", "lane"])
        return _per_lane(g, queues, lambda qs: qs.delayed)

    @staticmethod
    def _dlq(queues: list[QueueSnapshot]) -> Metric:
        g = GaugeMetricFamily("pycanary_dlq_length",
                              "Dead letters of the queue (jobs out of attempts, poison jobs)",
                              labels=["queue"])
        for qs in queues:
            g.add_metric([qs.name], qs.dlq)
        return g

    @staticmethod
    def _workers(workers: list[registry.WorkerRecord]) -> Metric:
        # Registered workers, dead ones included until the reaper forgets them: a count of dead
        # workers is worth alerting on.
        g = GaugeMetricFamily("pycanary_workers", "Registered workers by version, lane and state",
                              labels=["queue", "version", "lane", "state"])
        counts = Counter((q, w.version, lane, w.state)
                         for w in workers for q, lane in w.queues.items())
        for labels, n in sorted(counts.items()):
            g.add_metric(list(labels), n)
        return g

    @staticmethod
    def _rss(workers: list[registry.WorkerRecord]) -> Metric:
        # Live workers only (a dead one's last report is not memory in use), summed per lane.
        g = GaugeMetricFamily("pycanary_worker_rss_bytes",
                              "Resident memory of the live workers, summed per version and lane",
                              labels=["queue", "version", "lane"])
        sums: Counter[tuple[str, str, str]] = Counter()
        for w in workers:
            rss = w.to_dict()["rss_bytes"]
            if w.state != "dead" and rss is not None:
                for q, lane in w.queues.items():
                    sums[(q, w.version, lane)] += rss
        for labels, n in sorted(sums.items()):
            g.add_metric(list(labels), n)
        return g

    @staticmethod
    def _controller_errors(errors: dict[tuple[str, str], int]) -> Metric:
        # Counted by the controller (Keys.controller_errors_total) each time it skipped a
        # deployment it could not handle; reasons as in Controller.tick's docstring.
        c = CounterMetricFamily(
            "pycanary_controller_errors",
            "Controller ticks that skipped a queue's deployment, by reason (invalid_queue_name, "
            "fence, read, corrupt_deployment, snapshot, evaluation, write, weight_above_max, "
            "rollback, promote, drain)",
            labels=["queue", "reason"])
        for (queue, reason), n in sorted(errors.items()):
            c.add_metric([queue, reason], n)
        return c


    @staticmethod
    def _leader(lead: leader.LeaderInfo | None, now_ms: int) -> Iterator[Metric]:
        # Always one sample each: 0 when nobody leads, so `== 0` alerts need no absent().
        # The age is 0 too when the start is unknown (a lease taken before leader_since
        # existed); the epoch still says who leads.
        epoch = GaugeMetricFamily(
            "pycanary_controller_leader_epoch",
            "Fencing epoch of the controller holding the leader lease, 0 when none does")
        age = GaugeMetricFamily(
            "pycanary_controller_leader_age_seconds",
            "Seconds since the current controller leadership began (the leader's clock at "
            "acquire against this process's), 0 when none leads")
        epoch.add_metric([], lead.epoch if lead else 0)
        age.add_metric([], (lead.age_s(now_ms) or 0.0) if lead else 0.0)
        yield epoch
        yield age


def render(conn: Connection, *, heartbeat_s: float = defaults.HEARTBEAT_S) -> bytes:
    """The exposition text of one scrape (what ``/metrics`` and the CLI print).

    A registry of its own holds only this collector, so no process-wide metrics (GC, process)
    are mixed in and repeated calls never clash over registered names.
    """
    reg = CollectorRegistry(auto_describe=False)
    reg.register(RedisCollector(conn, heartbeat_s=heartbeat_s))
    return generate_latest(reg)
