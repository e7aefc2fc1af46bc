"""The controller: runs every active deployment's plan (DESIGN.md sections 4, 6, 7).

Each tick, for each active deployment: read both lanes' running metric totals, subtract the
snapshot kept from the previous check (so each check sees exactly the attempts since the last
one), run the pure analysis, and act on its decision: advance a stage, wait at a manual gate,
promote, or roll back and drain. Everything it knows lives in the deployment hash, so a
controller killed at any point is replaced by one that continues (invariant 5); every write is
fenced by the leader epoch (invariant 4) and compare-and-set on the deployment's rev.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import deployments, registry
from .analysis import Action, AnalysisState, LaneStats, decide, evaluate
from .connection import Connection
from .deployments import Deployment
from .drain import drain_lane
from .errors import ConflictError, FencedError, StateError
from .leader import Leadership

log = logging.getLogger("pycanary.controller")

COUNT_FIELDS = ("ok", "failed", "retried", "dead", "late")


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the deployment fields the design card asks for."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(),
               "logger": record.name, "message": record.getMessage()}
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def _diff(now: dict[str, Any], before: dict[str, Any]) -> dict[str, int]:
    """Fields that moved since the previous snapshot. Totals come back from Redis as strings;
    comparing the strings first skips the int conversions of the (many) unchanged buckets."""
    out: dict[str, int] = {}
    get = before.get
    for k, v in now.items():
        b = get(k)
        if v != b:
            out[k] = int(v) - (int(b) if b is not None else 0)
    return out


@dataclass
class LaneSnapshot:
    totals: dict[str, str]
    backlog: int
    workers: int


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
        drain_batch: int = 500,
        heartbeat_s: float = registry.DEFAULT_HEARTBEAT_S,
    ) -> None:
        self.conn = conn
        self.clock = clock
        self.leadership = leadership
        self.id = controller_id or (leadership.controller_id if leadership else "controller")
        self.drain_batch = drain_batch
        self.worker_ttl_ms = int(heartbeat_s * registry.TTL_HEARTBEATS * 1000)
        self._fenced_epoch: int | None = None

    # -- leadership ----------------------------------------------------------------------
    @property
    def epoch(self) -> int | None:
        return None if self.leadership is None else self.leadership.epoch

    def _may_act(self) -> bool:
        if self.leadership is None:
            return True
        if not self.leadership.tick():
            return False
        # Fence every queue we will act on, every tick (cheap, idempotent): a deposed leader
        # that wakes up is refused everywhere, also on queues started since it last looked.
        refused = self.leadership.fence_queues(deployments.active_queues(self.conn))
        if refused:
            log.warning("a newer leader fenced %s; stepping down", refused)
            self.leadership.release()
            return False
        if self._fenced_epoch != self.leadership.epoch:
            self._fenced_epoch = self.leadership.epoch
            log.info("leading as epoch %s", self.leadership.epoch,
                     extra={"fields": {"controller": self.id, "epoch": self.leadership.epoch}})
        return True

    # -- the loop --------------------------------------------------------------------------
    def run(self, stop: threading.Event, poll_s: float = 1.0) -> None:
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
        and drains (rare) follow one by one."""
        t0 = time.perf_counter()
        if not self._may_act():
            return TickReport(leader=False)
        queues = deployments.active_queues(self.conn)
        report = TickReport(leader=True, deployments=len(queues))
        if queues:
            try:
                self._tick(queues, report)
            except FencedError:
                log.warning("fenced: another controller leads")
                if self.leadership is not None:
                    self.leadership.release()
                report.actions.append("fenced")
        report.seconds = time.perf_counter() - t0
        return report

    def _tick(self, queues: list[str], report: TickReport) -> None:
        deps = deployments.get_many(self.conn, queues)
        now_s = self.clock()
        now = int(now_s * 1000)
        due: list[Deployment] = []
        later: list[Deployment] = []
        for q, dep in deps.items():
            if dep is None or not dep.active:
                self.conn.client.srem(self.conn.keys.active_deployments, q)
            elif dep.state in ("active", "awaiting_promotion"):
                if dep.last_check_at is None or \
                        now - dep.last_check_at >= dep.plan.interval * 1000:
                    due.append(dep)
            elif dep.state in ("rolling_back", "promoting"):
                later.append(dep)
        writes: list[_Write] = []
        if due:
            workers = self._worker_counts()
            snaps = self._snapshots(due, workers)
            writes = [self._check(dep, snaps[dep.queue], now_s) for dep in due]
            pipe = self.conn.scripts.pipeline()
            for w in writes:
                keys, args = deployments.update_call(
                    self.conn, w.dep, w.values, now=now, epoch=self.epoch,
                    weight_bp=w.weight_bp, tenants_bp=w.tenants_bp, events=w.events,
                    analysis=w.analysis)
                pipe.call("deployment_update", keys, args)
            for w, res in zip(writes, pipe.execute(), strict=True):
                try:
                    deployments.check_update(w.dep, res)
                except ConflictError:
                    report.actions.append(f"{w.dep.queue}: conflict: re-read next tick")
                    continue
                except StateError as exc:
                    report.actions.append(f"{w.dep.queue}: skipped: {exc}")
                    continue
                action = w.label
                if w.then == "rollback":
                    action = self._rollback(w.dep, w.reason, w.rule, now, w.data)
                elif w.then == "promote":
                    deployments.promote_final(self.conn, w.dep, actor=self.id, now=now,
                                              reason=w.reason, epoch=self.epoch)
                    action = "promoting: " + self._drain_and_finish(w.dep)
                report.actions.append(f"{w.dep.queue}: {action}")
        for dep in later:
            report.actions.append(f"{dep.queue}: {self._drain_and_finish(dep)}")

    def _worker_counts(self) -> dict[tuple[str, str, str], int]:
        counts: dict[tuple[str, str, str], int] = {}
        for w in registry.list_workers(self.conn, ttl_ms=self.worker_ttl_ms):
            if w.state in ("active", "outdated"):
                for q, lane in w.queues.items():
                    k = (q, lane, w.version)
                    counts[k] = counts.get(k, 0) + 1
        return counts

    def process(self, dep: Deployment, workers: dict[tuple[str, str, str], int]) -> str:
        """Handle one deployment now (the batched tick does the same for many)."""
        report = TickReport(leader=True)
        self._tick([dep.queue], report)
        return "; ".join(a.split(": ", 1)[-1] for a in report.actions)

    # -- checks ----------------------------------------------------------------------------
    def _snapshots(self, deps: list[Deployment], workers: dict[tuple[str, str, str], int]
                   ) -> dict[str, dict[str, LaneSnapshot]]:
        """Both lanes' running totals and backlogs of every deployment, one round trip."""
        pipe = self.conn.client.pipeline(transaction=False)
        for dep in deps:
            qk = self.conn.keys.queue(dep.queue)
            for lane, version in (("stable", dep.stable_version),
                                  ("canary", dep.canary_version)):
                pipe.hgetall(qk.metrics_total(version, lane))
                pipe.llen(qk.lane(lane))
        res = iter(pipe.execute())
        out: dict[str, dict[str, LaneSnapshot]] = {}
        for dep in deps:
            out[dep.queue] = {}
            for lane, version in (("stable", dep.stable_version),
                                  ("canary", dep.canary_version)):
                totals = next(res)  # strings, as stored; _diff converts what moved
                out[dep.queue][lane] = LaneSnapshot(
                    totals, int(next(res)), workers.get((dep.queue, lane, version), 0))
        return out

    def _lane_stats(self, lane: str, version: str, now: dict[str, int],
                    before: dict[str, Any], snap: LaneSnapshot, window_s: float) -> LaneStats:
        d = _diff(now, before or {})
        run: dict[int, int] = {}
        wait: dict[int, int] = {}
        for k, n in d.items():
            if n > 0 and k[1:].isdigit():
                if k[0] == "r":
                    run[int(k[1:])] = n
                elif k[0] == "w":
                    wait[int(k[1:])] = n
        return LaneStats(lane=lane, version=version, ok=max(0, d.get("ok", 0)),
                         failed=max(0, d.get("failed", 0)), dead=max(0, d.get("dead", 0)),
                         run_hist=run, wait_hist=wait, workers=snap.workers,
                         window_s=window_s, backlog=snap.backlog)

    def _check(self, dep: Deployment, snaps: dict[str, LaneSnapshot], now_s: float) -> _Write:
        """One check of one deployment, pure but for the log line: what to write and do."""
        plan = dep.plan
        now = int(now_s * 1000)
        since = dep.last_check_at or dep.started_at
        totals = {lane: s.totals for lane, s in snaps.items()}
        if not dep.totals:
            # first look: a baseline, so the first window starts at the deployment's start
            return _Write(dep, {"totals": totals, "last_check_at": now, "last_data_at": {}},
                          label="baseline taken")
        window_s = max(0.001, (now - since) / 1000)
        stable = self._lane_stats("stable", dep.stable_version, snaps["stable"].totals,
                                  dep.totals.get("stable", {}), snaps["stable"], window_s)
        canary = self._lane_stats("canary", dep.canary_version, snaps["canary"].totals,
                                  dep.totals.get("canary", {}), snaps["canary"], window_s)
        state = AnalysisState.from_dict(dep.analysis_state) if dep.analysis_state else None
        analysis, st = evaluate(dep.stage, plan, stable, canary, state, now_s)
        decision = decide(plan, analysis, st, now_s)
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
        record = {"ts": now, "stage": dep.stage, "analysis": analysis_d, "decision": decision_d}
        if (dep.last_analysis or {}).get("verdict") != analysis.verdict.value:
            events.append(deployments.event(
                "verdict", f"{analysis.verdict.value}: {analysis.reason}", actor=self.id,
                now=now, data=analysis_d))
        w = _Write(dep, values, events=events, analysis=record,
                   label=f"{analysis.verdict.value.lower()} ({decision.action.value})")
        action = decision.action
        if (action is Action.ROLLBACK and dep.state == "awaiting_promotion"
                and not decision.rules and "deadline" in decision.reason):
            # a plan waiting at its manual gate waits for a person, it is not late; failing
            # checks (which carry their rules) still roll it back
            action = Action.HOLD
            w.label = "awaiting promotion (deadline passed, waiting for a person)"
        if action is Action.ROLLBACK:
            w.then, w.reason, w.data = "rollback", decision.reason, decision_d
            w.rule = decision.rules[0].rule if decision.rules else (
                "deadline" if "deadline" in decision.reason else "analysis")
            return w
        if action is Action.PROMOTE and manual_only:
            action = Action.AWAIT_APPROVAL
        if action is Action.PROMOTE and decision.next_stage is not None:
            nxt = decision.next_stage
            values.update({"stage": nxt, "stage_started_at": now, "state": "active",
                           "analysis_state": st.enter_stage(nxt, now_s).to_dict()})
            events.append(deployments.event(
                "stage", decision.reason, actor=self.id, now=now,
                data={"stage": nxt, "weight_bp": plan.stages[nxt].weight_bp}))
            w.weight_bp, w.tenants_bp = plan.stages[nxt].weight_bp, plan.tenant_weights_bp(nxt)
            w.label = f"stage {nxt} ({plan.stages[nxt].percentage:g}%)"
        elif action is Action.PROMOTE:
            w.then, w.reason = "promote", decision.reason
        elif action is Action.AWAIT_APPROVAL and dep.state != "awaiting_promotion":
            values["state"] = "awaiting_promotion"
            why = decision.reason if not manual_only else f"{decision.reason} ({manual_only})"
            events.append(deployments.event("awaiting_promotion", why, actor=self.id, now=now))
            w.label = "awaiting promotion"
        return w

    def _log_check(self, dep: Deployment, stable: LaneStats, canary: LaneStats, verdict: str,
                   action: str) -> None:
        def rate(s: LaneStats) -> float | None:
            n = s.ok + s.failed
            return None if n == 0 else round(s.failed / n, 5)

        def p95_ms(s: LaneStats) -> float | None:
            from .histogram import quantile

            q = quantile(s.run_hist, 0.95)
            return None if q is None else round(q / 1000, 3)

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
        deployments.rollback(self.conn, dep, reason=reason, actor=self.id, now=now,
                             epoch=self.epoch, data=data)
        dep.meta = {**(dep.meta or {}), "rollback_rule": rule}
        deployments.update(self.conn, dep, {"meta": dep.meta}, now=now, epoch=self.epoch,
                           check_rev=False)
        log.warning("rollback", extra={"fields": {
            "deployment_id": dep.id, "queue": dep.queue, "canary_version": dep.canary_version,
            "reason": reason}})
        return "rolled back: " + self._drain_and_finish(dep)

    def _drain_and_finish(self, dep: Deployment) -> str:
        return finish_after_drain(self.conn, dep, actor=self.id, epoch=self.epoch,
                                  clock=self.clock, batch=self.drain_batch)


def finish_after_drain(conn: Connection, dep: Deployment, *, actor: str, epoch: int | None,
                       clock: Callable[[], float], batch: int = 500) -> str:
    """Drain the canary lane into stable, then end the deployment. Shared by the controller and
    by an operator's rollback/promote, so whoever gets there first finishes it; a drain cut
    short (time bound) is resumed by the next controller tick."""
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
