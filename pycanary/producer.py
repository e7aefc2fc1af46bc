"""Producers: build a job envelope, route it with one script call, learn which lane it took."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

from . import validation
from .connection import Connection
from .errors import PayloadTooLargeError, ValidationError
from .ids import uuid7, uuid7_many
from .job import encode_json, render_envelope
from .routing import StickyHasher

DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
#: Jobs per route_enqueue_many call; bounded so no script call runs long.
DEFAULT_BATCH_SIZE = 100
#: Batches per pipeline round trip in enqueue_many.
BATCHES_PER_ROUND_TRIP = 20
MAX_BATCH_SIZE = 1000

_LANE_CODE = {"s": "stable", "c": "canary"}
_encode_json = encode_json


class EnqueueResult(NamedTuple):
    job_id: str
    lane: str
    queue: str
    #: The weight (basis points) the script used to decide; 0 means routing was off.
    weight_bp: int


def _check_schema(schema: int) -> int:
    if isinstance(schema, bool) or not isinstance(schema, int) or not 1 <= schema <= 65535:
        raise ValidationError(f"must be an integer 1-65535, got {schema!r}", field="schema")
    return schema


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
        # queue -> weight the script last reported for untagged jobs: at 0 (no canary, the
        # usual case) the sticky bucket is not needed; if the weight rose meanwhile the script
        # computes it itself and reports the new weight.
        self._weights: dict[str, int] = {}
        self._queues: dict[str, list[str]] = {}  # validated and registered -> routing KEYS
        self._hasher = StickyHasher()

    def _queue_keys(self, queue: str) -> list[str]:
        """Validate a queue name once, register it in the queue index, return its KEYS."""
        keys = self._queues.get(queue)
        if keys is None:
            validation.queue_name(queue)
            self.conn.client.sadd(self.conn.keys.queues, queue)
            keys = self._queues[queue] = self.conn.keys.queue(queue).routing()
        return keys

    def _payload_json(self, payload: Any, field: str) -> str:
        try:
            return _encode_json(payload)
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"must be JSON-serialisable: {exc}", field=field) from None

    def _check_size(self, raw: str, field: str) -> None:
        limit = self.max_payload_bytes
        if len(raw) * 4 > limit and len(raw.encode()) > limit:  # UTF-8: <= 4 bytes a char
            raise PayloadTooLargeError(
                f"job envelope is {len(raw.encode())} bytes, above the limit of {limit}",
                field=field,
            )

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
        if tenant is not None:
            validation.tenant(tenant)
        if schema != 1:
            _check_schema(schema)
        if job_id is None:
            now = self._clock_ms()
            jid = uuid7(now)
            id_json = f'"{jid}"'
        else:
            jid = validation.job_id(job_id)
            now = self._clock_ms()
            id_json = _encode_json(jid)
        if sticky_key is None:
            key, sticky_json = jid, "null"
        else:
            key = validation.sticky_key(sticky_key)
            sticky_json = _encode_json(key)
        keys = self._queue_keys(queue)
        raw = render_envelope(id_json, queue, self._payload_json(payload, "payload"),
                              sticky_json, tenant, 0, now, schema)
        self._check_size(raw, "payload")
        salt = self._salts.get(queue, "")
        skip = tenant is None and self._weights.get(queue) == 0
        lane, weight, salt_now, _n = self.conn.scripts.call(
            "route_enqueue",
            keys,
            (raw, key, tenant or "", self._rng.randrange(10_000),
             "" if skip else self._hasher.bucket(key, salt), salt),
        )
        if salt_now != salt:
            self._salts[queue] = salt_now
        if tenant is None:
            self._weights[queue] = weight
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

        Every job is validated and encoded before anything is sent, so a bad payload enqueues
        nothing. Each batch is atomic; batches are not atomic with each other.
        """
        validation.tenant(tenant)
        _check_schema(schema)
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise ValidationError(f"must be 1-{MAX_BATCH_SIZE}, got {batch_size}",
                                  field="batch_size")
        payloads = list(payloads)
        if sticky_keys is not None and len(sticky_keys) != len(payloads):
            raise ValidationError("must have one key per payload", field="sticky_keys")
        keys = self._queue_keys(queue)
        now = self._clock_ms()
        tenant_arg = tenant or ""
        salt = self._salts.get(queue, "")
        randrange = self._rng.randrange
        skip = tenant is None and self._weights.get(queue) == 0
        bucket = (lambda _k, _s: "") if skip else self._hasher.bucket
        ids = uuid7_many(len(payloads), now)
        args: list[Any] = []
        for i, payload in enumerate(payloads):
            jid = ids[i]
            if sticky_keys is None:
                key, sticky_json = jid, "null"
            else:
                key = validation.sticky_key(sticky_keys[i], f"sticky_keys[{i}]")
                sticky_json = _encode_json(key)
            raw = render_envelope(f'"{jid}"', queue, self._payload_json(payload, f"payloads[{i}]"),
                                  sticky_json, tenant, 0, now, schema)
            self._check_size(raw, f"payloads[{i}]")
            args.extend((raw, key, tenant_arg, randrange(10_000), bucket(key, salt)))

        results: list[EnqueueResult] = []
        step = batch_size * 5
        pipe = self.conn.scripts.pipeline()
        starts: list[int] = []

        def flush() -> None:
            for start, (lanes, weight, salt_now) in zip(starts, pipe.execute(), strict=True):
                self._salts[queue] = salt_now
                weight = int(weight)
                if tenant is None:
                    self._weights[queue] = weight
                results.extend(
                    EnqueueResult(ids[start + j], _LANE_CODE[code], queue, weight)
                    for j, code in enumerate(lanes)
                )
            starts.clear()

        for start in range(0, len(args), step):
            pipe.call("route_enqueue_many", keys, [salt, *args[start : start + step]])
            starts.append(start // 5)
            if len(pipe) >= BATCHES_PER_ROUND_TRIP:
                flush()
        flush()
        return results
