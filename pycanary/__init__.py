"""pycanary: progressive canary rollouts for Redis job-queue workers."""

from .connection import Connection, connect
from .errors import PycanaryError, ValidationError
from .producer import EnqueueResult, Job, Producer

__all__ = [
    "Connection",
    "EnqueueResult",
    "Job",
    "Producer",
    "PycanaryError",
    "ValidationError",
    "connect",
]
__version__ = "0.1.0"
