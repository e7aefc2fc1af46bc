"""The ``/v1`` routers, one module per resource."""

from __future__ import annotations

from fastapi import FastAPI


def include_all(app: FastAPI) -> None:
    """Mount every resource's router under /v1."""
    from . import deployments, dlq, meta, plans, queues, workers

    for module in (meta, queues, deployments, workers, dlq, plans):
        app.include_router(module.router, prefix="/v1")
