"""What a scraper and a health probe see: the Prometheus exposition and Redis/leader health.

Shared by the API's ``/metrics`` and ``/healthz`` and the CLI's ``pycanary metrics``.
"""

from __future__ import annotations

import time
from typing import Any

from . import defaults, leader, prom
from .connection import Connection


def metrics_text(conn: Connection, *, heartbeat_s: float = defaults.HEARTBEAT_S) -> bytes:
    """One scrape: every queue's series, built from Redis by the collector."""
    return prom.render(conn, heartbeat_s=heartbeat_s)


def health(conn: Connection) -> dict[str, Any]:
    """Redis reachability (with the round trip) and who leads the controllers.

    Never raises for an unreachable Redis: a health probe must answer "down", not fail.
    """
    started = time.perf_counter()
    try:
        conn.client.ping()
        holder = leader.holder(conn)
    except Exception as exc:  # any failure to reach Redis is "down"
        return {"ok": False, "redis": {"ok": False, "error": type(exc).__name__},
                "leader": None}
    return {"ok": True,
            "redis": {"ok": True, "ping_ms": round((time.perf_counter() - started) * 1000, 3)},
            "leader": {"holder": holder} if holder else None}
