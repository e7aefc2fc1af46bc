"""Workers: take jobs of their version's lane reliably, run the handler, record outcomes.

One main loop fetches (a batch script, or BLMOVE when idle), dispatches to the handler
(inline, a thread pool, or an asyncio loop), and flushes acknowledgements in batches: one
script call acks many jobs and records their metrics in the same atomic step. A separate
maintenance thread heartbeats, follows the queue config (rollback, promotion), promotes due
retries and reaps dead workers, so a long job never silences the heartbeat.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
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
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from . import metrics, registry, validation
from .connection import Connection
from .errors import VERSION_ROLLED_BACK, ValidationError
from .job import Envelope, Job, encode_json

log = logging.getLogger("pycanary.worker")

DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_BACKOFF_S = 1.0
DEFAULT_BACKOFF_MAX_S = 300.0
#: Acks are flushed when this many are buffered, or after ACK_DELAY_S, or when idle.
ACK_BATCH = 200
ACK_DELAY_S = 0.002
MAX_FETCH = 200
PROMOTE_BATCH = 500
BOUNCE_PAUSE_S = 0.2

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
    """The lane rule (DESIGN.md invariants 2 and 3), pure so it can be tested on its own."""
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


@dataclass
class _Outcome:
    running: _Running
    ok: bool
    run_us: float
    error: str = ""


@dataclass
class WorkerStats:
    done: int = 0
    failed: int = 0
    retried: int = 0
    dead: int = 0
    late: int = 0
    bounced: int = 0
    started_at: int = field(default_factory=registry.now_ms)


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
        heartbeat_s: float = registry.DEFAULT_HEARTBEAT_S,
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
        if heartbeat_s <= 0:
            raise ValidationError(f"must be positive, got {heartbeat_s}", field="heartbeat")
        if job_timeout_s is not None and job_timeout_s <= 0:
            raise ValidationError(f"must be positive, got {job_timeout_s}", field="timeout")
        self.conn = conn
        self.handler = handler
        self.is_async = inspect.iscoroutinefunction(handler)
        self.concurrency = concurrency
        self.pinned_lane = lane
        self.schemas = None if schemas is None else frozenset(int(s) for s in schemas)
        self.heartbeat_s = heartbeat_s
        self.ttl_ms = int(heartbeat_s * registry.TTL_HEARTBEATS * 1000)
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.job_timeout_s = job_timeout_s
        self.prefetch = prefetch or max(32, min(MAX_FETCH, concurrency * 4))
        self.block_s = block_s
        self.slot_s = slot_s
        self.keep_s = keep_s
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.stats = WorkerStats()
        self._rng = rng or random.Random()
        self._assignments: dict[str, LaneAssignment] = {
            q: LaneAssignment(None, "standby", "not yet configured") for q in self.queues}
        self._last_lane: dict[str, str] = {}
        self._stop = threading.Event()
        self._abort = threading.Event()
        self._results: queue_mod.SimpleQueue[_Outcome] = queue_mod.SimpleQueue()
        self._pending: deque[_Running] = deque()
        self._inflight = 0
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._maint: threading.Thread | None = None
        self._signals = 0
        self.ready = threading.Event()

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
            self._heartbeat()
            self._maint = threading.Thread(target=self._maintenance, name="pycanary-maint",
                                           daemon=True)
            self._maint.start()
            self.ready.set()
            self._main_loop()
        finally:
            self._stop.set()
            if self._maint is not None:
                self._maint.join(timeout=self.heartbeat_s + 5)
            self._stop_executor()
            try:
                registry.deregister(self.conn, self.id)
            except Exception:  # pragma: no cover - Redis gone at exit; the reaper cleans up
                log.exception("could not deregister worker %s", self.id)
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
            pipe.hmget(qk.config, ["stable_version", "canary_version"])
            pipe.sismember(qk.rolled_back, self.version)
            pipe.zscore(qk.former_stable, self.version)
        res = pipe.execute()
        for i, q in enumerate(self.queues):
            (stable, canary), rolled_back, former = res[3 * i: 3 * i + 3]
            if not stable and self.pinned_lane in (None, "stable"):
                stable = conn.scripts.call("adopt_stable_version", [conn.keys.queue(q).config],
                                           [self.version, registry.now_ms()])
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

    @property
    def state(self) -> str:
        states = {a.state for a in self._assignments.values()}
        for s in ("active", "outdated", "retiring"):
            if s in states:
                return s
        return "standby"

    def _heartbeat(self) -> None:
        lanes = {q: self._last_lane.get(q, a.lane or "stable")
                 for q, a in self._assignments.items()}
        info = {
            "host": socket.gethostname(), "pid": os.getpid(), "version": self.version,
            "state": "stopping" if self._stop.is_set() else self.state,
            "queues": ",".join(self.queues),
            "lanes": ",".join(f"{q}={a.lane or '-'}" for q, a in self._assignments.items()),
            "concurrency": self.concurrency, "started_at": self.stats.started_at,
            "current": self._inflight, "done": self.stats.done, "failed": self.stats.failed,
            "schemas": "any" if self.schemas is None else ",".join(map(str,
                                                                       sorted(self.schemas))),
            "last_seen": registry.now_ms(),
        }
        registry.heartbeat(self.conn, self.id, version=self.version, queues=lanes, info=info,
                           ttl_ms=self.ttl_ms)

    def _promote_due(self) -> None:
        now = registry.now_ms()
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

    def _maintenance(self) -> None:
        next_beat = time.monotonic() + self.heartbeat_s
        while not self._stop.wait(min(0.25, self.heartbeat_s / 4)):
            try:
                self._promote_due()
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + self.heartbeat_s
                    self._refresh_assignments()
                    self._heartbeat()
                    registry.reap(self.conn, ttl_ms=self.ttl_ms)
            except Exception:
                log.exception("maintenance step failed; retrying next tick")

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
        t0 = time.perf_counter_ns()
        try:
            self.handler(self._job(r))
        except Exception as exc:
            return _Outcome(r, False, (time.perf_counter_ns() - t0) / 1000, _describe(exc))
        return _Outcome(r, True, (time.perf_counter_ns() - t0) / 1000)

    async def _run_async(self, r: _Running) -> _Outcome:
        t0 = time.perf_counter_ns()
        try:
            coro = self.handler(self._job(r))
            if self.job_timeout_s is not None:
                await asyncio.wait_for(coro, self.job_timeout_s)
            else:
                await coro
        except Exception as exc:
            return _Outcome(r, False, (time.perf_counter_ns() - t0) / 1000, _describe(exc))
        return _Outcome(r, True, (time.perf_counter_ns() - t0) / 1000)

    def _dispatch(self, r: _Running) -> None:
        self._inflight += 1
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

    def _block_fetch(self) -> list[_Running]:
        """Idle: wait for one job on the only active lane (BLMOVE), or sleep a little."""
        lanes = self._active_lanes()
        if len(lanes) != 1:
            self._stop.wait(0.05 if lanes else min(0.5, self.heartbeat_s / 2))
            return []
        q, lane = lanes[0]
        qk = self.conn.keys.queue(q)
        raw = self.conn.client.blmove(qk.lane(lane), qk.processing(self.id), self.block_s,
                                      "RIGHT", "LEFT")
        if raw is None:
            return []
        r = self._accept(q, lane, raw)
        return [] if r is None else [r]

    def _accept(self, queue: str, lane: str, raw: str) -> _Running | None:
        now = registry.now_ms()
        try:
            env = Envelope.decode(raw)
        except (ValueError, KeyError, TypeError) as exc:
            self._dead_letter_garbage(queue, lane, raw, exc)
            return None
        if self.schemas is not None and env.schema not in self.schemas:
            self._bounce(queue, lane, raw)
            return None
        return _Running(raw, env, queue, lane, time.perf_counter_ns(),
                        max(0.0, (now - env.waiting_since) * 1000.0))

    def _bounce(self, queue: str, lane: str, raw: str) -> None:
        """A payload schema this worker does not accept: back to the lane for another worker."""
        qk = self.conn.keys.queue(queue)
        self.conn.scripts.call("bounce_job", [qk.processing(self.id), qk.lane(lane)], [raw])
        self.stats.bounced += 1
        self._stop.wait(BOUNCE_PAUSE_S)

    def _dead_letter_garbage(self, queue: str, lane: str, raw: str, exc: Exception) -> None:
        qk = self.conn.keys.queue(queue)
        record = encode_json({"raw": raw, "error": f"undecodable envelope: {exc}",
                              "version": self.version, "lane": lane, "worker": self.id,
                              "failed_at": registry.now_ms()})
        slot = metrics.slot_of(registry.now_ms(), self.slot_s)
        self.conn.scripts.call("fail_jobs", qk.fail_keys(self.id, self.version, lane, slot),
                               [self.keep_s, raw, "dead", record, "", 0, 0])

    def _main_loop(self) -> None:
        """Run _serve, riding out Redis outages: held jobs stay in the processing list (the
        reaper returns them if this worker dies meanwhile) and buffered acks are retried."""
        pause = 0.1
        while True:
            try:
                self._serve()
                return
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                if self._stop.is_set() and self._inflight == 0:
                    return
                log.warning("Redis unreachable (%s); retrying in %.1fs", exc, pause)
                self._stop.wait(pause)
                pause = min(5.0, pause * 2)

    def _serve(self) -> None:
        pending = self._pending  # survives a restart of _serve after a Redis outage
        acks: list[_Outcome] = []
        fails: list[_Outcome] = []
        first_buffered = 0.0
        while True:
            stopping = self._stop.is_set()
            if stopping:
                self._return_pending(pending)
                if self._inflight == 0:
                    break
            # 1. dispatch what was fetched
            while pending and self._inflight < self.concurrency:
                self._dispatch(pending.popleft())
            # 2. collect outcomes; wait for one only when nothing else can be done
            if self._inflight and (self._inflight >= self.concurrency or stopping or
                                   (pending and not acks and not fails)):
                with contextlib.suppress(queue_mod.Empty):
                    self._collect(self._results.get(timeout=ACK_DELAY_S if (acks or fails)
                                                    else 0.05), acks, fails)
            while True:
                try:
                    self._collect(self._results.get_nowait(), acks, fails)
                except queue_mod.Empty:
                    break
            if (acks or fails) and not first_buffered:
                first_buffered = time.monotonic()
            # 3. sync point: one round trip acks what finished and fetches what is next
            want = 0 if stopping else self.prefetch - len(pending) - self._inflight
            need_work = not pending and want > 0
            buffered = len(acks) + len(fails)
            if need_work or buffered >= ACK_BATCH or (
                    buffered and time.monotonic() - first_buffered >= ACK_DELAY_S):
                got = self._sync(acks, fails, want if need_work else 0)
                first_buffered = 0.0
                if need_work and not got and self._inflight == 0:
                    got = self._block_fetch()
                pending.extend(got)
        self._sync(acks, fails, 0)

    def _return_pending(self, pending: deque[_Running]) -> None:
        """Fetched but not started when stopping: straight back to the head of their lane."""
        while pending:
            r = pending.pop()  # newest first, so the oldest ends up at the very head
            qk = self.conn.keys.queue(r.queue)
            self.conn.scripts.call("return_job", [qk.processing(self.id), qk.lane(r.lane)],
                                   [r.raw])

    def _collect(self, out: _Outcome, acks: list[_Outcome], fails: list[_Outcome]) -> None:
        self._inflight -= 1
        (acks if out.ok else fails).append(out)

    def _sync(self, acks: list[_Outcome], fails: list[_Outcome], want: int) -> list[_Running]:
        """One pipeline: ack and fail what finished (with metrics), fetch up to ``want`` more."""
        lanes = self._active_lanes() if want > 0 else []
        if not acks and not fails and not lanes:
            return []
        now = registry.now_ms()
        slot = metrics.slot_of(now, self.slot_s)
        pipe = self.conn.scripts.pipeline()
        groups: dict[tuple[str, str], list[Any]] = {}
        for o in acks:
            r = o.running
            groups.setdefault((r.queue, r.lane), []).extend(
                (r.raw, metrics.bucket_us(o.run_us), metrics.bucket_us(r.wait_us)))
        for (q, lane), args in groups.items():
            qk = self.conn.keys.queue(q)
            pipe.call("ack_jobs", qk.ack_keys(self.id, self.version, lane, slot),
                      [self.keep_s, *args])
        fgroups: dict[tuple[str, str], list[Any]] = {}
        retried = dead = 0
        for o in fails:
            r = o.running
            attempt = r.envelope.attempts + 1
            if attempt < self.max_attempts:
                due = now + int(1000 * backoff_s(attempt, self.backoff_base_s,
                                                 self.backoff_max_s, self._rng))
                nxt, outcome, due_s = r.envelope.next_attempt(due).encode(), "retry", str(due)
                retried += 1
            else:
                nxt = encode_json({"job": asdict(r.envelope), "error": o.error,
                                   "version": self.version, "lane": r.lane, "worker": self.id,
                                   "attempts": attempt, "failed_at": now})
                outcome, due_s = "dead", ""
                dead += 1
            fgroups.setdefault((r.queue, r.lane), []).extend(
                (r.raw, outcome, nxt, due_s, metrics.bucket_us(o.run_us),
                 metrics.bucket_us(r.wait_us)))
        for (q, lane), args in fgroups.items():
            qk = self.conn.keys.queue(q)
            pipe.call("fail_jobs", qk.fail_keys(self.id, self.version, lane, slot),
                      [self.keep_s, *args])
        n_acks = len(groups) + len(fgroups)
        for q, lane in lanes:
            qk = self.conn.keys.queue(q)
            pipe.call("fetch_jobs", [qk.lane(lane), qk.processing(self.id), qk.rolled_back],
                      [want, self.version])
        results = pipe.execute()
        for res in results[:n_acks]:
            self.stats.late += int(res[1])
        self.stats.done += len(acks)
        self.stats.failed += len(fails)
        self.stats.retried += retried
        self.stats.dead += dead
        acks.clear()
        fails.clear()
        got: list[_Running] = []
        for (q, lane), res in zip(lanes, results[n_acks:], strict=True):
            if isinstance(res, int) and res == VERSION_ROLLED_BACK:
                self._assignments[q] = LaneAssignment(None, "retiring",
                                                      f"version {self.version} was rolled back")
                continue
            for raw in res:
                r = self._accept(q, lane, raw)
                if r is not None:
                    got.append(r)
        return got


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
