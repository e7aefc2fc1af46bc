"""Dead letters: `dlq list|show|requeue|purge`."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from .app import (
    JsonOpt,
    YesOpt,
    _confirm,
    _emit,
    _queue_arg,
    _state,
    _when,
    app,
)

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
    from .. import dlq
    from ..watch import shorten, term_width

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
    from .. import dlq
    from ..watch import term_width, wrap

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
    from .. import dlq

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
    from .. import dlq

    conn = _state(ctx).conn()
    if all_ or job_ids:
        _confirm(dlq.purge_question(conn, queue, job_ids, all_=all_), yes)
    rep = dlq.purge(conn, queue, job_ids, all_=all_)
    _emit(rep.to_dict(), as_json, _dlq_text(rep, "purged"))
