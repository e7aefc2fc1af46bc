"""Helpers shared by the bench scripts: timing, percentiles, tables, server stats, key cleanup.

Bench scripts run against a real, possibly shared, Redis: they use a unique key prefix, never
flush, and delete exactly the keys under their own prefix when they finish (also on Ctrl-C).
"""

from __future__ import annotations

import math
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a checkout, installed or not
    sys.path.insert(0, str(REPO))

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
now_ns = time.perf_counter_ns  # CLOCK_MONOTONIC on Linux: comparable across processes


def default_redis_url() -> str:
    return os.environ.get("PYCANARY_BENCH_REDIS_URL") or DEFAULT_REDIS_URL


def unique_prefix(name: str = "pycanary-bench") -> str:
    """A key prefix no other run shares: name-<pid>-<random>."""
    return f"{name}-{os.getpid()}-{secrets.token_hex(4)}"


# -- statistics --------------------------------------------------------------------------------
def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of values already sorted; nan if empty."""
    if not sorted_values:
        return math.nan
    k = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(k, len(sorted_values)) - 1]


def percentiles(values: Iterable[float], ps: Sequence[float] = (50, 95, 99)) -> list[float]:
    s = sorted(values)
    return [percentile(s, p) for p in ps]


def median(values: Sequence[float]) -> float:
    return percentile(sorted(values), 50) if values else math.nan


# -- formatting --------------------------------------------------------------------------------
def fmt_num(x: float | None, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if digits == 0:
        return f"{x:,.0f}"
    return f"{x:,.{digits}f}"


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]],
             align: Sequence[str] | None = None) -> str:
    """A Markdown table; align is one of 'l'/'r' per column (default: first left, rest right)."""
    rows = [[str(c) for c in r] for r in rows]
    align = align or ["l"] + ["r"] * (len(headers) - 1)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        padded = (c.ljust(w) if a == "l" else c.rjust(w)
                  for c, w, a in zip(cells, widths, align, strict=True))
        return "| " + " | ".join(padded) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else (":" + "-" * (w + 1))
                         for w, a in zip(widths, align, strict=True)) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def pass_fail(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


# -- server stats ------------------------------------------------------------------------------
def commandstats(client: Any) -> dict[str, tuple[int, int]]:
    """{command: (calls, usec)} from INFO commandstats (command names lower case)."""
    out: dict[str, tuple[int, int]] = {}
    for name, v in client.info("commandstats").items():
        if name.startswith("cmdstat_") and isinstance(v, dict):
            out[name[len("cmdstat_"):]] = (int(v.get("calls", 0)), int(v.get("usec", 0)))
    return out


def stats_delta(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]],
                command: str) -> tuple[int, int]:
    """(calls, usec) of one command between two snapshots."""
    c0, u0 = before.get(command, (0, 0))
    c1, u1 = after.get(command, (0, 0))
    return c1 - c0, u1 - u0


# -- cleanup -----------------------------------------------------------------------------------
def delete_prefix(client: Any, prefix: str, extra: Iterable[str] = ()) -> int:
    """Delete the given keys and every key under ``prefix:`` (SCAN, never KEYS); returns count.

    The prefix must be one of ours (see `unique_prefix`): this is the only delete a bench does.
    """
    if not prefix or any(c in prefix for c in "*?[]\\"):
        raise ValueError(f"refusing to delete by an unsafe prefix {prefix!r}")
    keys = set(extra)
    keys.update(client.scan_iter(match=f"{prefix}:*", count=1000))
    keys = sorted(k for k in keys if (k.decode() if isinstance(k, bytes) else k).startswith(
        prefix + ":"))
    n = 0
    for i in range(0, len(keys), 500):
        n += client.delete(*keys[i : i + 500])
    return n


def clean_up(conn: Any, prefix: str, server: Any | None) -> None:
    """End of a bench run: delete its keys, close the connection, stop its private server."""
    delete_prefix(conn.client, prefix)
    conn.close()
    if server is not None:
        server.stop()


def raise_on_sigterm() -> None:
    """Turn SIGTERM/SIGHUP into SystemExit so `finally` blocks (key cleanup) run."""
    def handler(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def timed(fn: Callable[[], Any], repeat: int) -> float:
    """Mean seconds per call of fn over repeat calls."""
    t0 = now_ns()
    for _ in range(repeat):
        fn()
    return (now_ns() - t0) / 1e9 / repeat


# -- machine noise -----------------------------------------------------------------------------
def _proc_stat() -> tuple[float, float] | None:
    """(busy, steal) CPU-seconds of the whole machine since boot (Linux /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    vals += [0] * (8 - len(vals))
    tick = os.sysconf("SC_CLK_TCK")
    busy = sum(vals) - vals[3] - vals[4] - vals[7]  # minus idle, iowait, steal
    return busy / tick, vals[7] / tick


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _redis_cpu(client: Any) -> float | None:
    try:
        info = client.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    except Exception:
        return None


class CpuMeter:
    """How much CPU other processes took while we measured: busy CPU of the machine minus ours
    (this process and its reaped children) minus the Redis server's (when it runs locally).

    Child processes count only once joined, so stop() after joining them.
    """

    def __init__(self, redis_client: Any | None = None) -> None:
        self.client = redis_client
        self.t0 = time.monotonic()
        self.stat0 = _proc_stat()
        self.own0 = _own_cpu()
        self.redis0 = _redis_cpu(redis_client) if redis_client is not None else None

    def stop(self) -> dict[str, Any]:
        wall = time.monotonic() - self.t0
        stat1 = _proc_stat()
        out: dict[str, Any] = {"wall_s": wall, "cpus": os.cpu_count(),
                               "own_cpu_s": _own_cpu() - self.own0}
        r1 = _redis_cpu(self.client) if self.client is not None else None
        if self.redis0 is not None and r1 is not None:
            out["redis_cpu_s"] = r1 - self.redis0
        if self.stat0 and stat1:
            out["machine_busy_s"] = stat1[0] - self.stat0[0]
            out["steal_s"] = stat1[1] - self.stat0[1]
            out["other_cpu_s"] = (out["machine_busy_s"] - out["own_cpu_s"]
                                  - out.get("redis_cpu_s", 0.0))
        return out

    @staticmethod
    def describe(m: dict[str, Any]) -> str:
        if "other_cpu_s" not in m:
            return f"bench CPU {m['own_cpu_s']:.1f}s over {m['wall_s']:.0f}s"
        cap = m["wall_s"] * (m["cpus"] or 1)
        return (f"CPU over {m['wall_s']:.0f}s x {m['cpus']} CPUs: bench {m['own_cpu_s']:.1f}s, "
                f"redis-server {m.get('redis_cpu_s', float('nan')):.1f}s, other processes "
                f"{max(0.0, m['other_cpu_s']):.1f}s ({100 * max(0.0, m['other_cpu_s']) / cap:.0f}%"
                f" of the machine), steal {m['steal_s']:.1f}s")


class PrivateRedis:
    """A redis-server of our own on a free loopback port, so INFO commandstats counts only this
    benchmark's calls. Stopped (only it) by stop()."""

    def __init__(self) -> None:
        import shutil
        import socket
        import subprocess
        import tempfile

        import redis

        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not on PATH; pass --redis-url")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="pycanary-bench-redis-")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--logfile", f"{self.dir}/log"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                time.sleep(0.02)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        import shutil

        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)
