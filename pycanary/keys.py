"""Every Redis key pycanary uses, built here and nowhere else.

All keys of a queue share the hash tag ``{<queue>}`` so that every script call touches one
cluster slot. Global keys (the queue index) are touched only by plain commands of their own.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "pycanary"
LANES = ("stable", "canary")
#: The one consumer group of every lane stream (Streams backend): each entry is delivered to
#: one worker of the lane's version, never to a second group (docs/strategies.md).
STREAM_GROUP = "pycanary-workers"


@dataclass(frozen=True)
class QueueKeys:
    """The keys of one queue. Attribute names are the names used in the scripts' headers."""

    queue: str
    config: str
    tenant_weights: str
    lane_stable: str
    lane_canary: str
    routed: str
    delayed_stable: str
    delayed_canary: str
    dlq: str
    rolled_back: str
    former_stable: str
    fence: str
    deployment: str
    history: str
    counters: str
    base: str

    def lane(self, lane: str) -> str:
        if lane == "stable":
            return self.lane_stable
        if lane == "canary":
            return self.lane_canary
        raise ValueError(f"unknown lane {lane!r}")

    def delayed(self, lane: str) -> str:
        return self.delayed_stable if lane == "stable" else self.delayed_canary

    def processing(self, worker_id: str) -> str:
        """A worker's in-flight jobs of this queue (reliable fetch target)."""
        return f"{self.base}:processing:{worker_id}"

    @property
    def processing_index(self) -> str:
        """Hash worker id -> lane: every processing list of the queue that may hold jobs, so
        the reaper finds a list whose worker is no longer registered (no SCAN)."""
        return f"{self.base}:processing_index"

    def fetch_keys(self, worker_id: str, lane: str) -> list[str]:
        """KEYS of fetch_jobs."""
        return [self.lane(lane), self.processing(worker_id), self.rolled_back,
                self.processing_index]

    def requeue_keys(self, worker_id: str) -> list[str]:
        """KEYS of requeue_jobs."""
        return [self.processing(worker_id), self.lane_stable, self.lane_canary, self.config,
                self.processing_index]

    def running(self, worker_id: str) -> str:
        """Hash envelope -> "<first> <unit>" of the jobs a worker started and has not yet
        recorded: what the reaper counts as crashed attempts when the worker dies."""
        return f"{self.base}:running:{worker_id}"

    def reap_keys(self, worker_id: str, version: str, lane: str, slot: int) -> list[str]:
        """KEYS of requeue_jobs for a dead worker of a known version: its crashed attempts are
        counted in that version's metrics."""
        return [*self.requeue_keys(worker_id), self.running(worker_id),
                self.metrics_slot(version, lane, slot), self.metrics_total(version, lane)]

    def metrics_slot(self, version: str, lane: str, slot: int) -> str:
        """Per version and lane outcome counts and latency histograms of one time slot."""
        return f"{self.base}:m:{version}:{lane}:{slot}"

    def metrics_total(self, version: str, lane: str) -> str:
        """Running totals of (version, lane): the controller reads deltas between checks."""
        return f"{self.base}:mt:{version}:{lane}"

    def ack_keys(self, worker_id: str, version: str, lane: str, slot: int) -> list[str]:
        """KEYS of ack_jobs."""
        return [self.processing(worker_id), self.metrics_slot(version, lane, slot),
                self.metrics_total(version, lane), self.running(worker_id)]

    def fail_keys(self, worker_id: str, version: str, lane: str, slot: int) -> list[str]:
        """KEYS of fail_jobs."""
        return [self.processing(worker_id), self.metrics_slot(version, lane, slot),
                self.delayed(lane), self.dlq, self.metrics_total(version, lane),
                self.running(worker_id)]

    # -- Streams backend (docs/strategies.md): one stream per lane, one consumer group each --
    def stream(self, lane: str) -> str:
        """Stream of a lane (Streams backend): entries ``e`` = the envelope; acked = deleted."""
        if lane not in LANES:
            raise ValueError(f"unknown lane {lane!r}")
        return f"{self.base}:stream:{lane}"

    @property
    def stream_stable(self) -> str:
        return self.stream("stable")

    @property
    def stream_canary(self) -> str:
        return self.stream("canary")

    def stream_routing(self) -> list[str]:
        """KEYS of route_xadd, in its order (route_enqueue's, streams instead of lists)."""
        return [self.config, self.tenant_weights, self.stream_stable, self.stream_canary,
                self.routed]

    def stream_fetch_keys(self, lane: str) -> list[str]:
        """KEYS of fetch_stream."""
        return [self.stream(lane), self.rolled_back]

    def stream_running(self, lane: str) -> str:
        """Hash entry id -> "<first> <unit>" of the lane's entries a worker started and has not
        recorded (Streams backend): what reclaim_stream counts as crashed attempts."""
        if lane not in LANES:
            raise ValueError(f"unknown lane {lane!r}")
        return f"{self.base}:stream_running:{lane}"

    def stream_ack_keys(self, version: str, lane: str, slot: int) -> list[str]:
        """KEYS of ack_stream."""
        return [self.stream(lane), self.metrics_slot(version, lane, slot),
                self.metrics_total(version, lane), self.stream_running(lane)]

    def stream_fail_keys(self, version: str, lane: str, slot: int) -> list[str]:
        """KEYS of fail_stream."""
        return [self.stream(lane), self.metrics_slot(version, lane, slot), self.delayed(lane),
                self.dlq, self.metrics_total(version, lane), self.stream_running(lane)]

    def stream_promote_keys(self) -> list[str]:
        """KEYS of promote_delayed_stream."""
        return [self.delayed_stable, self.delayed_canary, self.stream_stable,
                self.stream_canary, self.config]

    def stream_reclaim_keys(self, version: str, lane: str, slot: int) -> list[str]:
        """KEYS of reclaim_stream (XAUTOCLAIM of dead consumers' entries; their started jobs
        counted as crashed attempts of ``version``, the lane's version the claimer runs)."""
        return [self.stream(lane), self.dlq, self.stream_running(lane),
                self.metrics_slot(version, lane, slot), self.metrics_total(version, lane)]

    def stream_move_keys(self, lane: str) -> list[str]:
        """KEYS of return_stream (an entry back to its lane, or to stable when closed)."""
        return [self.stream(lane), self.stream_stable, self.config]

    def stream_drain_keys(self) -> list[str]:
        """KEYS of drain_stream."""
        return [self.stream_canary, self.stream_stable]

    def backend_keys(self) -> list[str]:
        """KEYS of set_backend: the config, then every key that holds a queue's jobs."""
        return [self.config, self.lane_stable, self.lane_canary, self.stream_stable,
                self.stream_canary, self.delayed_stable, self.delayed_canary]

    def dead_letter_keys(self) -> list[str]:
        """KEYS of dead_letters (requeue or purge dead letters)."""
        return [self.dlq, self.lane_stable]

    def events(self, deployment_id: str) -> str:
        """List (a stream before issue 15): one deployment's event log, newest first."""
        return f"{self.base}:events:{deployment_id}"

    @property
    def deployment_large(self) -> str:
        """Hash: the deployment's free-form values longer than 64 bytes (`plan`, `ctl`, a long
        `reason`...), each field in one of the two: the deployment hash stays a listpack
        (issue 15). Written by the deployment scripts' dep_write, read merged with it."""
        return f"{self.base}:deployment:large"

    def analyses(self, deployment_id: str) -> str:
        """List: a deployment's latest analyses (JSON, newest first, capped)."""
        return f"{self.base}:analyses:{deployment_id}"

    @property
    def outbox(self) -> str:
        """Stream: the queue's notifications (notable deployment events), appended by the
        deployment scripts in the same call as the change and read by the sender
        (pycanary/notify.py) through a consumer group; capped (MAXLEN ~)."""
        return f"{self.base}:outbox"

    @property
    def outbox_dead(self) -> str:
        """Stream: notifications the sender gave up on (``notify_failed`` entries: the
        notification, the webhook (credentials removed), attempts and the last error)."""
        return f"{self.base}:outbox:dead"

    def idem(self, record_id: str) -> str:
        """String, with a TTL: the lane(s) a job id (or a batch, by its first job id) took, so
        a retried enqueue of the same id returns that lane instead of pushing it again."""
        return f"{self.base}:idem:{record_id}"

    @property
    def broker(self) -> str:
        """Hash: the broker lists a Celery or RQ application keeps this queue's lanes in
        (``kind``, ``stable``, ``canary``: full Redis key names, written by bind_broker), so
        that every drain also moves the broker's own messages (pycanary/integrations/)."""
        return f"{self.base}:broker"

    def route_decide_keys(self) -> list[str]:
        """KEYS of route_decide (the integrations' lane decision, nothing pushed)."""
        return [self.config, self.tenant_weights, self.routed]

    def outcome_keys(self, version: str, lane: str, slot: int) -> list[str]:
        """KEYS of record_outcomes: the attempts of a Celery task or RQ job, counted like
        ack_jobs / fail_jobs count pycanary's own."""
        return [self.metrics_slot(version, lane, slot), self.metrics_total(version, lane)]

    def routing(self) -> list[str]:
        """KEYS of route_enqueue / route_enqueue_many, in their order."""
        return [self.config, self.tenant_weights, self.lane_stable, self.lane_canary, self.routed]

    def config_keys(self) -> list[str]:
        """KEYS of set_weight / configure_queue / explain_route."""
        return [self.config, self.tenant_weights]

    def all(self) -> list[str]:
        """Fixed keys of the queue (not per-worker or per-slot ones)."""
        return [self.config, self.tenant_weights, self.lane_stable, self.lane_canary, self.routed,
                self.delayed_stable, self.delayed_canary, self.dlq, self.rolled_back,
                self.former_stable, self.fence, self.deployment, self.deployment_large,
                self.history, self.counters, self.broker]


class Keys:
    """Key builder for one prefix."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix
        self._cache: dict[str, QueueKeys] = {}

    @property
    def queues(self) -> str:
        """Set of known queue names (global, not in any queue's slot)."""
        return f"{self.prefix}:queues"

    # The worker registry shares its own hash tag so its scripts touch one slot.
    @property
    def registry(self) -> str:
        """Sorted set: worker id -> last heartbeat (ms)."""
        return f"{self.prefix}:{{workers}}:registry"

    @property
    def worker_meta(self) -> str:
        """Hash: worker id -> JSON {version, queues: {queue: lane}}; kept until reaped."""
        return f"{self.prefix}:{{workers}}:meta"

    def worker_info(self, worker_id: str) -> str:
        """Hash of a worker's live details, expiring after missed heartbeats."""
        return f"{self.prefix}:{{workers}}:info:{worker_id}"

    @property
    def worker_deadlines(self) -> str:
        """Sorted set: worker id -> last heartbeat + the worker's own TTL (ms); the reaper
        takes the workers whose deadline passed."""
        return f"{self.prefix}:{{workers}}:deadlines"

    def heartbeat_keys(self, worker_id: str) -> list[str]:
        """KEYS of heartbeat and forget_worker."""
        return [self.registry, self.worker_deadlines, self.worker_meta,
                self.worker_info(worker_id)]

    @property
    def reaper_lock(self) -> str:
        return f"{self.prefix}:{{workers}}:reaper_lock"

    @property
    def active_deployments(self) -> str:
        """Set of queues with a deployment in progress (global; the controller's to-do list)."""
        return f"{self.prefix}:deployments:active"

    # Controller leadership shares its own hash tag.
    @property
    def leader(self) -> str:
        """String "epoch:token" of the leading controller, with a lease (PX)."""
        return f"{self.prefix}:{{controller}}:leader"

    @property
    def leader_epoch(self) -> str:
        """Counter: every new leadership gets the next epoch (the fencing token)."""
        return f"{self.prefix}:{{controller}}:epoch"

    @property
    def leader_since(self) -> str:
        """String "epoch:acquired_ms": when the latest leadership began (leader_acquire), for
        the leader's age in /metrics and /healthz. Trusted only while its epoch is the lease's."""
        return f"{self.prefix}:{{controller}}:leader_since"

    @property
    def controller_errors(self) -> str:
        """Hash: queue name -> JSON of the controller's current error with that queue's
        deployment (plain HSET/HDEL; names need not be valid queue names)."""
        return f"{self.prefix}:{{controller}}:errors"

    @property
    def controller_errors_total(self) -> str:
        """Hash: "reason:queue" -> how many times the controller skipped that deployment."""
        return f"{self.prefix}:{{controller}}:errors_total"

    def queue(self, queue: str) -> QueueKeys:
        qk = self._cache.get(queue)
        if qk is None:
            base = f"{self.prefix}:{{{queue}}}"
            qk = QueueKeys(
                queue=queue,
                config=f"{base}:config",
                tenant_weights=f"{base}:tenant_weights",
                lane_stable=f"{base}:lane:stable",
                lane_canary=f"{base}:lane:canary",
                routed=f"{base}:routed",
                delayed_stable=f"{base}:delayed:stable",
                delayed_canary=f"{base}:delayed:canary",
                dlq=f"{base}:dlq",
                rolled_back=f"{base}:rolled_back",
                former_stable=f"{base}:former_stable",
                fence=f"{base}:fence",
                deployment=f"{base}:deployment",
                history=f"{base}:history",
                counters=f"{base}:counters",
                base=base,
            )
            self._cache[queue] = qk
        return qk
