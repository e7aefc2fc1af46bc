"""The `pycanary` command line: a thin face over pycanary.service.

Every command parses, calls one service function and renders; a user mistake exits 2 with one
line naming the field, an unreachable Redis exits 1, neither with a traceback.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import redis
import typer

from . import service
from .connection import Connection, connect
from .errors import ConnectionFailedError, PycanaryError
from .settings import Settings

app = typer.Typer(
    name="pycanary",
    help="Canary rollouts for Redis job-queue workers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
queue_app = typer.Typer(help="Inspect and configure queues.", no_args_is_help=True)
route_app = typer.Typer(help="Inspect routing decisions.", no_args_is_help=True)
app.add_typer(queue_app, name="queue")
app.add_typer(route_app, name="route")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


class State:
    def __init__(self, redis_url: str, prefix: str) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self._conn: Connection | None = None

    def conn(self) -> Connection:
        if self._conn is None:
            self._conn = connect(self.redis_url, prefix=self.prefix)
            self._conn.ping()
        return self._conn


@app.callback()
def _root(
    ctx: typer.Context,
    redis_url: Annotated[
        str | None,
        typer.Option("--redis-url", envvar="PYCANARY_REDIS_URL",
                     help="redis://, rediss://, redis+cluster:// or memory:// "
                          "(default redis://127.0.0.1:6379/0)"),
    ] = None,
    prefix: Annotated[
        str | None,
        typer.Option("--prefix", envvar="PYCANARY_PREFIX", help="Key prefix (default pycanary)"),
    ] = None,
) -> None:
    settings = Settings()
    ctx.obj = State(redis_url or settings.redis_url, prefix or settings.prefix)


def _state(ctx: typer.Context) -> State:
    return ctx.obj


def _emit(data: Any, as_json: bool, text: str) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        typer.echo(text)


def _pct(bp: int | None) -> str:
    return "-" if bp is None else f"{bp / 100:g}%"


# -- enqueue -----------------------------------------------------------------------------------
@app.command()
def enqueue(
    ctx: typer.Context,
    queue: Annotated[str, typer.Argument(help="Queue name, e.g. payments.")],
    payload: Annotated[str | None, typer.Argument(help="Job payload as JSON (default {}).")] = None,
    job_id: Annotated[
        str | None, typer.Option("--job-id", help="Job id (default: UUIDv7).")
    ] = None,
    sticky_key: Annotated[
        str | None, typer.Option("--sticky-key", help="Route by this key instead of the job id.")
    ] = None,
    tenant: Annotated[str | None, typer.Option("--tenant", help="Tenant label.")] = None,
    count: Annotated[int, typer.Option("--count", help="Enqueue N copies.")] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Enqueue a job; the routing script picks its lane (stable or canary)."""
    data = service.parse_payload(payload)
    show_progress = count >= 20_000 and sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        if show_progress:
            typer.echo(f"\r{done:,}/{total:,} enqueued", err=True, nl=False)

    summary = service.enqueue(
        _state(ctx).conn(), queue, data, job_id=job_id, sticky_key=sticky_key, tenant=tenant,
        count=count, progress=progress,
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
    queue: Annotated[str, typer.Argument(help="Queue name.")],
    percent: Annotated[
        str | None, typer.Argument(help="Canary share in percent, 0-100, two decimals at most.")
    ] = None,
    tenant: Annotated[
        str | None, typer.Option("--tenant", help="Set this tenant's override only.")
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove the tenant's override.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Set the share of a queue's new jobs routed to the canary lane (no deployment needed)."""
    if clear and percent is not None:
        raise PycanaryError("give either a percentage or --clear, not both", field="weight")
    if not clear and percent is None:
        raise PycanaryError("missing: give a percentage such as 10 or 0.5", field="weight")
    change = service.set_weight(_state(ctx).conn(), queue, None if clear else percent,
                                tenant=tenant)
    who = f"tenant {tenant} on {queue}" if tenant else queue
    if change.weight_bp is None:
        text = f"{who}: override cleared (was {_pct(change.previous_bp)})"
    else:
        text = f"{who}: canary weight {_pct(change.previous_bp)} -> {_pct(change.weight_bp)}"
    _emit({"queue": queue, "tenant": tenant, "previous_percent":
           None if change.previous_bp is None else change.previous_bp / 100,
           "percent": None if change.weight_bp is None else change.weight_bp / 100,
           "rev": change.rev}, as_json, text)


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
        f"depth           stable {info['depth']['stable']:,}, canary {info['depth']['canary']:,}",
        f"routed          stable {info['routed']['stable']:,}, canary {info['routed']['canary']:,}",
    ])


@queue_app.command("configure")
def queue_configure(
    ctx: typer.Context,
    queue: Annotated[str, typer.Argument(help="Queue name.")],
    backend: Annotated[
        str | None, typer.Option("--backend", help="lists or streams.")
    ] = None,
    max_weight: Annotated[
        str | None, typer.Option("--max-weight", help="Guard: highest canary percent allowed.")
    ] = None,
    stable_version: Annotated[
        str | None, typer.Option("--stable-version", help="Version that serves the stable lane.")
    ] = None,
    sticky: Annotated[
        bool | None, typer.Option("--sticky/--no-sticky", help="Sticky hash or random draw.")
    ] = None,
    salt: Annotated[str | None, typer.Option("--salt", help="Salt of the sticky hash.")] = None,
    enabled: Annotated[
        bool | None, typer.Option("--enable/--disable", help="Turn canary routing on or off.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Configure a queue: its max_weight guard, stable version, routing mode and backend."""
    conn = _state(ctx).conn()
    service.configure_queue(
        conn, queue, max_weight=max_weight, stable_version=stable_version, backend=backend,
        sticky=sticky, salt=salt, enabled=enabled,
    )
    info = service.queue_info(conn, queue)
    _emit(info, as_json, _queue_text(info))


@queue_app.command("show")
def queue_show(
    ctx: typer.Context,
    queue: Annotated[str, typer.Argument(help="Queue name.")],
    as_json: JsonOpt = False,
) -> None:
    """Show a queue's routing config, lane depths and routed counts."""
    info = service.queue_info(_state(ctx).conn(), queue)
    _emit(info, as_json, _queue_text(info))


@queue_app.command("list")
def queue_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List known queues with their weights and depths."""
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
    queue: Annotated[str, typer.Argument(help="Queue name.")],
    key: Annotated[str, typer.Argument(help="Sticky key (job id, order id, ...).")],
    tenant: Annotated[str | None, typer.Option("--tenant", help="Tenant label.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the bucket of a sticky key and the lane it gets at the weight in force."""
    info = service.explain_route(_state(ctx).conn(), queue, key, tenant=tenant)
    text = (f"{key!r} on {queue}: bucket {info['bucket']} (python {info['bucket_python']}), "
            f"weight {info['weight_bp']} bp, mode {info['mode']} -> "
            f"{info['lane'] or 'random draw'}")
    _emit(info, as_json, text)


# -- workers ---------------------------------------------------------------------------------
@app.command()
def worker(
    ctx: typer.Context,
    queues: Annotated[list[str], typer.Argument(help="Queues to consume.")],
    version: Annotated[str, typer.Option("--version", help="This worker's build label, e.g. v2.")],
    handler: Annotated[
        str, typer.Option("--handler", help="module:function called with each Job.")
    ],
    concurrency: Annotated[
        int, typer.Option("--concurrency", help="Jobs at once (threads, or tasks if async).")
    ] = 1,
    lane: Annotated[
        str | None, typer.Option("--lane", help="Pin a lane (stable or canary) instead of "
                                 "following the queue config.")
    ] = None,
    schemas: Annotated[
        str | None, typer.Option("--schemas", help="Payload schema versions accepted, e.g. 1,2 "
                                 "(default: any).")
    ] = None,
    heartbeat: Annotated[
        float, typer.Option("--heartbeat", help="Seconds between heartbeats.")
    ] = 2.0,
    max_attempts: Annotated[
        int, typer.Option("--max-attempts", help="Attempts before dead-lettering.")
    ] = 3,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Seconds a job may run (default: none).")
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning.")] = "info",
) -> None:
    """Run a worker: takes jobs of its version's lane, runs the handler, records outcomes.

    SIGTERM or Ctrl-C finishes in-flight jobs and exits 0; a second signal exits at once.
    """
    import logging
    import os

    from .worker import Worker, load_handler

    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like uvicorn: module:function from the current dir
    fn = load_handler(handler)
    w = Worker(_state(ctx).conn(), queues, version, fn, concurrency=concurrency, lane=lane,
               schemas=service.parse_schemas(schemas), heartbeat_s=heartbeat,
               max_attempts=max_attempts, job_timeout_s=timeout)
    typer.echo(f"worker {w.id} version {version} on {', '.join(w.queues)}", err=True)
    stats = w.run()
    typer.echo(f"worker {w.id} stopped: {stats.done} done, {stats.failed} failed attempts, "
               f"{stats.dead} dead-lettered", err=True)


def _ago(ms: int) -> str:
    import time as _time

    s = max(0.0, _time.time() - ms / 1000)
    return f"{s:.1f}s ago" if s < 120 else f"{s / 60:.0f}m ago"


@app.command()
def workers(
    ctx: typer.Context,
    queue: Annotated[
        str | None, typer.Option("--queue", help="Only workers of this queue.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List workers: version, lane, queues, state (active/outdated/retiring/dead), jobs done."""
    rows = service.list_workers(_state(ctx).conn(), queue=queue)
    lines = [f"{'WORKER':<32} {'VERSION':<12} {'STATE':<9} {'LANES':<28} {'DONE':>8} "
             f"{'LAST SEEN':>10}"]
    for w in rows:
        lanes = ",".join(f"{q}={lane}" for q, lane in w["queues"].items())
        lines.append(f"{w['id']:<32} {w['version']:<12} {w['state']:<9} {lanes:<28} "
                     f"{w['done'] or 0:>8,} {_ago(w['last_seen_ms']):>10}")
    if not rows:
        lines = ["no workers registered"]
    _emit(rows, as_json, "\n".join(lines))


# -- demo --------------------------------------------------------------------------------------
@app.command()
def demo(
    jobs: Annotated[int, typer.Option("--jobs", help="Jobs to enqueue.")] = 10_000,
    weight: Annotated[str, typer.Option("--weight", help="Canary percent.")] = "10",
    redis_url: Annotated[
        str, typer.Option("--redis-url", help="Where to run it (default: embedded memory://).")
    ] = "memory://demo",
    as_json: JsonOpt = False,
) -> None:
    """Routing demo on the embedded default: jobs at a sticky canary weight, and their split."""
    from .demo import routing_demo

    result = routing_demo(redis_url, jobs=jobs, weight=weight)
    _emit(result, as_json, result["text"])


def main() -> None:
    """Entry point: run the app, turning pycanary errors into one line and an exit code."""
    try:
        app()
    except PycanaryError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1 if isinstance(exc, ConnectionFailedError) else 2)
    except redis.exceptions.ConnectionError as exc:
        typer.echo(f"error: cannot reach Redis: {exc}", err=True)
        sys.exit(1)
    except redis.exceptions.RedisError as exc:
        typer.echo(f"error: Redis answered: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
