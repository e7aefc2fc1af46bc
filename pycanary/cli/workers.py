"""Worker processes: `worker` runs one, `workers` lists the live ones."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .. import defaults, registry, service, validation
from ..errors import (
    ValidationError,
)
from .app import (
    JsonOpt,
    _ago,
    _choice,
    _emit,
    _finite,
    _queue_arg,
    _state,
    app,
)


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

    from ..worker import check_prefetch, load_handler

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
    conn = _state(ctx).conn()
    engine = service.worker_class(conn, list(queues))  # Worker, or StreamWorker on streams
    w = engine(conn, queues, version, fn, concurrency=concurrency, lane=lane,
               schemas=service.parse_schemas(schemas), heartbeat_s=heartbeat,
               max_attempts=max_attempts, job_timeout_s=timeout, prefetch=prefetch,
               exit_when_retired=exit_when_retired)
    typer.echo(f"worker {w.id} version {version} on {', '.join(w.queues)}", err=True)
    stats = w.run()
    typer.echo(f"worker {w.id} stopped: {stats.done} done, {stats.failed} failed attempts, "
               f"{stats.dead} dead-lettered"
               + (f"; retired ({w.exit_reason})" if w.exit_reason else ""), err=True)


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
