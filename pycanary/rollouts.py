"""Deployment operations every face shares (CLI, API, TUI, demo): start, ramp, promote,
rollback, pause, resume, drain, status. Faces parse and render; the rules live here."""

from __future__ import annotations

import getpass
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import deployments, metrics, queue_config, registry, validation
from .analysis import AnalysisState
from .connection import Connection
from .controller import finish_after_drain
from .deployments import Deployment
from .drain import DrainReport, drain_lane
from .errors import StateError, ValidationError
from .plan import Plan, PlanError, load_plan, parse_plan

_SCHEMA_RE = re.compile(r'"schema":(\d+)')
SCHEMA_SCAN_PAGE = 1000


def operator() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # pragma: no cover - no passwd entry in some containers
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- safety guards -----------------------------------------------------------------------------
def schemas_in_queue(conn: Connection, queue: str) -> set[int]:
    """Payload schema versions of the jobs waiting in the queue (lanes and retries). An admin
    path: it reads the lanes page by page, never on the hot path."""
    qk = conn.keys.queue(queue)
    found: set[int] = set()
    for key, kind in ((qk.lane_stable, "list"), (qk.lane_canary, "list"),
                      (qk.delayed_stable, "zset"), (qk.delayed_canary, "zset")):
        start = 0
        while True:
            page = (conn.client.lrange(key, start, start + SCHEMA_SCAN_PAGE - 1) if kind == "list"
                    else conn.client.zrange(key, start, start + SCHEMA_SCAN_PAGE - 1))
            for raw in page:
                m = _SCHEMA_RE.search(raw)
                found.add(int(m.group(1)) if m else 1)
            if len(page) < SCHEMA_SCAN_PAGE:
                break
            start += SCHEMA_SCAN_PAGE
    return found


def check_schemas(conn: Connection, queue: str, version: str) -> None:
    """Refuse a canary whose workers do not accept every payload schema in the queue."""
    present = schemas_in_queue(conn, queue)
    if not present:
        return
    ttl = int(registry.DEFAULT_HEARTBEAT_S * registry.TTL_HEARTBEATS * 1000)
    workers = [w for w in registry.list_workers(conn, ttl_ms=ttl)
               if w.version == version and w.state != "dead" and queue in w.queues]
    if not workers:
        raise ValidationError(
            f"cannot check payload schemas {sorted(present)} in {queue}: no worker of {version} "
            "is running (start them first: they wait in standby) or pass --allow-schema-change",
            field="version")
    for w in workers:
        accepts = w.info.get("schemas", "any")
        if accepts == "any":
            continue
        ok = {int(s) for s in accepts.split(",") if s}
        missing = present - ok
        if missing:
            raise ValidationError(
                f"worker {w.id} of {version} accepts schemas {sorted(ok)} but the queue holds "
                f"{sorted(missing)}; pass --allow-schema-change to start anyway",
                field="version")


def check_max_weight(conn: Connection, queue: str, plan: Plan) -> None:
    cfg = queue_config.read_config(conn, queue)
    for i, stage in enumerate(plan.stages):
        weights = [("percentage", stage.weight_bp),
                   *((f"tenants.{t}", w) for t, w in plan.tenant_weights_bp(i).items())]
        for where, bp in weights:
            if bp > cfg.max_weight_bp:
                raise ValidationError(
                    f"{bp / 100:g}% is above the queue's max_weight {cfg.max_weight_bp / 100:g}%",
                    field=f"stages[{i}].{where}")


# -- starting ----------------------------------------------------------------------------------
def _start(conn: Connection, queue: str, version: str, plan: Plan, *, kind: str,
           allow_schema_change: bool, actor: str | None, now_ms: int | None,
           message: str) -> Deployment:
    validation.queue_name(queue)
    validation.version(version)
    check_max_weight(conn, queue, plan)
    if not allow_schema_change:
        check_schemas(conn, queue, version)
    return deployments.start(conn, queue, version, plan, kind=kind, actor=actor or operator(),
                             now=now_ms if now_ms is not None else _now_ms(), message=message)


def start_canary(
    conn: Connection,
    queue: str,
    version: str,
    *,
    weight: Any = "10",
    tenants: dict[str, Any] | None = None,
    sticky: bool = True,
    interval: str | int = "30s",
    allow_schema_change: bool = False,
    actor: str | None = None,
    now_ms: int | None = None,
) -> Deployment:
    """A manual canary: one stage at ``weight`` that waits for `promote` once it passes; the
    analysis still runs and rolls back on failure."""
    pct = validation.percent_to_bp(weight, "weight") / 100
    tenant_pct = {validation.queue_name(t, "tenant"): validation.percent_to_bp(w, f"tenant.{t}")
                  / 100 for t, w in (tenants or {}).items()}
    try:
        plan = parse_plan({"stages": [{"percentage": pct, "duration": interval,
                                       "auto_promote": False}],
                           "interval": interval, "sticky": sticky, "tenants": tenant_pct})
    except PlanError as exc:
        first = str(exc).splitlines()[0]
        raise ValidationError(first.split(": ", 1)[-1], field="weight") from None
    return _start(conn, queue, version, plan, kind="manual",
                  allow_schema_change=allow_schema_change, actor=actor, now_ms=now_ms,
                  message=f"manual canary of {version} at {pct:g}%")


def ramp(
    conn: Connection,
    queue: str,
    version: str,
    plan: Plan | str | Path | dict,
    *,
    allow_schema_change: bool = False,
    actor: str | None = None,
    now_ms: int | None = None,
) -> Deployment:
    """A staged rollout following a plan file (or a parsed plan)."""
    if isinstance(plan, str | Path):
        plan = load_plan(plan)
    elif isinstance(plan, dict):
        plan = parse_plan(plan)
    stages = " -> ".join(f"{s.percentage:g}%" for s in plan.stages)
    return _start(conn, queue, version, plan, kind="plan", allow_schema_change=allow_schema_change,
                  actor=actor, now_ms=now_ms, message=f"ramp of {version}: {stages} -> 100%")


# -- operator verbs -----------------------------------------------------------------------------
def _active(conn: Connection, queue: str) -> Deployment:
    validation.queue_name(queue)
    dep = deployments.get(conn, queue)
    if dep is None or not dep.active:
        raise StateError(f"no active deployment on {queue}", field="queue")
    return dep


def promote(conn: Connection, queue: str, *, full: bool = False, actor: str | None = None,
            now_ms: int | None = None, clock: Callable[[], float] = time.time) -> dict[str, Any]:
    """Advance one stage (past a manual gate), or with ``full`` (and after the last stage)
    make the canary the stable version now; then drain its lane into stable."""
    actor = actor or operator()
    now = now_ms if now_ms is not None else _now_ms()
    dep = _active(conn, queue)
    if dep.state in ("promoting", "rolling_back"):
        raise StateError(f"deployment {dep.id} is {dep.state}", field="queue")
    plan = dep.plan
    if full or dep.kind == "manual" or dep.last_stage:
        deployments.promote_final(conn, dep, actor=actor, now=now,
                                  reason="promoted by " + actor + (" (--full)" if full else ""))
        final = finish_after_drain(conn, dep, actor=actor, epoch=None, clock=clock)
        return {"queue": queue, "deployment_id": dep.id, "action": "promoted",
                "stable_version": dep.canary_version, "state": final}
    nxt = dep.stage + 1
    st = AnalysisState.from_dict(dep.analysis_state) if dep.analysis_state else AnalysisState()
    st = st.enter_stage(nxt, now / 1000)
    ev = deployments.event("stage", f"advanced to stage {nxt} ({plan.stages[nxt].percentage:g}%)"
                           f" by {actor}", actor=actor, now=now,
                           data={"stage": nxt, "weight_bp": plan.stages[nxt].weight_bp})
    deployments.update(conn, dep, {"stage": nxt, "state": "active", "stage_started_at": now,
                                   "analysis_state": st.to_dict(), "paused_at": None},
                       now=now, weight_bp=plan.stages[nxt].weight_bp,
                       tenants_bp=plan.tenant_weights_bp(nxt), ev=ev)
    return {"queue": queue, "deployment_id": dep.id, "action": "stage", "stage": nxt,
            "percent": plan.stages[nxt].percentage, "state": "active"}


def rollback(conn: Connection, queue: str, *, reason: str = "", actor: str | None = None,
             clock: Callable[[], float] = time.time) -> dict[str, Any]:
    """Weight 0 at once, then drain the canary lane into stable. Works for a deployment and for
    a manual weight set with `set-weight` (no deployment)."""
    actor = actor or operator()
    reason = reason or f"manual rollback by {actor}"
    t0 = clock()
    validation.queue_name(queue)
    dep = deployments.get(conn, queue)
    if dep is not None and dep.active:
        if dep.state == "promoting":
            raise StateError(f"deployment {dep.id} is already promoting", field="queue")
        deployments.rollback(conn, dep, reason=reason, actor=actor, now=int(t0 * 1000))
        t_weight0 = clock()
        final = finish_after_drain(conn, dep, actor=actor, epoch=None, clock=clock)
        t_drained = clock()
        return {"queue": queue, "deployment_id": dep.id, "state": final, "reason": reason,
                "weight_zero_ms": round((t_weight0 - t0) * 1000, 3),
                "drained_ms": round((t_drained - t0) * 1000, 3),
                "drained_jobs": (deployments.get(conn, queue).drain or {}).get("moved")}
    cfg = queue_config.read_config(conn, queue)
    if cfg.weight_bp == 0 and not cfg.tenant_weights_bp and not cfg.canary_version:
        raise StateError(f"nothing to roll back on {queue}: no deployment and weight 0",
                         field="queue")
    qk = conn.keys.queue(queue)
    conn.scripts.call("rollback_canary", [qk.config, qk.tenant_weights, qk.rolled_back],
                      ["", int(t0 * 1000)])
    t_weight0 = clock()
    report = drain_lane(conn, queue, from_lane="canary", to_lane="stable")
    return {"queue": queue, "deployment_id": None, "state": "rolled_back", "reason": reason,
            "weight_zero_ms": round((t_weight0 - t0) * 1000, 3),
            "drained_ms": round((clock() - t0) * 1000, 3), "drained_jobs": report.moved}


def pause(conn: Connection, queue: str, *, actor: str | None = None, reason: str = "",
          now_ms: int | None = None) -> Deployment:
    """Freeze stage timers and the weight until `resume`."""
    actor = actor or operator()
    now = now_ms if now_ms is not None else _now_ms()
    dep = _active(conn, queue)
    if dep.state == "paused":
        return dep
    if dep.state not in ("active", "awaiting_promotion"):
        raise StateError(f"cannot pause a deployment that is {dep.state}", field="queue")
    meta = {**(dep.meta or {}), "paused_from": dep.state}
    ev = deployments.event("paused", reason or f"paused by {actor}", actor=actor, now=now)
    deployments.update(conn, dep, {"state": "paused", "paused_at": now, "meta": meta},
                       now=now, ev=ev)
    dep.state, dep.paused_at, dep.meta = "paused", now, meta
    return dep


def resume(conn: Connection, queue: str, *, actor: str | None = None,
           now_ms: int | None = None) -> Deployment:
    """Continue a paused deployment; the time it was paused does not count toward its stage."""
    actor = actor or operator()
    now = now_ms if now_ms is not None else _now_ms()
    dep = _active(conn, queue)
    if dep.state != "paused":
        raise StateError(f"deployment {dep.id} is {dep.state}, not paused", field="queue")
    paused = max(0, now - (dep.paused_at or now))
    values: dict[str, Any] = {
        "state": (dep.meta or {}).get("paused_from", "active"), "paused_at": None,
        "paused_ms": dep.paused_ms + paused, "stage_started_at": dep.stage_started_at + paused,
    }
    if dep.analysis_state:
        st = dict(dep.analysis_state)
        for k in ("stage_started_s", "started_s"):
            if st.get(k) is not None:
                st[k] = st[k] + paused / 1000
        values["analysis_state"] = st
    if dep.last_check_at is not None:
        values["last_check_at"] = dep.last_check_at + paused
    ev = deployments.event("resumed", f"resumed by {actor} after {paused / 1000:.0f}s paused",
                           actor=actor, now=now)
    deployments.update(conn, dep, values, now=now, ev=ev)
    return deployments.get(conn, queue) or dep


def set_weight_with_deployment(conn: Connection, queue: str, bp: int | None,
                               tenant: str | None, *, actor: str | None = None) -> bool:
    """`set-weight` during a deployment: change the weight through the deployment and pause
    its automatic progression (the operator took the wheel). Returns False when the queue has
    no active deployment (the caller sets the plain weight)."""
    dep = deployments.get(conn, queue)
    if dep is None or dep.state not in ("active", "awaiting_promotion", "paused"):
        return False
    actor = actor or operator()
    now = _now_ms()
    tenants = None
    weight = None
    if tenant is None:
        weight = bp
    else:
        tenants = dict(dep.tenants_bp)
        if bp is None:
            tenants.pop(tenant, None)
        else:
            tenants[tenant] = bp
    what = f"tenant {tenant}" if tenant else "weight"
    ev = deployments.event("weight", f"{what} set to "
                           f"{'cleared' if bp is None else f'{bp / 100:g}%'} by {actor}; "
                           "automatic progression paused until resume", actor=actor, now=now)
    values: dict[str, Any] = {"state": "paused", "paused_at": dep.paused_at or now,
                              "meta": {**(dep.meta or {}), "paused_from": dep.state
                                       if dep.state != "paused" else
                                       (dep.meta or {}).get("paused_from", "active")}}
    if tenants is not None:
        values["tenants_bp"] = tenants
    deployments.update(conn, dep, values, now=now, weight_bp=weight, tenants_bp=tenants, ev=ev)
    return True


def drain(conn: Connection, queue: str, *,
          progress: Callable[[int, int], None] | None = None) -> DrainReport:
    """Move the canary lane's jobs to the head of the stable lane (manual `pycanary drain`).
    Refused while the canary lane is open: the jobs would only be replaced by new ones."""
    cfg = queue_config.read_config(conn, queue)
    if cfg.weight_bp > 0 or cfg.tenant_weights_bp:
        raise StateError(f"{queue} still routes {cfg.weight_bp / 100:g}% to canary: roll back "
                         "or set the weight to 0 first", field="queue")
    report = drain_lane(conn, queue, from_lane="canary", to_lane="stable", progress=progress)
    dep = deployments.get(conn, queue)
    if report.complete and dep is not None and dep.state in ("promoting", "rolling_back"):
        # finish what a rollback or promotion started (its drain was cut short)
        finish_after_drain(conn, dep, actor=operator(), epoch=None, clock=time.time)
    return report


# -- status -------------------------------------------------------------------------------------
def status(conn: Connection, queue: str | None = None, *, window_s: int = 300,
           events: int = 8) -> list[dict[str, Any]]:
    """Per queue: the deployment, both lanes side by side, depths, workers, latest events."""
    if queue is not None:
        validation.queue_name(queue)
        queues = [queue]
    else:
        queues = sorted(set(deployments.active_queues(conn)) | set(queue_config.list_queues(conn)))
    ttl = int(registry.DEFAULT_HEARTBEAT_S * registry.TTL_HEARTBEATS * 1000)
    workers = registry.list_workers(conn, ttl_ms=ttl)
    leader = conn.client.get(conn.keys.leader)
    out = []
    for q in queues:
        cfg = queue_config.read_config(conn, q)
        qk = conn.keys.queue(q)
        depth = {"stable": conn.client.llen(qk.lane_stable),
                 "canary": conn.client.llen(qk.lane_canary)}
        dep = deployments.get(conn, q)
        row: dict[str, Any] = {"queue": q, "config": cfg.to_dict(), "depth": depth,
                               "leader": leader, "deployment": None}
        row["workers"] = [w.to_dict() for w in workers if q in w.queues]
        if dep is not None:
            now = registry.now_ms()
            lanes = metrics.read_lanes(conn, q, {"stable": dep.stable_version,
                                                 "canary": dep.canary_version},
                                       now - window_s * 1000, now)
            d = dep.to_dict()
            d.pop("analysis_state", None)
            d.pop("totals", None)
            plan = dep.plan
            stage_s = plan.stages[min(dep.stage, len(plan.stages) - 1)].duration
            ref = dep.paused_at or dep.last_check_at or dep.stage_started_at
            d["stage_elapsed_s"] = max(0.0, (ref - dep.stage_started_at) / 1000)
            d["stage_duration_s"] = stage_s
            row["deployment"] = d
            row["lanes"] = {lane: s.to_dict() for lane, s in lanes.items()}
            row["events"] = deployments.events(conn, q, dep.id, count=events)
        out.append(row)
    return out
