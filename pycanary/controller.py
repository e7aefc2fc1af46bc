"""The controller: runs every active deployment's plan (docs/design.md sections 4, 6, 7).

Each tick, for each active deployment: read both lanes' running metric totals, subtract the
snapshot kept from the previous check (so each check sees exactly the attempts since the last
one), run the pure analysis, and act on its decision: advance a stage, wait at a manual gate,
promote, or roll back and drain. Everything it knows lives in the deployment hash, so a
controller killed at any point is replaced by one that continues (invariant 5); every write is
fenced by the leader epoch (invariant 4) and compare-and-set on the deployment's rev.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from . import defaults, deployments, histogram, metrics, registry
from .analysis import Action, AnalysisState, LaneStats, decide, evaluate
from .connection import Connection
from .deployments import CorruptDeploymentError, Deployment
from .drain import broker_backlogs, drain_lane
from .errors import (
    ConflictError,
    FencedError,
    PycanaryError,
    StateError,
    WeightAboveMaxError,
)
from .leader import Leadership, run_scripts
from .notify import GateCalls, iso_ms
from .plan import Gate
from .validation import NAME_RE, redact_url

log = logging.getLogger("pycanary.controller")

#: Whether evaluate() takes the weight of each analysis stratum (the h10a analysis does).
_EVALUATE_TAKES_STRATA = "strata_weights" in inspect.signature(evaluate).parameters



class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the deployment fields the design card asks for."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(),
               "logger": record.name, "message": record.getMessage()}
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """``time LEVEL message queue=.. version=.. deployment=.. stage=.. reason=..``: the
    deployment's fields on every line, so a grep for a queue or a version finds its whole
    story (``stage`` counted from 1, as status shows it; values with spaces are quoted)."""

    FIELDS = (("queue", "queue"), ("canary_version", "version"), ("deployment_id", "deployment"),
              ("stage", "stage"), ("verdict", "verdict"), ("action", "action"),
              ("reason", "reason"), ("type", "type"), ("webhook", "webhook"))

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {}) or {}
        parts = []
        for key, label in self.FIELDS:
            value = fields.get(key)
            if value is None or value == "":
                continue
            if key == "stage" and isinstance(value, int):
                value += 1
            text = str(value)
            parts.append(f"{label}={json.dumps(text) if (' ' in text or not text) else text}")
        saved = record.msg, record.args
        if parts:
            record.msg, record.args = f"{record.getMessage()} {' '.join(parts)}", None
        try:
            return super().format(record)
        finally:
            record.msg, record.args = saved


@dataclass
class LaneSnapshot:
    totals: dict[str, str]
    backlog: int
    workers: int
    routed: int | None = None  # the queue's `routed` count of this lane now (None: unread)
    rss_bytes: int | None = None  # the lane's live workers' RSS summed (None: none reported)


@dataclass
class _Write:
    """What one check decided: fields and events for deployment_update, then maybe more."""

    dep: Deployment
    values: dict[str, Any]
    events: list[str] = field(default_factory=list)
    analysis: dict[str, Any] | None = None
    weight_bp: int | None = None
    tenants_bp: dict[str, int] | None = None
    label: str = ""
    then: str = ""  # "", "rollback" or "promote" (after the write went through)
    reason: str = ""
    rule: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class TickReport:
    leader: bool
    deployments: int = 0
    actions: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: Deployments skipped this tick: {"queue", "reason", "message", "deployment_id", "rev"}.
    errors: list[dict[str, Any]] = field(default_factory=list)


class Controller:
    """Drives deployments. ``clock`` returns seconds (policy time: stage timers, intervals,
    deadlines), so a test or the demo can run a 45-minute plan in seconds; metrics are real
    counts whatever the clock says."""

    def __init__(
        self,
        conn: Connection,
        *,
        clock: Callable[[], float] = time.time,
        leadership: Leadership | None = None,
        controller_id: str | None = None,
        drain_batch: int = defaults.DRAIN_BATCH,
        heartbeat_s: float = defaults.HEARTBEAT_S,
        stall_grace_s: float = defaults.STALL_GRACE_S,
        gates: GateCalls | None = None,
    ) -> None:
        self.conn = conn
        #: webhook gates' calls, run in background threads (a tick only looks at them)
        self.gates = gates or GateCalls()
        self.stall_grace_ms = int(stall_grace_s * 1000)
        self.clock = clock
        self.leadership = leadership
        self.id = controller_id or (leadership.controller_id if leadership else "controller")
        self.drain_batch = drain_batch
        self.worker_ttl_ms = defaults.ttl_ms(heartbeat_s)
        self._fenced_epoch: int | None = None
        # per tick: errors noted (and their exceptions), errors stored by the last tick
        # (None: not read yet), deployments that decoded
        self._errors: dict[str, dict[str, Any]] = {}
        self._excs: dict[str, BaseException | None] = {}
        self._stored_errors: dict[str, str] | None = None
        self._deps: dict[str, Deployment] = {}
        self._stepped_down = False
        #: live workers' RSS summed per (queue, lane, version), from the last worker listing
        self._rss: dict[tuple[str, str, str], int] = {}
        #: per queue, the `ctl` field this controller last wrote and its decoded value: a
        #: deployment whose `ctl` is still that text is not decoded again (issue 15)
        self._ctl: dict[str, tuple[str, dict[str, Any]]] = {}

    # -- leadership ----------------------------------------------------------------------
    @property
    def epoch(self) -> int | None:
        return None if self.leadership is None else self.leadership.epoch

    def _may_act(self, queues: list[str]) -> list[str]:
        """Fence the queues (leadership renewed already); the queues this tick may act on, or
        [] after stepping down. A queue that cannot be fenced (corrupt fence) is reported and
        skipped."""
        if self.leadership is None:
            return queues
        # Fence every queue we will act on, every tick (cheap, idempotent): a deposed leader
        # that wakes up is refused everywhere, also on queues started since it last looked.
        refused, broken = self.leadership.fence(queues)
        if refused:
            log.warning("a newer leader fenced %s; stepping down", refused)
            self.leadership.release()
            self._stepped_down = True
            return []
        if self._fenced_epoch != self.leadership.epoch:
            self._fenced_epoch = self.leadership.epoch
            log.info("leading as epoch %s", self.leadership.epoch,
                     extra={"fields": {"controller": self.id, "epoch": self.leadership.epoch}})
        for q, why in broken.items():
            self._error(q, "fence", why)
        return [q for q in queues if q not in broken]

    # -- the loop --------------------------------------------------------------------------
    def run(self, stop: threading.Event, poll_s: float = defaults.POLL_S) -> None:
        while not stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("controller tick failed; retrying")
            stop.wait(poll_s)
        if self.leadership is not None:
            self.leadership.release()

    def tick(self) -> TickReport:
        """One pass over every active deployment, in a few round trips whatever their number:
        read all deployments, snapshot every due one in one pipeline, analyse, then write every
        decision in one pipeline of fenced compare-and-set scripts. Rollbacks, final promotions
        and drains (rare) follow one by one.

        Each deployment is handled on its own: one that cannot be read, checked or written (a
        name that is not a queue name, a corrupt fence or field, a refused stage step, any
        unexpected error) is reported (`TickReport.errors`, a log line, an event on it when its
        keys are usable, ``Keys.controller_errors`` for status, a counter for Prometheus) and
        skipped; the others go on in the same tick."""
        t0 = time.perf_counter()
        if self.leadership is not None and not self.leadership.tick():
            return TickReport(leader=False)
        self._errors, self._excs, self._stored_errors, self._deps = {}, {}, None, {}
        self._stepped_down = False
        names = deployments.active_queues(self.conn)
        valid: list[str] = []
        for q in names:
            if NAME_RE.match(q):
                valid.append(q)
            else:
                self._error(q, "invalid_queue_name",
                            f"{q!r} in the active-deployments set is not a queue name")
        queues = self._may_act(valid)
        if self._stepped_down:
            return TickReport(leader=False)
        report = TickReport(leader=True, deployments=len(names))
        active = set(queues)
        for q in [q for q in self._ctl if q not in active]:  # finished or gone: forget it
            del self._ctl[q]
        try:
            if queues:
                self._tick(queues, report)
        except FencedError:
            log.warning("fenced: another controller leads")
            if self.leadership is not None:
                self.leadership.release()
            report.actions.append("fenced")
            self._errors = {}  # no longer leading: not ours to report
        else:
            self._flush_errors(report, names)
        report.seconds = time.perf_counter() - t0
        return report

    def _tick(self, queues: list[str], report: TickReport) -> None:
        raws = self._read(queues)
        now_s = self.clock()
        now = int(now_s * 1000)
        due: list[Deployment] = []
        later: list[Deployment] = []
        for q in queues:
            raw = raws[q]
            if isinstance(raw, Exception):
                self._error(q, "read", f"reading the deployment failed: {raw}")
                continue
            if not raw:
                self.conn.client.srem(self.conn.keys.active_deployments, q)
                continue
            try:
                dep = Deployment.from_hash(q, raw, ctl=self._known_ctl(q, raw.get("ctl")))
            except CorruptDeploymentError as exc:
                self._error(q, "corrupt_deployment", str(exc), deployment_id=exc.deployment_id)
                continue
            self._deps[q] = dep
            if not dep.active:
                self.conn.client.srem(self.conn.keys.active_deployments, q)
            elif dep.state in ("active", "awaiting_promotion", "paused"):
                # paused: the timers and the weight are frozen, the safety checks are not
                if dep.last_check_at is None or \
                        now - dep.last_check_at >= dep.plan.interval * 1000:
                    due.append(dep)
            elif dep.state in ("rolling_back", "promoting"):
                later.append(dep)
        if due:
            self._checks(due, now_s, report)
        for dep in later:
            self._isolated(dep, "drain", lambda d=dep: report.actions.append(
                f"{d.queue}: {self._drain_and_finish(d)}"))

    def _known_ctl(self, queue: str, text: str | None) -> dict[str, Any] | None:
        """The decoded `ctl` of a deployment when it is the one this controller wrote last
        (compared as text: a write by anyone else, or a corrupt value, is decoded afresh)."""
        known = self._ctl.get(queue)
        if known is None or text is None or known[0] != text:
            self._ctl.pop(queue, None)
            return None
        return known[1]

    def _read(self, queues: list[str]) -> dict[str, Any]:
        """Every deployment hash, and the errors reported last time, in one round trip; a
        reply that failed (a key of the wrong type) is kept as its exception, for its queue
        alone."""
        pipe = self.conn.client.pipeline(transaction=False)
        for q in queues:
            deployments.read_on(pipe, self.conn.keys.queue(q))
        pipe.hgetall(self.conn.keys.controller_errors)
        res = pipe.execute(raise_on_error=False)
        stored = res[-1]
        self._stored_errors = stored if isinstance(stored, dict) else {}
        return {q: deployments.merged(res[2 * i], res[2 * i + 1])
                for i, q in enumerate(queues)}

    def _checks(self, due: list[Deployment], now_s: float, report: TickReport) -> None:
        now = int(now_s * 1000)
        workers = self._worker_counts()
        snaps = self._snapshots(due, workers)
        writes: list[_Write] = []
        for dep in due:
            snap = snaps.get(dep.queue)
            if snap is None:
                continue  # reported by _snapshots
            try:
                writes.append(self._check(dep, snap, now_s))
            except Exception as exc:  # one deployment's bug is its own
                self._error(dep.queue, "evaluation", f"{type(exc).__name__}: {exc}",
                            dep=dep, exc=exc)
        if any(w.then or "stage" in w.values for w in writes):
            _crash_point("mid_check")
        calls = []
        ctls: list[tuple[str, dict[str, Any]] | None] = []
        for w in writes:
            ctl = None
            if any(k in w.values for k in deployments.CTL_FIELDS):
                value = deployments.ctl_values(w.values, w.dep)
                ctl = (deployments.encode_ctl(value), value)
            ctls.append(ctl)
            keys, args = deployments.update_call(
                self.conn, w.dep, w.values, now=now, epoch=self.epoch,
                weight_bp=w.weight_bp, tenants_bp=w.tenants_bp, events=w.events,
                analysis=w.analysis, ctl_text=ctl[0] if ctl else None)
            calls.append(("deployment_update", keys, args))
        for w, ctl, res in zip(writes, ctls, run_scripts(self.conn, calls), strict=True):
            q = w.dep.queue
            self._ctl.pop(q, None)
            if isinstance(res, Exception):
                self._error(q, "write", f"deployment_update failed: {res}", dep=w.dep)
                continue
            try:
                deployments.check_update(w.dep, res)
            except ConflictError:
                report.actions.append(f"{q}: conflict: re-read next tick")
                continue
            except WeightAboveMaxError:
                self._error(q, "weight_above_max", self._refused_step(w), dep=w.dep)
                continue
            except StateError as exc:
                report.actions.append(f"{q}: skipped: {exc}")
                continue
            except FencedError:
                raise
            except PycanaryError as exc:
                self._error(q, "write", str(exc), dep=w.dep)
                continue
            if ctl is not None:
                self._ctl[q] = ctl
            self._isolated(w.dep, w.then or "write", lambda w=w: self._follow_up(w, now, report))

    def _follow_up(self, w: _Write, now: int, report: TickReport) -> None:
        action = w.label
        if w.then == "rollback":
            action = self._rollback(w.dep, w.reason, w.rule, now, w.data)
        elif w.then == "promote":
            deployments.promote_final(self.conn, w.dep, actor=self.id, now=now,
                                      reason=w.reason, epoch=self.epoch)
            log.info("promoted", extra={"fields": {
                "deployment_id": w.dep.id, "queue": w.dep.queue,
                "canary_version": w.dep.canary_version, "stage": w.dep.stage,
                "reason": w.reason}})
            action = "promoting: " + self._finish_pending(w.dep)
        report.actions.append(f"{w.dep.queue}: {action}")

    def _isolated(self, dep: Deployment, reason: str, fn: Callable[[], None]) -> None:
        """Run one deployment's step; an error is that deployment's, not the tick's. Being
        fenced is everyone's: it still ends the tick."""
        try:
            fn()
        except FencedError:
            raise
        except Exception as exc:  # reported, the others go on
            self._error(dep.queue, reason, f"{type(exc).__name__}: {exc}", dep=dep, exc=exc)

    def _refused_step(self, w: _Write) -> str:
        try:
            max_bp = int(self.conn.client.hget(self.conn.keys.queue(w.dep.queue).config,
                                               "max_weight_bp") or 10000)
        except (ValueError, redis.exceptions.RedisError):
            max_bp = -1
        stage = w.values.get("stage", w.dep.stage)
        top = max([w.weight_bp or 0, *(w.tenants_bp or {}).values()])
        return (f"stage {stage + 1} ({top / 100:g}%) is above the queue's max_weight "
                f"({max_bp / 100:g}%): the step was refused and the check not recorded; "
                "raise max_weight, or pause or roll back the deployment")

    # -- errors ----------------------------------------------------------------------------
    def _error(self, queue: str, reason: str, message: str, *, dep: Deployment | None = None,
               deployment_id: str | None = None, exc: BaseException | None = None) -> None:
        """Note one deployment's trouble for this tick; `_flush_errors` publishes it."""
        dep_id = dep.id if dep is not None else deployment_id
        self._errors[queue] = {"reason": reason, "message": message, "deployment_id": dep_id,
                               "rev": dep.rev if dep is not None else None}
        self._excs[queue] = exc

    def _flush_errors(self, report: TickReport, names: list[str]) -> None:
        """Publish this tick's errors: the current error per queue (read by status), a counter
        per queue and reason (Prometheus), and an event on the deployment when the error is
        new. Queues that went through cleanly lose their stored error."""
        keys = self.conn.keys
        stored = self._stored_errors
        if stored is None:  # not read with the deployments this tick
            try:
                stored = self.conn.client.hgetall(keys.controller_errors) \
                    if self._errors else {}
            except redis.exceptions.RedisError:
                stored = {}
        now = int(self.clock() * 1000)
        pipe = self.conn.client.pipeline(transaction=False)
        fresh: list[tuple[str, dict[str, Any]]] = []
        for q, err in self._errors.items():
            report.errors.append({"queue": q, **err})
            try:
                before = json.loads(stored.get(q) or "{}")
            except ValueError:
                before = {}
            same = all(before.get(k) == err[k] for k in ("reason", "message", "deployment_id"))
            exc = self._excs.get(q)
            # a new error is logged loudly, a repeat of it (every tick) only at debug level
            level = logging.DEBUG if same else (
                logging.ERROR if exc is not None and not isinstance(exc, PycanaryError)
                else logging.WARNING)
            log.log(level, "deployment skipped: %s", err["message"],
                    exc_info=(type(exc), exc, exc.__traceback__)
                    if level == logging.ERROR and exc is not None else None,
                    extra={"fields": {"queue": q, "reason": err["reason"],
                                      "deployment_id": err["deployment_id"],
                                      "controller": self.id}})
            record = {"ts": before.get("ts", now) if same else now, "last_ts": now,
                      "controller": self.id, **{k: v for k, v in err.items() if k != "rev"}}
            pipe.hset(keys.controller_errors, q, json.dumps(record, default=str))
            pipe.hincrby(keys.controller_errors_total, f"{err['reason']}:{q}", 1)
            if not same and err.get("deployment_id") and NAME_RE.match(q):
                fresh.append((q, err))
        gone = [q for q in stored if q not in self._errors and (q in self._deps or
                                                                  q not in names)]
        if gone:
            pipe.hdel(keys.controller_errors, *gone)
        if len(pipe):
            try:
                pipe.execute()
            except redis.exceptions.RedisError as exc:
                log.warning("could not record controller errors: %s", exc)
        for q, err in fresh:
            # an event on the deployment, fenced like every controller write; best effort (a
            # corrupt fence refuses it: the log line and status still tell)
            ev = deployments.event("controller_error", f"{err['reason']}: {err['message']}",
                                   actor=self.id, now=now, data={"reason": err["reason"]})
            keys_, args = deployments.update_call(
                self.conn, _stub(q, err["deployment_id"]), {}, now=now, epoch=self.epoch,
                events=[ev], check_rev=False)
            try:
                res = self.conn.scripts.call("deployment_update", keys_, args)
                if isinstance(res, int) and res < 0:
                    log.info("controller_error event on %s not written (code %s)", q, res)
            except redis.exceptions.RedisError as exc:
                log.info("controller_error event on %s not written: %s", q, exc)

    def _worker_counts(self) -> dict[tuple[str, str, str], int]:
        """Live workers per (queue, lane, version). A worker record that does not decode is
        skipped here, not allowed to stop every deployment's check."""
        counts: dict[tuple[str, str, str], int] = {}
        self._rss = {}
        try:
            listed = registry.list_workers(self.conn, ttl_ms=self.worker_ttl_ms)
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("worker registry unreadable, live worker counts taken as 0: %s", exc)
            listed = []
        for w in listed:
            if w.state in ("active", "outdated"):
                rss = w.to_dict()["rss_bytes"]
                for q, lane in w.queues.items():
                    k = (q, lane, w.version)
                    counts[k] = counts.get(k, 0) + 1
                    if rss is not None:
                        self._rss[k] = self._rss.get(k, 0) + rss
        return counts

    def process(self, dep: Deployment, workers: dict[tuple[str, str, str], int]) -> str:
        """Handle one deployment now (the batched tick does the same for many)."""
        report = TickReport(leader=True)
        self._errors, self._excs, self._stored_errors = {}, {}, None
        self._tick([dep.queue], report)
        self._flush_errors(report, [dep.queue])
        return "; ".join(a.split(": ", 1)[-1] for a in report.actions)

    # -- checks ----------------------------------------------------------------------------
    def _snapshots(self, deps: list[Deployment], workers: dict[tuple[str, str, str], int]
                   ) -> dict[str, dict[str, LaneSnapshot]]:
        """Both lanes' running totals and backlogs of every deployment, one round trip. A
        deployment whose replies failed (a key of the wrong type) or do not decode is reported
        and left out; the others' snapshots stand."""
        pipe = self.conn.client.pipeline(transaction=False)
        for dep in deps:
            qk = self.conn.keys.queue(dep.queue)
            for lane, version in (("stable", dep.stable_version),
                                  ("canary", dep.canary_version)):
                metrics.read_totals_on(pipe, qk, version, lane)
                pipe.llen(qk.lane(lane))
                pipe.xlen(qk.stream(lane))  # Streams backend: one of the two is empty
            pipe.hgetall(qk.routed)
            pipe.hgetall(qk.broker)
        res = iter(pipe.execute(raise_on_error=False))
        out: dict[str, dict[str, LaneSnapshot]] = {}
        bindings: dict[str, Any] = {}
        for dep in deps:
            lanes: dict[str, LaneSnapshot] = {}
            problem = ""
            for lane, version in (("stable", dep.stable_version),
                                  ("canary", dep.canary_version)):
                totals, backlog, streamed = next(res), next(res), next(res)  # as stored
                for what, r in (("totals", totals), ("backlog", backlog),
                                ("backlog", streamed)):
                    if isinstance(r, Exception) and not problem:
                        problem = f"reading the {lane} lane's {what} failed: {r}"
                if not problem:
                    k = (dep.queue, lane, version)
                    lanes[lane] = LaneSnapshot(totals, int(backlog) + int(streamed),
                                               workers.get(k, 0),
                                               rss_bytes=self._rss.get(k))
            routed = next(res)
            bindings[dep.queue] = next(res)  # a Celery or RQ queue's broker lists
            # the routed counts only feed the sample-ratio check: unreadable = unknown
            for lane, snap in lanes.items():
                snap.routed = _count(routed.get(lane, 0)) if isinstance(routed, dict) else None
            if problem:
                self._error(dep.queue, "snapshot", problem, dep=dep)
            else:
                out[dep.queue] = lanes
        # an integrated queue's jobs wait in its broker's lists (pycanary/integrations/)
        for (q, lane), n in broker_backlogs(self.conn, bindings).items():
            if q in out and lane in out[q]:
                out[q][lane].backlog += n
        return out

    def _lane_stats(self, lane: str, version: str, now: dict[str, int],
                    before: dict[str, Any], snap: LaneSnapshot, window_s: float, *,
                    routed_before: Any = None, weight_bp: int | None = None) -> LaneStats:
        """One lane's window: the differences of its running totals since the last check
        (counts, histograms, analysis units), jobs routed to it meanwhile, the weight in
        force and its live workers' memory. A total that went down (expired after an idle
        hour, or replaced) counts as 0, never negative."""
        f = metrics.decode_diff(now, before or {})
        run = {b: n for b, n in f.run_hist.items() if n > 0}
        wait = {b: n for b, n in f.wait_hist.items() if n > 0}
        cpu = {b: n for b, n in f.cpu_hist.items() if n > 0}
        units = {u: (max(0, n), max(0, x)) for u, (n, x) in f.units.items() if n > 0 or x > 0}
        c = f.counts
        routed = None
        if snap.routed is not None and routed_before is not None:
            routed = max(0, snap.routed - _count(routed_before))
        return LaneStats(lane=lane, version=version, ok=max(0, c.get("ok", 0)),
                         failed=max(0, c.get("failed", 0)), dead=max(0, c.get("dead", 0)),
                         run_hist=run, wait_hist=wait, workers=snap.workers,
                         window_s=window_s, backlog=snap.backlog,
                         first_attempts=max(0, c.get("first_attempts", 0)),
                         first_failed=max(0, c.get("first_failed", 0)),
                         crashed=max(0, c.get("crashed", 0)), units=units, routed=routed,
                         weight_bp=weight_bp, cpu_hist=cpu, rss_bytes=snap.rss_bytes)

    def _check(self, dep: Deployment, snaps: dict[str, LaneSnapshot], now_s: float) -> _Write:
        """One check of one deployment, pure but for the log line: what to write and do."""
        plan = dep.plan
        now = int(now_s * 1000)
        since = dep.last_check_at or dep.started_at
        totals: dict[str, Any] = {lane: s.totals for lane, s in snaps.items()}
        if all(s.routed is not None for s in snaps.values()):
            totals["routed"] = {lane: s.routed for lane, s in snaps.items()}
        if not dep.totals:
            # first look: a baseline, so the first window starts at the deployment's start
            return _Write(dep, {"totals": totals, "last_check_at": now, "last_data_at": {}},
                          label="baseline taken")
        window_s = max(0.001, (now - since) / 1000)
        routed_before = dep.totals.get("routed")
        routed_before = routed_before if isinstance(routed_before, dict) else {}
        lanes = {lane: self._lane_stats(lane, version, snaps[lane].totals,
                                        dep.totals.get(lane, {}), snaps[lane], window_s,
                                        routed_before=routed_before.get(lane),
                                        weight_bp=dep.weight_bp)
                 for lane, version in (("stable", dep.stable_version),
                                       ("canary", dep.canary_version))}
        stable, canary = lanes["stable"], lanes["canary"]
        state = AnalysisState.from_dict(dep.analysis_state) if dep.analysis_state else None
        if _EVALUATE_TAKES_STRATA:
            analysis, st = evaluate(dep.stage, plan, stable, canary, state, now_s,
                                    strata_weights=strata_weights(dep))
        else:
            analysis, st = evaluate(dep.stage, plan, stable, canary, state, now_s)
        decision = decide(plan, analysis, st, now_s,
                          at_manual_gate=dep.state == "awaiting_promotion")
        analysis_d, decision_d = analysis.to_dict(), decision.to_dict()
        values: dict[str, Any] = {"totals": totals, "last_check_at": now,
                                  "analysis_state": st.to_dict(), "last_analysis": analysis_d,
                                  "last_decision": decision_d}
        events: list[str] = []
        last_data = dict(dep.last_data_at or {})
        for lane, stats in (("stable", stable), ("canary", canary)):
            if stats.ok + stats.failed > 0:
                last_data[lane] = now
        values["last_data_at"] = last_data
        manual_only = dep.manual_only
        if not manual_only:
            for lane in ("stable", "canary"):
                if lane not in last_data:
                    continue  # never arrived: that is no data (on_no_data), not a stop
                quiet_ms = now - int(last_data[lane])
                if quiet_ms > 2 * plan.interval * 1000 and snaps[lane].backlog > 0:
                    manual_only = (f"{lane} lane metrics stopped arriving "
                                   f"{quiet_ms / 1000:.0f}s ago while it holds "
                                   f"{snaps[lane].backlog} jobs: promotion is manual-only")
                    values["manual_only"] = manual_only
                    events.append(deployments.event("manual_only", manual_only, actor=self.id,
                                                    now=now))
                    break
        self._log_check(dep, stable, canary, analysis.verdict.value, decision.action.value)
        # written by the same fenced script as the decision: a deposed leader's check leaves
        # no trace (invariant 4)
        # compact: the full analysis is last_analysis (docs/performance.md, memory)
        record = deployments.compact_record(now, dep.stage, analysis_d, decision_d)
        if (dep.last_analysis or {}).get("verdict") != analysis.verdict.value:
            events.append(deployments.event(
                "verdict", f"{analysis.verdict.value}: {analysis.reason}", actor=self.id,
                now=now, data=deployments.compact_analysis(analysis_d)))
        w = _Write(dep, values, events=events, analysis=record,
                   label=f"{analysis.verdict.value.lower()} ({decision.action.value})")
        if self._stalled(dep, snaps["canary"], now, w):
            return w
        action = decision.action
        if dep.state == "paused":
            # pause freezes the stage timer and the weight, not the safety checks: a failing
            # check still rolls back; time-based outcomes (stage time, deadline, inconclusive
            # checks) wait for `resume`
            if action is Action.ROLLBACK and decision.cause == "analysis":
                w.then, w.reason, w.data = "rollback", decision.reason, decision_d
                w.rule = decision.rules[0].rule if decision.rules else decision.cause
            else:
                w.label = f"paused: {analysis.verdict.value.lower()} (checked, not acted on)"
            return w
        if action.value == "pause":
            # the plan's on_inconclusive: pause, carried out as `pycanary pause` does, in
            # the same fenced write as the check
            values.update(deployments.pause_values(dep, now))
            events.append(deployments.event("paused", f"paused by the controller: "
                                            f"{decision.reason}", actor=self.id, now=now,
                                            data=decision_d))
            w.label = f"paused ({decision.reason})"
            return w
        if action is Action.HOLD and decision.cause == "deadline":
            w.label = "awaiting promotion (deadline passed, waiting for a person)"
        if action is Action.ROLLBACK:
            w.then, w.reason, w.data = "rollback", decision.reason, decision_d
            w.rule = decision.rules[0].rule if decision.rules else decision.cause
            return w
        if action is Action.PROMOTE and manual_only:
            action = Action.AWAIT_APPROVAL
        gate = plan.stages[dep.stage].gate
        if action is Action.PROMOTE and gate is not None and \
                not self._gate_open(dep, gate, decision.next_stage, now, w):
            return w
        if action is Action.PROMOTE and decision.next_stage is not None:
            nxt = decision.next_stage
            values.update({"stage": nxt, "stage_started_at": now, "state": "active",
                           "analysis_state": st.enter_stage(nxt, now_s).to_dict()})
            events.append(deployments.event(
                "stage", decision.reason, actor=self.id, now=now,
                data={"stage": nxt, "weight_bp": plan.stages[nxt].weight_bp}))
            w.weight_bp, w.tenants_bp = plan.stages[nxt].weight_bp, plan.tenant_weights_bp(nxt)
            w.label = plan.stage_label(nxt)
        elif action is Action.PROMOTE:
            w.then, w.reason = "promote", decision.reason
        elif action is Action.AWAIT_APPROVAL and dep.state != "awaiting_promotion":
            values["state"] = "awaiting_promotion"
            why = decision.reason if not manual_only else f"{decision.reason} ({manual_only})"
            events.append(deployments.event("awaiting_promotion", why, actor=self.id, now=now))
            w.label = "awaiting promotion"
        return w

    def _gate_open(self, dep: Deployment, gate: Gate, nxt: int | None, now: int,
                   w: _Write) -> bool:
        """The stage has passed and its plan asks a webhook first (Flagger's confirm-promotion).
        True once the webhook answered 2xx: the promotion goes ahead in this write. Otherwise
        the call runs (or is started) in the background, never in this tick; the first look
        records ``gate_waiting`` (a notification), each new refusal ``gate_refused`` with the
        status, and the stage waits: the next check looks again (and asks again after a
        refusal). What the gate said so far is kept in ``meta.gate``."""
        plan = dep.plan
        where = "100%" if nxt is None else plan.stage_label(nxt)
        shown = redact_url(gate.webhook)
        body = {"type": "confirm_promotion", "queue": dep.queue, "deployment": dep.id,
                "version": dep.canary_version, "stable_version": dep.stable_version,
                "stage": dep.stage + 1, "next": where, "weight": dep.weight_bp / 100,
                "at": iso_ms(now)}
        look = self.gates.look((dep.id, dep.stage), gate.webhook, body, gate.timeout_s)
        meta = dict(w.values.get("meta") or dep.meta or {})
        seen = meta.get("gate")
        seen = dict(seen) if isinstance(seen, dict) and seen.get("stage") == dep.stage else None
        if look.answer is not None and look.answer.ok:
            meta.pop("gate", None)
            w.values["meta"] = meta
            w.events.append(deployments.event(
                "gate_passed", f"webhook gate of {plan.stage_label(dep.stage)} answered "
                f"{look.answer.text}; promoting to {where}", actor=self.id, now=now,
                data={"stage": dep.stage, "webhook": shown, "status": look.answer.status}))
            return True
        if seen is None:
            seen = {"stage": dep.stage, "since": now, "asked": 0, "last": ""}
            w.events.append(deployments.event(
                "gate_waiting", f"{plan.stage_label(dep.stage)} passed; waiting for its webhook "
                f"gate ({shown}) to answer 2xx before promoting to {where}", actor=self.id,
                now=now, data={"stage": dep.stage, "webhook": shown}))
        if look.started:
            seen["asked"] = int(seen.get("asked", 0)) + 1
        if look.answer is not None:
            text = look.answer.text
            if text != seen.get("last"):
                w.events.append(deployments.event(
                    "gate_refused", f"webhook gate of {plan.stage_label(dep.stage)} answered "
                    f"{text}: the stage keeps waiting (asked again)", actor=self.id, now=now,
                    data={"stage": dep.stage, "webhook": shown,
                          "status": look.answer.status, "error": look.answer.error}))
            seen["last"] = text
        meta["gate"] = seen
        w.values["meta"] = meta
        w.label = f"waiting at the webhook gate ({seen.get('last') or 'asking'})"
        # what status and the analysis record say: a hold at the gate, not a promotion
        held = {**(w.values.get("last_decision") or {}), "action": "hold", "cause": "gate",
                "reason": f"{plan.stage_label(dep.stage)} passed; waiting for its webhook "
                          f"gate ({seen.get('last') or 'asking'}) before {where}"}
        w.values["last_decision"] = held
        if w.analysis is not None:
            w.analysis = {**w.analysis, "decision": held}
        return False

    def _stalled(self, dep: Deployment, canary: LaneSnapshot, now: int, w: _Write) -> bool:
        """A canary lane nobody reads: jobs wait in it and no live worker of the canary version
        takes it. Noted in the deployment's meta when first seen (``stalled_since``); once it
        has lasted ``stall_grace_ms`` the check becomes a rollback (weight 0, the lane drained
        to stable), so such jobs never wait forever unseen. Returns True when ``w`` now rolls
        back; it takes precedence over whatever the analysis decided. Measured on the wall
        clock, not the policy clock: worker liveness (heartbeats, a restart) is real time,
        and a test or the demo running a plan 1000x faster must not see a worker that is
        still switching lanes as a stall."""
        now = defaults.now_ms()
        meta = dict(w.values.get("meta") or dep.meta or {})
        since = meta.get("stalled_since")
        if canary.backlog == 0 or canary.workers > 0:
            if since is not None:
                meta.pop("stalled_since")
                w.values["meta"] = meta
            return False
        if since is None:
            meta["stalled_since"] = now
            w.values["meta"] = meta
            return False
        waited = now - int(since)
        if waited < self.stall_grace_ms:
            return False
        secs = waited // 1000
        span = f"{secs // 60}m{secs % 60:02d}s".replace("m00s", "m") if secs >= 60 else \
            f"{secs}s"
        w.then, w.rule = "rollback", "stalled"
        w.reason = (f"stalled: {canary.backlog} canary jobs waiting, no live "
                    f"{dep.canary_version} worker for {span}")
        w.data = {"cause": "stalled", "backlog": canary.backlog, "stalled_ms": waited}
        w.label = "stalled"
        return True

    def _log_check(self, dep: Deployment, stable: LaneStats, canary: LaneStats, verdict: str,
                   action: str) -> None:
        def rate(s: LaneStats) -> float | None:
            n = s.ok + s.failed
            return None if n == 0 else round(s.failed / n, 5)

        def p95_ms(s: LaneStats) -> float | None:
            q = histogram.quantile(s.run_hist, 0.95)
            return None if q is None else round(q / 1000, 3)

        if not log.isEnabledFor(logging.INFO):  # quantiles cost more than the line
            return

        log.info("canary metrics comparison", extra={"fields": {
            "deployment_id": dep.id, "queue": dep.queue, "stable_version": dep.stable_version,
            "canary_version": dep.canary_version, "stage": dep.stage,
            "canary_percentage": dep.weight_bp / 100,
            "stable_percentage": 100 - dep.weight_bp / 100,
            "stable_error_rate": rate(stable), "canary_error_rate": rate(canary),
            "stable_p95_latency_ms": p95_ms(stable), "canary_p95_latency_ms": p95_ms(canary),
            "verdict": verdict, "action": action}})

    # -- rollback, promotion, drain ----------------------------------------------------------
    def _rollback(self, dep: Deployment, reason: str, rule: str, now: int,
                  data: dict[str, Any]) -> str:
        meta = {**(dep.meta or {}), "rollback_rule": rule}
        # the rule rides in the rollback's own script: a crash right after it cannot lose it
        deployments.rollback(self.conn, dep, reason=reason, actor=self.id, now=now,
                             epoch=self.epoch, data=data, values={"meta": meta})
        dep.meta = meta
        _crash_point("after_rollback")
        log.warning("rollback", extra={"fields": {
            "deployment_id": dep.id, "queue": dep.queue, "canary_version": dep.canary_version,
            "stage": dep.stage, "rule": rule, "reason": reason}})
        return "rolled back: " + self._finish_pending(dep)

    def _finish_pending(self, dep: Deployment) -> str:
        """Drain and finish after the decisive write (rollback or promotion) went through. A
        failure from here on is reported as what it is, drain pending, retried next tick (the
        deployment stays rolling_back/promoting), never as a failed rollback."""
        try:
            return self._drain_and_finish(dep)
        except FencedError:
            raise
        except Exception as exc:  # the weight change stands; only the drain is pending
            self._error(dep.queue, "drain",
                        f"{dep.state}: weight change done, drain or finish failed "
                        f"({type(exc).__name__}: {exc}); retried next tick", dep=dep, exc=exc)
            return "drain pending (retried next tick)"

    def _drain_and_finish(self, dep: Deployment) -> str:
        return finish_after_drain(self.conn, dep, actor=self.id, epoch=self.epoch,
                                  clock=self.clock, batch=self.drain_batch)


def finish_after_drain(conn: Connection, dep: Deployment, *, actor: str, epoch: int | None,
                       clock: Callable[[], float], batch: int = defaults.DRAIN_BATCH) -> str:
    """Drain the canary lane into stable, then end the deployment. Shared by the controller and
    by an operator's rollback/promote, so whoever gets there first finishes it; a drain cut
    short (time bound) is resumed by the next controller tick."""
    if os.environ.get(CRASH_ENV) == "mid_drain" and dep.state == "rolling_back":
        drain_lane(conn, dep.queue, from_lane="canary", to_lane="stable", batch=batch,
                   max_seconds=1e-9)  # exactly one call: one slice moved
        _crash_point("mid_drain")
    report = drain_lane(conn, dep.queue, from_lane="canary", to_lane="stable", batch=batch,
                        max_seconds=5.0)
    if not report.complete:
        return f"draining, {report.remaining} left"
    now = int(clock() * 1000)
    rolled_back = dep.state == "rolling_back"
    started = dep.rollback_at if rolled_back else dep.promoted_at
    drain = {"moved": report.moved, "calls": report.calls, "seconds": round(report.seconds, 4),
             "max_call_ms": round(report.max_call_ms, 3)}
    values: dict[str, Any] = {"drain": drain, "drained_at": now}
    if rolled_back:
        rule = (dep.meta or {}).get("rollback_rule", "manual")
        counter = f"rollbacks:{rule}"
        msg = (f"rolled back {dep.canary_version}: canary lane drained ({report.moved} jobs) "
               f"{(now - (started or now)) / 1000:.3f}s after the rollback; weight was 0 at once")
    else:
        counter = "promotions:completed"
        msg = (f"{dep.canary_version} is stable; canary lane drained ({report.moved} jobs)")
    final = deployments.finish(conn, dep, actor=actor, now=now, message=msg, counter=counter,
                               values=values, epoch=epoch)
    return final


def strata_weights(dep: Deployment) -> dict[str, int]:
    """The canary weight of each analysis stratum in force (bp): "" is the queue's weight,
    each tenant with an override is its own stratum at its own weight."""
    return {"": dep.weight_bp, **{t: int(w) for t, w in (dep.tenants_bp or {}).items()}}


def _count(v: Any) -> int:
    """A stored counter (a string from Redis, or an int from a stored baseline); a garbled
    one counts as 0 rather than stopping the deployment's check."""
    try:
        return int(v)
    except (TypeError, ValueError):
        return 0


def _stub(queue: str, deployment_id: str) -> Deployment:
    """Just enough of a deployment to address its keys (for an error event on a deployment
    whose hash does not decode)."""
    return Deployment(id=deployment_id, queue=queue, stable_version="", canary_version="",
                      state="", plan_raw={})


#: Test hook (tests/test_controller_rollback_crash.py, test_controller_failover.py):
#: ``PYCANARY_TEST_CRASH_AT=<point>`` makes the controller SIGKILL itself at that point, the way a
#: machine dies: no cleanup, no lease release. Points: ``mid_check`` (a check that decided a step
#: (stage, promotion, rollback) has read its data and decided, its fenced write not yet sent),
#: ``after_rollback`` (weight 0 written, nothing drained), ``mid_drain`` (the first drain slice
#: moved, the rest waiting).
CRASH_ENV = "PYCANARY_TEST_CRASH_AT"


def _crash_point(point: str) -> None:
    if os.environ.get(CRASH_ENV) == point:
        log.warning("test hook: SIGKILL at %s", point)
        for h in logging.getLogger().handlers:
            h.flush()
        os.kill(os.getpid(), signal.SIGKILL)
