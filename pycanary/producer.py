"""Producers: build a job envelope, route it with one script call, learn which lane it took."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

from . import defaults, validation
from .backends import streams as streams_backend
from .connection import Connection
from .errors import (
    EnqueueTimeoutError,
    PartialEnqueueError,
    PayloadTooLargeError,
    PycanaryError,
    QueueUnavailableError,
    ValidationError,
    map_redis_error,
)
from .ids import uuid7, uuid7_many
from .job import MAX_NESTING, check_nesting, encode_payload, render_envelope
from .routing import StickyHasher
from .scripts import BoundScript, Scripts

DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
#: Jobs per route_enqueue_many call; bounded so no script call runs long.
DEFAULT_BATCH_SIZE = 100
#: Batches per pipeline round trip in enqueue_many.
BATCHES_PER_ROUND_TRIP = 20
MAX_BATCH_SIZE = 1000
#: How long a job id's (or a batch's) idempotency record is kept: retries within it are safe.
DEFAULT_IDEMPOTENCY_TTL_S = 600.0
MAX_RETRIES = 20

_LANE_CODE = {"s": "stable", "c": "canary"}
_encode_json = encode_payload  # payloads: the fast encoder, same text


class EnqueueResult(NamedTuple):
    job_id: str
    lane: str
    queue: str
    #: The weight (basis points) the script used to decide; 0 means routing was off.
    weight_bp: int


def _check_schema(schema: int) -> int:
    if isinstance(schema, bool) or not isinstance(schema, int) or not 1 <= schema <= 65535:
        raise ValidationError(f"must be an integer 1-65535, got {validation.quote(schema)}",
                              field="schema")
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
        max_payload_bytes: int | None = None,
        retries: int = 0,
        retry_backoff_s: float = 0.05,
        idempotency_ttl_s: float = DEFAULT_IDEMPOTENCY_TTL_S,
        rng: random.Random | None = None,
        clock_ms: Callable[[], int] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_payload_bytes is None:
            # PYCANARY_MAX_PAYLOAD_BYTES (settings.py) is the default of every producer
            from .settings import Settings

            max_payload_bytes = Settings().max_payload_bytes
        if isinstance(max_payload_bytes, bool) or max_payload_bytes <= 0:
            raise ValidationError("must be positive", field="max_payload_bytes")
        if isinstance(retries, bool) or not isinstance(retries, int) or not \
                0 <= retries <= MAX_RETRIES:
            raise ValidationError(f"must be an integer 0-{MAX_RETRIES}", field="retries")
        if not 0 <= retry_backoff_s <= 60:
            raise ValidationError("must be 0-60 seconds", field="retry_backoff_s")
        if not 1 <= idempotency_ttl_s <= 86_400:
            raise ValidationError("must be 1-86400 seconds", field="idempotency_ttl_s")
        self.conn = conn
        self.max_payload_bytes = max_payload_bytes
        self.retries = retries
        self.retry_backoff_s = retry_backoff_s
        self._idem_ttl_ms = int(idempotency_ttl_s * 1000)
        self._sleep = sleep
        self.client, self.scripts = self._own_client(conn)
        self._rng = rng or random.Random()
        # the routing draw: randrange(10000) is _randbelow(10000) plus argument checks; call the
        # latter directly (same numbers from the same seed) unless randrange is overridden
        self._draw: Callable[[int], int] = self._rng.randrange
        if type(self._rng).randrange is random.Random.randrange and \
                hasattr(self._rng, "_randbelow"):
            self._draw = self._rng._randbelow
        self._clock_ms = clock_ms or defaults.now_ms
        self._salts: dict[str, str] = {}
        # queue -> weight the script last reported for untagged jobs: at 0 (no canary, the
        # usual case) the sticky bucket is not needed; if the weight rose meanwhile the script
        # computes it itself and reports the new weight.
        self._weights: dict[str, int] = {}
        self._queues: dict[str, list[str]] = {}  # validated and registered -> routing KEYS
        self._streams: dict[str, bool] = {}  # queue -> uses the Streams backend
        # queue -> route_enqueue with the queue's KEYS bound (EVALSHA head built once), for
        # jobs without an idempotency record; only on the real registry (a stand-in that
        # records calls, as bench/route_latency.py's, sees every call through .call)
        self._routes: dict[str, Callable[..., Any]] = {}
        self._bind = type(self.scripts) is Scripts
        self._hasher = StickyHasher()

    @staticmethod
    def _own_client(conn: Connection) -> tuple[Any, Scripts]:
        """A client sharing the connection's settings but with redis-py's own retries off.

        redis-py (8.x) re-sends a command up to 10 times after a timeout or a dropped
        connection. For EVALSHA route_enqueue that re-send pushes the job again when the first
        one had landed: the producer retries itself, only when its idempotency record makes a
        re-send safe. (The cluster client and the embedded server keep the shared client.)
        """
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client = conn.client
        pool = getattr(client, "connection_pool", None)
        if conn.is_memory or conn.is_cluster or not isinstance(client, redis.Redis) or \
                pool is None or type(conn.scripts) is not Scripts:  # a test/bench stand-in
            return client, conn.scripts
        kwargs = dict(pool.connection_kwargs)
        kwargs["retry"] = Retry(NoBackoff(), 0)
        own = redis.Redis(connection_pool=pool.__class__(
            connection_class=pool.connection_class, max_connections=pool.max_connections,
            **kwargs))
        return own, Scripts(own)

    def close(self) -> None:
        """Release the producer's own connections (not the shared client's). Its client was
        given its pool, so ``close`` alone would leave the pool's sockets open (redis-py closes
        only a pool it made): the pool is disconnected too, with the connection a bound
        route_enqueue keeps checked out."""
        if self.client is not self.conn.client:
            self.client.close()
            self.client.connection_pool.disconnect()

    def _queue_keys(self, queue: str) -> list[str]:
        """Validate a queue name once, register it in the queue index, return its KEYS."""
        keys = self._queues.get(queue)
        if keys is None:
            validation.queue_name(queue)
            try:
                self._with_retries(lambda: self.client.sadd(self.conn.keys.queues, queue),
                                   [], idempotent=True)
            except EnqueueTimeoutError as exc:  # before any job was sent: nothing landed
                raise QueueUnavailableError(f"Redis did not answer; nothing enqueued: {exc}") \
                    from None
            keys = self._queues[queue] = self.conn.keys.queue(queue).routing()
            # the backend is chosen before first use (set_backend refuses a change once the
            # queue holds jobs), so it is read once per queue and process
            self._streams[queue] = self._with_retries(
                lambda: self.client.hget(self.conn.keys.queue(queue).config, "backend"),
                [], idempotent=True) == "streams"
        return keys

    def _route(self, queue: str, keys: list[str]) -> Callable[..., Any]:
        """route_enqueue for the queue's jobs without an idempotency record."""
        if not self._bind:
            return lambda *args: self.scripts.call("route_enqueue", keys, args)
        route: BoundScript = self.scripts.bound("route_enqueue", keys)
        self._routes[queue] = route
        return route

    def _with_retries(self, send: Callable[[], Any], job_ids: list[str], *,
                      idempotent: bool) -> Any:
        """Run one send; map redis-py errors (errors.map_redis_error); retry with exponential
        backoff what is safe to repeat: a call that never reached Redis, or one whose
        idempotency record makes a repeat return the first outcome."""
        attempt = 0
        while True:
            try:
                return send()
            except PycanaryError:
                raise
            except Exception as exc:  # redis-py's errors, mapped in one place
                err = map_redis_error(exc, job_ids=job_ids)
            safe = isinstance(err, QueueUnavailableError) or (
                idempotent and isinstance(err, EnqueueTimeoutError))
            if not safe or attempt >= self.retries:
                raise err from None
            self._sleep(self.retry_backoff_s * (2 ** attempt))
            attempt += 1

    def _payload_json(self, payload: Any, field: str) -> str:
        try:
            text = _encode_json(payload)
        except RecursionError:
            raise ValidationError(f"nesting deeper than {MAX_NESTING - 1} levels",
                                  field=field) from None
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"must be JSON-serialisable: {exc}", field=field) from None
        try:
            check_nesting(text, MAX_NESTING - 1)
        except ValueError as exc:
            raise ValidationError(str(exc), field=field) from None
        return text

    def _checked(self, raw: str, field: str) -> str:
        """The envelope, checked to be sendable as UTF-8 and within the size limit.

        Checking here (not in redis-py while sending) means a payload that cannot be sent, such
        as a string with a lone surrogate, is refused before anything of its batch is sent.
        ASCII text (the usual case) needs no trial encoding: its length is its size.
        """
        limit = self.max_payload_bytes
        if raw.isascii():
            size = len(raw)
        else:
            try:
                size = len(raw.encode())
            except UnicodeEncodeError as exc:
                raise ValidationError(f"is not valid Unicode text ({exc.reason} at character "
                                      f"{exc.start} of the envelope)", field=field) from None
        if size > limit:
            raise PayloadTooLargeError(
                f"job envelope is {size} bytes, above the limit of {limit}", field=field)
        return raw

    def _confirm_landed(self, round_: list[tuple[int, list[str], list[Any]]], ids: list[str],
                        queue: str, results: list[EnqueueResult]) -> None:
        """After a lost reply, read the round's batch records once: a batch whose record
        exists has landed (its lanes are the record). A missing record proves nothing (the
        command may still be queued on the dropped connection), so those stay unknown."""
        try:  # one MGET: the records share the queue's hash tag, so one slot even in a cluster
            records = self.client.mget([bkeys[-1] for _first, bkeys, _a in round_])
        except Exception:  # still unreachable: the outcome stays unknown
            return
        weight = self._weights.get(queue, 0)
        for (first, _k, _a), lanes in zip(round_, records, strict=True):
            if lanes:
                results.extend(EnqueueResult(ids[first + j], _LANE_CODE[code], queue, weight)
                               for j, code in enumerate(lanes))

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
        raw = render_envelope(id_json, queue, self._payload_json(payload, "payload"),
                              sticky_json, tenant, 0, now, schema)
        data = self._checked(raw, "payload")
        keys = self._queue_keys(queue)
        salt = self._salts.get(queue, "")
        skip = tenant is None and self._weights.get(queue) == 0
        args: tuple[Any, ...] = (data, key, tenant or "", self._draw(10_000),
                                 "" if skip else self._hasher.bucket(key, salt), salt)
        # An idempotency record only when a repeat can happen: the caller chose the id (it may
        # enqueue it again) or this producer retries.
        idem = job_id is not None or self.retries > 0
        if idem:
            keys = [*keys, self.conn.keys.queue(queue).idem(jid)]
            args = (*args, self._idem_ttl_ms)
        streams = self._streams.get(queue)
        if idem or streams:
            script = "route_enqueue"
            if streams:  # Streams backend: the same contract, XADD to a stream
                script, args = "route_xadd", tuple(streams_backend.route_args(
                    args[:6], args[6] if idem else None))
                keys = [*self.conn.keys.queue(queue).stream_routing(), *keys[5:]]
            call_keys = keys
            reply = self._with_retries(
                lambda: self.scripts.call(script, call_keys, args), [jid], idempotent=idem)
        else:
            # no record, so this producer does not retry (retries > 0 implies a record): one
            # send, its error mapped as _with_retries maps it, without its closure per job
            route = self._routes.get(queue) or self._route(queue, keys)
            try:
                reply = route(*args)
            except PycanaryError:
                raise
            except Exception as exc:  # redis-py's errors, mapped in one place
                raise map_redis_error(exc, job_ids=[jid]) from None
        lane, weight, salt_now = reply[0], reply[1], reply[2]
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
        job_ids: Sequence[str] | None = None,
    ) -> list[EnqueueResult]:
        """Route and push many jobs: one script call per batch, many batches per round trip.

        Every job is validated and encoded before anything is sent, so a bad payload enqueues
        nothing. Each batch is atomic; batches are not atomic with each other: if Redis goes
        away part way, PartialEnqueueError lists the ids that landed, were not sent, or are
        unknown. ``job_ids`` (optional, one per payload) lets a caller send such ids again:
        a batch with the same first id and size as one that landed is recognised by its
        idempotency record and not pushed twice.
        """
        validation.tenant(tenant)
        _check_schema(schema)
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise ValidationError(f"must be 1-{MAX_BATCH_SIZE}, got {batch_size}",
                                  field="batch_size")
        payloads = list(payloads)
        if sticky_keys is not None and len(sticky_keys) != len(payloads):
            raise ValidationError("must have one key per payload", field="sticky_keys")

        now = self._clock_ms()
        tenant_arg = tenant or ""
        salt = self._salts.get(queue, "")
        randrange = self._draw
        skip = tenant is None and self._weights.get(queue) == 0
        bucket = (lambda _k, _s: "") if skip else self._hasher.bucket
        if job_ids is None:
            ids = uuid7_many(len(payloads), now)
            id_jsons = None
        else:
            if len(job_ids) != len(payloads):
                raise ValidationError("must have one id per payload", field="job_ids")
            ids = [validation.job_id(j, f"jobs[{i}].job_id") for i, j in enumerate(job_ids)]
            if len(set(ids)) != len(ids):
                raise ValidationError("must be unique", field="job_ids")
            id_jsons = [_encode_json(j) for j in ids]
        args: list[Any] = []
        for i, payload in enumerate(payloads):
            jid = ids[i]
            if sticky_keys is None:
                key, sticky_json = jid, "null"
            else:
                key = validation.sticky_key(sticky_keys[i], f"jobs[{i}].sticky_key")
                sticky_json = _encode_json(key)
            raw = render_envelope(f'"{jid}"' if id_jsons is None else id_jsons[i], queue,
                                  self._payload_json(payload, f"jobs[{i}].payload"),
                                  sticky_json, tenant, 0, now, schema)
            args.extend((self._checked(raw, f"jobs[{i}].payload"), key, tenant_arg,
                         randrange(10_000), bucket(key, salt)))
        keys = self._queue_keys(queue)
        qk = self.conn.keys.queue(queue)
        ttl = self._idem_ttl_ms
        script = "route_enqueue_many"
        if self._streams.get(queue):  # Streams backend: same ARGV and replies, XADD per job
            script, keys = "route_xadd_many", qk.stream_routing()

        # Every batch carries an idempotency record (one SET per batch, keyed by its first job
        # id): a batch re-sent after a lost reply returns its first lanes, so what landed is
        # always known exactly and a retry never pushes a job twice.
        results: list[EnqueueResult] = []
        step = batch_size * 5
        batches = [(start // 5, [*keys, qk.idem(ids[start // 5])],
                    [salt, ttl, *args[start : start + step]])
                   for start in range(0, len(args), step)]
        n_batches = len(batches)

        def send(round_: list[tuple[int, list[str], list[Any]]]) -> list[Any]:
            pipe = self.scripts.pipeline()
            for _first, bkeys, bargs in round_:
                pipe.call(script, bkeys, bargs)
            return pipe.execute(raise_on_error=False)

        for r0 in range(0, n_batches, BATCHES_PER_ROUND_TRIP):
            round_ = batches[r0 : r0 + BATCHES_PER_ROUND_TRIP]
            round_ids = [jid for first, _k, a in round_
                         for jid in ids[first : first + (len(a) - 2) // 5]]
            later = ids[(round_[-1][0] + (len(round_[-1][2]) - 2) // 5):]
            try:
                replies = self._with_retries(lambda r=round_: send(r), round_ids,
                                             idempotent=True)
            except PycanaryError as exc:
                sent = not isinstance(exc, QueueUnavailableError)
                if not results and (not sent or not later):
                    raise
                if sent:
                    self._confirm_landed(round_, ids, queue, results)
                    done = {r.job_id for r in results}
                    round_ids = [jid for jid in round_ids if jid not in done]
                raise PartialEnqueueError(
                    f"enqueue_many stopped after {len(results)} of {len(ids)} jobs: {exc}",
                    landed_ids=[r.job_id for r in results],
                    not_sent_ids=later if sent else round_ids + later,
                    unknown_ids=round_ids if sent else [], cause=exc) from None
            failed: PycanaryError | None = None
            refused: list[str] = []
            for (first, _k, bargs), reply in zip(round_, replies, strict=True):
                n = (len(bargs) - 2) // 5
                if isinstance(reply, Exception):
                    failed = failed or map_redis_error(reply, job_ids=ids[first : first + n],
                                                       script="route_enqueue_many")
                    refused += ids[first : first + n]
                    continue
                lanes, weight, salt_now = reply[0], int(reply[1]), reply[2]
                self._salts[queue] = salt_now
                if tenant is None:
                    self._weights[queue] = weight
                results.extend(EnqueueResult(ids[first + j], _LANE_CODE[code], queue, weight)
                               for j, code in enumerate(lanes))
            if failed is not None:
                if not results:
                    raise failed
                raise PartialEnqueueError(
                    f"enqueue_many stopped after {len(results)} of {len(ids)} jobs: {failed}",
                    landed_ids=[r.job_id for r in results], not_sent_ids=refused + later,
                    unknown_ids=[], cause=failed)
        return results
