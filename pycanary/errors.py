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
}


def raise_for_code(code: int, *, script: str, field: str | None = None, detail: str = "") -> None:
    """Raise the exception mapped to a script's negative return code."""
    cls, message = _SCRIPT_ERRORS.get(code, (ScriptError, f"{script} failed with code {code}"))
    raise cls(f"{message}{detail}", field=field)


class PermissionDeniedError(PycanaryError):
    """Redis refused the call under the connection's ACL user (NOPERM): the role may not do
    this. Nothing was written: Redis checks permissions before a command (or a script's
    command) runs."""

    code = "forbidden"
