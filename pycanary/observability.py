"""What a scraper and a health probe see: the Prometheus exposition and Redis/leader health.

Shared by the API's ``/metrics`` and ``/healthz`` and the CLI's ``pycanary metrics``.

Why the health probe has a client of its own: the server's client waits up to redis-py's
socket timeout (5 s by default, and retries), and a probe that hangs as long as Redis does is
no probe. The probe client is made from the same URL with a short connect and read timeout and
no retries, and every probe also runs under a hard deadline in a helper thread, so a Redis that
accepts the connection and then never answers (SIGSTOPped, a full network buffer) still gets
"down" within the timeout. At most one probe talks to Redis at a time: while one hangs, the
next answers "down" at once instead of piling up threads.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from redis.backoff import NoBackoff
from redis.retry import Retry

from . import defaults, leader, prom
from .connection import Connection, connect, redact_text


def metrics_text(conn: Connection, *, heartbeat_s: float = defaults.HEARTBEAT_S) -> bytes:
    """One scrape: every queue's series, built from Redis by the collector."""
    return prom.render(conn, heartbeat_s=heartbeat_s)


class _Probe:
    """The short-timeout twin of one Connection, made lazily (a cluster client reads the slot
    map when it is made, which may itself hang) and kept for the next probes."""

    # No reference to the Connection itself: the connection holds its probe, not the reverse.
    def __init__(self, conn: Connection, timeout_s: float) -> None:
        self.url, self.prefix = conn.url, conn.keys.prefix
        self.timeout_s = timeout_s
        self.busy = threading.Lock()
        self._twin: Connection | None = None

    def twin(self, conn: Connection) -> Connection:
        if conn.is_memory:  # in-process: cannot hang
            return conn
        if self._twin is None:
            self._twin = connect(self.url, prefix=self.prefix,
                                 socket_timeout=self.timeout_s,
                                 socket_connect_timeout=self.timeout_s,
                                 retry=Retry(NoBackoff(), 0))
        return self._twin

    def reset(self) -> None:
        """Drop the twin after a failure: a cluster twin made while a node was down keeps a
        stale slot map; a plain one reconnects anyway, so this costs nothing there."""
        twin, self._twin = self._twin, None
        if twin is not None and not twin.is_memory:
            with contextlib.suppress(Exception):  # a broken client must not fail the probe
                twin.close()


_probes_lock = threading.Lock()


def _probe_for(conn: Connection, timeout_s: float) -> _Probe:
    """The connection's probe, kept on the connection itself (it lives and dies with it)."""
    with _probes_lock:
        probe: _Probe | None = conn.__dict__.get("_health_probe")
        if probe is None or probe.timeout_s != timeout_s:
            probe = _Probe(conn, timeout_s)
            conn.__dict__["_health_probe"] = probe
        return probe


def _check(conn: Connection, probe: _Probe, out: dict[str, Any]) -> None:
    """PING, then the leader's lease and start (one round trip), timed; fills ``out``."""
    try:
        twin = probe.twin(conn)
        started = time.perf_counter()
        twin.client.ping()
        out["ping_ms"] = round((time.perf_counter() - started) * 1000, 3)
        out["leader"] = leader.leader_info(twin)
        out["now_ms"] = defaults.now_ms()
    except Exception as exc:  # any failure to reach Redis is "down"
        out["error"] = f"{type(exc).__name__}: {redact_text(str(exc), probe.url)}"
        probe.reset()
    finally:
        probe.busy.release()


def health(conn: Connection, *, timeout_s: float = defaults.HEALTH_TIMEOUT_S) -> dict[str, Any]:
    """Redis reachability (with the PING round trip) and who leads the controllers since when.

    Never raises and never waits much longer than ``timeout_s``: an unreachable or hung Redis
    is ``{"ok": false, "redis": {"ok": false, "error": ...}}``. A missing leader does not make
    the report not ok (the API serves without a controller); it shows as ``"leader": null``.
    """
    probe = _probe_for(conn, timeout_s)
    if not probe.busy.acquire(blocking=False):
        return {"ok": False, "redis": {"ok": False, "error": "a previous probe is still "
                                       f"waiting for Redis (over {timeout_s:g} s)"},
                "leader": None}
    out: dict[str, Any] = {}
    t = threading.Thread(target=_check, args=(conn, probe, out), name="pycanary-health",
                         daemon=True)
    t.start()
    # The client's own timeouts end the check; the deadline is the backstop (a cluster twin
    # being made, a TLS handshake, a PING that answered and a leader read that then hangs).
    t.join(timeout_s + 0.5)
    if t.is_alive() or "error" in out or "ping_ms" not in out:
        error = out.get("error") or f"Redis did not answer within {timeout_s:g} s"
        return {"ok": False, "redis": {"ok": False, "error": error}, "leader": None}
    lead: leader.LeaderInfo | None = out["leader"]
    age = lead.age_s(out["now_ms"]) if lead else None
    return {"ok": True,
            "redis": {"ok": True, "ping_ms": out["ping_ms"]},
            "leader": None if lead is None else {
                "holder": f"{lead.epoch}:{lead.token}", "epoch": lead.epoch,
                "age_s": None if age is None else round(age, 3)}}
