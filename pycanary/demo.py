"""`pycanary demo`: the routing story on the embedded default (memory://).

Until the worker and controller pieces land this shows the first capability: a sticky 10%
canary on `payments`, 10,000 jobs routed by the real Lua script, and the split they took.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

from . import service
from .connection import connect


def routing_demo(url: str = "memory://demo", *, jobs: int = 10_000, weight: Any = "10") -> dict:
    prefix = f"pycanary-demo-{uuid.uuid4().hex[:8]}"
    conn = connect(url, prefix=prefix)
    conn.ping()
    queue = "payments"
    try:
        change = service.set_weight(conn, queue, weight)
        t0 = time.perf_counter()
        summary = service.enqueue(conn, queue, {"amount": 10}, count=jobs, keep_jobs=0)
        elapsed = time.perf_counter() - t0
        info = service.queue_info(conn, queue)
    finally:
        keys = [*conn.keys.queue(queue).all(), conn.keys.queues]
        conn.client.delete(*keys)
    p = change.weight_bp / 10_000
    canary = summary.by_lane["canary"]
    sigma = math.sqrt(jobs * p * (1 - p)) if 0 < p < 1 else 0.0
    z = (canary - jobs * p) / sigma if sigma else 0.0
    text = "\n".join([
        f"pycanary routing demo on {url} (real Lua route_enqueue script)",
        f"queue {queue}: sticky routing, canary weight {change.weight_bp / 100:g}%",
        f"enqueued {jobs:,} jobs in {elapsed:.2f}s ({jobs / elapsed:,.0f} jobs/s)",
        f"  stable lane  {summary.by_lane['stable']:>7,}  ({summary.by_lane['stable'] / jobs:.2%})",
        f"  canary lane  {canary:>7,}  ({canary / jobs:.2%})",
        f"expected canary {jobs * p:,.0f} ± {sigma:,.0f} (1 sigma); observed z = {z:+.2f}",
        f"lane depths: stable {info['depth']['stable']:,}, canary {info['depth']['canary']:,}",
    ])
    return {
        "url": url, "queue": queue, "jobs": jobs, "weight_percent": change.weight_bp / 100,
        "lanes": summary.by_lane, "seconds": elapsed, "z": z, "text": text,
    }
