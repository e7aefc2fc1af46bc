"""Every exception pycanary raises, and the one map from script error codes to them.

User mistakes are `PycanaryError`s carrying the name of the bad field, so every face (CLI, API,
TUI) can print one clear line instead of a traceback.
"""

from __future__ import annotations


class PycanaryError(Exception):
    """Base of every error pycanary raises on purpose."""

    #: Short machine-readable code, used by the HTTP API's error body.
    code = "error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class ValidationError(PycanaryError, ValueError):
    """A value given by the user is malformed or out of range; nothing was written."""

    code = "invalid"


class WeightAboveMaxError(ValidationError):
    """A weight above the queue's max_weight guard was refused."""

    code = "above_max_weight"


class MaxWeightBelowWeightError(ValidationError):
    """Lowering max_weight below a weight in force was refused."""

    code = "max_below_weight"


class PayloadTooLargeError(ValidationError):
    code = "payload_too_large"


class ConnectionFailedError(PycanaryError):
    """Redis could not be reached (not a user mistake in the command itself)."""

    code = "unavailable"


class QueueUnavailableError(ConnectionFailedError):
    """The producer could not connect to Redis: the command was never sent, nothing landed.
    Safe to retry (with the same job id) or to report as a failure."""


class EnqueueTimeoutError(PycanaryError):
    """The command was sent but no reply came (timeout, or the connection dropped while waiting):
    the job MAY have landed. ``job_ids`` says which; enqueue them again with the same ids (the
    producer's idempotency record then returns the first lane instead of pushing twice)."""

    code = "outcome_unknown"

    def __init__(self, message: str, *, job_ids: list[str], field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.job_ids = job_ids

    @property
    def job_id(self) -> str:
        """The first (for a single enqueue: the only) job whose outcome is unknown."""
        return self.job_ids[0] if self.job_ids else ""


class QueueFullError(PycanaryError):
    """Nothing landed because the queue is full: the lane the job (or a batch's share) would go
    to holds the queue's ``max_backlog`` (script code -14, the message names the queue, the
    lane's backlog and the limit), or Redis is at maxmemory (OOM). Retry later, add workers, or
    raise the limit."""

    code = "queue_full"


class PartialEnqueueError(PycanaryError):
    """enqueue_many stopped part way (Redis went away between round trips). Each script call is
    atomic, so every job is in exactly one list: ``landed_ids`` are on a lane, ``not_sent_ids``
    were never sent, ``unknown_ids`` were sent without a reply (enqueueing them again with
    ``job_ids=`` is safe: their batch's idempotency record prevents a second push)."""

    code = "partial_enqueue"

    def __init__(self, message: str, *, landed_ids: list[str], not_sent_ids: list[str],
                 unknown_ids: list[str], cause: PycanaryError | None = None) -> None:
        super().__init__(message)
        self.landed_ids = landed_ids
        self.not_sent_ids = not_sent_ids
        self.unknown_ids = unknown_ids
        self.cause = cause


class WrongTypeError(PycanaryError):
    """A key of the queue holds another Redis type than pycanary's (another client wrote it).
    The script refused before writing anything."""

    code = "wrong_type"


class FencedError(PycanaryError):
    """A controller write carried an epoch older than one the queue has seen: this process is
    no longer the leader and must not act."""

    code = "fenced"


class ConflictError(PycanaryError):
    """The deployment changed between read and write (an operator acted meanwhile); re-read."""

    code = "conflict"


class StateError(PycanaryError):
    """The command does not apply to the deployment's current state."""

    code = "state"


class NotFoundError(PycanaryError):
    """A command named something that does not exist: a queue, a deployment id, a dead
    letter's job id (the HTTP API answers 404)."""

    code = "not_found"


class NoSuchQueueError(NotFoundError):
    """A read or admin command named a queue pycanary has never seen (a typo, most often)."""


class ScriptError(PycanaryError):
    """A Lua script refused a call with a code that has no better mapping."""

    code = "script_error"


# Negative integers returned by lua/*.lua, in one place (see each script's header).
INVALID_WEIGHT = -1
ABOVE_MAX_WEIGHT = -2
MAX_BELOW_WEIGHT = -3
INVALID_ARGUMENT = -4
VERSION_ROLLED_BACK = -5
NO_CANARY = -6
FENCED = -7
DEPLOYMENT_ACTIVE = -8
CONFLICT = -9
SAME_VERSION = -10
NO_STABLE_VERSION = -11
NOT_ACTIVE = -12
WRONG_TYPE = -13
QUEUE_FULL = -14

_SCRIPT_ERRORS: dict[int, tuple[type[PycanaryError], str]] = {
    INVALID_WEIGHT: (ValidationError, "must be an integer number of basis points 0..10000"),
    ABOVE_MAX_WEIGHT: (WeightAboveMaxError, "is above the queue's max_weight"),
    MAX_BELOW_WEIGHT: (MaxWeightBelowWeightError, "is below a weight in force; lower it first"),
    INVALID_ARGUMENT: (ValidationError, "invalid argument"),
    VERSION_ROLLED_BACK: (ValidationError, "this version was rolled back on the queue"),
    NO_CANARY: (ValidationError, "the queue has no canary version to promote"),
    FENCED: (FencedError, "a newer controller leads; this one may not write"),
    DEPLOYMENT_ACTIVE: (StateError, "a deployment is already active on this queue"),
    CONFLICT: (ConflictError, "the deployment changed meanwhile; try again"),
    SAME_VERSION: (ValidationError, "is the queue's stable version already"),
    NO_STABLE_VERSION: (StateError, "the queue has no stable version yet: start a worker of the "
                        "current version or run `pycanary queue configure QUEUE "
                        "--stable-version V`"),
    NOT_ACTIVE: (StateError, "no active deployment on this queue in a state that allows it"),
    WRONG_TYPE: (WrongTypeError, "a key holds the wrong Redis type"),
    QUEUE_FULL: (QueueFullError, "the queue is full (max_backlog)"),
}

#: Prefix of the error replies (redis.error_reply) of the scripts' guards: "PYCANARY <code> <why>"
SCRIPT_REPLY_PREFIX = "PYCANARY "


def raise_for_code(code: int, *, script: str, field: str | None = None, detail: str = "") -> None:
    """Raise the exception mapped to a script's negative return code."""
    cls, message = _SCRIPT_ERRORS.get(code, (ScriptError, f"{script} failed with code {code}"))
    raise cls(f"{message}{detail}", field=field)


class PermissionDeniedError(PycanaryError):
    """Redis refused the call under the connection's ACL user (NOPERM): the role may not do
    this. Nothing was written: Redis checks permissions before a command (or a script's
    command) runs."""

    code = "forbidden"


def from_script_reply(text: str, *, script: str) -> PycanaryError | None:
    """The exception for a guard's error reply ("PYCANARY -13 KEYS[3] ... is a string, expected
    list"), or None if the reply is not one of ours."""
    if not text.startswith(SCRIPT_REPLY_PREFIX):
        return None
    code_text, _, why = text[len(SCRIPT_REPLY_PREFIX):].partition(" ")
    try:
        code = int(code_text)
    except ValueError:
        return ScriptError(f"{script}: {text}")
    cls, message = _SCRIPT_ERRORS.get(code, (ScriptError, f"{script} failed with code {code}"))
    return cls(f"{script}: {message}: {why}" if why else f"{script}: {message}")


def map_redis_error(exc: Exception, *, job_ids: list[str], sent: bool = True,
                    script: str = "route_enqueue") -> PycanaryError:
    """The producer's one map from redis-py exceptions to pycanary's own.

    - could not connect (the command was never written) -> QueueUnavailableError: nothing landed
    - timeout, or the connection dropped after sending -> EnqueueTimeoutError: outcome unknown
    - OOM (maxmemory) -> QueueFullError: the script's first write was refused, nothing landed
    - a guard's reply (PYCANARY <code>) -> its mapped error; WRONGTYPE -> WrongTypeError
    - anything else Redis answered -> ScriptError
    """
    import redis.exceptions as rex  # here, not at the top: errors.py is imported everywhere

    ids = ", ".join(job_ids[:3]) + (f" and {len(job_ids) - 3} more" if len(job_ids) > 3 else "")
    if isinstance(exc, PycanaryError):
        return exc
    if isinstance(exc, rex.ConnectionError) and (not sent or "connecting to" in str(exc)):
        return QueueUnavailableError(f"cannot reach Redis, job {ids} not enqueued: {exc}")
    if isinstance(exc, rex.ClusterDownError | rex.TryAgainError):
        # refused before the script ran (a failover in progress): nothing landed
        return QueueUnavailableError(f"Redis Cluster is failing over, job {ids} not enqueued: "
                                     f"{exc}")
    if isinstance(exc, rex.TimeoutError | rex.ConnectionError | TimeoutError | rex.ClusterError):
        kind = "timed out" if isinstance(exc, rex.TimeoutError | TimeoutError) else \
            "lost the connection"
        return EnqueueTimeoutError(
            f"{kind} waiting for Redis after sending job {ids}: it may or may not have landed; "
            f"enqueue again with the same job id to settle it ({exc})", job_ids=list(job_ids))
    if isinstance(exc, rex.ResponseError):
        text = str(exc)
        if isinstance(exc, rex.OutOfMemoryError) or text.startswith("OOM"):
            return QueueFullError(f"Redis is at maxmemory, job {ids} not enqueued: {text}")
        mine = from_script_reply(text, script=script)
        if mine is not None:
            return mine
        if text.startswith("WRONGTYPE"):
            return WrongTypeError(f"{script}: {text}")
        if text.startswith("NOPERM"):
            return PermissionDeniedError(f"{script}: {text}", field="acl")
        return ScriptError(f"{script}: Redis answered: {text}")
    if isinstance(exc, rex.RedisError):
        return ScriptError(f"{script}: {exc}")
    raise exc
