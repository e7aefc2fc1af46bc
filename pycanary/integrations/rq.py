"""Canary rollouts for an existing RQ application (docs/integrations.md).

Producer side, one changed import::

    from pycanary.integrations.rq import Queue       # instead of rq's
    q = Queue("payments", connection=redis_conn, sticky="order_id")
    q.enqueue(charge, order_id="o-42", amount=10)    # lands in payments or payments.canary

Worker side, the worker class and a version::

    PYCANARY_VERSION=v2 rq worker -w pycanary.integrations.rq.Worker payments.canary

- ``Queue.enqueue`` (every path through ``enqueue_job``) asks ``route_decide.lua`` for the
  job's lane: sticky by a chosen argument (``sticky``) else by the job id, the tenant from
  ``job.meta["tenant"]``; a canary job is enqueued on ``payments.canary``. Both lanes are
  counted in ``routed``; the queue's RQ lists are bound to it, so every drain (rollback,
  promotion, ``pycanary drain``) moves the waiting job ids of ``payments.canary`` to the head
  of ``payments``, in order.
- ``Worker`` (and ``SimpleWorker``) advertise their version and lane in pycanary's registry
  with heartbeats and record each job's outcome (success, retry, failure, a killed work
  horse) and run time per version and lane. A retry of a job from a closed canary lane is
  scheduled on the stable queue.

RQ's keys do not carry pycanary's hash tag: one Redis, not a Cluster. A drained job's hash
keeps ``origin`` = the canary queue (RQ's registries of that job are the canary queue's).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import rq

from .. import connection as pc_connection
from .. import defaults, metrics, validation
from ..connection import Connection
from . import core

log = logging.getLogger("pycanary.integrations.rq")

_CONNS: dict[tuple[int, str, str], Connection] = {}


def _url_of(redis_conn: Any) -> str:
    """A URL for pycanary's own client: ``$PYCANARY_REDIS_URL``, else the RQ connection's."""
    url = os.environ.get("PYCANARY_REDIS_URL")
    if url:
        return url
    kw = redis_conn.connection_pool.connection_kwargs
    auth = f":{kw['password']}@" if kw.get("password") else ""
    return f"redis://{auth}{kw.get('host', '127.0.0.1')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


def pycanary_conn(redis_conn: Any, prefix: str | None = None) -> Connection:
    """pycanary's connection for an RQ connection, one per process (a forked work horse gets
    its own) and prefix (default ``$PYCANARY_PREFIX``, else ``pycanary``)."""
    prefix = prefix or os.environ.get("PYCANARY_PREFIX") or "pycanary"
    url = _url_of(redis_conn)
    k = (os.getpid(), url, prefix)
    conn = _CONNS.get(k)
    if conn is None:
        conn = _CONNS[k] = pc_connection.connect(url, prefix=prefix)
    return conn


def lane_of(rq_queue_name: str) -> tuple[str, str]:
    """(pycanary queue, lane) of an RQ queue name: ``payments.canary`` is payments' canary."""
    if rq_queue_name.endswith(core.CANARY_SUFFIX):
        return rq_queue_name[: -len(core.CANARY_SUFFIX)], "canary"
    return rq_queue_name, "stable"


class Queue(rq.Queue):
    """An RQ queue whose jobs are routed between it and its canary queue by pycanary."""

    def __init__(self, name: str = "default", *args: Any, sticky: str | int | None = None,
                 prefix: str | None = None, **kwargs: Any) -> None:
        super().__init__(name, *args, **kwargs)
        validation.queue_name(name)
        self.sticky = sticky
        self.pycanary_prefix = prefix
        self._canary: rq.Queue | None = None
        self._bound = False

    @property
    def pycanary(self) -> Connection:
        return pycanary_conn(self.connection, self.pycanary_prefix)

    def canary_queue(self) -> rq.Queue:
        """The plain RQ queue of the canary lane (``<name>.canary``)."""
        if self._canary is None:
            self._canary = rq.Queue(core.canary_name(self.name), connection=self.connection,
                                    serializer=self.serializer, job_class=self.job_class)
        return self._canary

    def bind(self) -> None:
        if not self._bound:
            core.bind(self.pycanary, self.name, kind="rq", stable_key=self.key,
                      canary_key=self.canary_queue().key, stable_name=self.name,
                      canary_name=core.canary_name(self.name))
            self._bound = True

    def sticky_key(self, job: Any) -> str:
        value: Any = None
        if isinstance(self.sticky, str):
            value = (job.kwargs or {}).get(self.sticky)
        elif isinstance(self.sticky, int) and job.args and len(job.args) > self.sticky:
            value = job.args[self.sticky]
        return str(value if value is not None else job.id)

    def enqueue_job(self, job: Any, pipeline: Any = None, at_front: bool = False,
                    unique: bool = False) -> Any:
        """Decide the lane, then enqueue on this queue or its canary queue."""
        self.bind()
        tenant = (job.meta or {}).get("tenant")
        d = core.decide(self.pycanary, self.name, self.sticky_key(job),
                        str(tenant) if tenant else None)
        if d.lane == "canary":
            return self.canary_queue().enqueue_job(job, pipeline=pipeline, at_front=at_front,
                                                   unique=unique)
        return super().enqueue_job(job, pipeline=pipeline, at_front=at_front, unique=unique)


class _Canaried:
    """What Worker and SimpleWorker add to RQ's: registry presence and outcome recording."""

    pycanary_prefix: str | None = None
    pycanary_version: str | None = None
    _agent: core.Agent | None = None

    def _pc(self) -> Connection:
        return pycanary_conn(self.connection, self.pycanary_prefix)  # type: ignore[attr-defined]

    def _version(self) -> str:
        return validation.version(self.pycanary_version or os.environ.get(core.VERSION_ENV))

    def work(self, *args: Any, **kwargs: Any) -> bool:
        conn = self.connection  # type: ignore[attr-defined]
        consumes = dict(lane_of(q.name) for q in self.queues)  # type: ignore[attr-defined]
        for q in consumes:
            canary = core.canary_name(q)
            core.bind(self._pc(), q, kind="rq", stable_key=rq.Queue(q, connection=conn).key,
                      canary_key=rq.Queue(canary, connection=conn).key, stable_name=q,
                      canary_name=canary)
        self._agent = core.Agent(self._pc(), self._version(), consumes, kind="rq",
                                 heartbeat_s=defaults.HEARTBEAT_S)
        self._agent.start()
        try:
            return super().work(*args, **kwargs)  # type: ignore[misc]
        finally:
            self._agent.stop()

    def perform_job(self, job: Any, queue: Any, execution: Any) -> bool:
        first = not job.number_of_retries
        t0 = time.monotonic()
        wait_us = None
        if job.enqueued_at is not None:
            wait_us = max(0.0, (time.time() - job.enqueued_at.timestamp()) * 1e6)
        ok = super().perform_job(job, queue, execution)  # type: ignore[misc]
        run_us = (time.monotonic() - t0) * 1e6
        if ok:
            outcome = "ok"
        else:
            status = job.get_status(refresh=True)
            outcome = "dead" if status == rq.job.JobStatus.FAILED else "retry"
        self._record(job, queue.name, core.Attempt(outcome, run_us, first,
                                                   self._unit(job, queue.name), wait_us))
        return ok

    def handle_work_horse_killed(self, job: Any, retpid: Any, ret_val: Any, rusage: Any
                                 ) -> None:
        """The work horse died mid-job (OOM, kill -9): a crashed attempt of this version."""
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)  # type: ignore[misc]
        origin = job.origin or ""
        self._record(job, origin, core.Attempt("crashed", None, not job.number_of_retries))

    def _retry_queue(self, job: Any, queue: Any) -> Any:
        """Where a retry goes: the queue the job came from, unless that is a canary lane that
        is closed now (rolled back, promoted): then the stable queue, so no retry lands in a
        lane nobody reads."""
        name, lane = lane_of(queue.name)
        if lane != "canary":
            return queue
        a = core.assignment(self._pc(), name, self._version(), consumes="canary", adopt=False)
        if a.lane == "canary":
            return queue
        job.origin = name
        return rq.Queue(name, connection=self.connection,  # type: ignore[attr-defined]
                        serializer=queue.serializer, job_class=queue.job_class)

    def handle_job_retry(self, job: Any, queue: Any, *args: Any, **kw: Any) -> Any:
        return super().handle_job_retry(job, self._retry_queue(job, queue),  # type: ignore[misc]
                                        *args, **kw)

    def handle_job_failure(self, job: Any, queue: Any, *args: Any, **kw: Any) -> Any:
        return super().handle_job_failure(job, self._retry_queue(job, queue),  # type: ignore[misc]
                                          *args, **kw)

    def _unit(self, job: Any, rq_queue: str) -> str:
        return metrics.unit_of(job.id, None, (job.meta or {}).get("tenant"))

    def _record(self, job: Any, rq_queue: str, attempt: core.Attempt) -> None:
        name, lane = lane_of(rq_queue)
        try:
            core.record(self._pc(), name, self._version(), lane, [attempt])
        except Exception as exc:  # never fail a job for its metrics
            log.warning("pycanary could not record an outcome of %s: %s", job.id, exc)


class Worker(_Canaried, rq.Worker):
    """rq.Worker (a work horse forked per job) with pycanary's registry and metrics."""


class SimpleWorker(_Canaried, rq.SimpleWorker):
    """rq.SimpleWorker (jobs in the worker process) with pycanary's registry and metrics."""
