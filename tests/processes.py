"""Shared set-up of the tests that run controllers (or stand-ins) as real processes and kill
them: how a child is started (this checkout on PYTHONPATH, no inherited crash hook), how a test
waits for a state with diagnostics, and who holds the leader key.

Used by tests/test_controller_failover.py, test_controller_rollback_crash.py and
test_leader_processes.py; every process started here is the caller's to stop
(tests.test_worker_processes.stop_all).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pycanary.controller import CRASH_ENV
from tests.conftest import REAL_URL

ROOT = Path(__file__).resolve().parents[1]
#: Interpreter and import start of several processes on a loaded two-core machine.
STARTUP = 25.0

T = TypeVar("T")


def child_env(crash: str | None = None) -> dict[str, str]:
    """The environment of a child: this checkout importable; the controller's crash hook
    (PYCANARY_TEST_CRASH_AT) set only where the test asks for it."""
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    env["PYTHONPATH"] = str(ROOT)
    if crash:
        env[CRASH_ENV] = crash
    return env


def start_python(args: list[str], log: Path, *, crash: str | None = None,
                 stdout_too: bool = True) -> subprocess.Popen:
    """``python ARGS`` from the checkout, its stderr (and stdout) written to ``log``."""
    with log.open("w") as fh:
        return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=child_env(crash),
                                stdout=fh if stdout_too else subprocess.DEVNULL,
                                stderr=subprocess.STDOUT if stdout_too else fh)


def start_controller(conn, log: Path, *, lease: float, poll: float,
                     crash: str | None = None) -> subprocess.Popen:
    """A real `pycanary controller` on the test's prefix, JSON logs to ``log``."""
    return start_python(
        ["-m", "pycanary.cli", "--redis-url", REAL_URL, "--prefix", conn.keys.prefix,
         "controller", "--lease", str(lease), "--poll", str(poll), "--log-format", "json"],
        log, crash=crash)


def wait_until(cond: Callable[[], T], timeout: float, what: str,
               diag: Callable[[], str] = lambda: "") -> T:
    """Poll ``cond`` until it returns something true and return that; on timeout fail with
    ``what`` and the caller's diagnostics (process logs, Redis state)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out ({timeout:.1f} s) waiting for {what}\n{diag()}")
        time.sleep(0.02)


@dataclass(frozen=True)
class Holder:
    epoch: int
    pid: int
    actor: str  # the controller id, "host:pid", as written in the event log


def parse_holder(value: str | None) -> Holder | None:
    """ "epoch:host:pid/nonce" (the leader key) -> Holder."""
    if not value:
        return None
    epoch, token = value.split(":", 1)
    actor = token.rsplit("/", 1)[0]
    return Holder(int(epoch), int(actor.rsplit(":", 1)[1]), actor)


def holder(conn: Any) -> Holder | None:
    """Who holds the leader key now."""
    return parse_holder(conn.client.get(conn.keys.leader))


def run_with_controller(conn: Any, cmd: list[str], *, timeout: float = 60,
                        cwd: Path | None = None) -> tuple[int, str, str]:
    """Run a CLI command (a watch) in a subprocess while a controller runs in this process;
    returns (exit code, stdout, stderr) once the command ends."""
    import threading

    from pycanary.controller import Controller

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=cwd)
    stop = threading.Event()
    t = threading.Thread(target=Controller(conn).run, args=(stop, 0.2), daemon=True)
    t.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        stop.set()
        t.join(10)
    return proc.returncode, out, err
