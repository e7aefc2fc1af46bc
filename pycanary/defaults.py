"""Default settings shared by the library, the CLI and the benchmarks, and the two clock helpers.

Each default is written once here so the worker, the controller, the CLI options and the
benchmarks cannot drift apart (a heartbeat of 2 s in one place and 3 s in another makes
workers look dead). Modules keep their old names (``registry.DEFAULT_HEARTBEAT_S``,
``worker.DEFAULT_MAX_ATTEMPTS``, ...) as aliases of these.
"""

from __future__ import annotations

import time

#: Seconds between worker heartbeats.
HEARTBEAT_S = 2.0
#: Missed heartbeats before a worker counts as dead.
TTL_HEARTBEATS = 3
#: Attempts a job gets before it goes to the DLQ.
MAX_ATTEMPTS = 3
#: First retry delay in seconds (doubled per attempt) and its ceiling.
BACKOFF_S = 1.0
BACKOFF_MAX_S = 300.0
#: Leader lease of the controller, in seconds.
LEASE_S = 5.0
#: Seconds a health probe (/healthz) waits for Redis before it answers "down": a probe must
#: answer fast even when Redis hangs, or the orchestrator's own probe times out first.
HEALTH_TIMEOUT_S = 1.0
#: Jobs moved per drain script call.
DRAIN_BATCH = 500
#: Seconds between controller ticks.
POLL_S = 1.0
#: Seconds the controller lets canary jobs wait with no live canary worker before it rolls the
#: deployment back as stalled (its jobs drain to stable). Longer than a worker's restart.
STALL_GRACE_S = 120.0
#: Length of one metrics slot and how long slots and running totals are kept, in seconds.
#: 120 s slots: 10 minutes of history are 5 hashes per lane (memory per deployment, issue 15:
#: a slot of 2 minutes holds few more fields than one of 1, so bytes per minute nearly halve);
#: the controller reads only the running totals, so its windows do not depend on it. Status
#: reads the last 5 minutes (3 slots), the TUI's sparklines one bar per slot.
SLOT_S = 120
KEEP_S = 3600
#: The TUI (`pycanary tui`): seconds between refreshes (and the shortest allowed: the panel
#: reads Redis at most once a second), metric slots per sparkline (30 x 120 s = 1 h), events
#: shown, and the socket timeout that turns a hung Redis into "unreachable, retrying".
TUI_REFRESH_S = 1.0
TUI_MIN_REFRESH_S = 1.0
TUI_SPARK_SLOTS = 30
TUI_EVENTS = 20
TUI_SOCKET_TIMEOUT_S = 5.0

#: Event types that also become notifications (the deployment scripts append them to the
#: queue's outbox in the same call as the change). lua/includes/deployment.lua holds the same
#: list (a test checks they agree); a FAIL "verdict" event is notified as "check_failed".
NOTIFY_EVENT_TYPES = ("started", "check_failed", "rollback", "rolled_back", "paused",
                      "awaiting_promotion", "gate_waiting", "stage", "promoted", "completed")
#: Approximate cap of each outbox stream (XADD MAXLEN ~), as in the include.
OUTBOX_MAXLEN = 10_000
#: The sender's consumer group on every outbox.
NOTIFY_GROUP = "pycanary-notify"
#: Seconds a webhook call may take (connect, and each read) before it counts as failed.
NOTIFY_TIMEOUT_S = 5.0
#: Delivery attempts per notification and webhook before it is recorded as failed.
NOTIFY_MAX_ATTEMPTS = 5
#: First retry delay (doubled per attempt) and its ceiling, in seconds.
NOTIFY_BACKOFF_S = 1.0
NOTIFY_BACKOFF_MAX_S = 60.0
#: Seconds a notification may sit unacknowledged with another sender (crashed, presumably)
#: before this one claims it (XAUTOCLAIM).
NOTIFY_CLAIM_IDLE_S = 30.0
#: Seconds between the sender's passes over the outboxes.
NOTIFY_POLL_S = 0.5
#: A sender's consumer that holds nothing and has not read for this long is deleted from the
#: outbox's group (a sender that died or was replaced: host:pid names pile up otherwise).
#: Harmless if it was alive after all: its next read creates it again.
NOTIFY_FORGET_IDLE_S = 3600.0
#: Approximate cap of each dead outbox (notifications given up on).
NOTIFY_DEAD_MAXLEN = 1000
#: Seconds a webhook gate's call may take by default.
GATE_TIMEOUT_S = 10.0


def now_ms() -> int:
    """Wall-clock time in milliseconds since the epoch: the one clock passed to the scripts."""
    return time.time_ns() // 1_000_000


def ttl_ms(heartbeat_s: float) -> int:
    """How long a worker heartbeating every heartbeat_s seconds counts as alive, in ms."""
    return round(heartbeat_s * TTL_HEARTBEATS * 1000)


#: TTL of workers with the default heartbeat.
TTL_MS = ttl_ms(HEARTBEAT_S)

#: Where `pycanary api` listens unless told otherwise: loopback, so a first try exposes nothing.
API_HOST = "127.0.0.1"
API_PORT = 8787
