"""Workers: the registry with each worker's state (pycanary workers)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from ... import service
from ..app import Conn, Viewer
from ..models import WorkerOut

router = APIRouter(tags=["workers"])


@router.get("/workers", response_model=list[WorkerOut],
            summary="Registered workers: version, lanes, state, jobs done (pycanary workers)")
def workers(c: Conn, _: Viewer,
            queue: Annotated[str | None, Query(description="only this queue's")] = None
            ) -> list[dict]:
    if queue is not None:
        service.require_queue(c, queue)
    return service.list_workers(c, queue=queue)
