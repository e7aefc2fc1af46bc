"""Operations every face shares (CLI, HTTP API, TUI, demo): parse-free, render-free.

Faces turn user text into arguments, call one function here and render what it returns; the
logic lives here and in the domain modules below it, once.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import defaults, queue_config, registry, validation
from .connection import Connection
from .drain import broker_backlogs
from .errors import (
    NoSuchQueueError,
    PayloadTooLargeError,
    ValidationError,
    WeightAboveMaxError,
)
from .keys import LANES, QueueKeys
from .producer import EnqueueResult, Producer
from .routing import sticky_bucket

#: Jobs per enqueue_many call when a face enqueues many, so progress can be reported.
ENQUEUE_CHUNK = 5_000
#: The largest count of one enqueue call from a face (a script or a loop goes further).
MAX_COUNT = 10_000_000
#: Fastest spread-out enqueue (jobs per second) a face accepts.
MAX_RATE = 1_000_000


def parse_payload(text: str | None, *, max_bytes: int | None = None) -> Any:
    """JSON text from a user -> payload; ``None`` means an empty object. Text longer than
    ``max_bytes`` characters is refused before it is parsed (a 1 GB argument costs nothing),
    and so is text that is not valid UTF-8 (a lone surrogate from a broken terminal)."""
    if text is None:
        return {}
    if max_bytes is not None and len(text) > max_bytes:
        raise PayloadTooLargeError(f"is {len(text)} characters, above the limit of {max_bytes} "
                                   "bytes", field="payload")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        raise ValidationError("is not valid UTF-8", field="payload")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(
            f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", field="payload"
        ) from None
    except RecursionError:
        raise ValidationError("nested too deeply", field="payload") from None


def check_enqueue_args(count: Any, rate: Any, *, max_count: int = MAX_COUNT) -> None:
    """The bounds of an enqueue request every face applies: ``count`` copies (1..max_count)
    and an optional ``rate`` in jobs per second (a finite number, 0.001..MAX_RATE)."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= max_count:
        raise ValidationError(f"must be 1-{max_count:,}, got {validation.quote(count)}",
                              field="count")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float)
                             or not math.isfinite(rate) or not 0.001 <= rate <= MAX_RATE):
        raise ValidationError(f"must be 0.001-{MAX_RATE:g}, got {rate!r}", field="rate")


@dataclass
class EnqueueSummary:
    queue: str
    enqueued: int = 0
    by_lane: dict[str, int] = field(default_factory=lambda: {"stable": 0, "canary": 0})
    jobs: list[EnqueueResult] = field(default_factory=list)

    def add(self, results: list[EnqueueResult], keep_jobs: int) -> None:
        """Count every result; keep at most ``keep_jobs`` of them in total."""
        self.enqueued += len(results)
        for r in results:
            self.by_lane[r.lane] += 1
        room = keep_jobs - len(self.jobs)
        if room > 0:
            self.jobs.extend(results[:room])

    def to_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "enqueued": self.enqueued,
            "lanes": dict(self.by_lane),
            "jobs": [{"job_id": j.job_id, "lane": j.lane} for j in self.jobs],
        }


def enqueue(
    conn: Connection,
    queue: str,
    payload: Any,
    *,
    job_id: str | None = None,
    sticky_key: str | None = None,
    tenant: str | None = None,
    count: int = 1,
    keep_jobs: int = 1000,
    progress: Callable[[int, int], None] | None = None,
    max_payload_bytes: int | None = None,
    rate: float | None = None,
) -> EnqueueSummary:
    """Enqueue ``count`` copies of a payload; ids of at most ``keep_jobs`` jobs are returned.
    With ``rate`` (jobs per second) the jobs are spread out, like a steady producer."""
    if rate is not None and not (isinstance(rate, int | float) and 0 < rate <= 1_000_000):
        raise ValidationError(f"must be a positive number of jobs per second, got {rate!r}",
                              field="rate")
    validation.queue_name(queue)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValidationError(f"must be a positive integer, got {count!r}", field="count")
    if job_id is not None and count > 1:
        raise ValidationError("cannot be given with --count above 1 (ids are unique)",
                              field="job_id")
    kwargs = {} if max_payload_bytes is None else {"max_payload_bytes": max_payload_bytes}
    producer = Producer(conn, **kwargs)
    summary = EnqueueSummary(queue)
    if count == 1 and rate is None:
        res = producer.enqueue(queue, payload, job_id=job_id, sticky_key=sticky_key,
                               tenant=tenant)
        summary.add([res], keep_jobs)
        return summary
    done = 0
    t0 = time.monotonic()
    while done < count:
        n = min(ENQUEUE_CHUNK, count - done)
        if rate is not None:
            due = int((time.monotonic() - t0) * rate) + 1 - done
            if due <= 0:
                time.sleep(min(0.1, 1 / rate))
                continue
            n = min(n, due)
        keys = None if sticky_key is None else [sticky_key] * n
        results = producer.enqueue_many(queue, [payload] * n, tenant=tenant, sticky_keys=keys)
        summary.add(results, keep_jobs)
        done += n
        if progress is not None:
            progress(done, count)
    return summary


def set_weight(
    conn: Connection, queue: str, percent: Any | None, *, tenant: str | None = None,
    actor: str | None = None,
) -> queue_config.WeightChange:
    """Set a queue's (or a tenant's) canary weight in percent; ``None`` clears a tenant's.

    With an active deployment the change goes through it and pauses its automatic progression
    (docs/design.md section 5), so the controller does not undo the operator's weight.
    ``actor`` names who did it in the deployment's event log (default: this CLI user)."""
    from . import rollouts

    bp = None if percent is None else validation.percent_to_bp(percent, "weight")
    validation.queue_name(queue)
    validation.tenant(tenant)
    if bp is None and tenant is None:
        raise ValidationError("a weight is required unless clearing a tenant override",
                              field="weight")
    before = queue_config.read_config(conn, queue)
    if bp is not None and bp > before.max_weight_bp:
        raise WeightAboveMaxError(
            f"{bp / 100:g}% is above the queue's max_weight of {before.max_weight_bp / 100:g}%",
            field="weight")
    if rollouts.set_weight_with_deployment(conn, queue, bp, tenant, actor=actor):
        prev = before.weight_bp if tenant is None else before.tenant_weights_bp.get(tenant)
        after = queue_config.read_config(conn, queue)
        return queue_config.WeightChange(queue, tenant, prev, bp, after.rev,
                                         paused_deployment=True)
    return queue_config.set_weight(conn, queue, bp, tenant=tenant)


def parse_tenant_pairs(items: list[str] | None) -> dict[str, str]:
    """``["acme=5", "internal=100"]`` (repeated ``--tenant T=PCT``) -> ``{tenant: percent}``;
    the percentages are checked by the function that uses them."""
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, pct = item.partition("=")
        if not sep or not name or not pct:
            raise ValidationError(f"must be TENANT=PCT, got {validation.quote(item)}",
                                  field="tenant")
        out[name] = pct
    return out


def set_tenant_weights(conn: Connection, queue: str, weights: dict[str, Any | None], *,
                       actor: str | None = None) -> list[queue_config.WeightChange]:
    """Set (or, for ``None``, clear) several tenants' overrides. Every tenant name and weight
    is checked, against the queue's max_weight too, before the first is written, so a bad
    entry changes nothing; then each goes through `set_weight` (one atomic script call each;
    a deployment in force pauses as for one)."""
    validation.queue_name(queue)
    if not weights:
        raise ValidationError("give at least one tenant", field="tenants")
    cfg = queue_config.read_config(conn, queue)
    for tenant, percent in weights.items():
        validation.tenant(tenant, "tenants")
        if percent is None:
            continue
        bp = validation.percent_to_bp(percent, f"tenants.{tenant}")
        if bp > cfg.max_weight_bp:
            raise WeightAboveMaxError(
                f"{bp / 100:g}% is above the queue's max_weight of {cfg.max_weight_bp / 100:g}%",
                field=f"tenants.{tenant}")
    return [set_weight(conn, queue, percent, tenant=tenant, actor=actor)
            for tenant, percent in weights.items()]


def configure_queue(
    conn: Connection,
    queue: str,
    *,
    max_weight: Any | None = None,
    stable_version: str | None = None,
    backend: str | None = None,
    sticky: bool | None = None,
    salt: str | None = None,
    enabled: bool | None = None,
    canary_version: str | None = None,
    max_backlog: int | str | None = None,
) -> queue_config.QueueConfig:
    bp = None if max_weight is None else validation.percent_to_bp(max_weight, "max_weight")
    return queue_config.configure(
        conn, queue, max_weight_bp=bp, stable_version=stable_version, backend=backend,
        sticky=sticky, salt=salt, enabled=enabled, canary_version=canary_version,
        max_backlog=queue_config.parse_max_backlog(max_backlog),
    )


def worker_class(conn: Connection, queues: list[str]) -> type:
    """Worker or StreamWorker, from the queues' backend (faces pick the engine through here)."""
    from .backends.stream_worker import worker_class as pick

    return pick(conn, [validation.queue_name(q) for q in queues])


def queue_info(conn: Connection, queue: str) -> dict[str, Any]:
    """Config, lane depths and routed counts of one queue."""
    cfg = queue_config.read_config(conn, queue)
    info = cfg.to_dict()
    info["depth"], info["routed"] = lanes_of(conn, queue)
    return info


def lanes_of(conn: Connection, queue: str) -> tuple[dict[str, int], dict[str, int]]:
    """({lane: depth}, {lane: jobs routed}) of one queue, in one round trip."""
    validation.queue_name(queue)
    pipe = conn.client.pipeline(transaction=False)
    read_lanes(pipe, conn.keys.queue(queue))
    pipe.hgetall(conn.keys.queue(queue).broker)
    replies = iter(pipe.execute())
    depth, routed = decode_lanes(replies)
    # a Celery or RQ queue (pycanary/integrations/): its jobs wait in the broker's lists
    for (_q, lane), n in broker_backlogs(conn, {queue: next(replies)}).items():
        depth[lane] += n
    return depth, routed


def read_lanes(pipe: Any, qk: QueueKeys) -> None:
    """Queue on a pipeline the reads of a queue's lane depths and routed counts: the one place
    that knows where they live (status, `queue show` and /metrics all go through it)."""
    for lane in LANES:
        pipe.llen(qk.lane(lane))
        pipe.xlen(qk.stream(lane))  # Streams backend: one of the two is always empty
    pipe.hgetall(qk.routed)


def decode_lanes(replies: Iterator[Any]) -> tuple[dict[str, int], dict[str, int]]:
    """({lane: depth}, {lane: jobs routed}) from the replies read_lanes queued, in order."""
    depth = {lane: int(next(replies)) + int(next(replies)) for lane in LANES}
    routed = next(replies)
    return depth, {lane: int(routed.get(lane, 0)) for lane in LANES}


def outstanding(conn: Connection, queue: str) -> dict[str, int]:
    """Jobs of one queue not finished yet: waiting in a lane, delayed (retry backoff), and in
    flight (fetched into a worker's processing list, found through the queue's
    processing_index). Zero everywhere means every job enqueued so far has an outcome: what
    `demo` waits for before it counts, in one place that knows where those jobs live."""
    validation.queue_name(queue)
    qk = conn.keys.queue(queue)
    pipe = conn.client.pipeline(transaction=False)
    for lane in LANES:
        pipe.llen(qk.lane(lane))
    for lane in LANES:
        pipe.zcard(qk.delayed(lane))
    for lane in LANES:
        pipe.xlen(qk.stream(lane))  # Streams backend: waiting and in flight (acked = deleted)
    pipe.hkeys(qk.processing_index)
    *counts, workers = pipe.execute()
    pipe = conn.client.pipeline(transaction=False)
    for wid in workers:
        pipe.llen(qk.processing(wid))
    held = sum(int(n) for n in pipe.execute()) if workers else 0
    n = len(LANES)
    return {"waiting": sum(int(x) for x in counts[:n]) + sum(int(x) for x in counts[2 * n:]),
            "delayed": sum(int(x) for x in counts[n:2 * n]), "in_flight": held}


def require_queue(conn: Connection, queue: str) -> str:
    """Refuse a queue pycanary has never seen, naming the known ones: a read command on a typo
    should say so, not show an empty queue. Known: in the queue index, or with a config or a
    deployment hash (a queue configured by an older client)."""
    validation.queue_name(queue)
    qk = conn.keys.queue(queue)
    pipe = conn.client.pipeline(transaction=False)
    pipe.sismember(conn.keys.queues, queue)  # reads an operator's ACL allows (security.py)
    pipe.hgetall(qk.config)
    pipe.hget(qk.deployment, "id")
    pipe.llen(qk.history)
    if any(pipe.execute()):
        return queue
    known = queue_config.list_queues(conn)
    shown = ", ".join(known[:10]) + (f" and {len(known) - 10} more" if len(known) > 10 else "")
    raise NoSuchQueueError(f"no such queue {queue!r} (known: {shown or 'none yet'})",
                           field="queue")


def list_queues(conn: Connection) -> list[dict[str, Any]]:
    return [queue_info(conn, q) for q in queue_config.list_queues(conn)]


def explain_route(
    conn: Connection, queue: str, key: str, *, tenant: str | None = None
) -> dict[str, Any]:
    """Which lane a sticky key gets now, computed by the server script and by Python."""
    validation.queue_name(queue)
    validation.sticky_key(key, "key")
    validation.tenant(tenant)
    lane, weight, bucket, salt, mode = conn.scripts.call(
        "explain_route", conn.keys.queue(queue).config_keys(), (key, tenant or "", 0)
    )
    return {
        "queue": queue, "key": key, "tenant": tenant, "mode": mode, "salt": salt,
        "weight_bp": int(weight), "bucket": int(bucket),
        "bucket_python": sticky_bucket(key, salt),
        "lane": lane if mode == "sticky" else None,
    }


def list_workers(conn: Connection, *, queue: str | None = None,
                 heartbeat_s: float = defaults.HEARTBEAT_S) -> list[dict[str, Any]]:
    """Registered workers with their state (active, outdated, retiring, standby, dead)."""
    if queue is not None:
        validation.queue_name(queue)
    ttl_ms = defaults.ttl_ms(heartbeat_s)
    rows = [w.to_dict() for w in registry.list_workers(conn, ttl_ms=ttl_ms)]
    if queue is not None:
        rows = [w for w in rows if queue in w["queues"]]
    return rows


def parse_schemas(text: str | None) -> list[int] | None:
    """"1,2" -> [1, 2]; None or "any" -> None (every schema)."""
    if text is None or text.strip().lower() == "any":
        return None
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValidationError(f"must be a comma-separated list of integers, got {text!r}",
                              field="schemas") from None
    if not values or any(not 1 <= v <= 65535 for v in values):
        raise ValidationError(f"must list schema versions 1-65535, got {text!r}",
                              field="schemas")
    return values
