"""The registry of Lua scripts: loaded once per server, called by EVALSHA, reloaded on NOSCRIPT.

Scripts live in the top-level ``lua/`` folder (installed as ``pycanary/lua`` in a wheel). A line
``-- @include NAME`` is replaced by ``lua/includes/NAME.lua`` so that shared helpers (FNV-1a, the
lane decision) exist once, in the manner of BullMQ's includes.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from redis.exceptions import (
    ConnectionError,
    DataError,
    NoPermissionError,
    NoScriptError,
    ResponseError,
    TimeoutError,
)

try:
    import hiredis as _hiredis
except ImportError:  # pragma: no cover - redis-py's own packer then
    _hiredis = None

from .errors import PermissionDeniedError, from_script_reply

_INCLUDE = re.compile(r"^-- @include (\w+)\s*$", re.MULTILINE)


def lua_dir() -> Path:
    """Where the scripts are: inside the installed package, else the source tree's lua/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "lua", here.parent / "lua"):
        if (candidate / "route_enqueue.lua").is_file():
            return candidate
    raise RuntimeError(f"pycanary Lua scripts not found next to {here}")


@dataclass(frozen=True)
class Script:
    name: str
    source: str
    sha: str


def _expand(text: str, includes: Path, seen: tuple[str, ...] = (),
            done: set[str] | None = None) -> str:
    """Replace each ``-- @include NAME`` by the include's text, once per script: an include
    already expanded (say guard_core, pulled in by two others) is not defined again, since
    every top-level ``local function`` costs a closure on every call of the script."""
    done = set() if done is None else done

    def repl(m: re.Match[str]) -> str:
        name = m.group(1)
        if name in seen:
            raise RuntimeError(f"include cycle: {' -> '.join((*seen, name))}")
        if name in done:
            return f"-- (@include {name}: expanded above)"
        done.add(name)
        return _expand((includes / f"{name}.lua").read_text(), includes, (*seen, name), done)

    return _INCLUDE.sub(repl, text)


@cache
def load_all() -> dict[str, Script]:
    """Read and expand every script once per process."""
    root = lua_dir()
    out: dict[str, Script] = {}
    for path in sorted(root.glob("*.lua")):
        source = _expand(path.read_text(), root / "includes")
        sha = hashlib.sha1(source.encode()).hexdigest()
        out[path.stem] = Script(path.stem, source, sha)
    return out


class Scripts:
    """Calls scripts by name on one client; NOSCRIPT (after SCRIPT FLUSH or a failover) reloads.

    ``pipeline()`` gives a batch whose script calls are replayed after a reload if the server
    answered NOSCRIPT to them: those calls did not run, so replaying them is safe.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.scripts = load_all()

    def __getitem__(self, name: str) -> Script:
        return self.scripts[name]

    def load(self, client: Any | None = None) -> None:
        """SCRIPT LOAD every script (on every primary, for a cluster client)."""
        c = client or self.client
        for script in self.scripts.values():
            c.script_load(script.source)

    def call(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """EVALSHA; a guard's refusal (error reply "PYCANARY <code> ...") raises its mapped
        pycanary exception, so no caller sees a raw ResponseError for a refused call."""
        script = self.scripts[name]
        try:
            try:
                return self.client.evalsha(script.sha, len(keys), *keys, *args)
            except NoScriptError:
                self.client.script_load(script.source)
                return self.client.evalsha(script.sha, len(keys), *keys, *args)
        except ResponseError as exc:
            mapped = self._mapped(name, exc)
            if mapped is exc:
                raise
            raise mapped from None

    def pipeline(self) -> ScriptPipeline:
        return ScriptPipeline(self)

    def bound(self, name: str, keys: Sequence[str]) -> BoundScript:
        """``name`` with its KEYS fixed, for a caller that runs it many times (Producer.enqueue)."""
        return BoundScript(self, name, keys)

    def _mapped(self, name: str, exc: ResponseError) -> Exception:
        """A script's error reply as the exception its callers see (the one mapping place)."""
        if is_denied(exc):
            return denied(name, exc)
        return from_script_reply(str(exc), script=name) or exc


class BoundScript:
    """One script with its KEYS fixed: ``bound(*argv)`` is ``Scripts.call(name, keys, argv)``
    with the EVALSHA head ("EVALSHA", sha, numkeys, *keys) built once.

    On a ``redis.Redis`` client with redis-py's connections (not a cluster, not fakeredis) the
    call sends the command itself on a connection of the client's pool: redis-py's
    ``execute_command`` wraps every command in a retry closure and per-call observability
    bookkeeping, and the pool's checkout does more of it, ~20 us of Python per call here, more
    than the rest of ``Producer.enqueue`` (issue 15). The connection is checked before each
    call as the pool checks one it hands out (reconnecting one the server closed), and still
    health-checks and disconnects on a socket error as under redis-py; there is no retry
    here, as on the producer's own client (retries off). Any other client (cluster routing,
    fakeredis, a test stand-in) goes through ``execute_command``.
    """

    def __init__(self, scripts: Scripts, name: str, keys: Sequence[str]) -> None:
        self._scripts = scripts
        self.name = name
        self._script = scripts[name]
        self._head = ("EVALSHA", self._script.sha, len(keys), *keys)
        client = scripts.client
        import redis

        pool = getattr(client, "connection_pool", None)
        # redis-py's own connection classes only (fakeredis' FakeConnection subclasses them),
        # no single-connection client, no client-side cache
        direct = isinstance(client, redis.Redis) and pool is not None \
            and getattr(pool, "connection_class", object).__module__.startswith("redis.") \
            and getattr(client, "connection", None) is None \
            and getattr(pool, "cache", None) is None
        self._pool = pool if direct else None
        self._execute = client.execute_command
        self._heads: dict[int, bytes] = {}  # len(argv) -> the packed head, for hiredis
        # One connection taken from the pool and kept (checked out) for this script's calls:
        # the pool's checkout and return cost ~11 us here (a lock, observability counters, an
        # event object), more than the call's own Python. A second thread calling at the same
        # time borrows from the pool instead; a forked child takes a connection of its own.
        self._lock = threading.Lock()
        self._conn: Any = None
        self._pid = 0

    def _pack(self, args: tuple[Any, ...]) -> bytes:
        """The command in RESP (hiredis installed): the head packed once per ARGV count, ARGV
        by hiredis.pack_command, which redis-py's packer calls too, after a per-argument type
        scan of the whole command that costs more than the packing."""
        assert _hiredis is not None
        head = self._heads.get(len(args))
        if head is None:
            packed = _hiredis.pack_command(self._head)
            head = self._heads[len(args)] = b"*%d\r\n" % (len(self._head) + len(args)) + \
                packed[packed.index(b"\r\n") + 2:]
        try:
            body = _hiredis.pack_command(args)
        except TypeError as exc:
            raise DataError(str(exc)) from None
        return head + body[body.index(b"\r\n") + 2:]

    def _roundtrip(self, conn: Any, args: tuple[Any, ...]) -> Any:
        if _hiredis is None:
            conn.send_command(*self._head, *args)
        else:
            conn.send_packed_command((self._pack(args),))
        return conn.read_response()  # a socket error disconnects conn (redis-py's own)

    def _held(self) -> Any:
        """The kept connection, checked as the pool checks one it hands out: connected, and
        nothing unread on it (a socket the server closed, say after its idle `timeout` or a
        restart, reads as closed: reconnect once)."""
        conn = self._conn
        if conn is None or self._pid != os.getpid():
            assert self._pool is not None
            conn = self._conn = self._pool.get_connection()
            self._pid = os.getpid()
            return conn
        try:
            conn.connect()
            if conn.can_read():
                raise ConnectionError("Connection has data")
        except (ConnectionError, TimeoutError, OSError):
            conn.disconnect()
            conn.connect()
            if conn.can_read():
                raise ConnectionError("Connection not ready") from None
        return conn

    def _send(self, args: tuple[Any, ...]) -> Any:
        pool = self._pool
        if pool is None:
            return self._execute(*self._head, *args)
        if not self._lock.acquire(blocking=False):  # another thread is on the kept connection
            conn = pool.get_connection()
            try:
                return self._roundtrip(conn, args)
            finally:
                pool.release(conn)  # which also drops a connection told to reconnect
        try:
            conn = self._held()
            try:
                return self._roundtrip(conn, args)
            finally:
                if conn.should_reconnect():  # a maintenance notice, as pool.release does
                    conn.disconnect()
        finally:
            self._lock.release()

    def __call__(self, *args: Any) -> Any:
        try:
            try:
                return self._send(args)
            except NoScriptError:
                self._scripts.client.script_load(self._script.source)
                return self._send(args)
        except ResponseError as exc:
            mapped = self._scripts._mapped(self.name, exc)
            if mapped is exc:
                raise
            raise mapped from None


class ScriptPipeline:
    """A non-transactional pipeline of script calls (and plain commands) with NOSCRIPT replay."""

    def __init__(self, scripts: Scripts) -> None:
        self._scripts = scripts
        self._calls: list[tuple[str | None, Sequence[str], Sequence[Any]]] = []

    def call(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> None:
        self._calls.append((name, keys, args))

    def command(self, *args: Any) -> None:
        """A plain command, e.g. ("SADD", key, member)."""
        self._calls.append((None, (), args))

    def __len__(self) -> int:
        return len(self._calls)

    def _send(self, calls: list[tuple[str | None, Sequence[str], Sequence[Any]]]) -> list[Any]:
        client = self._scripts.client
        pipe = client.pipeline(transaction=False)
        for name, keys, args in calls:
            if name is None:
                pipe.execute_command(*args)
            else:
                # execute_command, not pipe.evalsha: redis-py's cluster pipeline blocks the
                # method but routes the raw command by its keys like any other.
                pipe.execute_command("EVALSHA", self._scripts[name].sha, len(keys), *keys, *args)
        return pipe.execute(raise_on_error=False)

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Results in call order; with ``raise_on_error=False`` a failed call's result is its
        exception (a guard's refusal already mapped to pycanary's), the others still listed."""
        calls, self._calls = self._calls, []
        if not calls:
            return []
        results = self._send(calls)
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            self._scripts.load()
            replayed = self._send([calls[i] for i in missing])
            for i, r in zip(missing, replayed, strict=True):
                results[i] = r
        for i, ((name, _k, _a), r) in enumerate(zip(calls, results, strict=True)):
            if isinstance(r, Exception):
                if isinstance(r, ResponseError) and is_denied(r):
                    mapped: Exception | None = denied(name or "pipeline", r)
                elif isinstance(r, ResponseError):
                    mapped = from_script_reply(str(r), script=name or "command")
                else:
                    mapped = None
                if not raise_on_error:
                    results[i] = mapped or r
                elif mapped is not None:
                    raise mapped from None
                else:
                    raise r
        return results


def is_denied(exc: Exception) -> bool:
    """NOPERM, as a command reply or as the error of a command a script ran."""
    return isinstance(exc, NoPermissionError) or "user executing the script can't" in str(exc) \
        or str(exc).startswith("NOPERM")


def denied(what: str, exc: Exception) -> PermissionDeniedError:
    """NOPERM as a pycanary error: the role's ACL does not allow this script or command."""
    return PermissionDeniedError(f"the Redis user may not run {what}: {exc}", field="acl")
