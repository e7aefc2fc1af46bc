"""Deployments: `canary start`, ramp, status, promote, rollback, pause, resume, drain."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from .. import rollouts, service
from .app import (
    JsonOpt,
    YesOpt,
    _ago,
    _confirm,
    _emit,
    _queue_arg,
    _state,
    _timeout_s,
    app,
)

canary_app = typer.Typer(help="Manual canaries.\n\nExample: pycanary canary start payments "
                         "--version v2 --weight 5", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(canary_app, name="canary")


def _dep_line(dep: Any) -> str:
    return (f"deployment {dep.id} on {dep.queue}: {dep.stable_version} -> {dep.canary_version}, "
            f"{dep.state}, {_stage_text(dep)}, weight {dep.weight_bp / 100:g}%")


def _stage_text(dep: Any) -> str:
    """"stage 2 (15%)" as every other view counts stages (from 1); a manual canary has none."""
    if dep.kind == "manual":
        return "manual"
    try:
        return dep.plan.stage_label(dep.stage)
    except (IndexError, ValueError):
        return f"stage {dep.stage + 1}"


@canary_app.command("start")
def canary_start(
    ctx: typer.Context,
    queue: Annotated[str, typer.Argument(help="Queue name.", callback=_queue_arg)],
    version: Annotated[str, typer.Option("--version", help="Canary version to start.")],
    weight: Annotated[str, typer.Option("--weight", help="Canary percent.")] = "10",
    tenant: Annotated[
        list[str] | None, typer.Option("--tenant", help="Per-tenant percent, T=PCT (repeat).")
    ] = None,
    sticky: Annotated[
        bool, typer.Option("--sticky/--no-sticky", help="Sticky hash or random draw.")
    ] = True,
    allow_schema_change: Annotated[
        bool, typer.Option("--allow-schema-change",
                           help="Start even if canary workers do not accept every payload "
                                "schema in the queue.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Start even if no live worker of VERSION would take "
                           "the canary lane (recorded in the deployment's events).")
    ] = False,
    salt: Annotated[
        str | None, typer.Option("--salt", help="Sticky-hash salt (default: a fresh one per "
                                 "deployment); reuse an earlier deployment's to put the same "
                                 "keys on the canary first.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Start a manual canary: a share of new jobs goes to VERSION.

    It stays until promote or rollback; the analysis runs meanwhile and rolls back on
    failure.

    Example: pycanary canary start payments --version v2 --weight 5
    """
    dep = rollouts.start_canary(_state(ctx).conn(), queue, version, weight=weight,
                                tenants=service.parse_tenant_pairs(tenant), sticky=sticky,
                                allow_schema_change=allow_schema_change, force=force,
                                salt=salt)
    _emit(dep.to_dict(), as_json, _dep_line(dep))


@app.command()
def ramp(
    ctx: typer.Context,
    queue: Annotated[str, typer.Argument(help="Queue name.", callback=_queue_arg)],
    version: Annotated[str, typer.Option("--version", help="Canary version to roll out.")],
    plan: Annotated[Path, typer.Option("--plan", help="Plan file (YAML), or a shipped "
                                           "plan's name: design-card, quick, ...")],
    watch: Annotated[
        bool, typer.Option("--watch", help="Follow it live; exit 0 promoted, 1 rolled back, "
                           "3 timeout.")
    ] = False,
    timeout: Annotated[
        str | None, typer.Option("--timeout", metavar="DURATION",
                                 help="With --watch: stop watching after this "
                                 "long, e.g. 30m (exit 3; the rollout goes on).")
    ] = None,
    allow_schema_change: Annotated[
        bool, typer.Option("--allow-schema-change", help="Skip the payload schema guard.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Start even if no live worker of VERSION would take "
                           "the canary lane or no controller runs (recorded in the events).")
    ] = False,
    salt: Annotated[
        str | None, typer.Option("--salt", help="Sticky-hash salt (default: a fresh one per "
                                 "deployment); reuse an earlier deployment's to put the same "
                                 "keys on the canary first.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Start a staged rollout of VERSION following a plan (5% -> 15% -> 50% -> 100%, ...).

    Refused (exit 2) without a live worker of VERSION on the queue or a running controller:
    start them first, e.g. `pycanary worker orders --version v2 --handler app:handle` and
    `pycanary controller`, or pass --force.

    Example: pycanary ramp payments --version v2 --plan plan.yaml --watch --timeout 1h
    """
    conn = _state(ctx).conn()
    limit = _timeout_s(timeout, watch)
    dep = rollouts.ramp(conn, queue, version, plan, allow_schema_change=allow_schema_change,
                        force=force, salt=salt)
    if not watch:
        _emit(dep.to_dict(), as_json, _dep_line(dep))
        return
    from ..watch import watch_deployment

    raise typer.Exit(watch_deployment(conn, queue, dep.id, as_json=as_json, timeout=limit))


@app.command()
def status(
    ctx: typer.Context,
    queue: Annotated[
        str | None, typer.Argument(help="Queue (default: all).", callback=_queue_arg)
    ] = None,
    watch: Annotated[
        bool, typer.Option("--watch", help="Refresh every second. With QUEUE: follow its "
                           "deployment to the end; exit 0 promoted, 1 rolled back, 3 timeout.")
    ] = False,
    timeout: Annotated[
        str | None, typer.Option("--timeout", metavar="DURATION",
                                 help="With --watch: stop after this long, "
                                 "e.g. 30m (exit 3).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Deployments side by side: stage, weight, both lanes' error rate and latency, events.

    Example: pycanary status payments --watch --timeout 30m
    """
    from ..watch import reattach, render_status, watch_status

    conn = _state(ctx).conn()
    limit = _timeout_s(timeout, watch)
    if queue is not None:
        service.require_queue(conn, queue)
    if watch:
        raise typer.Exit(watch_status(conn, None, timeout=limit) if queue is None else
                         reattach(conn, queue, as_json=as_json, timeout=limit))
    rows = rollouts.status(conn, queue)
    extra = [f"{row['queue']}: {_running_text(r)}" for row in rows
             for r in row.get("rolled_back_running", [])]
    _emit(rows, as_json, "\n".join([render_status(rows), *extra]))


@app.command()
def promote(
    ctx: typer.Context,
    queue: Annotated[str, typer.Argument(help="Queue name.", callback=_queue_arg)],
    full: Annotated[bool, typer.Option("--full", help="Make the canary stable now.")] = False,
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Promote past a manual gate, or make the canary version stable.

    Advances one stage; from the last stage, with --full, or on a manual canary it makes the
    canary version stable and drains its lane into stable.

    Example: pycanary promote payments (or --full --yes)
    """
    res = rollouts.promote(
        _state(ctx).conn(), queue, full=full,
        confirm=lambda dep, target: _confirm(rollouts.confirm_question(
            "promote", queue, version=dep.canary_version, target=target), yes))
    text = (f"{queue}: {res['stable_version']} is now stable ({res['state']})"
            if res["action"] == "promoted" else
            f"{queue}: advanced to stage {res['stage'] + 1} ({res['percent']:g}%)")
    _emit(res, as_json, text)


@app.command()
def rollback(
    ctx: typer.Context,
    queue: Annotated[str, typer.Argument(help="Queue name.", callback=_queue_arg)],
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the event log).")] = "",
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Roll back now: weight 0 for the very next job, then drain the canary lane.

    Canary workers retire within a heartbeat; the canary lane drains into the head of stable,
    processed next, in order.

    Example: pycanary rollback payments --reason "errors spiked" --yes
    """
    _confirm(rollouts.confirm_question("rollback", queue), yes)
    res = rollouts.rollback(_state(ctx).conn(), queue, reason=reason)
    running = res.get("still_running")
    _emit(res, as_json, res["message"]  # the service says whether the drain completed
          + (f"\n{queue}: {_running_text(running)}" if running else ""))


def _running_text(r: dict[str, Any]) -> str:
    """One line on the jobs still running on a rolled-back version (rollback, status)."""
    if r["running_jobs"]:
        return (f"{r['running_jobs']} job(s) still running on rolled-back {r['version']} "
                f"({r['workers']} worker(s)); they finish and are recorded, nothing new "
                f"starts on it")
    when = (f"the last one finished {_ago(r['last_finished_at'])}"
            if r["last_finished_at"] else "none finished since its workers started")
    if not r["workers"]:
        return f"no job running on rolled-back {r['version']} (no live worker of it)"
    return f"no job running on rolled-back {r['version']}; {when}"


@app.command()
def pause(
    ctx: typer.Context,
    queue: Annotated[str, typer.Argument(help="Queue name.", callback=_queue_arg)],
    as_json: JsonOpt = False,
) -> None:
    """Freeze a deployment: stage timers and weight stay until resume.

    Example: pycanary pause payments
    """
    dep = rollouts.pause(_state(ctx).conn(), queue)
    _emit(dep.to_dict(), as_json, _dep_line(dep))


@app.command()
def resume(
    ctx: typer.Context,
    queue: Annotated[str, typer.Argument(help="Queue name.", callback=_queue_arg)],
    as_json: JsonOpt = False,
) -> None:
    """Continue a paused deployment (paused time does not count toward the stage).

    Example: pycanary resume payments
    """
    dep = rollouts.resume(_state(ctx).conn(), queue)
    _emit(dep.to_dict(), as_json, _dep_line(dep))


@app.command()
def drain(
    ctx: typer.Context,
    queue: Annotated[str, typer.Argument(help="Queue name.", callback=_queue_arg)],
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Move every job of the canary lane to the head of the stable lane, in order.

    Example: pycanary drain payments --yes
    """
    _confirm(rollouts.confirm_question("drain", queue), yes)
    show = sys.stderr.isatty()

    def progress(moved: int, remaining: int) -> None:
        if show:
            typer.echo(f"\r{moved:,} moved, {remaining:,} left", err=True, nl=False)

    report = rollouts.drain(_state(ctx).conn(), queue, progress=progress)
    if show:
        typer.echo("", err=True)
    _emit(report.to_dict(), as_json,
          f"{queue}: drained {report.moved:,} jobs in {report.seconds * 1000:.1f} ms "
          f"({report.calls} script calls, slowest {report.max_call_ms:.2f} ms)"
          + ("" if report.complete else f"; {report.remaining:,} left (run it again)"))
