"""Canary rollouts for an existing Celery application on a Redis broker (docs/integrations.md).

Five lines in the application, no change to its tasks::

    from pycanary.integrations.celery import Canary
    canary = Canary(app, "payments", redis_url="redis://127.0.0.1:6379/0", sticky="order_id")
    app.conf.task_routes = (canary.router,)
    canary.install()
    # canary workers: PYCANARY_VERSION=v2 celery -A proj worker -Q payments.canary

- ``canary.router`` (a Celery router) asks ``route_decide.lua`` for the lane of each task of
  the queue: sticky by a chosen argument (``sticky``: a keyword name, or a position), else by
  the task id the caller passed, else random; the tenant from a message header. Canary tasks go
  to ``payments.canary``, the others to ``payments``; both are counted in ``routed``. A retry
  of a task (which Celery republishes to the queue it came from) is routed again, so after a
  rollback its retries go to stable.
- ``canary.install()`` connects Celery's signals: a worker that consumes ``payments`` or
  ``payments.canary`` advertises its version (``PYCANARY_VERSION``) and lane in pycanary's
  registry with heartbeats, and every task's outcome and run time (success, retry, failure,
  a pool child lost) is recorded per version and lane by ``record_outcomes.lua``.
- The queue's broker lists are bound to it (``bind_broker.lua``), so the drain that follows a
  rollback or a promotion moves the waiting kombu messages of ``payments.canary`` to the head
  of ``payments``, in order (``drain_broker.lua``).

A Celery queue's keys do not carry pycanary's hash tag: one Redis, not a Cluster.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .. import connection, defaults, metrics, validation
from ..connection import Connection
from ..errors import ValidationError
from . import core

log = logging.getLogger("pycanary.integrations.celery")

#: The header the router stamps with the publish time (ms), for the queue-wait histogram.
SENT_HEADER = "pycanary_sent_ms"


def _broker_prefix(app: Any) -> str:
    """kombu's ``global_keyprefix`` transport option (every broker key starts with it)."""
    opts = app.conf.broker_transport_options or {}
    return str(opts.get("global_keyprefix") or "")


@dataclass
class Canary:
    """pycanary routing, metrics and rollback for the tasks of one Celery queue.

    ``tasks``: the task names routed through the queue (None: every task the router sees).
    ``sticky``: the argument whose value keeps a task's lane across the ramp (a keyword name
    or a positional index); None = the task id when the caller passes one, else random.
    ``tenant_header``: the message header (``apply_async(headers=...)``) naming the tenant.
    ``version``: this worker's version; default ``$PYCANARY_VERSION``.
    """

    app: Any
    queue: str
    redis_url: str = ""
    prefix: str = ""
    sticky: str | int | None = None
    tenant_header: str = "tenant"
    tasks: Iterable[str] | None = None
    version: str | None = None
    heartbeat_s: float = defaults.HEARTBEAT_S
    _conns: dict[int, Connection] = field(default_factory=dict, repr=False)
    _started: dict[str, tuple[float, str, bool, str]] = field(default_factory=dict, repr=False)
    _agent: core.Agent | None = field(default=None, repr=False)
    _bound: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        validation.queue_name(self.queue)
        validation.queue_name(core.canary_name(self.queue), field="queue")
        if self.sticky is not None and not isinstance(self.sticky, str | int):
            raise ValidationError("must be an argument name or position", field="sticky")
        self.redis_url = self.redis_url or os.environ.get("PYCANARY_REDIS_URL") or str(
            self.app.conf.broker_url)
        self.prefix = self.prefix or os.environ.get("PYCANARY_PREFIX") or "pycanary"
        self.tasks = None if self.tasks is None else frozenset(self.tasks)
        self.lanes = {self.queue: "stable", core.canary_name(self.queue): "canary"}

    # -- shared --------------------------------------------------------------------------
    @property
    def conn(self) -> Connection:
        """One connection per process (a prefork child gets its own after the fork)."""
        pid = os.getpid()
        conn = self._conns.get(pid)
        if conn is None:
            conn = self._conns[pid] = connection.connect(self.redis_url, prefix=self.prefix)
        return conn

    def bind(self) -> None:
        """Name the broker lists of both lanes in the queue's binding (once per process)."""
        if self._bound:
            return
        bp = _broker_prefix(self.app)
        canary = core.canary_name(self.queue)
        core.bind(self.conn, self.queue, kind="celery", stable_key=bp + self.queue,
                  canary_key=bp + canary, stable_name=self.queue, canary_name=canary)
        self._bound = True

    # -- producer side ----------------------------------------------------------------------
    def sticky_key(self, args: Any, kwargs: Any, options: dict[str, Any]) -> str:
        """What the lane is hashed on: the sticky argument, else the caller's task id, else
        a fresh random key (a task without either is sampled at the weight)."""
        value: Any = None
        if isinstance(self.sticky, str):
            value = (kwargs or {}).get(self.sticky)
        elif isinstance(self.sticky, int) and args and len(args) > self.sticky:
            value = args[self.sticky]
        if value is None:
            value = options.get("task_id") or uuid.uuid4().hex
        return str(value)

    def router(self, name: str, args: Any, kwargs: Any, options: dict[str, Any],
               task: Any = None, **_kw: Any) -> dict[str, Any] | None:
        """A Celery router (``task_routes = (canary.router,)``): the lane of each task."""
        if self.tasks is not None and name not in self.tasks:
            return None
        queued = options.get("queue")
        qname = getattr(queued, "name", queued)
        if qname is not None and qname not in self.lanes:
            return None  # sent to another queue on purpose
        # a retry names the queue it came from: decide again (after a rollback: stable)
        for k in ("queue", "routing_key", "exchange"):
            options.pop(k, None)
        self.bind()
        headers = options.get("headers") or {}
        tenant = headers.get(self.tenant_header) if self.tenant_header else None
        d = core.decide(self.conn, self.queue, self.sticky_key(args, kwargs, options),
                        str(tenant) if tenant else None)
        headers = options["headers"] = dict(headers)
        headers.setdefault(SENT_HEADER, defaults.now_ms())
        return {"queue": self.queue if d.lane == "stable" else core.canary_name(self.queue)}

    # -- worker side ----------------------------------------------------------------------
    def install(self) -> None:
        """Connect the worker-side signal handlers (harmless in a producer process)."""
        from celery import signals

        signals.worker_ready.connect(self._on_ready, weak=False)
        signals.worker_shutdown.connect(self._on_shutdown, weak=False)
        signals.task_prerun.connect(self._on_prerun, weak=False)
        signals.task_postrun.connect(self._on_postrun, weak=False)
        signals.task_failure.connect(self._on_failure, weak=False)

    def worker_version(self) -> str:
        v = self.version or os.environ.get(core.VERSION_ENV)
        if not v:
            raise ValidationError(f"set {core.VERSION_ENV} (or Canary(version=...)) on a "
                                  "worker of a canaried queue", field="version")
        return validation.version(v)

    def _on_ready(self, sender: Any = None, **_kw: Any) -> None:
        consumed = _consumed_queues(sender)
        lanes = {self.lanes[q] for q in consumed if q in self.lanes}
        if not lanes:
            return
        if len(lanes) > 1:
            log.warning("this worker consumes both lanes of %s; it is counted on stable",
                        self.queue)
        lane = "stable" if "stable" in lanes else "canary"
        self.bind()
        hostname = getattr(sender, "hostname", None)
        self._agent = core.Agent(self.conn, self.worker_version(), {self.queue: lane},
                                 kind="celery", heartbeat_s=self.heartbeat_s,
                                 concurrency=int(self.app.conf.worker_concurrency or 1),
                                 on_change=self._consumer_control(hostname, lane))
        self._agent.start()

    def _consumer_control(self, hostname: str | None, lane: str
                          ) -> Callable[[str, Any], None]:
        """What a canary worker consumes follows its version, through Celery's remote control
        (applied by the worker's own event loop): rolled back (`retiring`), it stops consuming
        the canary list, and starts again when the version is ramped again; promoted (its
        version is stable now), it moves to the stable list, as a pycanary worker does."""
        canary = core.canary_name(self.queue)
        state = {"on": canary if lane == "canary" else None}

        def move(to: str | None) -> None:
            if to is not None:
                self.app.control.add_consumer(to, destination=[hostname], reply=True,
                                              timeout=5)
            if state["on"] is not None and state["on"] != to:
                self.app.control.cancel_consumer(state["on"], destination=[hostname],
                                                 reply=True, timeout=5)
            state["on"] = to

        def change(_queue: str, b: Any) -> None:
            if lane != "canary" or not hostname or self._agent is None:
                return
            try:
                if b.state == "retiring" and state["on"] == canary:
                    move(None)
                elif b.lane == "canary" and state["on"] != canary:
                    move(canary)
                    self._agent.consumes[self.queue] = "canary"
                elif b.lane == "stable" and state["on"] != self.queue:
                    move(self.queue)
                    self._agent.consumes[self.queue] = "stable"
            except Exception as exc:
                log.warning("could not change what %s consumes: %s", hostname, exc)
        return change

    def _on_shutdown(self, **_kw: Any) -> None:
        if self._agent is not None:
            self._agent.stop()
            self._agent = None

    def _where(self, task: Any) -> str | None:
        info = getattr(task.request, "delivery_info", None) or {}
        lane = self.lanes.get(info.get("routing_key") or "")
        if lane is None and self.tasks is not None and task.name not in self.tasks:
            return None
        return lane

    def _on_prerun(self, task_id: str = "", task: Any = None, **_kw: Any) -> None:
        lane = self._where(task) if task is not None else None
        if lane is None:
            return
        req = task.request
        first = int(getattr(req, "retries", 0) or 0) == 0
        tenant = (req.get(self.tenant_header) if self.tenant_header else None) or None
        unit = metrics.unit_of(task_id, self.sticky_key(req.args, req.kwargs,
                                                        {"task_id": task_id}), tenant)
        self._started[task_id] = (time.monotonic(), lane, first, unit)

    def _on_postrun(self, task_id: str = "", task: Any = None, state: str | None = None,
                    **_kw: Any) -> None:
        started = self._started.pop(task_id, None)
        if started is None:
            return
        outcome = {"SUCCESS": "ok", "RETRY": "retry", "FAILURE": "dead"}.get(state or "")
        if outcome is None:
            return
        t0, lane, first, unit = started
        sent = task.request.get(SENT_HEADER)
        wait_us = None
        if isinstance(sent, int):
            wait_us = max(0, (defaults.now_ms() - sent) * 1000 - (time.monotonic() - t0) * 1e6)
        self._record(lane, core.Attempt(outcome, (time.monotonic() - t0) * 1e6, first, unit,
                                        wait_us))

    def _on_failure(self, task_id: str = "", exception: BaseException | None = None,
                    sender: Any = None, **_kw: Any) -> None:
        """A pool child lost mid-task (prefork): reported in the main process, no postrun."""
        from billiard.exceptions import WorkerLostError

        if not isinstance(exception, WorkerLostError) or self._agent is None:
            return
        lane = self._agent.consumes.get(self.queue)
        if lane is not None:
            self._record(lane, core.Attempt("crashed", None, True))

    def _record(self, lane: str, attempt: core.Attempt) -> None:
        try:
            core.record(self.conn, self.queue, self.worker_version(), lane, [attempt])
        except Exception as exc:  # never fail the task for its metrics
            log.warning("pycanary could not record an outcome of %s: %s", self.queue, exc)
        if self._agent is not None:
            self._agent.stats.done += 1
            self._agent.stats.failed += attempt.outcome != "ok"


def _consumed_queues(consumer: Any) -> list[str]:
    """The queue names a worker's consumer reads (``-Q``), from the worker_ready sender."""
    try:
        return [q.name for q in consumer.task_consumer.queues]
    except AttributeError:
        app = getattr(consumer, "app", None)
        return list(app.amqp.queues.consume_from) if app is not None else []
