"""The `pycanary` command line: a thin face over pycanary.service.

The shared app and helpers live in `app`; each other module registers its commands on it when
imported. They are imported here in the order `pycanary --help` lists the commands.
"""

from __future__ import annotations

# Each import registers its commands; the order is the order of `pycanary --help` (isort off).
# isort: off
from . import queues, workers, deploy, serve, history, dlq, plan  # noqa: F401
# isort: on
from .app import (
    EXIT_QUEUE_FULL,
    MAX_ERROR_LINE,
    OWN_ROOT_OPTIONS,
    ROOT_OPTIONS,
    State,
    app,
    hoist_root_options,
    main,
    plain_help,
    report_error,
)

__all__ = [
    "EXIT_QUEUE_FULL",
    "MAX_ERROR_LINE",
    "OWN_ROOT_OPTIONS",
    "ROOT_OPTIONS",
    "State",
    "app",
    "hoist_root_options",
    "main",
    "plain_help",
    "report_error",
]
