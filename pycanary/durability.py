"""Opt-in `WAIT` after an enqueue: the job is on ``replicas`` replicas before the call returns.

Redis replication is asynchronous: a primary killed right after acknowledging an enqueue can
take the job with it (docs/reliability.md). ``WAIT numreplicas timeout`` blocks until the
writes made *on the same connection* reached that many replicas. So each node gets its own
single-connection client, the enqueue and the WAIT go down it, and in cluster mode that node is
the one owning the queue's slot.

This wraps `Producer` without changing it: one inner Producer per node, built on that node's
single-connection client. The queue is registered in the global queue index (a key of another
slot) through the outer producer's own connection first.
"""

from __future__ import annotations

import threading
from typing import Any

import redis

from .connection import Connection
from .errors import ValidationError
from .producer import EnqueueResult, Producer


class NotReplicatedError(Exception):
    """The primary accepted the job but fewer replicas than asked confirmed it in time:
    durability against a failover is unknown (the job is not lost yet, and may still be)."""

    def __init__(self, result: EnqueueResult, replicas: int, wanted: int) -> None:
        super().__init__(f"job {result.job_id} on {replicas} of {wanted} replicas")
        self.result, self.replicas, self.wanted = result, replicas, wanted


class DurableProducer:
    """``DurableProducer(conn, wait_replicas=1, wait_timeout_ms=100).enqueue(queue, payload)``.

    Raises `NotReplicatedError` when WAIT counts fewer than ``wait_replicas`` replicas. A
    connection error is passed through: the outcome is unknown, retry with the same job_id.
    """

    def __init__(self, conn: Connection, *, wait_replicas: int = 1,
                 wait_timeout_ms: int = 100, **producer_kwargs: Any) -> None:
        if conn.is_memory:
            raise ValidationError("WAIT needs a real Redis with replicas, not memory://",
                                  field="redis_url")
        if wait_replicas < 1:
            raise ValidationError(f"must be at least 1, got {wait_replicas}",
                                  field="wait_replicas")
        if wait_timeout_ms < 0:
            raise ValidationError(f"must be >= 0, got {wait_timeout_ms}",
                                  field="wait_timeout_ms")
        self.conn = conn
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._kwargs = producer_kwargs
        self._outer = Producer(conn, **producer_kwargs)
        self._inner: dict[tuple[str, int], tuple[Any, Producer]] = {}
        self._lock = threading.Lock()

    def _producer_for(self, queue: str) -> tuple[Any, Producer]:
        """(single-connection client, Producer on it) for the node owning the queue's slot."""
        keys = self._outer._queue_keys(queue)  # validates, registers in the queue index
        if self.conn.is_cluster:
            node = self.conn.client.get_node_from_key(keys[0])
            where = (node.host, int(node.port))
            make = lambda: redis.Redis(host=node.host, port=node.port,  # noqa: E731
                                       decode_responses=True, single_connection_client=True)
        else:
            where = ("", 0)
            pool = self.conn.client.connection_pool
            make = lambda: redis.Redis(  # noqa: E731 - same server, own single connection
                connection_pool=redis.ConnectionPool(connection_class=pool.connection_class,
                                                     **pool.connection_kwargs),
                single_connection_client=True)
        with self._lock:
            found = self._inner.get(where)
            if found is None:
                client = make()
                inner = Producer(Connection(self.conn.url, client, self.conn.keys,
                                            is_cluster=False), **self._kwargs)
                found = self._inner[where] = (client, inner)
        found[1]._queues.setdefault(queue, keys)  # already registered by the outer producer
        return found

    def enqueue(self, queue: str, payload: Any = None, **kwargs: Any) -> EnqueueResult:
        """`Producer.enqueue`, then WAIT on the same connection."""
        client, inner = self._producer_for(queue)
        try:
            result = inner.enqueue(queue, payload, **kwargs)
            replicas = int(client.wait(self.wait_replicas, self.wait_timeout_ms))
        except (redis.exceptions.ConnectionError, redis.exceptions.ResponseError):
            self._forget(client)  # the slot may have moved (failover): re-resolve next time
            raise
        if replicas < self.wait_replicas:
            raise NotReplicatedError(result, replicas, self.wait_replicas)
        return result

    def _forget(self, client: Any) -> None:
        with self._lock:
            for where, (c, _p) in list(self._inner.items()):
                if c is client:
                    del self._inner[where]
                    c.close()

    def close(self) -> None:
        with self._lock:
            for c, _p in self._inner.values():
                c.close()
            self._inner.clear()
