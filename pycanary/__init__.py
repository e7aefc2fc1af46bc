"""pycanary: progressive canary rollouts for Redis job-queue workers."""

from .connection import Connection, connect
from .errors import PycanaryError, ValidationError
from .job import Envelope, Job
from .producer import EnqueueResult, Producer
from .worker import Worker

__all__ = [
    "Connection",
    "EnqueueResult",
    "Envelope",
    "Job",
    "Producer",
    "PycanaryError",
    "ValidationError",
    "Worker",
    "connect",
]
__version__ = "0.1.0"
