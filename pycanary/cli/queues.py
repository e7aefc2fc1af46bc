"""Queue commands: enqueue, set-weight, `queue configure|show|list`, `route explain`."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from .. import service
from ..errors import (
    PycanaryError,
)
from ..settings import Settings
from .app import (
    JsonOpt,
    _emit,
    _pct,
    _queue_arg,
    _state,
    app,
)

queue_app = typer.Typer(help="Inspect and configure queues.\n\nExample: pycanary queue show "
                        "payments", no_args_is_help=True,
                        rich_markup_mode=None)
route_app = typer.Typer(help="Inspect routing decisions.\n\nExample: pycanary route explain "
                        "payments order-42", no_args_is_help=True,
                        rich_markup_mode=None)
app.add_typer(queue_app, name="queue")
app.add_typer(route_app, name="route")


# -- enqueue -----------------------------------------------------------------------------------
@app.command()
def enqueue(
    ctx: typer.Context,
    queue: Annotated[str, typer.Argument(help="Queue name, e.g. payments.", callback=_queue_arg)],
    payload: Annotated[str | None, typer.Argument(help="Job payload as JSON (default {}).")] = None,
    job_id: Annotated[
        str | None, typer.Option("--job-id", help="Job id (default: UUIDv7).")
    ] = None,
    sticky_key: Annotated[
        str | None, typer.Option("--sticky-key", help="Route by this key instead of the job id.")
    ] = None,
    tenant: Annotated[str | None, typer.Option("--tenant", help="Tenant label.")] = None,
    count: Annotated[int, typer.Option("--count", help="Enqueue N copies.")] = 1,
    rate: Annotated[
        float | None, typer.Option("--rate", help="Spread them out: N jobs per second.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Enqueue a job; the routing script picks its lane (stable or canary).

    Example: pycanary enqueue payments '{"amount": 10}' --count 1000 --rate 50
    """
    service.check_enqueue_args(count, rate)
    data = service.parse_payload(payload, max_bytes=Settings().max_payload_bytes)
    show_progress = (count >= 20_000 or rate is not None) and sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        if show_progress:
            typer.echo(f"\r{done:,}/{total:,} enqueued", err=True, nl=False)

    summary = service.enqueue(
        _state(ctx).conn(), queue, data, job_id=job_id, sticky_key=sticky_key, tenant=tenant,
        count=count, progress=progress, rate=rate,
    )
    if show_progress:
        typer.echo("", err=True)
    if summary.enqueued == 1:
        job = summary.jobs[0]
        text = f"enqueued {job.job_id} to {queue} ({job.lane} lane)"
    else:
        lanes = summary.by_lane
        text = (f"enqueued {summary.enqueued:,} jobs to {queue}: stable {lanes['stable']:,}, "
                f"canary {lanes['canary']:,}")
    _emit(summary.to_dict(), as_json, text)


# -- set-weight --------------------------------------------------------------------------------
@app.command("set-weight")
def set_weight(
    ctx: typer.Context,
    queue: Annotated[str, typer.Argument(help="Queue name.", callback=_queue_arg)],
    percent: Annotated[
        str | None, typer.Argument(help="Canary share in percent, 0-100, two decimals at most.")
    ] = None,
    tenant: Annotated[
        str | None, typer.Option("--tenant", help="Set this tenant's override only.")
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove the tenant's override.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Set the share of a queue's new jobs routed to the canary lane (no deployment needed).

    Example: pycanary set-weight payments 5 (or --tenant internal 100)
    """
    if clear and percent is not None:
        raise PycanaryError("give either a percentage or --clear, not both", field="weight")
    if not clear and percent is None:
        raise PycanaryError("missing: give a percentage such as 10 or 0.5", field="weight")
    change = service.set_weight(_state(ctx).conn(), queue, None if clear else percent,
                                tenant=tenant)
    if change.paused_deployment:
        typer.echo(f"note: the deployment on {queue} is paused until `pycanary resume "
                   f"{queue}`", err=True)
    who = f"tenant {tenant} on {queue}" if tenant else queue
    if change.weight_bp is None:
        text = f"{who}: override cleared (was {_pct(change.previous_bp)})"
    else:
        text = f"{who}: canary weight {_pct(change.previous_bp)} -> {_pct(change.weight_bp)}"
    _emit(change.to_dict(), as_json, text)


# -- queue -------------------------------------------------------------------------------------
def _queue_text(info: dict[str, Any]) -> str:
    tenants = ", ".join(f"{t}={w:g}%" for t, w in info["tenant_weights_percent"].items()) or "-"
    return "\n".join([
        f"queue           {info['queue']}",
        f"routing         {'on' if info['enabled'] else 'off'}, "
        f"{'sticky' if info['sticky'] else 'random'}"
        + (f", salt {info['salt']!r}" if info["salt"] else ""),
        f"canary weight   {info['weight_percent']:g}%  (max {info['max_weight_percent']:g}%)",
        f"tenant weights  {tenants}",
        f"versions        stable {info['stable_version'] or '-'}, "
        f"canary {info['canary_version'] or '-'}",
        f"backend         {info['backend']}",
        f"max backlog     {info['max_backlog']:,} jobs per lane" if info.get("max_backlog")
        else "max backlog     none",
        f"depth           stable {info['depth']['stable']:,}, canary {info['depth']['canary']:,}",
        f"routed          stable {info['routed']['stable']:,}, canary {info['routed']['canary']:,}",
    ])


@queue_app.command("configure")
def queue_configure(
    ctx: typer.Context,
    queue: Annotated[str, typer.Argument(help="Queue name.", callback=_queue_arg)],
    backend: Annotated[
        str | None, typer.Option("--backend", help=(
            "lists (default) or streams (a stream and consumer group per lane); chosen "
            "before first use, refused once the queue holds jobs; streams needs a Redis "
            "server, not memory://."))
    ] = None,
    max_weight: Annotated[
        str | None, typer.Option("--max-weight", help="Guard: highest canary percent allowed.")
    ] = None,
    stable_version: Annotated[
        str | None, typer.Option("--stable-version", help="Version that serves the stable lane.")
    ] = None,
    canary_version: Annotated[
        str | None, typer.Option("--canary-version", help="Version that serves the canary lane "
                                 "(for a manual canary with set-weight; deployments set it).")
    ] = None,
    sticky: Annotated[
        bool | None, typer.Option("--sticky/--no-sticky", help="Sticky hash or random draw.")
    ] = None,
    salt: Annotated[str | None, typer.Option("--salt", help="Salt of the sticky hash.")] = None,
    enabled: Annotated[
        bool | None, typer.Option("--enable/--disable", help="Turn canary routing on or off.")
    ] = None,
    max_backlog: Annotated[
        str | None, typer.Option("--max-backlog", help="Jobs a lane may hold before `enqueue` "
                                 "is refused with QueueFull (exit 3); 0 or none = no limit. "
                                 "E.g. --max-backlog 100000.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Configure a queue: its max_weight guard, stable version, routing mode and backend.

    Example: pycanary queue configure payments --stable-version v1 --max-weight 50
    """
    conn = _state(ctx).conn()
    service.configure_queue(
        conn, queue, max_weight=max_weight, stable_version=stable_version, backend=backend,
        sticky=sticky, salt=salt, enabled=enabled, canary_version=canary_version,
        max_backlog=max_backlog,
    )
    info = service.queue_info(conn, queue)
    _emit(info, as_json, _queue_text(info))


@queue_app.command("show")
def queue_show(
    ctx: typer.Context,
    queue: Annotated[str, typer.Argument(help="Queue name.", callback=_queue_arg)],
    as_json: JsonOpt = False,
) -> None:
    """Show a queue's routing config, lane depths and routed counts.

    Example: pycanary queue show payments --json
    """
    conn = _state(ctx).conn()
    service.require_queue(conn, queue)
    info = service.queue_info(conn, queue)
    _emit(info, as_json, _queue_text(info))


@queue_app.command("list")
def queue_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List known queues with their weights and depths.

    Example: pycanary queue list
    """
    infos = service.list_queues(_state(ctx).conn())
    lines = [f"{'QUEUE':<24} {'WEIGHT':>8} {'MAX':>8} {'STABLE':>10} {'CANARY':>10}"]
    for i in infos:
        lines.append(f"{i['queue']:<24} {i['weight_percent']:>7g}% {i['max_weight_percent']:>7g}%"
                     f" {i['depth']['stable']:>10,} {i['depth']['canary']:>10,}")
    if not infos:
        lines = ["no queues yet: enqueue a job or run `pycanary queue configure QUEUE`"]
    _emit(infos, as_json, "\n".join(lines))


@route_app.command("explain")
def route_explain(
    ctx: typer.Context,
    queue: Annotated[str, typer.Argument(help="Queue name.", callback=_queue_arg)],
    key: Annotated[str, typer.Argument(help="Sticky key (job id, order id, ...).")],
    tenant: Annotated[str | None, typer.Option("--tenant", help="Tenant label.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the bucket of a sticky key and the lane it gets at the weight in force.

    Example: pycanary route explain payments order-42 --tenant acme
    """
    info = service.explain_route(_state(ctx).conn(), queue, key, tenant=tenant)
    text = (f"{key!r} on {queue}: bucket {info['bucket']} (python {info['bucket_python']}), "
            f"weight {info['weight_bp']} bp, mode {info['mode']} -> "
            f"{info['lane'] or 'random draw'}")
    _emit(info, as_json, text)
