"""What the Celery and RQ integrations share: the lane decision, outcome recording, the broker
binding and a registry agent for workers that are not pycanary's own.

The broker (kombu, RQ) publishes and delivers the message; pycanary only decides its lane
(``route_decide.lua``: the routing contract of docs/design.md section 2, counted in ``routed``),
records each attempt in the same metrics hashes as its own workers (``record_outcomes.lua``),
and advertises each worker's version and lane in the registry (``heartbeat.lua``), so the
controller, status, the API and /metrics read an integrated queue exactly like any other.
``bind_broker.lua`` names the broker's two lists, so every drain of the queue (rollback,
promotion, ``pycanary drain``) also moves the broker's waiting messages (pycanary/drain.py).
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .. import defaults, drain, metrics, registry, validation
from ..connection import Connection
from ..errors import raise_for_code
from ..worker import LaneAssignment, assign_lane

log = logging.getLogger("pycanary.integrations")

#: The environment variable a Celery or RQ worker reads its version from.
VERSION_ENV = "PYCANARY_VERSION"
#: The suffix of a queue's canary lane in the broker: ``payments`` -> ``payments.canary``.
CANARY_SUFFIX = ".canary"


@dataclass(frozen=True)
class Decision:
    """The lane a new job takes, with what the script compared (for logs and tests)."""

    lane: str
    weight_bp: int
    salt: str
    bucket: int  # the sticky bucket or random draw compared with the weight; -1 at weight 0


def canary_name(queue: str) -> str:
    """The broker queue of a queue's canary lane."""
    return queue + CANARY_SUFFIX


def decide(conn: Connection, queue: str, sticky_key: str, tenant: str | None = None, *,
           rng: random.Random | None = None) -> Decision:
    """Ask route_decide for the lane of one job and count it in ``routed``. The weight is read
    inside the script: a rollback holds for the very next call."""
    validation.queue_name(queue)
    draw = (rng or random).randrange(10_000)
    lane, weight, salt, n = conn.scripts.call(
        "route_decide", conn.keys.queue(queue).route_decide_keys(),
        [sticky_key, tenant or "", draw])
    return Decision(str(lane), int(weight), str(salt), int(n))


def bind(conn: Connection, queue: str, *, kind: str, stable_key: str, canary_key: str,
         stable_name: str, canary_name: str) -> bool:
    """Record the broker lists of the queue's lanes (idempotent); True when it changed."""
    validation.queue_name(queue)
    return bool(conn.scripts.call(
        "bind_broker", [conn.keys.queue(queue).broker],
        [kind, stable_key, canary_key, stable_name, canary_name]))


@dataclass(frozen=True)
class Attempt:
    """One finished attempt of a Celery task or RQ job, as record_outcomes counts it."""

    outcome: str  # ok | retry | dead | crashed
    run_us: float | None
    first: bool
    unit: str = ""
    wait_us: float | None = None


def record(conn: Connection, queue: str, version: str, lane: str,
           attempts: list[Attempt], *, now_ms: int | None = None) -> int:
    """Count attempts of one version and lane (record_outcomes.lua), in the metrics slot of
    now and the running totals the controller reads."""
    if not attempts:
        return 0
    slot = metrics.slot_of(now_ms if now_ms is not None else defaults.now_ms())
    args: list[object] = [metrics.DEFAULT_KEEP_S]
    for a in attempts:
        args += [a.outcome,
                 "" if a.run_us is None else metrics.bucket_us(a.run_us),
                 "" if a.wait_us is None else metrics.bucket_us(max(0.0, a.wait_us)),
                 "", "1" if a.first else "0", a.unit]
    res = conn.scripts.call("record_outcomes",
                            conn.keys.queue(queue).outcome_keys(version, lane, slot), args)
    if int(res) < 0:
        raise_for_code(int(res), script="record_outcomes", field="outcome")
    return int(res)


def assignment(conn: Connection, queue: str, version: str, *, consumes: str,
               adopt: bool = True) -> LaneAssignment:
    """See `belongs`; a worker on the other lane's list than the one its version belongs on is
    on standby there."""
    return on_list(belongs(conn, queue, version, consumes=consumes, adopt=adopt), version,
                   consumes)


def on_list(a: LaneAssignment, version: str, consumes: str) -> LaneAssignment:
    """What a worker whose version belongs as ``a`` says is on the list of lane ``consumes``."""
    if a.lane is not None and a.lane != consumes:
        return LaneAssignment(None, "standby", f"version {version} belongs on the {a.lane} "
                              f"lane, but this worker consumes the {consumes} list")
    return a


def belongs(conn: Connection, queue: str, version: str, *, consumes: str,
            adopt: bool = True) -> LaneAssignment:
    """The lane a worker of ``version`` belongs on now, whatever list it consumes (the rule
    pycanary's own workers follow, worker.assign_lane). A worker that consumes the stable list
    of a queue with no stable version yet makes its own version stable, as a pycanary worker
    does. (`on_list`: a worker on the wrong list, a v1 worker reading the canary list, is on
    standby: it consumes, but pycanary does not count it for that lane.)"""
    qk = conn.keys.queue(queue)
    pipe = conn.client.pipeline(transaction=False)
    pipe.hmget(qk.config, ["stable_version", "canary_version"])
    pipe.sismember(qk.rolled_back, version)
    pipe.zscore(qk.former_stable, version)
    (stable, canary), rolled_back, former = pipe.execute()
    # (the rule pycanary's own workers follow: worker.assign_lane)
    if not stable and adopt and consumes == "stable":
        stable = conn.scripts.call("adopt_stable_version", [qk.config],
                                   [version, defaults.now_ms()])
    return assign_lane(version, stable_version=stable or None, canary_version=canary or None,
                       rolled_back=bool(rolled_back), former_stable=former is not None)


@dataclass
class AgentStats:
    done: int = 0
    failed: int = 0


@dataclass
class Agent:
    """The registry presence of one Celery or RQ worker process: a heartbeat thread that
    advertises its version, the lane it consumes and its state (active, outdated, standby,
    retiring), so `pycanary workers`, the ramp's preflight and the controller's live-worker
    count see it. ``on_change(queue, belongs)`` is called when the lane its version belongs
    on changes (Celery uses it to stop consuming a rolled-back canary list, and to move a
    promoted canary worker to the stable list: it may update ``consumes``)."""

    conn: Connection
    version: str
    consumes: Mapping[str, str]  # pycanary queue -> lane of the broker list consumed
    kind: str
    heartbeat_s: float = defaults.HEARTBEAT_S
    concurrency: int = 1
    on_change: Callable[[str, LaneAssignment], None] | None = None
    worker_id: str = ""
    stats: AgentStats = field(default_factory=AgentStats)
    assignments: dict[str, LaneAssignment] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validation.version(self.version)
        for q in self.consumes:
            validation.queue_name(q)
        self.heartbeat_s = registry.check_heartbeat_s(self.heartbeat_s)
        self.ttl_ms = int(self.heartbeat_s * 1000 * defaults.TTL_HEARTBEATS)
        if not self.worker_id:
            self.worker_id = f"{self.kind}-{socket.gethostname()}-{os.getpid()}-" \
                             f"{random.randrange(16**6):06x}"
        self.started_at = defaults.now_ms()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._belongs: dict[str, LaneAssignment] = {}

    def state(self) -> str:
        states = {a.state for a in self.assignments.values()}
        for s in ("active", "outdated", "retiring"):
            if s in states:
                return s
        return "standby"

    def beat(self) -> None:
        """One refresh of every queue's assignment, then one heartbeat."""
        for q in list(self.consumes):
            b = belongs(self.conn, q, self.version, consumes=self.consumes[q])
            old = self._belongs.get(q)
            self._belongs[q] = b
            if (old is None or (old.lane, old.state) != (b.lane, b.state)) and \
                    self.on_change is not None:
                self.on_change(q, b)
            lane = self.consumes[q]
            a = on_list(b, self.version, lane)
            old = self.assignments.get(q)
            self.assignments[q] = a
            if old is None or (old.lane, old.state) != (a.lane, a.state):
                log.info("%s worker %s, queue %s: %s%s", self.kind, self.worker_id, q, a.state,
                         f" ({a.reason})" if a.reason else "")
            if lane == "canary" and b.lane != "canary":
                self._sweep(q)
        info = {
            "host": socket.gethostname(), "pid": os.getpid(), "version": self.version,
            "state": "stopping" if self._stop.is_set() else self.state(),
            "queues": ",".join(self.consumes), "integration": self.kind,
            "lanes": ",".join(f"{q}={a.lane or '-'}" for q, a in self.assignments.items()),
            "concurrency": self.concurrency, "started_at": self.started_at,
            "done": self.stats.done, "failed": self.stats.failed,
            "last_seen": defaults.now_ms(), "rss": registry.rss_bytes(),
        }
        registry.heartbeat(self.conn, self.worker_id, version=self.version,
                           queues=dict(self.consumes), info=info, ttl_ms=self.ttl_ms)
        # a Celery/RQ worker killed with -9 never deregisters: the live ones reap it, as
        # pycanary's workers reap each other (under the registry's lock, once per heartbeat)
        registry.reap(self.conn, ttl_ms=max(self.ttl_ms, defaults.TTL_MS),
                      queues=list(self.consumes))

    def _sweep(self, queue: str) -> None:
        """A message that reached the canary list after its lane closed (a publish that
        decided 'canary' just before the rollback and pushed after the drain) is drained to
        stable by the next heartbeat of a canary worker: no message waits in a lane nobody
        reads. Only while the lane is closed (no canary version, weight 0)."""
        qk = self.conn.keys.queue(queue)
        canary, weight = self.conn.client.hmget(qk.config, ["canary_version", "weight_bp"])
        if canary or int(weight or 0) > 0 or self.conn.client.hlen(qk.tenant_weights):
            return
        report = drain.drain_lane(self.conn, queue, max_seconds=1.0)
        if report.moved:
            log.warning("%s worker %s: moved %d late message(s) of the closed canary lane of "
                        "%s to stable", self.kind, self.worker_id, report.moved, queue)

    def start(self) -> None:
        """The first heartbeat now (so a ramp started right after sees this worker), then one
        every ``heartbeat_s`` in a daemon thread."""
        self.beat()
        self._thread = threading.Thread(target=self._loop, name="pycanary-agent", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.beat()
            except Exception as exc:  # Redis away: the next beat retries
                log.warning("pycanary heartbeat of %s failed: %s", self.worker_id, exc)

    def stop(self) -> None:
        """Stop heartbeating and leave the registry (a clean exit)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.heartbeat_s + 5)
        try:
            registry.deregister(self.conn, self.worker_id)
        except Exception as exc:
            log.warning("could not deregister %s (%s); the reaper cleans up", self.worker_id,
                        exc)
