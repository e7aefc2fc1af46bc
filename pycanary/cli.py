"""The `pycanary` command line: a thin face over pycanary.service.

Every command parses, calls one service function and renders; a user mistake exits 2 with one
line naming the field, an unreachable Redis exits 1, neither with a traceback.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import redis
import typer
from typer._click import exceptions as click
from typer.core import TyperGroup

from . import defaults, registry, rollouts, service, validation
from .connection import Connection, connect
from .errors import (
    ConnectionFailedError,
    PayloadTooLargeError,
    PycanaryError,
    QueueFullError,
    ValidationError,
)
from .plan import PlanError
from .settings import Settings

#: Exit code of a command refused because the queue is full (max_backlog or Redis OOM): nothing
#: landed, retry later (docs/producer-errors.md).
EXIT_QUEUE_FULL = 3
#: Longest error line printed; a message quoting a 4 KB argument is cut, never a screenful.
MAX_ERROR_LINE = 300


def _one_line(text: str, limit: int = MAX_ERROR_LINE) -> str:
    """Make text safe to print as one line: no newlines or control characters, no lone
    surrogates (an argument that was invalid UTF-8), at most ``limit`` characters."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    text = " ".join(text.split())
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _usage_error(exc: click.UsageError) -> tuple[str, str]:
    """(field, message) of a command-line parsing error, in pycanary's own words."""
    param = getattr(exc, "param", None)
    name = (param.name or "argument") if param is not None else None
    if isinstance(exc, click.MissingParameter):
        opts = getattr(param, "opts", None) or []
        flag = next((o for o in opts if o.startswith("--")), None)
        return name or "arguments", f"missing (give {flag})" if flag else "missing"
    if isinstance(exc, click.BadParameter):
        return name or "arguments", exc.message.rstrip(".")
    if isinstance(exc, click.NoSuchOption):
        return "option", f"no such option {exc.option_name}"
    msg = exc.format_message().rstrip(".")
    field = "command" if "No such command" in msg else "arguments"
    return field, msg[:1].lower() + msg[1:]


def report_error(exc: BaseException) -> int | None:
    """Print one ``error: field: message`` line for a failure and return the exit code: 2
    for a user mistake, 1 for Redis trouble, 3 for a full queue (nothing landed). ``None``:
    not ours, let it raise (a bug)."""
    if isinstance(exc, PlanError):
        line = f"{exc.field}: {exc.message}"
        if len(exc.lines) > 1:
            line += f" (and {len(exc.lines) - 1} more: " + "; ".join(exc.lines[1:]) + ")"
        typer.echo(f"error: {_one_line(line, 500)}", err=True)
        return 2
    if isinstance(exc, ConnectionFailedError):
        typer.echo(f"error: {_one_line(str(exc))}", err=True)
        return 1
    if isinstance(exc, QueueFullError) or isinstance(getattr(exc, "cause", None),
                                                     QueueFullError):  # also part way
        typer.echo(f"error: {_one_line(str(exc))}", err=True)
        return EXIT_QUEUE_FULL
    if isinstance(exc, PycanaryError):
        typer.echo(f"error: {_one_line(str(exc))}", err=True)
        return 2
    if isinstance(exc, click.UsageError):
        field, message = _usage_error(exc)
        typer.echo(f"error: {_one_line(f'{field}: {message}')}", err=True)
        return 2
    if isinstance(exc, click.ClickException):
        typer.echo(f"error: {_one_line(exc.format_message())}", err=True)
        return exc.exit_code
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        typer.echo(f"error: {_one_line(f'cannot reach Redis: {exc}')}", err=True)
        return 1
    if isinstance(exc, redis.exceptions.RedisError):
        typer.echo(f"error: {_one_line(f'Redis answered: {exc}')}", err=True)
        return 1
    return None


class _Group(TyperGroup):
    """The root command: every failure of every subcommand ends here as one line and an exit
    code (in a real process and under typer's CliRunner alike), never a traceback."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                              standalone_mode=False, **extra)
        except click.NoArgsIsHelpError as exc:
            typer.echo(exc.format_message(), err=True)
            code: int | None = 2
        except typer.Abort:
            typer.echo("aborted", err=True)
            code = 1
        except Exception as exc:
            code = report_error(exc)
            if code is None:
                raise
        else:
            code = rv if isinstance(rv, int) and not isinstance(rv, bool) else 0
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    name="pycanary",
    help="Canary rollouts for Redis job-queue workers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_Group,
)
queue_app = typer.Typer(help="Inspect and configure queues.", no_args_is_help=True)
route_app = typer.Typer(help="Inspect routing decisions.", no_args_is_help=True)
app.add_typer(queue_app, name="queue")
app.add_typer(route_app, name="route")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _queue_arg(value: str | None) -> str | None:
    """Every QUEUE argument is checked before anything connects to Redis."""
    return None if value is None else validation.queue_name(value)


def _finite(value: float | None, field: str, lo: float, hi: float) -> None:
    """Seconds and rates: a finite number in [lo, hi] (NaN and inf are floats too)."""
    if value is not None and not (math.isfinite(value) and lo <= value <= hi):
        raise ValidationError(f"must be {lo:g}-{hi:g}, got {value!r}", field=field)


def _choice(value: str, field: str, choices: tuple[str, ...]) -> str:
    if value.lower() not in choices:
        raise ValidationError(f"must be one of {', '.join(choices)}, got "
                              f"{validation.quote(value)}", field=field)
    return value.lower()


#: The largest --count of one `pycanary enqueue` (a script or a loop goes further).
MAX_COUNT = 10_000_000


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
    """Enqueue a job; the routing script picks its lane (stable or canary)."""
    if not 1 <= count <= MAX_COUNT:
        raise ValidationError(f"must be 1-{MAX_COUNT:,}, got {validation.quote(count)}",
                              field="count")
    _finite(rate, "rate", 0.001, 1_000_000)
    limit = Settings().max_payload_bytes
    if payload is not None and len(payload) > limit:
        raise PayloadTooLargeError(f"is {len(payload)} characters, above the limit of {limit} "
                                   "bytes", field="payload")
    if payload is not None and any(0xD800 <= ord(c) <= 0xDFFF for c in payload):
        raise ValidationError("is not valid UTF-8", field="payload")
    try:
        data = service.parse_payload(payload)
    except RecursionError:
        raise ValidationError("nested too deeply", field="payload") from None
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
    """Set the share of a queue's new jobs routed to the canary lane (no deployment needed)."""
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
        str | None, typer.Option("--backend", help="lists or streams.")
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
    """Configure a queue: its max_weight guard, stable version, routing mode and backend."""
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
    queue: Annotated[str, typer.Argument(help="Queue name.", callback=_queue_arg)],
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
        float, typer.Option("--heartbeat", help="Seconds between heartbeats (0.1-300); the "
                            "worker counts as dead after 3 missed.")
    ] = defaults.HEARTBEAT_S,
    max_attempts: Annotated[
        int, typer.Option("--max-attempts", help="Attempts before dead-lettering.")
    ] = defaults.MAX_ATTEMPTS,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Seconds a job may run (default: none).")
    ] = None,
    prefetch: Annotated[
        int | None, typer.Option("--prefetch", help="Jobs held at once, running ones included "
                                 "(concurrency-1000; default: the concurrency).")
    ] = None,
    exit_when_retired: Annotated[
        bool, typer.Option("--exit-when-retired", help="Exit (code 0) once this version is "
                           "rolled back or replaced on every queue it served, after giving "
                           "back unstarted jobs, so a process supervisor can stop it.")
    ] = False,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning.")] = "info",
) -> None:
    """Run a worker: takes jobs of its version's lane, runs the handler, records outcomes.

    SIGTERM or Ctrl-C finishes in-flight jobs and exits 0; a second signal exits at once.
    """
    import logging
    import os

    from .worker import Worker, check_prefetch, load_handler

    for q in queues:
        validation.queue_name(q)
    validation.version(version)
    if lane is not None:
        _choice(lane, "lane", ("stable", "canary"))
    if not 1 <= concurrency <= 1024:
        raise ValidationError(f"must be 1-1024, got {validation.quote(concurrency)}",
                              field="concurrency")
    if not 1 <= max_attempts <= 1000:
        raise ValidationError(f"must be 1-1000, got {validation.quote(max_attempts)}",
                              field="max_attempts")
    _finite(heartbeat, "heartbeat", registry.MIN_HEARTBEAT_S, registry.MAX_HEARTBEAT_S)
    _finite(timeout, "timeout", 0.001, 86_400)
    check_prefetch(prefetch, concurrency)
    log_level = _choice(log_level, "log_level", ("debug", "info", "warning", "error"))

    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like uvicorn: module:function from the current dir
    fn = load_handler(handler)
    w = Worker(_state(ctx).conn(), queues, version, fn, concurrency=concurrency, lane=lane,
               schemas=service.parse_schemas(schemas), heartbeat_s=heartbeat,
               max_attempts=max_attempts, job_timeout_s=timeout, prefetch=prefetch,
               exit_when_retired=exit_when_retired)
    typer.echo(f"worker {w.id} version {version} on {', '.join(w.queues)}", err=True)
    stats = w.run()
    typer.echo(f"worker {w.id} stopped: {stats.done} done, {stats.failed} failed attempts, "
               f"{stats.dead} dead-lettered"
               + (f"; retired ({w.exit_reason})" if w.exit_reason else ""), err=True)


def _ago(ms: int) -> str:
    import time as _time

    s = max(0.0, _time.time() - ms / 1000)
    return f"{s:.1f}s ago" if s < 120 else f"{s / 60:.0f}m ago"


@app.command()
def workers(
    ctx: typer.Context,
    queue: Annotated[
        str | None, typer.Option("--queue", help="Only workers of this queue.", callback=_queue_arg)
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List workers: version, lane, queues, state (active/outdated/retiring/dead), jobs done."""
    rows = service.list_workers(_state(ctx).conn(), queue=queue)
    lines = [f"{'WORKER':<32} {'VERSION':<12} {'STATE':<9} {'LANES':<28} {'DONE':>8} "
             f"{'LAST SEEN':>10}"]
    for w in rows:
        lanes = ",".join(f"{q}={lane}" for q, lane in w["lanes"].items())
        lines.append(f"{w['id']:<32} {w['version']:<12} {w['state']:<9} {lanes:<28} "
                     f"{w['done'] or 0:>8,} {_ago(w['last_seen_ms']):>10}")
    if not rows:
        lines = ["no workers registered"]
    _emit(rows, as_json, "\n".join(lines))


# -- deployments -------------------------------------------------------------------------------
canary_app = typer.Typer(help="Manual canaries.", no_args_is_help=True)
app.add_typer(canary_app, name="canary")

YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask to confirm.")]


def _confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise PycanaryError("needs confirmation: pass --yes when not on a terminal",
                            field="yes")
    if not typer.confirm(question, default=False):
        typer.echo("aborted", err=True)
        raise typer.Exit(1)


def _parse_tenants(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, pct = item.partition("=")
        if not sep or not name or not pct:
            raise PycanaryError(f"must be TENANT=PCT, got {item!r}", field="tenant")
        out[name] = pct
    return out


def _dep_line(dep: Any) -> str:
    return (f"deployment {dep.id} on {dep.queue}: {dep.stable_version} -> {dep.canary_version}, "
            f"{dep.state}, stage {dep.stage}, weight {dep.weight_bp / 100:g}%")


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
    as_json: JsonOpt = False,
) -> None:
    """Start a manual canary: a share of new jobs goes to VERSION.

    It stays until promote or rollback; the analysis runs meanwhile and rolls back on
    failure."""
    dep = rollouts.start_canary(_state(ctx).conn(), queue, version, weight=weight,
                                tenants=_parse_tenants(tenant), sticky=sticky,
                                allow_schema_change=allow_schema_change, force=force)
    _emit(dep.to_dict(), as_json, _dep_line(dep))


@app.command()
def ramp(
    ctx: typer.Context,
    queue: Annotated[str, typer.Argument(help="Queue name.", callback=_queue_arg)],
    version: Annotated[str, typer.Option("--version", help="Canary version to roll out.")],
    plan: Annotated[Path, typer.Option("--plan", help="Plan file (YAML).")],
    watch: Annotated[
        bool, typer.Option("--watch", help="Follow it live; exit 0 promoted, 1 rolled back.")
    ] = False,
    allow_schema_change: Annotated[
        bool, typer.Option("--allow-schema-change", help="Skip the payload schema guard.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Start even if no live worker of VERSION would take "
                           "the canary lane or no controller runs (recorded in the events).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Start a staged rollout of VERSION following a plan (5% -> 15% -> 50% -> 100%, ...).

    Refused (exit 2) without a live worker of VERSION on the queue or a running controller:
    start them first, e.g. `pycanary worker orders --version v2 --handler app:handle` and
    `pycanary controller`, or pass --force."""
    conn = _state(ctx).conn()
    dep = rollouts.ramp(conn, queue, version, plan, allow_schema_change=allow_schema_change,
                        force=force)
    if not watch:
        _emit(dep.to_dict(), as_json, _dep_line(dep))
        return
    from .watch import watch_deployment

    raise typer.Exit(watch_deployment(conn, queue, dep.id, as_json=as_json))


@app.command()
def status(
    ctx: typer.Context,
    queue: Annotated[
        str | None, typer.Argument(help="Queue (default: all).", callback=_queue_arg)
    ] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh every second.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Deployments side by side: stage, weight, both lanes' error rate and latency, events."""
    from .watch import render_status, watch_status

    conn = _state(ctx).conn()
    if watch:
        raise typer.Exit(watch_status(conn, queue))
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
    canary version stable and drains its lane into stable."""
    res = rollouts.promote(
        _state(ctx).conn(), queue, full=full,
        confirm=lambda dep, target: _confirm(
            f"Promote {dep.canary_version} on {queue} to {target}?", yes))
    text = (f"{queue}: {res['stable_version']} is now stable ({res['state']})"
            if res["action"] == "promoted" else
            f"{queue}: advanced to stage {res['stage']} ({res['percent']:g}%)")
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
    processed next, in order."""
    _confirm(f"Roll back the canary on {queue}?", yes)
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
    """Freeze a deployment: stage timers and weight stay until resume."""
    dep = rollouts.pause(_state(ctx).conn(), queue)
    _emit(dep.to_dict(), as_json, _dep_line(dep))


@app.command()
def resume(
    ctx: typer.Context,
    queue: Annotated[str, typer.Argument(help="Queue name.", callback=_queue_arg)],
    as_json: JsonOpt = False,
) -> None:
    """Continue a paused deployment (paused time does not count toward the stage)."""
    dep = rollouts.resume(_state(ctx).conn(), queue)
    _emit(dep.to_dict(), as_json, _dep_line(dep))


@app.command()
def drain(
    ctx: typer.Context,
    queue: Annotated[str, typer.Argument(help="Queue name.", callback=_queue_arg)],
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Move every job of the canary lane to the head of the stable lane, in order."""
    _confirm(f"Drain the canary lane of {queue} into stable?", yes)
    show = sys.stderr.isatty()

    def progress(moved: int, remaining: int) -> None:
        if show:
            typer.echo(f"\r{moved:,} moved, {remaining:,} left", err=True, nl=False)

    report = rollouts.drain(_state(ctx).conn(), queue, progress=progress)
    if show:
        typer.echo("", err=True)
    from dataclasses import asdict

    _emit(asdict(report), as_json,
          f"{queue}: drained {report.moved:,} jobs in {report.seconds * 1000:.1f} ms "
          f"({report.calls} script calls, slowest {report.max_call_ms:.2f} ms)"
          + ("" if report.complete else f"; {report.remaining:,} left (run it again)"))


@app.command()
def controller(
    ctx: typer.Context,
    lease: Annotated[
        float, typer.Option("--lease", help="Leader lease in seconds.")] = defaults.LEASE_S,
    poll: Annotated[float, typer.Option("--poll", help="Seconds between ticks.")] = defaults.POLL_S,
    log_format: Annotated[str, typer.Option("--log-format", help="json or text.")] = "json",
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning.")] = "info",
    stall_grace: Annotated[
        float, typer.Option("--stall-grace", help="Seconds canary jobs may wait with no live "
                            "canary worker before the deployment is rolled back as stalled.")
    ] = defaults.STALL_GRACE_S,
) -> None:
    """Run the leader-elected controller that drives every deployment's plan.

    Run two for failover: one leads, the other takes over within two leases."""
    import logging
    import signal
    import threading

    from .controller import Controller, JsonFormatter
    from .leader import Leadership

    _finite(lease, "lease", 0.5, 3600)
    _finite(poll, "poll", 0.01, 3600)
    _finite(stall_grace, "stall_grace", 1, 86400)
    log_format = _choice(log_format, "log_format", ("json", "text"))
    log_level = _choice(log_level, "log_level", ("debug", "info", "warning", "error"))

    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        handlers=[handler])
    conn = _state(ctx).conn()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    ctl = Controller(conn, leadership=Leadership(conn, lease_s=lease),
                     stall_grace_s=stall_grace)
    typer.echo(f"controller {ctl.id} started (lease {lease:g}s)", err=True)
    ctl.run(stop, poll_s=min(poll, lease / 5))
    typer.echo(f"controller {ctl.id} stopped", err=True)


@app.command("metrics")
def metrics_cmd(ctx: typer.Context) -> None:
    """Print the Prometheus exposition (what the API's /metrics will serve).

    Deployments, traffic split, promotions, rollbacks, jobs routed and processed per version,
    job durations, queue depths, workers."""
    from . import prom

    sys.stdout.buffer.write(prom.render(_state(ctx).conn()))


# -- demo --------------------------------------------------------------------------------------
@app.command()
def demo(
    ctx: typer.Context,
    scenario: Annotated[
        str, typer.Option("--scenario", help="healthy (ends promoted) or regression (ends "
                          "rolled back).")
    ] = "healthy",
    speed: Annotated[
        float | None, typer.Option("--speed", help="Plan time per real second (default: the "
                                   "45-minute plan in about 30 s).")
    ] = None,
    redis_url: Annotated[
        str | None, typer.Option("--redis-url", help="Run it on this Redis (also `pycanary "
                                 "--redis-url URL demo` or PYCANARY_REDIS_URL); default: the "
                                 "embedded memory:// server.")
    ] = None,
    rate: Annotated[float, typer.Option("--rate", help="Jobs enqueued per second.")] = 150.0,
    keep: Annotated[
        bool, typer.Option("--keep", help="Leave the demo's keys on the server afterwards "
                           "(the summary says under which prefix).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """The whole story in one process, on the embedded default: nothing to install.

    Producers, v1 and v2 workers and the controller running the design card's plan with
    compressed time, in a live view; ends with a summary (lost jobs: 0). On a real Redis it
    writes only under a prefix of its own, <prefix>:demo-<random>, and deletes exactly those
    keys at the end (unless --keep); nothing else on the server is read or changed.

    Example: pycanary --redis-url redis://127.0.0.1:6379/0 demo --scenario regression"""
    from .demo import run_demo

    _finite(speed, "speed", 1, 10_000)
    _finite(rate, "rate", 1, 5_000)
    root = ctx.find_root().params  # the root's --redis-url / PYCANARY_REDIS_URL, if given
    url = redis_url or root.get("redis_url") or "memory://"
    live = sys.stdout.isatty() and not as_json
    result = run_demo(url, prefix=_state(ctx).prefix, keep=keep, scenario=scenario,
                      speed=speed, rate=rate, live=live,
                      log=None if live or as_json else typer.echo)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        typer.echo(result.summary())
    raise typer.Exit(0 if result.lost == 0 else 1)


def main() -> None:
    """Entry point: the root group turns every pycanary error into one line and an exit
    code (see `_Group.main`)."""
    app()


if __name__ == "__main__":
    main()
