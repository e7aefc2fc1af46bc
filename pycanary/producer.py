"""Producers: build a job envelope, route it with one script call, learn which lane it took."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from . import validation
from .connection import Connection
from .errors import PayloadTooLargeError, ValidationError
from .ids import uuid7
from .routing import sticky_bucket

#: Envelope format version (how the envelope itself is laid out).
ENVELOPE_FORMAT = 1
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
#: Jobs per route_enqueue_many call; bounded so no script call runs long.
DEFAULT_BATCH_SIZE = 100
#: Batches per pipeline round trip in enqueue_many.
BATCHES_PER_ROUND_TRIP = 20
MAX_BATCH_SIZE = 1000

_LANE_CODE = {"s": "stable", "c": "canary"}


@dataclass(frozen=True)
class EnqueueResult:
    job_id: str
    lane: str
    queue: str
    #: The weight (basis points) the script used to decide; 0 means routing was off.
    weight_bp: int


@dataclass(frozen=True)
class Job:
    """The envelope pushed onto a lane; what a worker receives."""

    id: str
    queue: str
    payload: Any
    tenant: str | None
    sticky_key: str | None
    attempts: int
    enqueued_at: int
    schema: int = 1
    format: int = ENVELOPE_FORMAT

    def encode(self) -> str:
        return json.dumps(
            {
                "v": self.format,
                "id": self.id,
                "queue": self.queue,
                "payload": self.payload,
                "tenant": self.tenant,
                "sticky_key": self.sticky_key,
                "attempts": self.attempts,
                "enqueued_at": self.enqueued_at,
                "schema": self.schema,
            },
            separators=(",", ":"),
            ensure_ascii=False,
        )

    @classmethod
    def decode(cls, raw: str | bytes) -> Job:
        d = json.loads(raw)
        return cls(
            id=d["id"],
            queue=d["queue"],
            payload=d.get("payload"),
            tenant=d.get("tenant"),
            sticky_key=d.get("sticky_key"),
            attempts=int(d.get("attempts", 0)),
            enqueued_at=int(d["enqueued_at"]),
            schema=int(d.get("schema", 1)),
            format=int(d.get("v", ENVELOPE_FORMAT)),
        )


class Producer:
    """Enqueues jobs; the lane is decided server side by ``route_enqueue``.

    The producer remembers the salt each queue last reported, and sends the sticky bucket it
    computed with it; the script recomputes when the salt changed, so a stale cache costs a
    little server time and never a wrong lane.
    """

    def __init__(
        self,
        conn: Connection,
        *,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        rng: random.Random | None = None,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        if max_payload_bytes <= 0:
            raise ValidationError("must be positive", field="max_payload_bytes")
        self.conn = conn
        self.max_payload_bytes = max_payload_bytes
        self._rng = rng or random.Random()
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._salts: dict[str, str] = {}
        self._registered: set[str] = set()

    # -- building ---------------------------------------------------------------------------
    def _envelope(
        self,
        queue: str,
        payload: Any,
        job_id: str | None,
        sticky_key: str | None,
        tenant: str | None,
        schema: int,
        now_ms: int,
    ) -> tuple[str, str, str]:
        """Validate and encode one job; returns (envelope, job id, sticky key used)."""
        jid = uuid7(now_ms) if job_id is None else validation.job_id(job_id)
        key = jid if sticky_key is None else validation.sticky_key(sticky_key)
        job = Job(jid, queue, payload, tenant, sticky_key, 0, now_ms, schema)
        try:
            raw = job.encode()
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"must be JSON-serialisable: {exc}", field="payload") from None
        size = len(raw.encode()) if len(raw) * 4 > self.max_payload_bytes else len(raw)
        if size > self.max_payload_bytes:
            raise PayloadTooLargeError(
                f"job envelope is {size} bytes, above the limit of {self.max_payload_bytes}",
                field="payload",
            )
        return raw, jid, key

    def _route_args(self, queue: str, sticky: str) -> tuple[int, int, str]:
        salt = self._salts.get(queue, "")
        return self._rng.randrange(10_000), sticky_bucket(sticky, salt), salt

    def _register(self, queue: str) -> None:
        if queue not in self._registered:
            self.conn.client.sadd(self.conn.keys.queues, queue)
            self._registered.add(queue)

    @staticmethod
    def _check_schema(schema: int) -> int:
        if isinstance(schema, bool) or not isinstance(schema, int) or not 1 <= schema <= 65535:
            raise ValidationError(f"must be an integer 1-65535, got {schema!r}", field="schema")
        return schema

    # -- enqueueing -------------------------------------------------------------------------
    def enqueue(
        self,
        queue: str,
        payload: Any = None,
        *,
        job_id: str | None = None,
        sticky_key: str | None = None,
        tenant: str | None = None,
        schema: int = 1,
    ) -> EnqueueResult:
        """Route and push one job in one EVALSHA."""
        validation.queue_name(queue)
        validation.tenant(tenant)
        self._check_schema(schema)
        now = self._clock_ms()
        raw, jid, key = self._envelope(queue, payload, job_id, sticky_key, tenant, schema, now)
        self._register(queue)
        draw, bucket, salt = self._route_args(queue, key)
        lane, weight, salt_now, _n = self.conn.scripts.call(
            "route_enqueue",
            self.conn.keys.queue(queue).routing(),
            (raw, key, tenant or "", draw, bucket, salt),
        )
        self._salts[queue] = salt_now
        return EnqueueResult(jid, lane, queue, int(weight))

    def enqueue_many(
        self,
        queue: str,
        payloads: Iterable[Any],
        *,
        tenant: str | None = None,
        sticky_keys: Sequence[str] | None = None,
        schema: int = 1,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> list[EnqueueResult]:
        """Route and push many jobs: one script call per batch, many batches per round trip.

        Every job is validated before anything is sent, so a bad payload enqueues nothing.
        """
        validation.queue_name(queue)
        validation.tenant(tenant)
        self._check_schema(schema)
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise ValidationError(f"must be 1-{MAX_BATCH_SIZE}, got {batch_size}",
                                  field="batch_size")
        payloads = list(payloads)
        if sticky_keys is not None and len(sticky_keys) != len(payloads):
            raise ValidationError("must have one key per payload", field="sticky_keys")
        now = self._clock_ms()
        tenant_arg = tenant or ""
        salt = self._salts.get(queue, "")
        randrange = self._rng.randrange
        jobs: list[tuple[str, str]] = []
        args: list[Any] = []
        for i, payload in enumerate(payloads):
            sk = None if sticky_keys is None else sticky_keys[i]
            try:
                raw, jid, key = self._envelope(queue, payload, None, sk, tenant, schema, now)
            except ValidationError as exc:
                exc.field = f"payloads[{i}]" + ("" if exc.field == "payload" else f".{exc.field}")
                raise
            jobs.append((jid, raw))
            args.extend((raw, key, tenant_arg, randrange(10_000), sticky_bucket(key, salt)))
        self._register(queue)
        keys = self.conn.keys.queue(queue).routing()
        results: list[EnqueueResult] = []
        step = batch_size * 5
        pipe = self.conn.scripts.pipeline()
        starts: list[int] = []

        def flush() -> None:
            for start, (lanes, weight, salt_now) in zip(starts, pipe.execute(), strict=True):
                self._salts[queue] = salt_now
                for j, code in enumerate(lanes):
                    results.append(
                        EnqueueResult(jobs[start + j][0], _LANE_CODE[code], queue, int(weight))
                    )
            starts.clear()

        for start in range(0, len(args), step):
            pipe.call("route_enqueue_many", keys, [salt, *args[start : start + step]])
            starts.append(start // 5)
            if len(pipe) >= BATCHES_PER_ROUND_TRIP:
                flush()
        flush()
        return results
