"""A real `pycanary api` process on a free loopback port, for tests that need the server itself
(Prometheus scraping it, the subprocess start-up checks). TestClient covers the routes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import REAL_URL

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_api(prefix: str, *, tokens: str | None, log: Path,
                extra: tuple[str, ...] = (), startup_s: float = 30.0) -> Iterator[str]:
    """Start `pycanary api` on ``prefix`` with ``PYCANARY_API_TOKENS=tokens`` (or --no-auth
    when None); yield its base URL once /healthz answers; stop it after."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PYCANARY_API_TOKENS", None)
    args = [sys.executable, "-m", "pycanary.cli", "--redis-url", REAL_URL, "--prefix", prefix,
            "api", "--host", "127.0.0.1", "--port", str(port), *extra]
    if tokens is None:
        args.append("--no-auth")
    else:
        env["PYCANARY_API_TOKENS"] = tokens
    base = f"http://127.0.0.1:{port}"
    with log.open("w") as fh:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + startup_s
        while True:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=2) as r:
                    if json.load(r).get("ok"):
                        break
            except (urllib.error.URLError, OSError, ValueError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"pycanary api did not come up:\n{log.read_text()}")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
