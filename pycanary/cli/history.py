"""Past deployments: history, events, and retry of the last rolled-back version."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from .. import rollouts
from .app import (
    JsonOpt,
    _emit,
    _queue_arg,
    _state,
    _timeout_s,
    _when,
    app,
)
from .deploy import _dep_line


def _history_text(rows: list[dict[str, Any]], queue: str) -> str:
    from ..watch import _dur, term_width, wrap

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


def _failed_text(rows: list[dict[str, Any]], queue: str) -> str:
    from ..watch import term_width, wrap

    if not rows:
        return f"{queue}: no notification was given up on"
    width = term_width()
    out = [f"{queue}: {len(rows)} notification(s) given up on, newest first"]
    for r in rows:
        n = r.get("notification") or {}
        out += wrap(f"{n.get('at') or _when(int(r['id'].split('-')[0]))} "
                    f"{n.get('type', '?')} of {n.get('deployment', '?')} to "
                    f"{r.get('webhook', '?')}: {r.get('error', '?')} after "
                    f"{r.get('attempts', '?')} attempt(s)", width, hang=3)
    return "\n".join(out)


@app.command()
def notifications(
    ctx: typer.Context,
    queue: Annotated[str, typer.Argument(help="Queue name.", callback=_queue_arg)],
    limit: Annotated[int, typer.Option("--limit", help="Records shown, newest first "
                                       "(1-1000).")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Notifications of QUEUE the sender gave up on: each with its webhook (host only), the
    last error and the attempts (delivered ones are not kept).

    Example: pycanary notifications payments --json
    """
    from ..notify import failed_notifications

    rows = failed_notifications(_state(ctx).conn(), queue, count=limit)
    _emit(rows, as_json, _failed_text(rows, queue))


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

    from ..watch import wrap

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
    from ..watch import term_width

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
    from ..watch import watch_deployment

    raise typer.Exit(watch_deployment(conn, queue, dep.id, as_json=as_json, timeout=limit))
