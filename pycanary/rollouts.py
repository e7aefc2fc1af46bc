"""Deployment operations every face shares (CLI, API, TUI, demo): start, ramp, promote,
rollback, pause, resume, drain, status. Faces parse and render; the rules live here."""

from __future__ import annotations

import getpass
import json
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from . import defaults, deployments, metrics, queue_config, registry, service, validation
from . import leader as leadership
from .analysis import AnalysisState
from .connection import Connection
from .controller import finish_after_drain
from .deployments import Deployment
from .drain import DrainReport, drain_lane
from .errors import NotFoundError, StateError, ValidationError
from .plan import Plan, PlanError, parse_plan, resolve_plan

_SCHEMA_RE = re.compile(r'"schema":(\d+)')
#: A Redis stream entry id (an event's ``id``).
_EVENT_ID_RE = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")
SCHEMA_SCAN_PAGE = 1000


def operator(face: str = "cli") -> str:
    """Who acts, for the event log: ``<face>:<user>@<host>`` (cli, tui, ...)."""
    try:
        user = getpass.getuser()
    except Exception:  # pragma: no cover - no passwd entry in some containers
        user = "unknown"
    return f"{face}:{user}@{socket.gethostname()}"


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
    for lane in ("stable", "canary"):  # Streams backend: XRANGE pages from a cursor
        cursor = "-"
        while True:
            rows = conn.client.xrange(qk.stream(lane), cursor, "+", count=SCHEMA_SCAN_PAGE)
            for _id, fields in rows:
                m = _SCHEMA_RE.search(fields.get("e", ""))
                found.add(int(m.group(1)) if m else 1)
            if len(rows) < SCHEMA_SCAN_PAGE:
                break
            cursor = "(" + rows[-1][0]
    return found


def check_schemas(conn: Connection, queue: str, version: str) -> None:
    """Refuse a canary whose workers do not accept every payload schema in the queue."""
    present = schemas_in_queue(conn, queue)
    if not present:
        return
    ttl = defaults.TTL_MS
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


def canary_consumers(conn: Connection, queue: str, version: str) -> list[registry.WorkerRecord]:
    """Live workers of ``version`` that will take the queue's canary lane once a deployment
    names it: on it already (pinned with --lane canary), in standby waiting for it, or
    retiring because this version was rolled back (a retry or a new ramp of it takes it off the
    rolled-back list, and the worker's next heartbeat puts it on the canary lane: the README's
    "fix the build, restart the worker, retry"). A worker pinned to stable, stopping or past its
    deadline does not count."""
    out = []
    for w in registry.list_workers(conn, ttl_ms=defaults.TTL_MS):
        if w.version != version or queue not in w.queues or \
                w.state not in ("active", "standby", "retiring"):
            continue
        if w.to_dict()["lanes"].get(queue, "-") in ("canary", "-"):
            out.append(w)
    return out


def preflight(conn: Connection, queue: str, version: str, *, need_controller: bool) -> list[str]:
    """Why a deployment would start and then wait forever: no live worker of the canary
    version consumes the queue's canary lane (its jobs would pile up unread), and, for a ramp,
    no controller holds leadership (no stage would ever advance). Returns the problems, each
    one line with its fix; empty when it may start."""
    problems = []
    if not canary_consumers(conn, queue, version):
        problems.append(
            f"no live worker of version {version} consumes queue {queue}: start one with "
            f"`pycanary worker {queue} --version {version} --handler MODULE:FN` (it waits in "
            f"standby for the canary lane), or pass --force")
    if need_controller and leadership.holder(conn) is None:
        problems.append("no controller is running: start `pycanary controller`, or pass --force")
    return problems


# -- starting ----------------------------------------------------------------------------------
def _start(conn: Connection, queue: str, version: str, plan: Plan, *, kind: str,
           allow_schema_change: bool, actor: str | None, now_ms: int | None,
           message: str, force: bool = False, salt: str | None = None) -> Deployment:
    validation.queue_name(queue)
    validation.version(version)
    if salt is not None:
        validation.salt(salt)
    refuse_if_active(conn, queue)
    check_max_weight(conn, queue, plan)
    if not allow_schema_change:
        check_schemas(conn, queue, version)
    problems = preflight(conn, queue, version, need_controller=kind == "plan")
    if problems and not force:
        raise StateError(problems[0], field="version" if "worker" in problems[0] else
                         "controller")
    if problems:  # the event log says it was started against the preflight
        message += " (forced past the preflight: " + "; ".join(
            p.split(":", 1)[0] for p in problems) + ")"
    return deployments.start(conn, queue, version, plan, kind=kind, actor=actor or operator(),
                             now=now_ms if now_ms is not None else defaults.now_ms(),
                             message=message, salt=salt)


def refuse_if_active(conn: Connection, queue: str) -> None:
    """One deployment per queue: name the active one and the command to see it (the script
    refuses too, -8, but cannot say which)."""
    dep = deployments.get(conn, queue)
    if dep is not None and dep.active:
        raise StateError(f"deployment {dep.id} of {dep.canary_version} is already {dep.state} "
                         f"on {queue}: see `pycanary status {queue}`; promote or roll it back "
                         "first", field="queue")


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
    force: bool = False,
    actor: str | None = None,
    now_ms: int | None = None,
    salt: str | None = None,
) -> Deployment:
    """A manual canary: one stage at ``weight`` that waits for `promote` once it passes; the
    analysis still runs and rolls back on failure. Refused (StateError) when no live worker of
    ``version`` would take the canary lane, unless ``force`` (see `preflight`). ``salt`` pins
    the sticky salt (default: a fresh one per deployment)."""
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
                  message=f"manual canary of {version} at {pct:g}%", force=force, salt=salt)


def ramp(
    conn: Connection,
    queue: str,
    version: str,
    plan: Plan | str | Path | dict,
    *,
    allow_schema_change: bool = False,
    force: bool = False,
    actor: str | None = None,
    now_ms: int | None = None,
    salt: str | None = None,
) -> Deployment:
    """A staged rollout following a plan file or a shipped plan's name (`plan.resolve_plan`),
    or a parsed plan. Refused (StateError) when no
    live worker of ``version`` would take the canary lane or no controller leads, unless
    ``force`` (see `preflight`). The sticky salt is ``salt`` (the operator's, given now), else
    the plan's `salt`, else a fresh one per deployment."""
    if isinstance(plan, str | Path):
        plan = resolve_plan(plan)
    elif isinstance(plan, dict):
        plan = parse_plan(plan)
    stages = " -> ".join(f"{s.percentage:g}%" for s in plan.stages)
    return _start(conn, queue, version, plan, kind="plan", allow_schema_change=allow_schema_change,
                  actor=actor, now_ms=now_ms, message=f"ramp of {version}: {stages} -> 100%",
                  force=force, salt=salt if salt is not None else (plan.salt or None))


# -- operator verbs -----------------------------------------------------------------------------
def confirm_question(verb: str, queue: str, *, version: str = "", target: str = "") -> str:
    """What a face asks a person before a verb that is hard to undo (the CLI without --yes;
    an HTTP call is its own confirmation). One wording for every face."""
    if verb == "promote":
        return f"Promote {version} on {queue} to {target}?"
    if verb == "rollback":
        return f"Roll back the canary on {queue}?"
    if verb == "drain":
        return f"Drain the canary lane of {queue} into stable?"
    raise ValueError(f"no confirmation for {verb!r}")


def _active(conn: Connection, queue: str) -> Deployment:
    service.require_queue(conn, queue)
    dep = deployments.get(conn, queue)
    if dep is None or not dep.active:
        raise StateError(f"no active deployment on {queue}", field="queue")
    return dep


def promote(conn: Connection, queue: str, *, full: bool = False, actor: str | None = None,
            now_ms: int | None = None, clock: Callable[[], float] = time.time,
            confirm: Callable[[Deployment, str], None] | None = None) -> dict[str, Any]:
    """Advance one stage (past a manual gate), or with ``full`` (and after the last stage, or
    on a manual canary) make the canary the stable version now; then drain its lane into
    stable.

    ``confirm(dep, target)`` is called before anything is written, with where the promotion
    goes ("100% (stable)" or "stage 3 (50%)", stages counted from 1 as people read them), so
    a face can ask a person; it raises to stop.
    The rule of what "promote" means lives here only."""
    actor = actor or operator()
    now = now_ms if now_ms is not None else defaults.now_ms()
    dep = _active(conn, queue)
    if dep.state in ("promoting", "rolling_back"):
        raise StateError(f"deployment {dep.id} is {dep.state}", field="queue")
    plan = dep.plan
    final = full or dep.kind == "manual" or dep.last_stage
    if confirm is not None:
        confirm(dep, "100% (stable)" if final else
                plan.stage_label(dep.stage + 1))
    if final:
        deployments.promote_final(conn, dep, actor=actor, now=now,
                                  reason="promoted by " + actor + (" (--full)" if full else ""))
        # the canary is stable from here: a drain problem is reported, not a failed promote
        return {"queue": queue, "deployment_id": dep.id, "action": "promoted",
                "stable_version": dep.canary_version,
                **finish_outcome(conn, dep, actor=actor, clock=clock)}
    nxt = dep.stage + 1
    st = AnalysisState.from_dict(dep.analysis_state) if dep.analysis_state else AnalysisState()
    st = st.enter_stage(nxt, now / 1000)
    ev = deployments.event("stage", f"advanced to {plan.stage_label(nxt)} by {actor}",
                           actor=actor, now=now,
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
    service.require_queue(conn, queue)
    dep = deployments.get(conn, queue)
    if dep is not None and dep.active:
        if dep.state == "promoting":
            raise StateError(f"deployment {dep.id} is already promoting", field="queue")
        deployments.rollback(conn, dep, reason=reason, actor=actor, now=int(t0 * 1000))
        # From here on the rollback has taken effect (weight 0, canary closed): whatever goes
        # wrong with the drain or the finish is reported as such, not as a failed rollback.
        t_weight0 = clock()
        out = {"queue": queue, "deployment_id": dep.id, "rollback": "done", "reason": reason,
               "weight_zero_ms": round((t_weight0 - t0) * 1000, 3)}
        out.update(finish_outcome(conn, dep, actor=actor, clock=clock))
        out["drained_ms"] = round((clock() - t0) * 1000, 3)
        out["still_running"] = _still_running(conn, queue, dep.canary_version)
        out["message"] = (f"{queue}: rolled back; weight 0 after {out['weight_zero_ms']:.1f} ms"
                          + (f", canary lane drained ({out['drained_jobs'] or 0} jobs) after "
                             f"{out['drained_ms']:.1f} ms" if out["drain_complete"] else
                             f"; {out['warning']}"))
        return out
    cfg = queue_config.read_config(conn, queue)
    if (dep is not None and dep.state == "rolled_back" and cfg.weight_bp == 0
            and not cfg.tenant_weights_bp):
        return {"queue": queue, "deployment_id": dep.id, "rollback": "already",
                "state": "rolled_back", "reason": dep.reason, "drain_complete": True,
                "drained_jobs": 0, "message": f"{queue}: already rolled back (deployment "
                f"{dep.id} of {dep.canary_version}); nothing to do. Why: `pycanary history "
                f"{queue}`"}
    if cfg.weight_bp == 0 and not cfg.tenant_weights_bp and not cfg.canary_version:
        raise StateError(f"nothing to roll back on {queue}: no deployment and weight 0",
                         field="queue")
    qk = conn.keys.queue(queue)
    _prev, marked = conn.scripts.call("rollback_canary",
                                      [qk.config, qk.tenant_weights, qk.rolled_back],
                                      ["", int(t0 * 1000)])
    t_weight0 = clock()
    out = {"queue": queue, "deployment_id": None, "rollback": "done", "state": "rolled_back",
           "reason": reason, "weight_zero_ms": round((t_weight0 - t0) * 1000, 3)}
    try:
        report = drain_lane(conn, queue, from_lane="canary", to_lane="stable")
    except Exception as exc:  # the weight is 0 already: say so, and what is left to do
        out.update(drain_complete=False, drained_jobs=None,
                   warning=f"drain incomplete ({type(exc).__name__}: {exc}); run "
                           f"`pycanary drain {queue}`")
    else:
        out.update(drain_complete=report.complete, drained_jobs=report.moved,
                   warning=None if report.complete else
                   f"drain incomplete, {report.remaining} jobs left; run `pycanary drain "
                   f"{queue}`")
    out["drained_ms"] = round((clock() - t0) * 1000, 3)
    out["still_running"] = _still_running(conn, queue, marked)
    out["message"] = (f"{queue}: rolled back; weight 0 after {out['weight_zero_ms']:.1f} ms"
                      + (f", canary lane drained ({out['drained_jobs'] or 0} jobs)"
                         if out["drain_complete"] else f"; {out['warning']}"))
    return out


def rolled_back_running(workers: list[dict[str, Any]], queue: str,
                        version: str) -> dict[str, Any]:
    """Jobs still running on a rolled-back version of a queue, as its live workers last told
    in their heartbeats. A rollback stops new starts on the version within a heartbeat, but
    jobs already running finish (or time out) and are recorded: this says how many are left,
    and once none is, when the last one finished (``last_finished_at``, ms; None while some
    run or when no live worker of the version is left to tell)."""
    mine = [w for w in workers if w.get("version") == version and w.get("state") != "dead"
            and queue in (w.get("queues") or {})]
    jobs = sum(sum((w.get("running") or {}).get(queue, {}).values()) for w in mine)
    finished = [w["last_finished_at"] for w in mine if w.get("last_finished_at")]
    return {"version": version, "running_jobs": jobs, "workers": len(mine),
            "last_finished_at": max(finished) if finished and not jobs else None}


def _still_running(conn: Connection, queue: str, version: str) -> dict[str, Any] | None:
    """rolled_back_running for a rollback just made; None if the registry cannot be read
    (the rollback has taken effect regardless)."""
    if not version:
        return None
    try:
        workers = [w.to_dict() for w in registry.list_workers(conn, ttl_ms=defaults.TTL_MS)]
    except (redis.exceptions.RedisError, ValueError):
        return None
    return rolled_back_running(workers, queue, version)


def finish_outcome(conn: Connection, dep: Deployment, *, actor: str,
                   clock: Callable[[], float] = time.time) -> dict[str, Any]:
    """Drain and finish a deployment whose rollback or final promotion already took effect,
    and say truthfully how far that got: ``state`` (rolled_back/completed, or still
    rolling_back/promoting), ``drain_complete``, ``drained_jobs`` and a ``warning`` when
    something is left. A drain cut short or an error after the decisive write is not a failed
    rollback (or promotion): the controller finishes the drain on its next tick. If another
    process (the controller) finished it meanwhile, that is reported as done."""
    try:
        final = finish_after_drain(conn, dep, actor=actor, epoch=None, clock=clock)
    except Exception as exc:  # the decisive write stands: report the rest as pending
        try:
            cur = deployments.get(conn, dep.queue)
        except Exception:  # Redis gone too: nothing more to learn
            cur = None
        if cur is not None and cur.id == dep.id and not cur.active:
            return {"state": cur.state, "drain_complete": True,
                    "drained_jobs": (cur.drain or {}).get("moved"), "warning": None}
        return {"state": dep.state, "drain_complete": False, "drained_jobs": None,
                "warning": f"drain incomplete ({type(exc).__name__}: {exc}); the controller "
                           "will finish it (or run `pycanary drain " + dep.queue + "`)"}
    if final in deployments.FINISHED_STATES:
        try:
            moved = (deployments.get(conn, dep.queue).drain or {}).get("moved")
        except Exception:
            moved = None
        return {"state": final, "drain_complete": True, "drained_jobs": moved, "warning": None}
    return {"state": dep.state, "drain_complete": False, "drained_jobs": None,
            "warning": f"drain incomplete ({final}); the controller will finish it (or run "
                       f"`pycanary drain {dep.queue}`)"}


def pause(conn: Connection, queue: str, *, actor: str | None = None, reason: str = "",
          now_ms: int | None = None) -> Deployment:
    """Freeze stage timers and the weight until `resume`."""
    actor = actor or operator()
    now = now_ms if now_ms is not None else defaults.now_ms()
    dep = _active(conn, queue)
    if dep.state == "paused":
        return dep
    if dep.state not in ("active", "awaiting_promotion"):
        raise StateError(f"cannot pause a deployment that is {dep.state}", field="queue")
    values = deployments.pause_values(dep, now)
    ev = deployments.event("paused", reason or f"paused by {actor}", actor=actor, now=now)
    deployments.update(conn, dep, values, now=now, ev=ev)
    dep.state, dep.paused_at, dep.meta = "paused", now, values["meta"]
    return dep


def resume(conn: Connection, queue: str, *, actor: str | None = None,
           now_ms: int | None = None) -> Deployment:
    """Continue a paused deployment; the time it was paused does not count toward its stage."""
    actor = actor or operator()
    now = now_ms if now_ms is not None else defaults.now_ms()
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
    if dep.last_check_at is not None and dep.last_check_at <= (dep.paused_at or now):
        # not checked while paused (an older controller): the paused time is not a window
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
    validation.queue_name(queue)
    dep = deployments.get(conn, queue)
    if dep is None or dep.state not in ("active", "awaiting_promotion", "paused"):
        return False
    actor = actor or operator()
    now = defaults.now_ms()
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
          progress: Callable[[int, int], None] | None = None,
          actor: str | None = None) -> DrainReport:
    """Move the canary lane's jobs to the head of the stable lane (manual `pycanary drain`).
    Refused while the canary lane is open: the jobs would only be replaced by new ones."""
    service.require_queue(conn, queue)
    cfg = queue_config.read_config(conn, queue)
    if cfg.weight_bp > 0 or cfg.tenant_weights_bp:
        raise StateError(f"{queue} still routes {cfg.weight_bp / 100:g}% to canary: roll back "
                         "or set the weight to 0 first", field="queue")
    report = drain_lane(conn, queue, from_lane="canary", to_lane="stable", progress=progress)
    dep = deployments.get(conn, queue)
    if report.complete and dep is not None and dep.state in ("promoting", "rolling_back"):
        # finish what a rollback or promotion started (its drain was cut short)
        finish_after_drain(conn, dep, actor=actor or operator(), epoch=None, clock=time.time)
    return report


# -- status -------------------------------------------------------------------------------------
def controller_errors(conn: Connection) -> dict[str, dict[str, Any]]:
    """The controller's current error per queue (what it skipped on its last ticks and why):
    {queue: {reason, message, deployment_id, ts (first seen), last_ts, controller}}."""
    out: dict[str, dict[str, Any]] = {}
    for q, raw in conn.client.hgetall(conn.keys.controller_errors).items():
        try:
            out[q] = json.loads(raw)
        except ValueError:
            out[q] = {"reason": "unknown", "message": raw}
    return out


def _broken_deployment(conn: Connection, q: str, exc: deployments.CorruptDeploymentError,
                       events: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """What status can still show of a deployment hash that does not decode."""
    raw = conn.client.hgetall(conn.keys.queue(q).deployment)
    d: dict[str, Any] = {"id": raw.get("id"), "queue": q, "state": raw.get("state", "?"),
                         "stable_version": raw.get("stable_version"),
                         "canary_version": raw.get("canary_version"), "stage": 0,
                         "stages": [], "weight_percent": 0.0, "stage_elapsed_s": 0.0,
                         "stage_duration_s": 0.0, "error": str(exc),
                         "reason": f"unreadable deployment: {exc}"}
    try:
        d["stage"] = int(raw.get("stage") or 0)
        d["weight_percent"] = int(raw.get("weight_bp") or 0) / 100
    except ValueError:
        pass
    evs: list[dict[str, Any]] = []
    if exc.deployment_id:
        try:
            evs = deployments.events(conn, q, exc.deployment_id, count=events)
        except (ValueError, KeyError):
            evs = []
    return d, evs


#: Seconds between status's two readings of a rolled-back queue's stable lane (growth rate).
GROWTH_SAMPLE_S = 0.5
#: How long after a rollback status still measures the stable lane's growth, in ms.
GROWTH_AFTER_ROLLBACK_MS = defaults.KEEP_S * 1000


def stable_growth(first: tuple[dict[str, int], dict[str, int]],
                  second: tuple[dict[str, int], dict[str, int]], dt_s: float) -> dict[str, Any]:
    """The stable lane's net growth between two readings of (depths, routed counts): jobs/s
    routed in, jobs/s that left it (fetched by workers: inflow minus growth; jobs a retry or
    a drain put back count as inflow too, so this is a floor), and the net rate. A positive
    ``net_per_s`` is the design card's "queue depth growing faster than processing rate"."""
    dt = max(dt_s, 1e-6)
    grew = second[0]["stable"] - first[0]["stable"]
    inflow = second[1]["stable"] - first[1]["stable"]
    return {"window_s": round(dt_s, 3), "depth": second[0]["stable"],
            "inflow_per_s": round(inflow / dt, 1),
            "outflow_per_s": round(max(0, inflow - grew) / dt, 1),
            "net_per_s": round(grew / dt, 1)}


def status(conn: Connection, queue: str | None = None, *, window_s: int = 300,
           events: int = 8, growth_sample_s: float = GROWTH_SAMPLE_S) -> list[dict[str, Any]]:
    """Per queue: the deployment, both lanes side by side, depths, workers, latest events,
    and ``controller_error``: why the controller last skipped the queue's deployment (also
    ``deployment.last_error``). A queue that cannot be shown in full (a name in the active
    set that is no queue name, a deployment hash that does not decode) gets a row saying so;
    the other rows are unaffected. After a rollback (within the last hour) a row also has
    ``stable_growth`` (see `stable_growth`), from a second reading ``growth_sample_s`` later
    (0: not measured)."""
    if queue is not None:
        validation.queue_name(queue)
        queues = [queue]
    else:
        queues = sorted(set(deployments.active_queues(conn)) | set(queue_config.list_queues(conn)))
    ttl = defaults.TTL_MS
    workers = registry.list_workers(conn, ttl_ms=ttl)
    leader = leadership.holder(conn)
    errors = controller_errors(conn)
    out = []
    growth: list[tuple[dict[str, Any], float, tuple[dict[str, int], dict[str, int]]]] = []
    for q in queues:
        err = errors.get(q)
        if not validation.NAME_RE.match(q):
            out.append({"queue": q, "config": queue_config.QueueConfig(queue=q).to_dict(),
                        "depth": {"stable": 0, "canary": 0}, "leader": leader,
                        "deployment": None, "workers": [], "controller_error": err,
                        "error": f"{q!r} is not a queue name (listed in the active-deployments"
                                 " or queues set)"})
            continue
        cfg = queue_config.read_config(conn, q)
        t_read = time.monotonic()
        depth, _routed = service.lanes_of(conn, q)
        row: dict[str, Any] = {"queue": q, "config": cfg.to_dict(), "depth": depth,
                               "leader": leader, "deployment": None, "controller_error": err}
        row["workers"] = [w.to_dict() for w in workers if q in w.queues]
        try:
            rolled = conn.client.smembers(conn.keys.queue(q).rolled_back)
        except redis.exceptions.ResponseError:  # a garbled key: the rest of the row shows
            rolled = set()
        row["rolled_back_running"] = [
            rolled_back_running(row["workers"], q, v) for v in sorted(rolled)
            if any(w["version"] == v and w["state"] != "dead" for w in row["workers"])]
        try:
            dep = deployments.get(conn, q)
        except deployments.CorruptDeploymentError as exc:
            d, evs = _broken_deployment(conn, q, exc, events)
            d["last_error"] = err
            row.update(deployment=d, events=evs, error=str(exc))
            out.append(row)
            continue
        if dep is not None:
            now = defaults.now_ms()
            try:
                # since the deployment started, at most window_s: a rate averaged over
                # minutes before the canary existed would read low for both lanes. A start
                # "in the future" (the writer's clock ahead of this host's) clips nothing.
                since = dep.started_at if dep.started_at <= now else 0
                lanes = metrics.read_lanes(conn, q, {"stable": dep.stable_version,
                                                     "canary": dep.canary_version},
                                           max(now - window_s * 1000, since), now)
            except (redis.exceptions.ResponseError, ValueError) as exc:
                lanes = {}  # a corrupt metrics key: the rest of the row still shows
                row["error"] = f"lane metrics unreadable: {exc}"
            d = dep.to_dict()
            d.pop("analysis_state", None)
            d.pop("totals", None)
            plan = dep.plan
            stage_s = plan.stages[min(dep.stage, len(plan.stages) - 1)].duration
            ref = dep.paused_at or dep.last_check_at or dep.stage_started_at
            d["stage_elapsed_s"] = max(0.0, (ref - dep.stage_started_at) / 1000)
            d["stage_duration_s"] = stage_s
            d["durations_s"] = [st.duration for st in plan.stages]
            d["gates"] = [not st.auto_promote for st in plan.stages]
            d["last_error"] = err if err and err.get("deployment_id") in (None, dep.id) \
                else None
            row["deployment"] = d
            for lane, s in lanes.items():  # memory of the lane's live workers, side by side
                rss = [w.to_dict()["rss_bytes"] for w in workers if w.state != "dead"
                       and w.version == s.version and w.queues.get(q) == lane]
                s.rss_bytes = sum(r for r in rss if r is not None) if any(
                    r is not None for r in rss) else None
            row["lanes"] = {lane: s.to_dict() for lane, s in lanes.items()}
            row["events"] = deployments.events(conn, q, dep.id, count=events)
            if dep.state in ("rolled_back", "rolling_back") and dep.rollback_at and \
                    now - dep.rollback_at <= GROWTH_AFTER_ROLLBACK_MS and growth_sample_s > 0:
                growth.append((row, t_read, (depth, _routed)))
        out.append(row)
    if growth:
        time.sleep(max(0.0, growth_sample_s - (time.monotonic() - growth[-1][1])))
        for row, t_read, first in growth:
            second = service.lanes_of(conn, row["queue"])
            row["stable_growth"] = stable_growth(first, second, time.monotonic() - t_read)
    return out


# -- history, events, retry --------------------------------------------------------------------
#: What `history` calls each way a deployment ended: an operator's rollback is Argo's "abort".
OUTCOMES = {"completed": "promoted", "rolled_back": "rolled back"}


def outcome_of(dep: Deployment) -> str:
    """promoted / rolled back (by the controller's analysis) / aborted (by an operator) /
    the state itself while it runs."""
    if dep.state == "rolled_back" and (dep.meta or {}).get("rollback_rule", "manual") == "manual":
        return "aborted"
    return OUTCOMES.get(dep.state, dep.state)


def _history_row(conn: Connection, dep: Deployment, verdicts: int) -> dict[str, Any]:
    stages = [s.percentage for s in dep.plan.stages]
    # oldest first, like the event log (the list keeps the newest first)
    last = deployments.analyses(conn, dep.queue, dep.id, count=verdicts)[::-1] if verdicts \
        else []
    return {
        "id": dep.id, "queue": dep.queue, "version": dep.canary_version,
        "stable_version": dep.stable_version, "kind": dep.kind, "stages": stages,
        "gates": [not s.auto_promote for s in dep.plan.stages],
        "plan": deployments.redacted_plan(dep.plan_raw), "state": dep.state,
        "outcome": outcome_of(dep),
        "reason": dep.reason, "rollback_rule": (dep.meta or {}).get("rollback_rule"),
        "actor": dep.actor, "started_at": dep.started_at, "finished_at": dep.finished_at,
        "last_stage": dep.stage + 1,
        "verdicts": [{"verdict": (a.get("analysis") or {}).get("verdict"),
                      "reason": (a.get("analysis") or {}).get("reason", ""),
                      "action": (a.get("decision") or {}).get("action"),
                      "stage": a.get("stage", 0) + 1, "ts": a.get("ts")} for a in last],
    }


def history(conn: Connection, queue: str, *, limit: int = 20,
            verdicts: int = 3) -> list[dict[str, Any]]:
    """Deployments of a queue, newest first: the running one (if any), then the finished ones
    (deployment_finish keeps the last 100), each with its outcome, reason and last verdicts."""
    service.require_queue(conn, queue)
    if not 1 <= limit <= 100:
        raise ValidationError(f"must be 1-100, got {limit}", field="limit")
    rows: list[dict[str, Any]] = []
    cur = deployments.get(conn, queue)
    if cur is not None and cur.active:
        rows.append(_history_row(conn, cur, verdicts))
    for raw in conn.client.lrange(conn.keys.queue(queue).history, 0, limit - 1):
        try:
            dep = Deployment.from_hash(queue, json.loads(raw))
        except (ValueError, TypeError):
            continue  # an unreadable entry: history shows the others
        rows.append(_history_row(conn, dep, verdicts))
    return rows[:limit]


def find_deployment(conn: Connection, queue: str, deployment_id: str | None = None) -> Deployment:
    """The queue's current deployment, or the one with that id (current or in history)."""
    service.require_queue(conn, queue)
    cur = deployments.get(conn, queue)
    if deployment_id is None or (cur is not None and cur.id == deployment_id):
        if cur is None:
            # the resource asked for does not exist (404), not a state conflict
            raise NotFoundError(f"no deployment on {queue} yet", field="queue")
        return cur
    for raw in conn.client.lrange(conn.keys.queue(queue).history, 0, -1):
        try:
            d = json.loads(raw)
            if d.get("id") == deployment_id:
                return Deployment.from_hash(queue, d)
        except (ValueError, TypeError):
            continue
    raise NotFoundError(f"no deployment {validation.quote(deployment_id)} on {queue} (see "
                          f"`pycanary history {queue}`)", field="deployment")


def events(conn: Connection, queue: str, *, deployment_id: str | None = None,
           count: int = 100, after: str | None = None) -> tuple[Deployment, list[dict[str, Any]]]:
    """(deployment, its events oldest first); ``after`` an event id for the newer ones only."""
    if after is not None and not _EVENT_ID_RE.match(after):
        raise ValidationError(f"must be an event id such as 1717171717000-0, got "
                              f"{validation.quote(after)}", field="after")
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 10_000:
        raise ValidationError(f"must be 1-10000, got {validation.quote(count)}", field="count")
    dep = find_deployment(conn, queue, deployment_id)
    return dep, deployments.events(conn, queue, dep.id, count=count, after=after)


def follow_events(conn: Connection, queue: str, *, deployment_id: str | None = None,
                  interval: float = 1.0, stop: Callable[[], bool] = lambda: False,
                  sleep: Callable[[float], None] = time.sleep) -> Any:
    """Yield a deployment's events as they come, until it has finished (its last event
    yielded) or ``stop()`` says so."""
    dep, evs = events(conn, queue, deployment_id=deployment_id, count=1000)
    last = None
    while True:
        for e in evs:
            last = e["id"]
            yield e
        if not dep.active or stop():
            return
        sleep(interval)
        cur = deployments.get(conn, queue)
        if cur is not None and cur.id == dep.id:
            dep = cur
        else:  # finished and replaced, or gone: one last read of its stream
            dep.state = "completed" if dep.state == "promoting" else "rolled_back"
        evs = deployments.events(conn, queue, dep.id, count=1000, after=last)


def retry(conn: Connection, queue: str, *, allow_schema_change: bool = False,
          actor: str | None = None, now_ms: int | None = None, force: bool = False) -> Deployment:
    """Argo's retry: a new deployment of the last rolled-back version, with its plan (a
    manual canary comes back as a manual canary); the same preflight as ramp (``force``)."""
    service.require_queue(conn, queue)
    last = next((r for r in history(conn, queue, limit=100, verdicts=0)
                 if r["state"] == "rolled_back"), None)
    if last is None:
        raise StateError(f"nothing to retry on {queue}: no rolled-back deployment in its history",
                         field="queue")
    plan = parse_plan(last["plan"])
    stages = " -> ".join(f"{s.percentage:g}%" for s in plan.stages)
    return _start(conn, queue, last["version"], plan, kind=last["kind"],
                  allow_schema_change=allow_schema_change, actor=actor, now_ms=now_ms,
                  force=force,
                  message=f"retry of {last['version']} (after {last['id']}): {stages} -> 100%")
