"""Queues: list, show, configure (guards), weights (queue and tenants), route explain,
enqueue, drain. Each route calls the service function its CLI command calls."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query

from ... import rollouts, service
from ...errors import ValidationError
from ...settings import Settings
from ..app import Conn, Operator, Viewer
from ..errors import ErrorEnvelope, field_renamed
from ..models import (
    API_MAX_COUNT,
    API_MAX_ENQUEUE_S,
    DrainOut,
    EnqueueIn,
    EnqueueOut,
    QueueConfigureIn,
    QueueInfo,
    RouteExplainOut,
    TenantWeightsIn,
    TenantWeightsOut,
    WeightChangeOut,
    WeightIn,
)

router = APIRouter(tags=["queues"])


@router.get("/queues", response_model=list[QueueInfo],
            summary="Every known queue with its config, depths and routed counts "
                    "(pycanary queue list)")
def list_queues(c: Conn, _: Viewer) -> list[dict]:
    return service.list_queues(c)


@router.get("/queues/{queue}", response_model=QueueInfo,
            summary="A queue's routing config, lane depths and routed counts (pycanary queue "
                    "show)")
def show_queue(queue: str, c: Conn, _: Viewer) -> dict:
    service.require_queue(c, queue)
    return service.queue_info(c, queue)


@router.patch("/queues/{queue}", response_model=QueueInfo,
              summary="Configure a queue: max_weight guard, max_backlog guard, versions, "
                      "routing mode, backend (pycanary queue configure); creates it if new")
def configure_queue(queue: str, body: QueueConfigureIn, c: Conn, _: Operator) -> dict:
    service.configure_queue(c, queue, **body.model_dump())
    return service.queue_info(c, queue)


@router.put("/queues/{queue}/weight", response_model=WeightChangeOut,
            summary="Set the queue's canary weight (pycanary set-weight QUEUE PCT); with an "
                    "active deployment it pauses its progression")
def set_weight(queue: str, body: WeightIn, c: Conn, who: Operator) -> dict:
    with field_renamed("weight", "percent"):
        return service.set_weight(c, queue, body.percent, actor=f"api:{who.name}").to_dict()


@router.put("/queues/{queue}/tenants/{tenant}", response_model=WeightChangeOut,
            summary="Set one tenant's weight override (pycanary set-weight QUEUE PCT "
                    "--tenant T)")
def set_tenant_weight(queue: str, tenant: str, body: WeightIn, c: Conn,
                      who: Operator) -> dict:
    with field_renamed("weight", "percent"):
        return service.set_weight(c, queue, body.percent, tenant=tenant,
                                  actor=f"api:{who.name}").to_dict()


@router.delete("/queues/{queue}/tenants/{tenant}", response_model=WeightChangeOut,
               summary="Clear one tenant's override (pycanary set-weight QUEUE --tenant T "
                       "--clear)")
def clear_tenant_weight(queue: str, tenant: str, c: Conn, who: Operator) -> dict:
    return service.set_weight(c, queue, None, tenant=tenant, actor=f"api:{who.name}").to_dict()


@router.patch("/queues/{queue}/tenants", response_model=TenantWeightsOut,
              summary="Set or clear several tenants' overrides; every entry is checked "
                      "before any is written")
def set_tenant_weights(queue: str, body: TenantWeightsIn, c: Conn, who: Operator) -> dict:
    changes = service.set_tenant_weights(c, queue, body.weights, actor=f"api:{who.name}")
    return {"queue": queue, "changes": [ch.to_dict() for ch in changes]}


@router.get("/queues/{queue}/route", response_model=RouteExplainOut,
            summary="The bucket of a sticky key and the lane it gets now (pycanary route "
                    "explain)")
def explain_route(queue: str, c: Conn, _: Viewer,
                  key: Annotated[str, Query(description="sticky key (job id, order id)")],
                  tenant: Annotated[str | None, Query()] = None) -> dict:
    return service.explain_route(c, queue, key, tenant=tenant)


@router.post("/queues/{queue}/jobs", response_model=EnqueueOut, status_code=201,
             summary="Enqueue a job, or count copies (pycanary enqueue)",
             responses={429: {"model": ErrorEnvelope,
                              "description": "the queue is full (max_backlog or Redis OOM): "
                                             "nothing landed"},
                        504: {"model": ErrorEnvelope,
                              "description": "Redis did not answer: the job may have landed; "
                                             "enqueue again with the same job_id"}})
def enqueue(queue: str, c: Conn, _: Operator,
            body: Annotated[EnqueueIn | None, Body()] = None) -> dict:
    body = body or EnqueueIn()
    service.check_enqueue_args(body.count, body.rate, max_count=API_MAX_COUNT)
    if body.rate is not None and body.count / body.rate > API_MAX_ENQUEUE_S:
        raise ValidationError(f"count / rate must be at most {API_MAX_ENQUEUE_S:g} s in one "
                              "request", field="rate")
    summary = service.enqueue(c, queue, {} if body.payload is None else body.payload,
                              job_id=body.job_id, sticky_key=body.sticky_key,
                              tenant=body.tenant, count=body.count, rate=body.rate,
                              max_payload_bytes=Settings().max_payload_bytes)
    return summary.to_dict()


@router.post("/queues/{queue}/drain", response_model=DrainOut,
             summary="Move every job of the canary lane to the head of the stable lane "
                     "(pycanary drain)")
def drain(queue: str, c: Conn, who: Operator) -> dict:
    return rollouts.drain(c, queue, actor=f"api:{who.name}").to_dict()
