"""Long-running services and views: controller, api, notify, metrics, tui, demo."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from .. import defaults, validation
from ..connection import connect
from ..errors import (
    ValidationError,
)
from ..settings import Settings
from .app import (
    JsonOpt,
    _choice,
    _emit,
    _finite,
    _queue_arg,
    _state,
    app,
)


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

    from ..controller import Controller, JsonFormatter, TextFormatter
    from ..leader import Leadership

    _finite(lease, "lease", 0.5, 3600)
    _finite(poll, "poll", 0.01, 3600)
    _finite(stall_grace, "stall_grace", 1, 86400)
    log_format = _choice(log_format, "log_format", ("json", "text"))
    log_level = _choice(log_level, "log_level", ("debug", "info", "warning", "error"))
    from ..notify import Sender, parse_webhooks

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

    from ..api import create_app
    from ..api.auth import parse_tokens

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

    from ..notify import Sender, parse_webhooks

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
    from ..controller import JsonFormatter, TextFormatter

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
    from .. import observability

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
    from ..tui import run_tui

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
    backend: Annotated[
        str, typer.Option("--backend", help="lists (default) or streams (needs --redis-url: "
                          "the embedded server cannot run the Streams scripts).")
    ] = "lists",
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
    from ..demo import run_demo

    _finite(speed, "speed", 1, 10_000)
    _finite(rate, "rate", 1, 5_000)
    root = ctx.find_root().params  # the root's --redis-url / PYCANARY_REDIS_URL, if given
    url = redis_url or root.get("redis_url") or "memory://"
    live = sys.stdout.isatty() and not as_json
    result = run_demo(url, prefix=_state(ctx).prefix, keep=keep, scenario=scenario,
                      speed=speed, rate=rate, live=live, backend=backend,
                      log=None if live or as_json else typer.echo)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        typer.echo(result.summary())
    raise typer.Exit(0 if result.lost == 0 else 1)
