"""`pycanary.connect(url)`: one object that carries the client, the key builder and the scripts.

URLs: ``redis://``, ``rediss://``, ``unix://`` (redis-py), ``redis+cluster://host:port``
(redis-py's cluster client) and ``memory://[name]``, the embedded default: an in-process
fakeredis server with Lua (lupa), so the real scripts run with no server at all.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.cluster import RedisCluster

from .errors import ConnectionFailedError, PermissionDeniedError, ValidationError
from .keys import DEFAULT_PREFIX, Keys
from .scripts import Scripts

_memory_servers: dict[str, Any] = {}
_memory_lock = threading.Lock()


#: Query parameters whose values are secrets (redis-py reads ``password`` from the query too).
_SECRET_PARAMS = frozenset({"password", "pass", "pwd", "ssl_password", "token"})
REDACTED = "***"


def redact_url(url: str) -> str:
    """The URL with its password (userinfo and ``?password=``) replaced by ``***``.

    Every place that shows a URL (errors, logs, repr) goes through here, so a secret given in
    ``--redis-url`` or PYCANARY_REDIS_URL never reaches a terminal or a log collector. The user
    name is kept: it says which ACL role is in use and is not a secret.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED  # unparsable: show nothing rather than risk the secret
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0] if ":" in userinfo else ""
        if ":" in userinfo or user == "":
            netloc = f"{user}:{REDACTED}@{host}"
        else:  # redis://secret@host: redis-py reads a lone userinfo as the password
            netloc = f"{REDACTED}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, REDACTED if k.lower() in _SECRET_PARAMS else v) for k, v in pairs],
                          safe="*/")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str, url: str) -> str:
    """``text`` with the URL and its password replaced (for messages built by other libraries)."""
    if url:
        text = text.replace(url, redact_url(url))
    try:
        parts = urlsplit(url)
        secrets = [parts.password or ""]
        secrets += [v for k, v in parse_qsl(parts.query) if k.lower() in _SECRET_PARAMS]
        if parts.username and parts.password is None:
            secrets.append(parts.username)
    except ValueError:
        secrets = []
    for secret in secrets:
        if len(secret) >= 3:
            text = text.replace(secret, REDACTED)
    return text


def _denied(exc: Exception) -> PermissionDeniedError:
    return PermissionDeniedError(f"the Redis user may not do this: {exc}", field="acl")


class _Pipeline(redis.client.Pipeline):
    """A pipeline whose NOPERM (raised on execute) is a PermissionDeniedError."""

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        try:
            return super().execute(raise_on_error)
        except redis.exceptions.NoPermissionError as exc:
            raise _denied(exc) from None


class _Redis(redis.Redis):
    """redis.Redis whose NOPERM replies to plain commands (reads of the service layer, SADD of
    the queue index) surface as PermissionDeniedError, like the scripts' (scripts.py): every
    face then prints one `error: acl: ...` line for a role that may not do something."""

    def execute_command(self, *args: Any, **options: Any) -> Any:
        try:
            return super().execute_command(*args, **options)
        except redis.exceptions.NoPermissionError as exc:
            raise _denied(exc) from None

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> _Pipeline:
        return _Pipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)


def _memory_client(name: str) -> Any:
    import fakeredis  # imported lazily: only the embedded default needs it

    with _memory_lock:
        server = _memory_servers.get(name)
        if server is None:
            server = fakeredis.FakeServer(version=(7,))
            _memory_servers[name] = server
    return fakeredis.FakeRedis(server=server, decode_responses=True)


@dataclass(repr=False)
class Connection:
    """A connected pycanary: the redis client, key builder and script registry, shared by every
    producer, worker and service call made through it. Its repr shows the URL redacted."""

    url: str
    client: Any
    keys: Keys
    scripts: Scripts = field(init=False)
    is_cluster: bool = False
    is_memory: bool = False

    def __post_init__(self) -> None:
        self.scripts = Scripts(self.client)

    @property
    def safe_url(self) -> str:
        """The URL without its password: the only form of it to print or log."""
        return redact_url(self.url)

    def __repr__(self) -> str:
        kind = "cluster" if self.is_cluster else "memory" if self.is_memory else "redis"
        return f"Connection({self.safe_url!r}, prefix={self.keys.prefix!r}, {kind})"

    __str__ = __repr__

    def ping(self) -> None:
        """Check the server answers, turning every failure into one clean pycanary error."""
        try:
            self.client.ping()
        except redis.exceptions.AuthenticationError as exc:
            raise ConnectionFailedError(
                f"Redis at {self.safe_url} refused the credentials: "
                f"{redact_text(str(exc), self.url)}") from None
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise ConnectionFailedError(
                f"cannot reach Redis at {self.safe_url}: {redact_text(str(exc), self.url)}"
            ) from None
        except redis.exceptions.NoPermissionError as exc:
            raise PermissionDeniedError(f"the Redis user may not run PING: {exc}",
                                        field="acl") from None
        except redis.exceptions.ResponseError as exc:  # e.g. WRONGPASS on a RESP2 AUTH
            raise ConnectionFailedError(
                f"Redis at {self.safe_url} refused the connection: "
                f"{redact_text(str(exc), self.url)}") from None

    def close(self) -> None:
        close = getattr(self.client, "close", None)
        if close is not None:
            close()


_TLS_SETTINGS = (("ssl_ca_certs", "redis_tls_ca"), ("ssl_certfile", "redis_tls_cert"),
                 ("ssl_keyfile", "redis_tls_key"))


def _tls_kwargs(url: str, client_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Fill redis-py's TLS options from PYCANARY_REDIS_TLS_CA/_CERT/_KEY where neither the URL
    query nor the caller set them, so every face (CLI, worker, controller) gets TLS from the
    environment without a flag of its own."""
    from .settings import Settings  # lazily: pydantic-settings is only needed here

    in_url = {k for k, _ in parse_qsl(urlsplit(url).query)}
    settings = Settings()
    out = dict(client_kwargs)
    for kwarg, setting in _TLS_SETTINGS:
        value = getattr(settings, setting)
        if value and kwarg not in in_url and kwarg not in out:
            out[kwarg] = value
    return out


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
        if scheme == "rediss":
            client_kwargs = _tls_kwargs(url, client_kwargs)
        client = _Redis.from_url(url, decode_responses=True, **client_kwargs)
        return Connection(url, client, keys)
    if scheme == "redis+cluster":
        try:
            client = RedisCluster.from_url(
                "redis://" + url[len("redis+cluster://"):], decode_responses=True, **client_kwargs
            )
        except (redis.exceptions.RedisClusterException, redis.exceptions.ConnectionError) as exc:
            raise ConnectionFailedError(f"cannot reach Redis Cluster at {redact_url(url)}: "
                                        f"{redact_text(str(exc), url)}") from None
        return Connection(url, client, keys, is_cluster=True)
    raise ValidationError(
        f"unsupported scheme {scheme!r}; use redis://, rediss://, unix://, redis+cluster:// or "
        "memory://",
        field="redis_url",
    )
