"""The shared core of the `pycanary` command line: the typer app, the root options, error
reporting and the small helpers every command module uses.

Every command parses, calls one service function and renders; a user mistake exits 2 with one
line naming the field, an unreachable Redis exits 1, neither with a traceback.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from typing import Annotated, Any

import redis
import typer
from typer._click import exceptions as click
from typer.core import TyperGroup

from .. import service, validation
from ..connection import Connection, connect
from ..errors import (
    ConnectionFailedError,
    PycanaryError,
    QueueFullError,
    ValidationError,
)
from ..plan import PlanError
from ..settings import Settings

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
    from ..watch import shorten  # at a word boundary, like every other view

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
    from ..plan import parse_duration

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
        from .. import __version__

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


YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask to confirm.")]


def _confirm(question: str, yes: bool) -> None:
    """Ask before a destructive command (drain, rollback, dlq purge...); never hang a script:
    off a terminal, --yes is required."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise PycanaryError("needs confirmation: pass --yes when not on a terminal",
                            field="yes")
    if not typer.confirm(question, default=False):
        typer.echo("aborted", err=True)
        raise typer.Exit(1)


def _ago(ms: int) -> str:
    """How long ago a millisecond timestamp was (workers, status)."""
    import time as _time

    s = max(0.0, _time.time() - ms / 1000)
    return f"{s:.1f}s ago" if s < 120 else f"{s / 60:.0f}m ago"


def _when(ms: int | None) -> str:
    """A millisecond timestamp as local wall-clock time (history, dlq)."""
    import time as _time

    return "-" if not ms else _time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(ms / 1000))


def main() -> None:
    """Entry point: the root group turns every pycanary error into one line and an exit
    code (see `_Group.main`)."""
    app()

