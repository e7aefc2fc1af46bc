"""Dead letters: list, show, requeue, purge (pycanary dlq)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from ... import dlq
from ..app import Conn, Operator, Viewer
from ..models import DeadLetterActionIn, DeadLetterFull, DeadLetterReport, DeadLettersOut

router = APIRouter(tags=["dead letters"])


@router.get("/queues/{queue}/dead-letters", response_model=DeadLettersOut,
            summary="The newest dead letters (pycanary dlq list)")
def list_dead(queue: str, c: Conn, _: Viewer,
              limit: Annotated[int, Query(description="records, 1-10000")] = 20,
              offset: Annotated[int, Query(description="skip the newest N")] = 0) -> dict:
    total, letters = dlq.list_dead(c, queue, limit=limit, offset=offset)
    return {"queue": queue, "total": total, "dead_letters": [d.to_dict() for d in letters]}


@router.get("/queues/{queue}/dead-letters/{job_id}", response_model=list[DeadLetterFull],
            summary="A dead letter whole: payload, error, worker, version (pycanary dlq "
                    "show); every record of the id, oldest first")
def show_dead(queue: str, job_id: str, c: Conn, _: Viewer) -> list[dict]:
    return [d.to_dict(full=True) for d in dlq.find(c, queue, [job_id])]


@router.post("/queues/{queue}/dead-letters/requeue", response_model=DeadLetterReport,
             summary="Requeue dead letters to the stable lane's tail, attempts reset "
                     "(pycanary dlq requeue)")
def requeue(queue: str, body: DeadLetterActionIn, c: Conn, _: Operator) -> dict:
    return dlq.requeue(c, queue, body.job_ids, all_=body.all).to_dict()


@router.post("/queues/{queue}/dead-letters/purge", response_model=DeadLetterReport,
             summary="Delete dead letters for good (pycanary dlq purge)")
def purge(queue: str, body: DeadLetterActionIn, c: Conn, _: Operator) -> dict:
    return dlq.purge(c, queue, body.job_ids, all_=body.all).to_dict()
