"""`pycanary.connect(url)`: one object that carries the client, the key builder and the scripts.

URLs: ``redis://``, ``rediss://``, ``unix://`` (redis-py), ``redis+cluster://host:port``
(redis-py's cluster client) and ``memory://[name]``, the embedded default: an in-process
fakeredis server with Lua (lupa), so the real scripts run with no server at all.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.cluster import RedisCluster

from .errors import ConnectionFailedError, ValidationError
from .keys import DEFAULT_PREFIX, Keys
from .scripts import Scripts

_memory_servers: dict[str, Any] = {}
_memory_lock = threading.Lock()


def _memory_client(name: str) -> Any:
    import fakeredis  # imported lazily: only the embedded default needs it

    with _memory_lock:
        server = _memory_servers.get(name)
        if server is None:
            server = fakeredis.FakeServer(version=(7,))
            _memory_servers[name] = server
    return fakeredis.FakeRedis(server=server, decode_responses=True)


@dataclass
class Connection:
    """A connected pycanary: the redis client, key builder and script registry, shared by every
    producer, worker and service call made through it."""

    url: str
    client: Any
    keys: Keys
    scripts: Scripts = field(init=False)
    is_cluster: bool = False
    is_memory: bool = False

    def __post_init__(self) -> None:
        self.scripts = Scripts(self.client)

    def ping(self) -> None:
        try:
            self.client.ping()
        except redis.exceptions.ConnectionError as exc:
            raise ConnectionFailedError(f"cannot reach Redis at {self.url}: {exc}") from None

    def close(self) -> None:
        close = getattr(self.client, "close", None)
        if close is not None:
            close()


def connect(
    url: str = "memory://", *, prefix: str = DEFAULT_PREFIX, **client_kwargs: Any
) -> Connection:
    """Connect to Redis (or the embedded default) and return a `Connection`."""
    if not prefix or any(c in prefix for c in "{} \t\n"):
        raise ValidationError(f"must be non-empty, without braces or spaces, got {prefix!r}",
                              field="prefix")
    scheme = urlsplit(url).scheme.lower()
    keys = Keys(prefix)
    if scheme == "memory":
        name = url[len("memory://"):] or "default"
        return Connection(url, _memory_client(name), keys, is_memory=True)
    if scheme in ("redis", "rediss", "unix"):
        client = redis.Redis.from_url(url, decode_responses=True, **client_kwargs)
        return Connection(url, client, keys)
    if scheme == "redis+cluster":
        try:
            client = RedisCluster.from_url(
                "redis://" + url[len("redis+cluster://"):], decode_responses=True, **client_kwargs
            )
        except (redis.exceptions.RedisClusterException, redis.exceptions.ConnectionError) as exc:
            raise ConnectionFailedError(f"cannot reach Redis Cluster at {url}: {exc}") from None
        return Connection(url, client, keys, is_cluster=True)
    raise ValidationError(
        f"unsupported scheme {scheme!r}; use redis://, rediss://, unix://, redis+cluster:// or "
        "memory://",
        field="redis_url",
    )
