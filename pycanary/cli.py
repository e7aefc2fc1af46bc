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
    from .watch import shorten  # at a word boundary, like every other view

    return shorten(text, limit)


def _usage_error(exc: click.UsageError) -> tuple[str, str]:
    """(field, message) of a command-line parsing error, in pycanary's own words."""
    param = getattr(exc, "param", None)
    name = (param.name or "argument") if param is not None else None
    if isinstance(exc, click.MissingParameter):
        opts = getattr(param, "opts", None) or []
        flag = next((o for o in opts if o.startswith("--")), None)
        if flag:
            return name or "arguments", f"missing (give {flag})"
        return name or "arguments", (f"missing (give {param.metavar or name.upper()}; see "
                                     "--help)" if param is not None and name else "missing")
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


#: Root options also accepted after the command (`pycanary status q --prefix test`, as
#: `rq worker --url` reads): hoisted in front of it before parsing.
ROOT_OPTIONS = ("--redis-url", "--prefix")
#: Commands with an option of the same name of their own (the demo's --redis-url).
OWN_ROOT_OPTIONS = ("demo",)


def hoist_root_options(args: list[str], groups: Sequence[str] = ()) -> list[str]:
    """Move --redis-url/--prefix (and their values) given after the command in front of it.
    ``groups``: names of command groups (queue, dlq, ...), whose subcommand follows them. An
    argument after ``--`` is never moved."""
    i = 0
    while i < len(args) and args[i].startswith("-"):
        i += 2 if args[i] in ROOT_OPTIONS else 1
    if i >= len(args) or args[i] in OWN_ROOT_OPTIONS:
        return args
    head, rest, moved = args[:i + 1], args[i + 1:], []
    if args[i] in groups and rest and not rest[0].startswith("-"):
        head, rest = head + rest[:1], rest[1:]
    kept: list[str] = []
    j = 0
    while j < len(rest):
        a = rest[j]
        if a == "--":
            kept += rest[j:]
            break
        if a in ROOT_OPTIONS and j + 1 < len(rest):
            moved += rest[j:j + 2]
            j += 2
            continue
        if any(a.startswith(o + "=") for o in ROOT_OPTIONS):
            moved.append(a)
        else:
            kept.append(a)
        j += 1
    return head[:i] + moved + head[i:] + kept if moved else args


def plain_help(cmd: Any) -> None:
    """Help in plain notation: arguments as QUEUE, options as --limit LIMIT, flags bare (no
    ``<str>``/``<bool>`` type labels), for every command of the tree."""
    for param in getattr(cmd, "params", []):
        if param.metavar is None and not getattr(param, "is_flag", False):
            name = (param.name or "value").upper()
            param.metavar = name + ("..." if param.nargs == -1 else "")
        if param.param_type_name == "argument":
            usage = param.metavar if param.required else f"[{param.metavar}]"
            param.display_type_rich = lambda ctx: None
            param._usage_display_name = lambda usage=usage: usage
    for sub in getattr(cmd, "commands", {}).values():
        plain_help(sub)


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
        plain_help(self)
        groups = [n for n, c in self.commands.items() if getattr(c, "commands", None)]
        args = hoist_root_options(list(sys.argv[1:] if args is None else args), groups)
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
    help="Canary rollouts for Redis job-queue workers.\n\n--redis-url and --prefix may come "
         "before or after the command.\n\nExample: pycanary --prefix test status payments",
    no_args_is_help=True,
    rich_markup_mode=None,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_Group,
)
queue_app = typer.Typer(help="Inspect and configure queues.\n\nExample: pycanary queue show "
                        "payments", no_args_is_help=True,
                        rich_markup_mode=None)
route_app = typer.Typer(help="Inspect routing decisions.\n\nExample: pycanary route explain "
                        "payments order-42", no_args_is_help=True,
                        rich_markup_mode=None)
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


def _timeout_s(value: str | None, watch: bool = True) -> float | None:
    """--timeout of the watches: a plan duration (90s, 30m, 1h30m) or seconds."""
    if value is None:
        return None
    if not watch:
        raise ValidationError("applies to --watch only: add --watch", field="timeout")
    from .plan import parse_duration

    try:
        return float(parse_duration(value))
    except (PlanError, ValueError) as exc:  # parse_duration raises pydantic's error
        msg = getattr(exc, "message", None) or str(exc)
        raise ValidationError(msg() if callable(msg) else msg, field="timeout") from None


#: The largest --count of one `pycanary enqueue` (a script or a loop goes further).
MAX_COUNT = service.MAX_COUNT


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


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"pycanary {__version__}")
        raise typer.Exit(0)


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
    version: Annotated[
        bool, typer.Option("--version", is_eager=True, callback=_print_version,
                           help="Print the version and exit.")
    ] = False,
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
        str | None, typer.Option("--backend", help="lists (streams: not implemented yet).")
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

    Example: pycanary worker payments --version v2 --handler app.jobs:handle
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
    """List workers: version, lane, queues, state (active/outdated/retiring/dead), jobs done.

    Example: pycanary workers --queue payments
    """
    conn = _state(ctx).conn()
    if queue is not None:
        service.require_queue(conn, queue)
    rows = service.list_workers(conn, queue=queue)
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
canary_app = typer.Typer(help="Manual canaries.\n\nExample: pycanary canary start payments "
                         "--version v2 --weight 5", no_args_is_help=True, rich_markup_mode=None)
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
    as_json: JsonOpt = False,
) -> None:
    """Start a manual canary: a share of new jobs goes to VERSION.

    It stays until promote or rollback; the analysis runs meanwhile and rolls back on
    failure.

    Example: pycanary canary start payments --version v2 --weight 5
    """
    dep = rollouts.start_canary(_state(ctx).conn(), queue, version, weight=weight,
                                tenants=service.parse_tenant_pairs(tenant), sticky=sticky,
                                allow_schema_change=allow_schema_change, force=force)
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
                        force=force)
    if not watch:
        _emit(dep.to_dict(), as_json, _dep_line(dep))
        return
    from .watch import watch_deployment

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
    from .watch import reattach, render_status, watch_status

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
    notify: Annotated[
        bool, typer.Option("--notify/--no-notify", help="Also run the notification sender "
                           "in a thread of its own (webhooks from PYCANARY_WEBHOOKS and the "
                           "plans); --no-notify when `pycanary notify` runs elsewhere.")
    ] = True,
) -> None:
    """Run the leader-elected controller that drives every deployment's plan.

    Run two for failover: one leads, the other takes over within two leases. The
    notification sender runs beside it (never inside its tick) unless --no-notify.

    Example: pycanary controller --log-format text
    """
    import logging
    import signal
    import threading

    from .controller import Controller, JsonFormatter, TextFormatter
    from .leader import Leadership

    _finite(lease, "lease", 0.5, 3600)
    _finite(poll, "poll", 0.01, 3600)
    _finite(stall_grace, "stall_grace", 1, 86400)
    log_format = _choice(log_format, "log_format", ("json", "text"))
    log_level = _choice(log_level, "log_level", ("debug", "info", "warning", "error"))
    from .notify import Sender, parse_webhooks

    webhooks = parse_webhooks(Settings().webhooks)  # a bad entry: exit 2 before starting

    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        handlers=[handler])
    conn = _state(ctx).conn()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    ctl = Controller(conn, leadership=Leadership(conn, lease_s=lease),
                     stall_grace_s=stall_grace)
    sender = Sender(conn, webhooks=webhooks).start(stop) if notify else None
    typer.echo(f"controller {ctl.id} started (lease {lease:g}s"
               + (f", notifying {len(webhooks)} webhook(s) and the plans'" if notify else
                  ", no notifications") + ")", err=True)
    ctl.run(stop, poll_s=min(poll, lease / 5))
    if sender is not None:
        sender.join(timeout=defaults.NOTIFY_TIMEOUT_S + 1)
    typer.echo(f"controller {ctl.id} stopped", err=True)


@app.command()
def api(
    ctx: typer.Context,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = defaults.API_HOST,
    port: Annotated[int, typer.Option("--port", help="TCP port to listen on.")] = defaults.API_PORT,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="Serve without tokens (every caller is an "
                           "operator); allowed only on a loopback --host.")] = False,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning.")] = "info",
) -> None:
    """Serve the admin HTTP API (OpenAPI at /openapi.json, docs at /docs).

    Tokens come from PYCANARY_API_TOKENS ("viewer:<token>,operator:<token>"): viewers read,
    operators may also change. /metrics (viewer) is the Prometheus scrape point; /healthz
    needs no token.

    Example: PYCANARY_API_TOKENS=operator:$(openssl rand -hex 16) pycanary api --port 8787
    """
    import ipaddress
    import logging

    import uvicorn

    from .api import create_app
    from .api.auth import parse_tokens

    if not 1 <= port <= 65535:
        raise ValidationError("must be 1..65535", field="port")
    log_level = _choice(log_level, "log_level", ("debug", "info", "warning", "error"))
    tokens = parse_tokens(Settings().api_tokens)
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if no_auth:
        if not loopback:
            raise ValidationError(f"--no-auth is allowed only on a loopback address, not "
                                  f"{host!r}: set PYCANARY_API_TOKENS instead", field="host")
        store = None
    elif not tokens:
        raise ValidationError("no API tokens: set PYCANARY_API_TOKENS=\"viewer:<token>,"
                              "operator:<token>\" (or --no-auth on a loopback --host)",
                              field="PYCANARY_API_TOKENS")
    else:
        store = tokens
    conn = _state(ctx).conn()
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO))
    typer.echo(f"pycanary api on http://{host}:{port} "
               f"({'no auth' if store is None else 'bearer tokens'})", err=True)
    # access log off: request lines carry no tokens, but query strings may carry names a
    # deployment would rather not print, and the app logs what matters itself
    uvicorn.run(create_app(conn, tokens=store), host=host, port=port, log_level=log_level,
                access_log=False)


@app.command("notify")
def notify_cmd(
    ctx: typer.Context,
    once: Annotated[bool, typer.Option("--once", help="Deliver what the outboxes hold now "
                                       "(retries included), then exit.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds a webhook call may "
                                           "take.")] = defaults.NOTIFY_TIMEOUT_S,
    max_attempts: Annotated[int, typer.Option("--max-attempts", help="Attempts per "
                                              "notification and webhook before it is "
                                              "recorded as failed.")]
    = defaults.NOTIFY_MAX_ATTEMPTS,
    backoff: Annotated[float, typer.Option("--backoff", help="First retry delay in seconds "
                                           "(doubled per attempt).")]
    = defaults.NOTIFY_BACKOFF_S,
    claim_idle: Annotated[float, typer.Option("--claim-idle", help="Seconds another sender's "
                                              "unacknowledged notification waits before this "
                                              "one takes it over.")]
    = defaults.NOTIFY_CLAIM_IDLE_S,
    consumer: Annotated[str | None, typer.Option("--consumer", help="Consumer name in the "
                                                 "outboxes' group (default host:pid).")] = None,
    poll: Annotated[float, typer.Option("--poll", help="Seconds between passes.")]
    = defaults.NOTIFY_POLL_S,
    log_format: Annotated[str, typer.Option("--log-format", help="json or text.")] = "json",
    as_json: JsonOpt = False,
) -> None:
    """Deliver the deployments' notifications (outbox streams) to the webhooks.

    Webhooks: PYCANARY_WEBHOOKS (json:URL,slack:URL) and each plan's notifications.webhooks.
    At least once: a notification is acknowledged only after every webhook answered 2xx or
    was given up on (recorded as notify_failed). `pycanary controller` runs this already
    unless --no-notify.

    Example: PYCANARY_WEBHOOKS=json:http://127.0.0.1:9000/hook pycanary notify --once --json
    """
    import logging
    import signal
    import threading

    from .notify import Sender, parse_webhooks

    _finite(timeout, "timeout", 0.1, 300)
    _finite(backoff, "backoff", 0, 3600)
    _finite(claim_idle, "claim_idle", 0, 86400)
    _finite(poll, "poll", 0.01, 3600)
    if not 1 <= max_attempts <= 1000:
        raise ValidationError(f"must be 1-1000, got {max_attempts}", field="max_attempts")
    if consumer is not None:
        validation.queue_name(consumer, "consumer")
    log_format = _choice(log_format, "log_format", ("json", "text"))
    webhooks = parse_webhooks(Settings().webhooks)
    sender = Sender(_state(ctx).conn(), webhooks=webhooks, timeout_s=timeout,
                    max_attempts=max_attempts, backoff_s=backoff, claim_idle_s=claim_idle,
                    consumer=consumer)
    if once:
        report = sender.run_once()
        _emit(report.to_dict(), as_json,
              f"read {report.read} notifications ({report.claimed} taken over), delivered "
              f"{report.delivered}, failed {report.failed}, acknowledged "
              f"{report.acknowledged}" + "".join(f"\nwarning: {e}" for e in report.errors))
        raise typer.Exit(1 if report.failed or report.errors else 0)
    from .controller import JsonFormatter, TextFormatter

    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    typer.echo(f"notification sender {sender.consumer} started ({len(webhooks)} webhook(s) "
               "from PYCANARY_WEBHOOKS, plus the plans')", err=True)
    sender.run(stop, poll_s=poll)
    typer.echo("notification sender stopped", err=True)


@app.command("metrics")
def metrics_cmd(ctx: typer.Context) -> None:
    """Print the Prometheus exposition (what the API's /metrics serves).

    Deployments, traffic split, promotions, rollbacks, jobs routed and processed per version,
    job durations, queue depths, workers.

    Example: pycanary metrics | grep pycanary_deployment
    """
    from . import observability

    sys.stdout.buffer.write(observability.metrics_text(_state(ctx).conn()))


# -- tui (issue 14) ------------------------------------------------------------------------------
@app.command()
def tui(
    ctx: typer.Context,
    queue: Annotated[
        str | None, typer.Option("--queue", help="Queue selected at start (default: the first "
                                 "with a running deployment).", callback=_queue_arg)
    ] = None,
    refresh: Annotated[
        float, typer.Option("--refresh", help="Seconds between refreshes, 1-60 (the panel "
                            "reads Redis at most once a second).")
    ] = defaults.TUI_REFRESH_S,
) -> None:
    """The canary panel: deployments, stable vs canary side by side, sparklines, one-key
    weight, promote and rollback (with confirm).

    Keys: 1-9 weight 10%..90%, p promote, r rollback, Space pause/resume, Ctrl+N new canary,
    ? help, q quit. Three panels from 120 columns, tabs below. It starts even when Redis
    does not answer, and shows "Redis unreachable, retrying" until it does.

    Example: pycanary tui --queue payments
    """
    _finite(refresh, "refresh", defaults.TUI_MIN_REFRESH_S, 60)
    state = _state(ctx)
    # no ping: the panel starts and says Redis is unreachable; a socket timeout turns a hung
    # server into the same banner instead of a frozen refresh
    conn = connect(state.redis_url, prefix=state.prefix,
                   socket_timeout=defaults.TUI_SOCKET_TIMEOUT_S,
                   socket_connect_timeout=defaults.TUI_SOCKET_TIMEOUT_S)
    from .tui import run_tui

    run_tui(conn, queue=queue, refresh_s=refresh)


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
    compressed time, in a live view; ends with a summary (lost jobs: 0).

    Example: pycanary demo --scenario regression
    """
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

# -- history, events -----------------------------------------------------------------------------
def _when(ms: int | None) -> str:
    import time as _time

    return "-" if not ms else _time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(ms / 1000))


def _history_text(rows: list[dict[str, Any]], queue: str) -> str:
    from .watch import _dur, term_width, wrap

    if not rows:
        return f"{queue}: no deployments yet"
    width = term_width()
    out: list[str] = []
    for r in rows:
        took = "" if not r["finished_at"] else \
            f", took {_dur((r['finished_at'] - r['started_at']) / 1000)}"
        stages = " -> ".join(f"{p:g}%" + (" -> gate" if gate else "")
                             for p, gate in zip(r["stages"], r["gates"], strict=True))
        stages += " -> 100%"
        out.append(f"{r['id']}  {r['version']}  {r['outcome'].upper()}")
        out.append(f"   started {_when(r['started_at'])}{took}; from {r['stable_version']}, "
                   f"{'manual canary' if r['kind'] == 'manual' else 'plan'} {stages}")
        if r["reason"]:
            out += wrap(f"reason: {r['reason']}", width, "   ")
        for v in r["verdicts"]:
            out += wrap(f"{_when(v['ts'])} stage {v['stage']}: {v['verdict']}: {v['reason']}",
                        width, "   ")
    return "\n".join(out)


@app.command()
def history(
    ctx: typer.Context,
    queue: Annotated[str, typer.Argument(help="Queue name.", callback=_queue_arg)],
    limit: Annotated[int, typer.Option("--limit", help="Deployments shown, newest first.")] = 10,
    as_json: JsonOpt = False,
) -> None:
    """Past deployments of QUEUE: version, plan, outcome, reason, last verdicts.

    Outcomes: promoted, rolled back (by the analysis), aborted (by an operator's rollback).

    Example: pycanary history payments --limit 5
    """
    rows = rollouts.history(_state(ctx).conn(), queue, limit=limit)
    _emit(rows, as_json, _history_text(rows, queue))


def _event_line(e: dict[str, Any], width: int) -> list[str]:
    import time as _time

    from .watch import wrap

    ts = _time.strftime("%H:%M:%S", _time.localtime(e["ts"] / 1000))
    return wrap(f"{ts} {e['type']:<16} {e['message']}", width, hang=26)


@app.command()
def events(
    ctx: typer.Context,
    queue: Annotated[str, typer.Argument(help="Queue name.", callback=_queue_arg)],
    deployment: Annotated[
        str | None, typer.Option("--deployment", help="A past deployment's id (see history; "
                                 "default: the current or last one).")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events until the "
                           "deployment ends.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """The event log of a deployment: starts, stages, verdicts, rollback, promotion.

    With --json, one JSON object per line (with --follow as well).

    Example: pycanary events payments --follow
    """
    from .watch import term_width

    conn = _state(ctx).conn()
    width = term_width()
    try:
        for e in rollouts.follow_events(conn, queue, deployment_id=deployment,
                                        stop=lambda: not follow):
            if as_json:
                typer.echo(json.dumps(e, sort_keys=True, default=str))
            else:
                typer.echo("\n".join(_event_line(e, width)))
            sys.stdout.flush()
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


# -- dead letters --------------------------------------------------------------------------------
dlq_app = typer.Typer(help="Dead letters: jobs that failed every attempt.\n\nExample: "
                      "pycanary dlq list payments", no_args_is_help=True,
                      rich_markup_mode=None)
app.add_typer(dlq_app, name="dlq")

JobIdsArg = Annotated[
    list[str] | None, typer.Argument(help="Job ids (see `pycanary dlq list QUEUE`).")
]
AllOpt = Annotated[bool, typer.Option("--all", help="Every dead letter of the queue.")]


@dlq_app.command("list")
def dlq_list(
    ctx: typer.Context,
    queue: Annotated[str, typer.Argument(help="Queue name.", callback=_queue_arg)],
    limit: Annotated[int, typer.Option("--limit", help="Records shown, newest first.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """List the newest dead letters of QUEUE: job id, version, attempts, error.

    Example: pycanary dlq list payments --limit 50
    """
    from . import dlq
    from .watch import shorten, term_width

    total, letters = dlq.list_dead(_state(ctx).conn(), queue, limit=limit)
    if as_json:
        _emit({"queue": queue, "total": total, "dead_letters": [d.to_dict() for d in letters]},
              True, "")
        return
    if not total:
        typer.echo(f"{queue}: no dead letters")
        return
    width = term_width()
    lines = [f"{queue}: {total:,} dead letters" + (f", newest {len(letters)} shown (--limit)"
                                                   if len(letters) < total else "")]
    for d in letters:
        tries = "-" if d.attempts is None else _plural(d.attempts, "attempt")
        lines.append(shorten(f"{d.job_id or '?'}  {d.version or '-'} ({d.lane or '-'})  "
                             f"{tries}  failed {_when(d.failed_at)}", width))
        lines.append(shorten("   " + (d.error or d.problem or "-"), width))
    _emit(None, False, "\n".join(lines))


@dlq_app.command("show")
def dlq_show(
    ctx: typer.Context,
    queue: Annotated[str, typer.Argument(help="Queue name.", callback=_queue_arg)],
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    as_json: JsonOpt = False,
) -> None:
    """Show a dead letter whole: payload, error (with its traceback line), worker, version.

    Example: pycanary dlq show payments order-1
    """
    from . import dlq
    from .watch import term_width, wrap

    letters = dlq.find(_state(ctx).conn(), queue, [job_id])
    if as_json:
        _emit([d.to_dict(full=True) for d in letters], True, "")
        return
    width = term_width()
    out: list[str] = []
    for d in letters:
        out += [f"job {d.job_id} on {queue}",
                f"   failed at  {_when(d.failed_at)} after "
                f"{_plural(d.attempts or 0, 'attempt')}",
                f"   version    {d.version} ({d.lane} lane), worker {d.worker}",
                f"   tenant     {d.tenant or '-'}"]
        out += wrap(f"payload    {json.dumps(d.payload, default=str)}", width, "   ", 11)
        out += wrap(f"error      {d.error}", width, "   ", 11)
        if d.problem:
            out += wrap(f"note       {d.problem}", width, "   ", 11)
    _emit(None, False, "\n".join(out))


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def _dlq_text(rep: Any, verb: str) -> str:
    text = f"{rep.queue}: {verb} {_plural(rep.done, 'dead letter')}"
    if verb == "requeued":
        text += " to the tail of the stable lane (attempts reset)"
    if rep.missing:
        text += f"; {rep.missing:,} were gone already (another operator?)"
    for job_id, problem in rep.skipped[:10]:
        text += f"\n   left in the DLQ: {job_id or '?'}: {problem}"
    if len(rep.skipped) > 10:
        text += f"\n   and {len(rep.skipped) - 10:,} more left in the DLQ"
    return text


@dlq_app.command("requeue")
def dlq_requeue(
    ctx: typer.Context,
    queue: Annotated[str, typer.Argument(help="Queue name.", callback=_queue_arg)],
    job_ids: JobIdsArg = None,
    all_: AllOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Requeue dead letters to the tail of the stable lane, attempts reset to 0.

    The tail: behind the jobs waiting now, like a new job, so a batch of old failures never
    starves them. Records that cannot run again (undecodable) stay in the DLQ and are listed.

    Example: pycanary dlq requeue payments order-1 order-2 (or --all)
    """
    from . import dlq

    rep = dlq.requeue(_state(ctx).conn(), queue, job_ids, all_=all_)
    _emit(rep.to_dict(), as_json, _dlq_text(rep, "requeued"))


@dlq_app.command("purge")
def dlq_purge(
    ctx: typer.Context,
    queue: Annotated[str, typer.Argument(help="Queue name.", callback=_queue_arg)],
    job_ids: JobIdsArg = None,
    all_: AllOpt = False,
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete dead letters for good (asks first unless --yes).

    Example: pycanary dlq purge payments --all --yes
    """
    from . import dlq

    conn = _state(ctx).conn()
    if all_ or job_ids:
        _confirm(dlq.purge_question(conn, queue, job_ids, all_=all_), yes)
    rep = dlq.purge(conn, queue, job_ids, all_=all_)
    _emit(rep.to_dict(), as_json, _dlq_text(rep, "purged"))


# -- retry -------------------------------------------------------------------------------------
@app.command()
def retry(
    ctx: typer.Context,
    queue: Annotated[str, typer.Argument(help="Queue name.", callback=_queue_arg)],
    watch: Annotated[
        bool, typer.Option("--watch", help="Follow it to its end; exit 0 promoted, 1 rolled "
                           "back, 3 timeout.")
    ] = False,
    timeout: Annotated[
        str | None, typer.Option("--timeout", metavar="DURATION",
                                 help="With --watch: stop watching after this "
                                 "long, e.g. 30m (exit 3).")
    ] = None,
    allow_schema_change: Annotated[
        bool, typer.Option("--allow-schema-change", help="Skip the payload schema guard.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Start even without a live worker of the version "
                           "or a running controller (as for ramp).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Start the last rolled-back version again, with the plan it had (Argo's retry).

    Refused like ramp (exit 2) without a live worker of that version or a controller.

    Example: pycanary retry payments --watch --timeout 30m
    """
    conn = _state(ctx).conn()
    limit = _timeout_s(timeout, watch)
    dep = rollouts.retry(conn, queue, allow_schema_change=allow_schema_change, force=force)
    if not watch:
        _emit(dep.to_dict(), as_json, _dep_line(dep))
        return
    from .watch import watch_deployment

    raise typer.Exit(watch_deployment(conn, queue, dep.id, as_json=as_json, timeout=limit))


# -- plan check (issue 10) -----------------------------------------------------------------------
plan_app = typer.Typer(help="Check plan files.", no_args_is_help=True)
app.add_typer(plan_app, name="plan")


@plan_app.command("check")
def plan_check_cmd(
    plan_file: Annotated[Path, typer.Argument(help="Plan YAML file, or a shipped plan's name.")],
    rate: Annotated[str, typer.Option("--rate", help="Traffic the plan is for: 2000/min, "
                                      "30/s, 100000/h.")],
    error_rate: Annotated[str, typer.Option("--error-rate", help="Base error rate of first "
                                            "attempts: 1% or 0.01.")] = "1%",
    runs: Annotated[int, typer.Option("--runs", help="Simulated deployments of identical "
                                      "versions (each regression gets half).")] = 100,
    as_json: JsonOpt = False,
) -> None:
    """Lint a plan, then simulate it through the real analysis for your traffic.

    Prints false rollbacks, power and median time to rollback (errors x2, x3; p95 +20%, +50%)
    and how often a healthy or a bad canary is promoted, with 95% intervals.

    Example: pycanary plan check examples/plans/design-card.yaml --rate 50000/min --error-rate 0.2%

    Exit codes: 0 no warnings; 1 warnings (power below 80%, healthy canaries not promoted,
    false rollbacks above 1%, stages too short); 2 invalid plan or arguments.
    Progress goes to stderr.
    """
    from .plan_check import check_plan, parse_error_rate, parse_rate

    per_min, p = parse_rate(rate), parse_error_rate(error_rate)

    def progress(done: int, total: int) -> None:
        if done % 25 == 0 or done == total:
            typer.echo(f"simulated {done}/{total} deployments", err=True)

    report = check_plan(plan_file, per_min, p, runs=runs, progress=progress)
    _emit(report.to_dict(), as_json, report.text())
    raise typer.Exit(1 if report.warnings else 0)


def main() -> None:
    """Entry point: the root group turns every pycanary error into one line and an exit
    code (see `_Group.main`)."""
    app()


if __name__ == "__main__":
    main()
