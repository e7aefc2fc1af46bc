"""Workers: take jobs of their version's lane reliably, run the handler, record outcomes.

One main loop fetches (a batch script, or BLMOVE when idle), dispatches to the handler
(inline, a thread pool, or an asyncio loop), and flushes acknowledgements in batches: one
script call acks many jobs and records their metrics in the same atomic step. A separate
maintenance thread heartbeats, follows the queue config (rollback, promotion), promotes due
retries and reaps dead workers, so a long job never silences the heartbeat.

No job is stranded (issue 8). The worker tracks every job it holds (fetched, running, or
finished with its outcome not yet recorded) and keeps outcomes as instance state, so:

* a handler raising anything, SystemExit and KeyboardInterrupt included, fails that attempt
  (retry or dead letter): it never ends the worker;
* a poison envelope (not UTF-8, not JSON, nested too deep, non-finite numbers, wrong types)
  is dead-lettered with the reason and the worker carries on;
* any Redis error (outage, WRONGTYPE, NOPERM, OOM, NOSCRIPT) or bug in the loop is logged and
  retried with backoff; held jobs stay in the processing list while the maintenance thread
  keeps heartbeating, so they are neither lost nor reaped twice; outcomes buffered meanwhile
  are flushed when Redis answers again, and the processing list is then reconciled (jobs a
  lost reply moved there are adopted);
* on exit, jobs not started go back to the head of their lane, and the worker deregisters
  only once its processing lists are empty. Otherwise it leaves its registration to expire,
  and the reaper returns the lists.

A rollback takes effect within a heartbeat even on a busy worker (issue 11): the maintenance
thread polls the config revision every tick and, once the version is rolled back or replaced
on a queue, returns every job held but not started to the head of its lane, in order (the
stable lane's when the canary lane is closed); none of them starts here. A worker holds at
most ``prefetch`` jobs, running ones included (default: its concurrency), and with
``exit_when_retired`` it stops once no queue it served wants its version any more.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import itertools
import logging
import os
import queue as queue_mod
import random
import secrets
import signal
import socket
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import redis
from redis.client import NEVER_DECODE
from redis.exceptions import NoScriptError

from . import defaults, metrics, registry, validation
from .connection import Connection
from .errors import VERSION_ROLLED_BACK, ScriptError, ValidationError
from .job import Envelope, Job, encode_json

log = logging.getLogger("pycanary.worker")

DEFAULT_MAX_ATTEMPTS = defaults.MAX_ATTEMPTS
DEFAULT_BACKOFF_S = defaults.BACKOFF_S
DEFAULT_BACKOFF_MAX_S = defaults.BACKOFF_MAX_S
#: Acks are flushed when this many are buffered, or after ACK_DELAY_S, or when idle.
ACK_BATCH = 200
ACK_DELAY_S = 0.002
MAX_FETCH = 200
#: Most jobs a worker may hold at once (fetch_jobs takes at most 1000 per call).
MAX_PREFETCH = 1000
PROMOTE_BATCH = 500
BOUNCE_PAUSE_S = 0.2
#: Backoff after a failed step (Redis unreachable or refusing), doubling up to the cap.
ERROR_PAUSE_S = 0.1
ERROR_PAUSE_MAX_S = 5.0
#: After a stop request, how long a worker keeps retrying to record outcomes and return jobs
#: before it exits and leaves the rest to the reaper.
STOP_GRACE_S = 10.0
#: A processing-list entry that could not be adopted (a poison job while the DLQ refuses
#: writes) is tried again after this long.
RECONCILE_RETRY_S = 1.0

Handler = Callable[[Job], Any]


@dataclass
class LaneAssignment:
    """What a worker does on one queue, decided from the queue's config every heartbeat."""

    lane: str | None  # the lane it takes jobs from; None = takes nothing
    state: str  # active | outdated | retiring | standby
    reason: str = ""


def assign_lane(
    version: str,
    *,
    stable_version: str | None,
    canary_version: str | None,
    rolled_back: bool,
    former_stable: bool,
    pinned_lane: str | None = None,
) -> LaneAssignment:
    """The lane rule (docs/design.md invariants 2 and 3), pure so it can be tested on its own."""
    if rolled_back and version != stable_version:
        return LaneAssignment(None, "retiring", f"version {version} was rolled back")
    if pinned_lane is not None:
        return LaneAssignment(pinned_lane, "active", "lane pinned by --lane")
    if canary_version and version == canary_version:
        return LaneAssignment("canary", "active")
    if stable_version and version == stable_version:
        return LaneAssignment("stable", "active")
    if former_stable:
        return LaneAssignment("stable", "outdated",
                              f"{stable_version} is stable now; this version was before")
    return LaneAssignment(
        None, "standby",
        f"version {version} is neither stable ({stable_version}) nor canary "
        f"({canary_version or '-'}); start a canary with it to give it jobs",
    )


def check_prefetch(prefetch: int | None, concurrency: int) -> int:
    """The jobs a worker holds at once, running ones included (default: the concurrency, so
    a worker holds nothing it cannot start now: a rollback or a stop leaves little to give
    back). More than the concurrency saves round trips for very short jobs."""
    if prefetch is None:
        return concurrency
    if isinstance(prefetch, bool) or not isinstance(prefetch, int) or not (
            concurrency <= prefetch <= MAX_PREFETCH):
        raise ValidationError(
            f"--prefetch must be {concurrency}-{MAX_PREFETCH} (at least --concurrency: it "
            f"counts running jobs too), got {prefetch!r}", field="prefetch")
    return prefetch


def backoff_s(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: base * 2^(attempt-1), times 0.5..1.5, capped."""
    return min(cap, base * (2 ** (attempt - 1))) * (0.5 + rng.random())


@dataclass
class _Running:
    raw: str
    envelope: Envelope
    queue: str
    lane: str
    started_ns: int
    wait_us: float
    # analysis fields, fixed when the job is marked started (metrics.unit_of)
    first: str = ""
    unit: str = ""
    # Streams backend (backends/stream_worker.py): the entry id that names the held job
    entry_id: str = ""


@dataclass(eq=False)
class _Outcome:
    running: _Running
    ok: bool
    run_us: float
    error: str = ""
    cpu_us: float | None = None  # the handler's CPU time (its thread's); None = not measured
    # a failure's next step, decided once (a flush retried after an outage sends the same)
    outcome: str = ""
    next: str = ""
    due: str = ""


@dataclass
class WorkerStats:
    done: int = 0
    failed: int = 0
    retried: int = 0
    dead: int = 0
    late: int = 0
    bounced: int = 0
    started_at: int = field(default_factory=defaults.now_ms)


class Worker:
    """A worker process's engine. ``run()`` blocks; ``stop()`` (or SIGTERM) drains in-flight
    jobs and returns; a second signal exits at once and the reaper recovers its jobs."""

    def __init__(
        self,
        conn: Connection,
        queues: Sequence[str],
        version: str,
        handler: Handler,
        *,
        concurrency: int = 1,
        lane: str | None = None,
        schemas: Iterable[int] | None = None,
        heartbeat_s: float = defaults.HEARTBEAT_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff_s: float = DEFAULT_BACKOFF_S,
        backoff_max_s: float = DEFAULT_BACKOFF_MAX_S,
        job_timeout_s: float | None = None,
        prefetch: int | None = None,
        block_s: float = 1.0,
        slot_s: int = metrics.DEFAULT_SLOT_S,
        keep_s: int = metrics.DEFAULT_KEEP_S,
        worker_id: str | None = None,
        rng: random.Random | None = None,
        exit_when_retired: bool = False,
    ) -> None:
        if not queues:
            raise ValidationError("give at least one queue", field="queues")
        self.queues = [validation.queue_name(q) for q in dict.fromkeys(queues)]
        self.version = validation.version(version)
        if lane not in (None, "stable", "canary"):
            raise ValidationError(f"must be stable or canary, got {lane!r}", field="lane")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not (
                1 <= concurrency <= 1024):
            raise ValidationError(f"must be 1-1024, got {concurrency!r}", field="concurrency")
        if not callable(handler):
            raise ValidationError("must be callable", field="handler")
        if max_attempts < 1:
            raise ValidationError(f"must be at least 1, got {max_attempts}", field="max_attempts")
        heartbeat_s = registry.check_heartbeat_s(heartbeat_s)
        if job_timeout_s is not None and job_timeout_s <= 0:
            raise ValidationError(f"must be positive, got {job_timeout_s}", field="timeout")
        self.conn = conn
        self.handler = handler
        self.is_async = inspect.iscoroutinefunction(handler)
        self.concurrency = concurrency
        self.pinned_lane = lane
        self.schemas = None if schemas is None else frozenset(int(s) for s in schemas)
        self.heartbeat_s = heartbeat_s
        self.ttl_ms = defaults.ttl_ms(heartbeat_s)
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.job_timeout_s = job_timeout_s
        self.prefetch = check_prefetch(prefetch, concurrency)
        self.exit_when_retired = exit_when_retired
        #: why the worker stopped on its own (--exit-when-retired), "" otherwise
        self.exit_reason = ""
        self.block_s = block_s
        self.slot_s = slot_s
        self.keep_s = keep_s
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.stats = WorkerStats()
        self._rng = rng or random.Random()
        self._assignments: dict[str, LaneAssignment] = {
            q: LaneAssignment(None, "standby", "not yet configured") for q in self.queues}
        self._last_lane: dict[str, str] = {}
        # the config revision each queue's assignment was decided from: the maintenance thread
        # polls it every tick, so a rollback is seen in a fraction of a heartbeat
        self._config_rev: dict[str, str | None] = {}
        # guards _pending and _held: the maintenance thread returns unstarted jobs of a lane
        # this worker no longer serves while the main thread may be busy running a job
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._results: queue_mod.SimpleQueue[_Outcome] = queue_mod.SimpleQueue()
        self._pending: deque[_Running] = deque()
        self._inflight = 0
        # running jobs per (queue, lane) and when the last one finished (wall clock, ms): in
        # the heartbeat, so `rollback` and `status` can say what still runs on a version
        self._running: Counter[tuple[str, str]] = Counter()
        self._last_finished_ms = 0
        # outcomes not yet recorded in Redis: instance state, so they survive a restart of
        # _serve after an outage and are flushed when Redis answers again
        self._acks: list[_Outcome] = []
        self._fails: list[_Outcome] = []
        self._first_buffered = 0.0
        # every job held: (queue, envelope) -> count, pending + running + outcome unrecorded
        self._held: Counter[tuple[str, str]] = Counter()
        self._needs_reconcile = False
        self._reconcile_after = 0.0
        self._pause = ERROR_PAUSE_S
        self._maint_stop = threading.Event()
        self.stop_grace_s = STOP_GRACE_S
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._maint: threading.Thread | None = None
        self._signals = 0
        self.ready = threading.Event()
        # tenants with a weight override, per queue (read every heartbeat): their jobs are
        # their own analysis stratum
        self._strata: dict[str, frozenset[str]] = {}

    # -- lifecycle ------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop taking jobs; in-flight jobs finish and are acknowledged, then run() returns."""
        self._stop.set()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("signal %s: finishing in-flight jobs, then exiting", signum)
            self.stop()
        else:
            log.warning("second signal: exiting now; the reaper will return held jobs")
            os._exit(128 + signum)

    def run(self) -> WorkerStats:
        handlers_installed = threading.current_thread() is threading.main_thread()
        previous = {}
        if handlers_installed:
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._on_signal)
        self._start_executor()
        try:
            self._refresh_assignments()
            self._refresh_strata()
            self._after_refresh()
            self._heartbeat()
            self._needs_reconcile = True  # a previous run with this id may have left jobs
            self._maint = threading.Thread(target=self._maintenance, name="pycanary-maint",
                                           daemon=True)
            self._maint.start()
            self.ready.set()
            self._main_loop()
        finally:
            self._stop.set()
            released = False
            try:
                released = self._release()
            except BaseException:  # never let cleanup hide the original exit
                log.exception("worker %s: release at exit failed; the reaper returns its jobs",
                              self.id)
            # heartbeats stop before the deregistration: one more beat after it would register
            # this worker again (a ghost "stopping" record until its TTL ran out)
            self._maint_stop.set()
            if self._maint is not None:
                self._maint.join(timeout=self.heartbeat_s + 5)
            if released:
                self._deregister()
            self._stop_executor()
            if handlers_installed:
                for sig, h in previous.items():
                    signal.signal(sig, h)
        return self.stats

    # -- assignments, heartbeat, maintenance ---------------------------------------------
    def _refresh_assignments(self) -> None:
        conn = self.conn
        pipe = conn.client.pipeline(transaction=False)
        for q in self.queues:
            qk = conn.keys.queue(q)
            pipe.hmget(qk.config, ["stable_version", "canary_version", "rev"])
            pipe.sismember(qk.rolled_back, self.version)
            pipe.zscore(qk.former_stable, self.version)
        res = pipe.execute()
        for i, q in enumerate(self.queues):
            (stable, canary, rev), rolled_back, former = res[3 * i: 3 * i + 3]
            self._config_rev[q] = rev
            if not stable and self.pinned_lane in (None, "stable"):
                stable = conn.scripts.call("adopt_stable_version", [conn.keys.queue(q).config],
                                           [self.version, defaults.now_ms()])
            a = assign_lane(self.version, stable_version=stable or None,
                            canary_version=canary or None, rolled_back=bool(rolled_back),
                            former_stable=former is not None, pinned_lane=self.pinned_lane)
            old = self._assignments.get(q)
            if old is None or (old.lane, old.state) != (a.lane, a.state):
                where = f" on the {a.lane} lane" if a.lane else ""
                why = f" ({a.reason})" if a.reason else ""
                log.info("worker %s, queue %s: %s%s%s", self.id, q, a.state, where, why)
            self._assignments[q] = a
            if a.lane is not None:
                self._last_lane[q] = a.lane

    def _refresh_strata(self) -> None:
        """The tenants with a weight override on each queue: the analysis compares their jobs
        within their own stratum (they route at another share than the queue's weight)."""
        pipe = self.conn.client.pipeline(transaction=False)
        for q in self.queues:
            pipe.hgetall(self.conn.keys.queue(q).tenant_weights)  # small; HGETALL: ACL reads
        self._strata = {q: frozenset(t) for q, t in zip(self.queues, pipe.execute(),
                                                         strict=True)}

    def _mark_started(self, pending: deque[_Running]) -> None:
        """Before jobs start, one round trip records them in the worker's running hash (with
        their first-attempt flag and analysis unit): if this process dies mid-job, the reaper
        counts exactly those as crashed attempts of this version. Only the jobs the next
        dispatch step starts are marked, so a job fetched but not started is never counted."""
        n = self.concurrency - self._inflight
        with self._lock:  # the jobs _take will give next: the wanted ones at the head
            todo = []
            for r in itertools.islice(pending, max(0, n)):
                if not self._wanted(r.queue):
                    break
                if not r.first:
                    todo.append(r)
        if todo:
            self._write_marks(todo)

    def _write_marks(self, todo: list[_Running]) -> None:
        """One HSET per queue of the jobs' running-hash entries; on failure none counts as
        marked (the step is retried)."""
        by_queue: dict[str, list[str]] = {}
        for r in todo:
            e = r.envelope
            first = "1" if e.attempts == 0 else "0"
            unit = metrics.unit_of(e.id, e.sticky_key, e.tenant,
                                   self._strata.get(r.queue, frozenset()))
            by_queue.setdefault(r.queue, []).extend((r.raw, f"{first} {unit}"))
            r.first, r.unit = first, unit
        try:
            # one HSET per queue (usually one command: a round trip without pipeline upkeep)
            client = self.conn.client
            if len(by_queue) == 1:
                ((q, pairs),) = by_queue.items()
                client.execute_command("HSET", self.conn.keys.queue(q).running(self.id), *pairs)
            else:
                pipe = client.pipeline(transaction=False)
                for q, pairs in by_queue.items():
                    pipe.execute_command("HSET", self.conn.keys.queue(q).running(self.id),
                                         *pairs)
                pipe.execute()
        except BaseException:
            for r in todo:
                r.first = r.unit = ""
            raise

    def _ensure_marked(self, r: _Running) -> None:
        """A job taken without a mark (the maintenance thread returned one that was marked
        meanwhile, shifting the next into its place): marked on its own; if that fails it goes
        back to the head of pending, still held, and the step is retried."""
        if r.first:
            return
        try:
            self._write_marks([r])
        except BaseException:
            with self._lock:
                self._pending.appendleft(r)
            raise

    @property
    def state(self) -> str:
        states = {a.state for a in self._assignments.values()}
        for s in ("active", "outdated", "retiring"):
            if s in states:
                return s
        return "standby"

    def _heartbeat(self) -> bool:
        lanes = {q: self._last_lane.get(q, a.lane or "stable")
                 for q, a in self._assignments.items()}
        info = {
            "host": socket.gethostname(), "pid": os.getpid(), "version": self.version,
            "state": "stopping" if self._stop.is_set() else self.state,
            "queues": ",".join(self.queues),
            "lanes": ",".join(f"{q}={a.lane or '-'}" for q, a in self._assignments.items()),
            "concurrency": self.concurrency, "started_at": self.stats.started_at,
            "current": self._inflight, "done": self.stats.done, "failed": self.stats.failed,
            "running": ",".join(f"{q}/{lane}={n}" for (q, lane), n in
                                sorted(dict(self._running).items()) if n > 0),
            "last_finished_at": self._last_finished_ms,
            "schemas": "any" if self.schemas is None else ",".join(map(str,
                                                                       sorted(self.schemas))),
            "last_seen": defaults.now_ms(), "rss": registry.rss_bytes(),
        }
        return registry.heartbeat(self.conn, self.id, version=self.version, queues=lanes,
                                  info=info, ttl_ms=self.ttl_ms)

    def _promote_due(self) -> None:
        now = defaults.now_ms()
        for q in self.queues:
            qk = self.conn.keys.queue(q)
            while True:
                _a, _b, more = self.conn.scripts.call(
                    "promote_delayed",
                    [qk.delayed_stable, qk.delayed_canary, qk.lane_stable, qk.lane_canary,
                     qk.config],
                    [now, PROMOTE_BATCH])
                if not int(more):
                    break

    def _config_changed(self) -> bool:
        """One cheap read per queue (the config's revision, bumped by every config write):
        has any queue's config changed since the assignments were last decided?"""
        pipe = self.conn.client.pipeline(transaction=False)
        for q in self.queues:
            pipe.hget(self.conn.keys.queue(q).config, "rev")
        revs = pipe.execute()
        return any(self._config_rev.get(q) != rev for q, rev in zip(self.queues, revs,
                                                                        strict=True))

    def _maintenance(self) -> None:
        """Heartbeats until run() has released every held job (not merely until stop(): a
        stopping worker still holds its in-flight jobs, and must not look dead meanwhile).

        It runs in its own thread, so busy slots never starve it. Every tick it checks the
        queues' config revision: a rollback (or a new canary replacing this version) is seen
        within a tick, and the jobs this worker holds but has not started are returned from
        here at once, even while the main thread is running a long job."""
        next_beat = time.monotonic() + self.heartbeat_s
        while not self._maint_stop.wait(min(0.25, self.heartbeat_s / 4)):
            try:
                if time.monotonic() < next_beat and self._config_changed():
                    self._refresh_assignments()
                    self._after_refresh()
                elif any(not self._wanted(r.queue) for r in list(self._pending)):
                    self._after_refresh()  # the lock was busy last time: try again
                if time.monotonic() >= next_beat:
                    # a failed heartbeat is retried next tick, not a whole period later: after
                    # an outage this worker must show it is alive before others reap it
                    if not self._heartbeat():
                        # it was reaped meanwhile (stopped, partitioned): its jobs went back
                        # to the lanes, so the ones it has not started are no longer its own
                        self._needs_reconcile = True
                    next_beat = time.monotonic() + self.heartbeat_s
                    self._refresh_assignments()
                    self._refresh_strata()
                    self._after_refresh()
                    # others are judged by their own advertised TTL; ttl_ms only covers
                    # workers that advertise none
                    registry.reap(self.conn, ttl_ms=max(self.ttl_ms, defaults.TTL_MS),
                                  queues=self.queues)
                self._promote_due()
            except Exception as exc:
                log.warning("maintenance step failed (%s); retrying next tick", exc)

    def _after_refresh(self) -> None:
        """Maintenance thread, after the assignments were decided again: give back the jobs of
        lanes this worker no longer serves. If the main thread holds the lock (it is
        dispatching or returning jobs itself), the next tick tries again, and the main thread
        does the same on its next round."""
        if self.exit_when_retired and not self._stop.is_set():
            why = self.retired_reason()
            if why:
                self.exit_reason = why
                log.info("worker %s (version %s) exits: retired on every queue it served (%s); "
                         "unstarted jobs go back, running ones finish first", self.id,
                         self.version, why)
                self.stop()
        # never wait long: heartbeats must go on (the next tick tries again)
        if not self._lock.acquire(timeout=min(0.05, self.heartbeat_s / 4)):
            return
        try:
            self._return_unwanted()
        finally:
            self._lock.release()

    def retired_reason(self) -> str:
        """Why this worker has nothing left to do, or "": no queue gives it a lane any more,
        and on at least one its version was rolled back or replaced (a worker that has been
        on standby from the start, waiting for its canary, is not retired)."""
        if any(a.lane is not None for a in self._assignments.values()):
            return ""
        why = [f"{q}: {a.reason}" if a.state == "retiring" else
               f"{q}: no longer serves the {self._last_lane[q]} lane ({a.reason})"
               for q, a in self._assignments.items()
               if a.state == "retiring" or q in self._last_lane]
        return "; ".join(why)

    # -- executors ------------------------------------------------------------------------
    def _start_executor(self) -> None:
        if self.is_async:
            self._loop = asyncio.new_event_loop()
            self._loop_thread = threading.Thread(target=self._loop.run_forever,
                                                 name="pycanary-async", daemon=True)
            self._loop_thread.start()
        elif self.concurrency > 1 or self.job_timeout_s is not None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.concurrency, thread_name_prefix="pycanary-job")

    def _stop_executor(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._loop_thread is not None:
                self._loop_thread.join(timeout=5)

    def _job(self, r: _Running) -> Job:
        e = r.envelope
        return Job(id=e.id, queue=e.queue, payload=e.payload, tenant=e.tenant,
                   attempt=e.attempts + 1, lane=r.lane, version=self.version,
                   enqueued_at=e.enqueued_at, sticky_key=e.sticky_key, schema=e.schema)

    def _run_sync(self, r: _Running) -> _Outcome:
        """Run the handler. Anything it raises fails the attempt, BaseExceptions included: a
        handler calling sys.exit() (SystemExit) or raising KeyboardInterrupt fails that job
        (retried, then dead-lettered) and the worker carries on; it is not a worker exit.
        Stopping a worker is done with signals (SIGTERM/SIGINT), which never reach a handler
        as exceptions."""
        t0 = time.perf_counter_ns()
        c0 = time.thread_time_ns()  # this thread runs the handler: its CPU time is the job's
        try:
            self.handler(self._job(r))
        except BaseException as exc:
            return _Outcome(r, False, (time.perf_counter_ns() - t0) / 1000, _describe(exc),
                            cpu_us=(time.thread_time_ns() - c0) / 1000)
        return _Outcome(r, True, (time.perf_counter_ns() - t0) / 1000,
                        cpu_us=(time.thread_time_ns() - c0) / 1000)

    async def _run_async(self, r: _Running) -> _Outcome:
        """As _run_sync. CPU time: the loop thread's CPU time spent inside this job's own
        coroutine steps (`_CpuTimed`), so jobs interleaved on one loop are not charged for
        each other; work a handler hands to other threads (run_in_executor) is not counted."""
        t0 = time.perf_counter_ns()
        timed: _CpuTimed | None = None
        try:
            timed = _CpuTimed(self.handler(self._job(r)))
            if self.job_timeout_s is not None:
                await asyncio.wait_for(timed.run(), self.job_timeout_s)
            else:
                await timed
        except BaseException as exc:  # as _run_sync: SystemExit, CancelledError fail the job
            return _Outcome(r, False, (time.perf_counter_ns() - t0) / 1000, _describe(exc),
                            cpu_us=None if timed is None else timed.cpu_ns / 1000)
        return _Outcome(r, True, (time.perf_counter_ns() - t0) / 1000,
                        cpu_us=timed.cpu_ns / 1000)

    def _dispatch(self, r: _Running) -> None:
        self._inflight += 1
        self._running[(r.queue, r.lane)] += 1
        if self._loop is not None:
            fut = asyncio.run_coroutine_threadsafe(self._run_async(r), self._loop)
            fut.add_done_callback(lambda f, r=r: self._results.put(_result_of(f, r)))
        elif self._pool is not None:
            fut = self._pool.submit(self._run_sync, r)
            if self.job_timeout_s is not None:
                timer = threading.Timer(self.job_timeout_s, self._time_out, args=(fut, r))
                timer.daemon = True
                timer.start()
                fut.add_done_callback(lambda f, r=r, t=timer: (t.cancel(), self._finish(f, r)))
            else:
                fut.add_done_callback(lambda f, r=r: self._results.put(_result_of(f, r)))
        else:
            self._results.put(self._run_sync(r))

    def _finish(self, fut: concurrent.futures.Future, r: _Running) -> None:
        if not getattr(fut, "_pycanary_timed_out", False):
            self._results.put(_result_of(fut, r))

    def _time_out(self, fut: concurrent.futures.Future, r: _Running) -> None:
        """A sync handler cannot be interrupted: its attempt is failed now and its result,
        whenever it comes, is ignored."""
        if fut.done():
            return
        fut._pycanary_timed_out = True  # type: ignore[attr-defined]
        self._results.put(_Outcome(r, False, self.job_timeout_s * 1e6,
                                   f"TimeoutError: job exceeded {self.job_timeout_s}s"))

    # -- the main loop --------------------------------------------------------------------
    def _active_lanes(self) -> list[tuple[str, str]]:
        return [(q, a.lane) for q, a in self._assignments.items() if a.lane is not None]

    def _hold(self, r: _Running) -> None:
        with self._lock:
            self._held[(r.queue, r.raw)] += 1

    def _unhold(self, queue: str, raw: str) -> None:
        key = (queue, raw)
        with self._lock:
            n = self._held.get(key, 0)
            if n <= 1:
                self._held.pop(key, None)
            else:
                self._held[key] = n - 1

    def _block_fetch(self) -> int:
        """Idle: wait for one job on the only active lane (BLMOVE), or sleep a little.

        The reply is read as bytes: a client decoding replies would fail on an envelope that
        is not UTF-8 (it is dead-lettered instead). The list is put in the processing index
        first, so the reaper can find it whatever happens to the registry."""
        lanes = self._active_lanes()
        if len(lanes) != 1:
            self._stop.wait(0.05 if lanes else min(0.5, self.heartbeat_s / 2))
            return 0
        q, lane = lanes[0]
        qk = self.conn.keys.queue(q)
        # idle: the call is free; the entry's form is fetch_jobs' ("<lane> <version>")
        self.conn.client.hset(qk.processing_index, self.id, f"{lane} {self.version}")
        raw = self._raw_command(qk.lane(lane), "BLMOVE", qk.lane(lane), qk.processing(self.id),
                                "RIGHT", "LEFT", self.block_s)
        if raw is None:
            return 0
        self._accept(q, lane, _text(raw))
        return 1

    def _raw_command(self, key: str, *args: Any) -> Any:
        """One command whose reply is read as bytes (NEVER_DECODE). redis-py's cluster client
        does not pass that option on, so on a cluster the command goes to the node that owns
        ``key`` (a slot move then fails the step, which is retried)."""
        client = self.conn.client
        if self.conn.is_cluster:
            client = client.get_node_from_key(key).redis_connection
        return client.execute_command(*args, **{NEVER_DECODE: True})

    def _accept(self, queue: str, lane: str, raw: str | bytes) -> None:
        """A job now in the processing list: pending (held), bounced, or dead-lettered."""
        now = defaults.now_ms()
        try:
            if isinstance(raw, bytes):
                raise ValueError(f"not UTF-8 ({len(raw)} bytes)")
            env = Envelope.decode(raw)
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            self._dead_letter_garbage(queue, lane, raw, exc)
            return
        if self.schemas is not None and env.schema not in self.schemas:
            self._bounce(queue, lane, raw)
            return
        r = _Running(raw, env, queue, lane, time.perf_counter_ns(),
                     max(0.0, (now - env.waiting_since) * 1000.0))
        with self._lock:
            self._hold(r)
            self._pending.append(r)

    def _return_keys(self, queue: str, lane: str) -> list[str]:
        """KEYS of return_job and bounce_job: the job goes back to its lane, or to the stable
        lane when it came from a closed canary lane (the script reads the config)."""
        qk = self.conn.keys.queue(queue)
        return [qk.processing(self.id), qk.lane(lane), qk.lane_stable, qk.config]

    def _bounce(self, queue: str, lane: str, raw: str) -> None:
        """A payload schema this worker does not accept: back to the lane for another worker."""
        res = self.conn.scripts.call("bounce_job", self._return_keys(queue, lane), [raw])
        _check(res, "bounce_job")
        self.stats.bounced += 1
        self._stop.wait(BOUNCE_PAUSE_S)

    def _dead_letter_garbage(self, queue: str, lane: str, raw: str | bytes,
                             exc: BaseException) -> None:
        """A poison envelope: to the dead-letter list with the reason (bytes that are not
        UTF-8 are kept as hex), removed from the processing list in the same script."""
        qk = self.conn.keys.queue(queue)
        record: dict[str, Any] = {"error": f"undecodable envelope: {exc}"[:2000],
                                  "version": self.version, "lane": lane, "worker": self.id,
                                  "failed_at": defaults.now_ms()}
        if isinstance(raw, bytes):
            record["raw_hex"] = raw.hex()
        else:
            record["raw"] = raw
        slot = metrics.slot_of(defaults.now_ms(), self.slot_s)
        res = self.conn.scripts.call("fail_jobs", qk.fail_keys(self.id, self.version, lane, slot),
                                     [self.keep_s, raw, "dead", encode_json(record), "", 0, 0,
                                      "", "0", ""])
        _check(res, "fail_jobs")
        self.stats.dead += int(res[0])
        log.warning("worker %s: dead-lettered a poison envelope on %s: %s", self.id, queue, exc)

    def _main_loop(self) -> None:
        """Run _serve, riding out every failure: Redis outages, refusals (WRONGTYPE, NOPERM,
        OOM) and bugs alike are logged and retried with backoff. Held jobs stay in the
        processing list (the maintenance thread keeps heartbeating, so no reaper takes them)
        and buffered outcomes are flushed on a later round. After a stop request it retries
        for stop_grace_s at most, then returns and run() leaves the rest to the reaper."""
        stop_deadline: float | None = None
        while True:
            try:
                self._serve()
                return
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                log.warning("Redis unreachable (%s); holding %d jobs, retrying in %.1fs",
                            exc, sum(self._held.values()), self._pause)
            except Exception as exc:
                log.warning("worker step failed (%s: %s); holding %d jobs, retrying in %.1fs",
                            type(exc).__name__, str(exc)[:300], sum(self._held.values()),
                            self._pause, exc_info=not isinstance(exc, redis.RedisError))
            self._needs_reconcile = True
            if self._stop.is_set():
                now = time.monotonic()
                if stop_deadline is None:
                    stop_deadline = now + self.stop_grace_s
                elif now > stop_deadline:
                    log.error("worker %s: still failing %.0fs after the stop request; exiting "
                              "with %d jobs held, the reaper returns them", self.id,
                              self.stop_grace_s, sum(self._held.values()))
                    return
            time.sleep(self._pause)
            self._pause = min(ERROR_PAUSE_MAX_S, self._pause * 2)

    def _reconcile(self) -> None:
        """After a failed step, make the processing lists and what this worker knows agree: a
        fetch whose reply was lost (connection dropped, an error raised midway) moved jobs
        that nobody runs. Entries held by no one here are adopted (run, bounced or
        dead-lettered). Read as bytes, so an envelope that is not UTF-8 cannot fail it."""
        with self._lock:
            self._reconcile_locked()

    def _reconcile_locked(self) -> None:
        failed: Exception | None = None
        for q in self.queues:
            qk = self.conn.keys.queue(q)
            entries = self._raw_command(qk.processing(self.id), "LRANGE",
                                        qk.processing(self.id), 0, -1)
            extra = Counter(entries)
            extra.subtract(Counter({raw.encode("utf-8"): n
                                    for (qq, raw), n in self._held.items() if qq == q}))
            lane = self._last_lane.get(q) or self._assignments[q].lane or "stable"
            gone = {raw for raw, n in extra.items() if n < 0}
            if gone:  # reaped while this worker was silent: drop those not started yet
                kept = deque()
                for r in self._pending:
                    if r.queue == q and r.raw.encode("utf-8") in gone:
                        self._unhold(q, r.raw)
                    else:
                        kept.append(r)
                if len(kept) != len(self._pending):
                    log.warning("worker %s: %d fetched jobs of %s were returned to the lane "
                                "while it was silent; not running them", self.id,
                                len(self._pending) - len(kept), q)
                self._pending.clear()
                self._pending.extend(kept)
            for raw, n in extra.items():
                for _ in range(n):
                    try:
                        self._accept(q, lane, _text(raw))
                    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                        raise
                    except Exception as exc:  # e.g. a poison job while the DLQ is refused
                        failed = failed or exc
                if n > 0:
                    log.warning("worker %s: adopted %d job(s) found in its processing list of "
                                "%s", self.id, n, q)
        if failed is not None:
            # the entry stays in the list, unheld: tried again later, without blocking the
            # jobs this worker can serve meanwhile
            log.warning("worker %s: could not adopt every job of its processing lists (%s); "
                        "retrying in %.0fs", self.id, failed, RECONCILE_RETRY_S)
            self._reconcile_after = time.monotonic() + RECONCILE_RETRY_S
            return
        self._needs_reconcile = False

    def _serve(self) -> None:
        pending = self._pending  # survives a restart of _serve after a failure
        while True:
            if self._needs_reconcile and time.monotonic() >= self._reconcile_after:
                self._reconcile()
            stopping = self._stop.is_set()
            if stopping:
                self._return_pending(pending)
                if self._inflight == 0:
                    break
            if pending:
                with self._lock:
                    self._return_unwanted()
            # 1. dispatch what was fetched (never a job of a lane this worker left), each job
            # marked as started first (crash accounting: _mark_started)
            if pending and self._inflight < self.concurrency:
                self._mark_started(pending)
            while self._inflight < self.concurrency:
                r = self._take()
                if r is None:
                    break
                self._ensure_marked(r)
                self._dispatch(r)
            buffered = len(self._acks) + len(self._fails)
            # 2. collect outcomes; wait for one only when nothing else can be done
            if self._inflight and (self._inflight >= self.concurrency or stopping or
                                   (pending and not buffered)):
                with contextlib.suppress(queue_mod.Empty):
                    self._finished(self._results.get(timeout=ACK_DELAY_S if buffered else 0.05))
            while True:
                try:
                    self._finished(self._results.get_nowait())
                except queue_mod.Empty:
                    break
            buffered = len(self._acks) + len(self._fails)
            if buffered and not self._first_buffered:
                self._first_buffered = time.monotonic()
            # 3. sync point: one round trip acks what finished and fetches what is next
            # no new work while backing off: outcomes that cannot be recorded come first
            backing_off = self._pause > ERROR_PAUSE_S and buffered > 0
            want = 0 if stopping or backing_off else (
                self.prefetch - len(pending) - self._inflight)
            need_work = not pending and want > 0
            if need_work or buffered >= ACK_BATCH or (
                    buffered and time.monotonic() - self._first_buffered >= ACK_DELAY_S):
                got = self._sync(want if need_work else 0)
                if need_work and not got and self._inflight == 0 and not pending:
                    self._block_fetch()
        self._sync(0)

    def _wanted(self, queue: str) -> bool:
        """Does this worker still serve a lane of the queue (not rolled back, not replaced)?"""
        return self._assignments[queue].lane is not None

    def _take(self) -> _Running | None:
        """The next fetched job to start, unless it belongs to a queue whose lane this worker
        left: that one is given back instead (by _return_unwanted), never started."""
        with self._lock:
            if self._pending and self._wanted(self._pending[0].queue):
                return self._pending.popleft()
        return None

    def _return_unwanted(self) -> None:
        """Jobs fetched for a lane this worker no longer serves (its version was rolled back,
        or another canary version replaced it) never start here: each goes back to the head
        of its lane, in order, and return_job sends it to the head of the stable lane when
        that lane is a closed canary lane. Called with the lock held, from either thread."""
        pending = self._pending
        back = [r for r in pending if not self._wanted(r.queue)]
        if not back:
            return
        moved = Counter()
        for r in reversed(back):  # newest first, so the oldest ends up at the very head
            res = self.conn.scripts.call("return_job", self._return_keys(r.queue, r.lane),
                                         [r.raw])
            _check(res, "return_job")
            pending.remove(r)
            self._unhold(r.queue, r.raw)
            moved["stable" if int(res) == 2 else r.lane] += 1
        log.info("worker %s (version %s): %d fetched job(s) not started, returned to the head "
                 "of their lane (%s): %s", self.id, self.version, len(back),
                 ", ".join(f"{n} to {lane}" for lane, n in sorted(moved.items())),
                 "; ".join(sorted({a.reason for q, a in self._assignments.items()
                                   if a.lane is None and a.reason})))

    def _return_pending(self, pending: deque[_Running]) -> None:
        """Fetched but not started when stopping: straight back to the head of their lane
        (the stable lane's, when it is a closed canary lane). Each job leaves `pending` only
        once the script ran, so a failure keeps it held."""
        with self._lock:
            while pending:
                r = pending[-1]  # newest first, so the oldest ends up at the very head
                res = self.conn.scripts.call("return_job", self._return_keys(r.queue, r.lane),
                                             [r.raw])
                _check(res, "return_job")
                pending.pop()
                self._unhold(r.queue, r.raw)

    def _finished(self, out: _Outcome) -> None:
        """A job's outcome came back: it no longer runs (heartbeat figures), then record it."""
        key = (out.running.queue, out.running.lane)
        self._running[key] -= 1
        if self._running[key] <= 0:
            del self._running[key]
        self._last_finished_ms = defaults.now_ms()
        self._collect(out)

    def _collect(self, out: _Outcome) -> None:
        self._inflight -= 1
        if out.ok:
            self._acks.append(out)
            return
        r = out.running
        attempt = r.envelope.attempts + 1
        now = defaults.now_ms()
        try:
            if attempt < self.max_attempts:
                due = now + int(1000 * backoff_s(attempt, self.backoff_base_s,
                                                 self.backoff_max_s, self._rng))
                out.outcome, out.next, out.due = "retry", r.envelope.next_attempt(
                    due).encode(), str(due)
            else:
                out.outcome, out.due = "dead", ""
                out.next = encode_json({"job": asdict(r.envelope), "error": out.error,
                                        "version": self.version, "lane": r.lane,
                                        "worker": self.id, "attempts": attempt,
                                        "failed_at": now})
            out.next.encode("utf-8")
        except (ValueError, TypeError, RecursionError) as exc:  # never stuck on a bad record
            out.outcome, out.due = "dead", ""
            out.next = encode_json({"raw": r.raw, "error": f"{out.error}; record: {exc}"[:2000],
                                    "version": self.version, "lane": r.lane, "worker": self.id,
                                    "attempts": attempt, "failed_at": now})
        self._fails.append(out)

    def _execute(self, calls: list[tuple[str, list[str], list[Any]]]) -> list[Any]:
        """Script calls in one pipeline, with a result (or the exception) per call, so that one
        refused call (WRONGTYPE, OOM) does not hide what the others did. NOSCRIPT answers
        (SCRIPT FLUSH, a failover) are replayed after loading: those calls did not run."""
        client, scripts = self.conn.client, self.conn.scripts

        def send(batch: list[tuple[str, list[str], list[Any]]]) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for name, keys, args in batch:
                pipe.execute_command("EVALSHA", scripts[name].sha, len(keys), *keys, *args)
            return pipe.execute(raise_on_error=False)

        results = send(calls)
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            scripts.load()
            for i, r in zip(missing, send([calls[i] for i in missing]), strict=True):
                results[i] = r
        return results

    def _sync(self, want: int) -> int:
        """One pipeline: ack and fail what finished (with metrics), fetch up to ``want`` more.
        Outcomes leave the buffer only once their script ran; returns the jobs fetched."""
        lanes = self._active_lanes() if want > 0 else []
        if not self._acks and not self._fails and not lanes:
            return 0
        slot = metrics.slot_of(defaults.now_ms(), self.slot_s)
        calls: list[tuple[str, list[str], list[Any]]] = []
        what: list[tuple[str, Any]] = []
        groups: dict[tuple[str, str], list[_Outcome]] = {}
        for o in self._acks:
            groups.setdefault((o.running.queue, o.running.lane), []).append(o)
        for (q, lane), outs in groups.items():
            name, keys, args = self._ack_call(q, lane, slot)
            for o in outs:
                args += (self._job_ref(o.running), metrics.bucket_us(o.run_us),
                         metrics.bucket_us(o.running.wait_us), *_job_fields(o))
            calls.append((name, keys, args))
            what.append(("ack", outs))
        fgroups: dict[tuple[str, str], list[_Outcome]] = {}
        for o in self._fails:
            fgroups.setdefault((o.running.queue, o.running.lane), []).append(o)
        for (q, lane), outs in fgroups.items():
            name, keys, args = self._fail_call(q, lane, slot)
            for o in outs:
                args += (self._job_ref(o.running), o.outcome, o.next, o.due,
                         metrics.bucket_us(o.run_us), metrics.bucket_us(o.running.wait_us),
                         *_job_fields(o))
            calls.append((name, keys, args))
            what.append(("fail", outs))
        for q, lane in lanes:
            calls.append(self._fetch_call(q, lane, want))
            what.append(("fetch", (q, lane)))
        results = self._execute(calls)
        error: Exception | None = None
        recorded: set[int] = set()
        fetched: list[tuple[str, str, Any]] = []
        for (kind, item), (name, _k, _a), res in zip(what, calls, results, strict=True):
            if isinstance(res, Exception):
                error = error or res
                continue
            if isinstance(res, int) and res < 0 and not (
                    kind == "fetch" and res == VERSION_ROLLED_BACK):
                error = error or ScriptError(f"{name} failed with code {res}")
                continue
            if kind == "fetch":
                fetched.append((*item, res))
                continue
            recorded.update(id(o) for o in item)
            self.stats.late += int(res[1])
            for o in item:
                self._unhold(o.running.queue, self._job_ref(o.running))
            if kind == "ack":
                self.stats.done += len(item)
            else:
                self.stats.failed += len(item)
                self.stats.retried += sum(o.outcome == "retry" for o in item)
                self.stats.dead += sum(o.outcome == "dead" for o in item)
        if recorded:
            self._acks = [o for o in self._acks if id(o) not in recorded]
            self._fails = [o for o in self._fails if id(o) not in recorded]
        self._first_buffered = time.monotonic() if (self._acks or self._fails) else 0.0
        got = 0
        try:
            for q, lane, res in fetched:
                if isinstance(res, int):  # VERSION_ROLLED_BACK
                    self._assignments[q] = LaneAssignment(
                        None, "retiring", f"version {self.version} was rolled back")
                    continue
                got += self._accept_fetched(q, lane, res)
        except BaseException:
            # the rest of the batch is adopted from the processing list (the PEL on streams)
            self._needs_reconcile = True
            raise
        if error is not None:
            raise error
        self._pause = ERROR_PAUSE_S
        return got

    # -- the backend's script calls (backends/stream_worker.py overrides these) ------------
    def _job_ref(self, r: _Running) -> str:
        """How the ack/fail scripts and the held counts name a job: its envelope here."""
        return r.raw

    def _ack_call(self, q: str, lane: str, slot: int) -> tuple[str, list[str], list[Any]]:
        """(script, KEYS, leading ARGV) of one lane's acks; the jobs' fields follow."""
        return "ack_jobs", self.conn.keys.queue(q).ack_keys(self.id, self.version, lane,
                                                            slot), [self.keep_s]

    def _fail_call(self, q: str, lane: str, slot: int) -> tuple[str, list[str], list[Any]]:
        return "fail_jobs", self.conn.keys.queue(q).fail_keys(self.id, self.version, lane,
                                                              slot), [self.keep_s]

    def _fetch_call(self, q: str, lane: str, want: int) -> tuple[str, list[str], list[Any]]:
        return "fetch_jobs", self.conn.keys.queue(q).fetch_keys(self.id, lane), [
            want, self.version, self.id, lane]

    def _accept_fetched(self, q: str, lane: str, res: Any) -> int:
        """Take what one fetch returned (envelopes; those not UTF-8 come hex-encoded)."""
        good, bad = res
        for raw in good:
            self._accept(q, lane, raw)
        for hexed in bad:
            self._accept(q, lane, bytes.fromhex(hexed))
        return len(good) + len(bad)

    def _release(self) -> bool:
        """Exit: record what can be recorded and give back what was not started; True when
        the processing lists are empty, so the worker may deregister. With jobs still running
        (a step kept failing), the registration is left to expire and the reaper returns the
        lists."""
        conn = self.conn
        try:
            if self._acks or self._fails:
                self._sync(0)
            self._return_pending(self._pending)
        except Exception as exc:
            log.warning("worker %s: could not record every outcome at exit (%s)", self.id, exc)
        if self._inflight or self._acks or self._fails or self._pending:
            log.warning("worker %s exits holding %d jobs (%d running): not deregistering; "
                        "the reaper returns them once its heartbeat expires", self.id,
                        sum(self._held.values()), self._inflight)
            return False
        try:
            remaining = 0
            for q in self.queues:
                # what is left was never started here (a lost reply): back to the lane head;
                # the call that empties the list also drops it from the processing index
                lane = self._last_lane.get(q) or self._assignments[q].lane or "stable"
                qk = conn.keys.queue(q)
                while True:
                    res = conn.scripts.call("requeue_jobs", qk.requeue_keys(self.id),
                                            [lane, registry.REQUEUE_BATCH, self.id])
                    _check(res, "requeue_jobs")
                    if int(res[0]) == 0 or int(res[1]) == 0:
                        remaining += int(res[1])
                        break
            if remaining:
                log.warning("worker %s: %d jobs left in its lists; not deregistering",
                            self.id, remaining)
                return False
        except Exception as exc:
            log.warning("worker %s: could not return its lists (%s); the reaper cleans up",
                        self.id, exc)
            return False
        return True

    def _deregister(self) -> None:
        try:
            registry.deregister(self.conn, self.id)
        except Exception as exc:
            log.warning("worker %s: could not deregister (%s); the reaper cleans up", self.id,
                        exc)


def _job_fields(o: _Outcome) -> tuple[Any, str, str]:
    """The ack/fail scripts' per-job analysis fields: CPU bucket ('' = not measured), first
    attempt ('1'/'0'), unit ('' = not counted per unit: a job never marked started)."""
    cpu = "" if o.cpu_us is None else metrics.bucket_us(o.cpu_us)
    first = o.running.first or ("1" if o.running.envelope.attempts == 0 else "0")
    return cpu, first, o.running.unit


class _CpuTimed:
    """Awaits a coroutine step by step (the same trampoline asyncio's Task uses), adding the
    loop thread's CPU time of each step to ``cpu_ns``: the CPU a job's own code used, not
    that of the jobs interleaved with it on the loop."""

    def __init__(self, coro: Any) -> None:
        self.coro = coro
        self.cpu_ns = 0

    async def run(self) -> Any:
        return await self

    def __await__(self) -> Any:
        coro, value, exc = self.coro, None, None
        while True:
            c0 = time.thread_time_ns()
            try:
                step = coro.send(value) if exc is None else coro.throw(exc)
            except StopIteration as stop:
                self.cpu_ns += time.thread_time_ns() - c0
                return stop.value
            except BaseException:
                self.cpu_ns += time.thread_time_ns() - c0
                raise
            self.cpu_ns += time.thread_time_ns() - c0
            try:
                value, exc = (yield step), None
            except BaseException as e:  # cancellation and throws go into the coroutine
                value, exc = None, e


def _text(raw: Any) -> str | bytes:
    """A reply read as bytes: text if it is UTF-8, else the bytes (a poison envelope)."""
    if isinstance(raw, bytes):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw
    return raw


def _check(res: Any, script: str) -> None:
    """A negative code from a worker script is a bug here (arguments are built by this
    module): raise, so the main loop retries and logs it instead of losing a job."""
    if isinstance(res, int) and res < 0:
        raise ScriptError(f"{script} failed with code {res}")


def _describe(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {tb[-1].filename}:{tb[-1].lineno}" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}"[:2000]


def _result_of(fut: concurrent.futures.Future, r: _Running) -> _Outcome:
    try:
        return fut.result()
    except BaseException as exc:  # cancelled or crashed outside the handler
        return _Outcome(r, False, 0.0, _describe(exc))


def load_handler(spec: str) -> Handler:
    """``module:function`` -> the function, with errors that say what is wrong."""
    import importlib

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValidationError(f"must be module:function, got {spec!r}", field="handler")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValidationError(f"cannot import {module_name!r}: {exc}", field="handler") from None
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ValidationError(f"{module_name!r} has no attribute {attr!r}",
                                  field="handler")
    if not callable(obj):
        raise ValidationError(f"{spec!r} is not callable", field="handler")
    return obj
