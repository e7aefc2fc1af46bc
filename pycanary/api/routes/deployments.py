"""Deployments: start (a manual canary, or a ramp with a plan body or a shipped plan's name),
status, promote, rollback, pause, resume, retry, history, events. Each route calls the
rollouts function its CLI command calls and returns the new state.

``--watch`` of the CLI has no route: a client polls ``GET /v1/deployments/{queue}`` or
``GET /v1/deployments/{queue}/events?after=<last id>`` instead.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query

from ... import rollouts, service
from ...plan import plan_from
from ..app import Conn, Operator, Viewer
from ..auth import Principal
from ..models import (
    CanaryIn,
    DeploymentOut,
    EventsOut,
    FailedNotification,
    HistoryRow,
    PromoteIn,
    PromoteOut,
    RampIn,
    RetryIn,
    RollbackIn,
    RollbackOut,
    StatusRow,
)

router = APIRouter(tags=["deployments"])


def _actor(who: Principal) -> str:
    """The audit name of a change made through the API (never the token itself)."""
    return f"api:{who.name}"


@router.get("/deployments", response_model=list[StatusRow],
            summary="Every queue side by side: deployment, lanes, depths, workers, events "
                    "(pycanary status)")
def status_all(c: Conn, _: Viewer) -> list[dict]:
    return rollouts.status(c, None)


@router.get("/deployments/{queue}", response_model=StatusRow,
            summary="One queue's status row (pycanary status QUEUE)")
def status(queue: str, c: Conn, _: Viewer) -> dict:
    service.require_queue(c, queue)
    return rollouts.status(c, queue)[0]


@router.post("/deployments/{queue}/canary", response_model=DeploymentOut, status_code=201,
             summary="Start a manual canary at a weight (pycanary canary start)")
def start_canary(queue: str, body: CanaryIn, c: Conn, who: Operator) -> dict:
    dep = rollouts.start_canary(c, queue, body.version, weight=body.weight,
                                tenants=body.tenants, sticky=body.sticky,
                                allow_schema_change=body.allow_schema_change,
                                force=body.force, actor=_actor(who), salt=body.salt)
    return dep.to_dict()


@router.post("/deployments/{queue}/ramp", response_model=DeploymentOut, status_code=201,
             summary="Start a staged rollout with a plan given whole or by name (pycanary "
                     "ramp)")
def ramp(queue: str, body: RampIn, c: Conn, who: Operator) -> dict:
    plan = plan_from(body.plan, body.plan_name)
    dep = rollouts.ramp(c, queue, body.version, plan,
                        allow_schema_change=body.allow_schema_change, force=body.force,
                        actor=_actor(who), salt=body.salt)
    return dep.to_dict()


@router.post("/deployments/{queue}/promote", response_model=PromoteOut,
             summary="Advance past a gate, or make the canary stable (pycanary promote)")
def promote(queue: str, c: Conn, who: Operator,
            body: Annotated[PromoteIn | None, Body()] = None) -> dict:
    return rollouts.promote(c, queue, full=(body or PromoteIn()).full, actor=_actor(who))


@router.post("/deployments/{queue}/rollback", response_model=RollbackOut,
             summary="Roll back now: weight 0, then drain the canary lane (pycanary "
                     "rollback)")
def rollback(queue: str, c: Conn, who: Operator,
             body: Annotated[RollbackIn | None, Body()] = None) -> dict:
    return rollouts.rollback(c, queue, reason=(body or RollbackIn()).reason, actor=_actor(who))


@router.post("/deployments/{queue}/pause", response_model=DeploymentOut,
             summary="Freeze a deployment's stage timer and weight (pycanary pause)")
def pause(queue: str, c: Conn, who: Operator) -> dict:
    return rollouts.pause(c, queue, actor=_actor(who)).to_dict()


@router.post("/deployments/{queue}/resume", response_model=DeploymentOut,
             summary="Continue a paused deployment (pycanary resume)")
def resume(queue: str, c: Conn, who: Operator) -> dict:
    return rollouts.resume(c, queue, actor=_actor(who)).to_dict()


@router.post("/deployments/{queue}/retry", response_model=DeploymentOut, status_code=201,
             summary="Start the last rolled-back version again with its plan (pycanary retry)")
def retry(queue: str, c: Conn, who: Operator,
          body: Annotated[RetryIn | None, Body()] = None) -> dict:
    body = body or RetryIn()
    return rollouts.retry(c, queue, allow_schema_change=body.allow_schema_change,
                          force=body.force, actor=_actor(who)).to_dict()


@router.get("/deployments/{queue}/history", response_model=list[HistoryRow],
            summary="Past deployments, newest first (pycanary history)")
def history(queue: str, c: Conn, _: Viewer,
            limit: Annotated[int, Query(description="deployments, 1-100")] = 10) -> list[dict]:
    return rollouts.history(c, queue, limit=limit)


@router.get("/deployments/{queue}/notifications/failed", response_model=list[FailedNotification],
            summary="Notifications the sender gave up on, newest first (pycanary "
                    "notifications)")
def failed_notifications(queue: str, c: Conn, _: Viewer,
                         limit: Annotated[int, Query(description="records, 1-1000")] = 20
                         ) -> list[dict]:
    from ...notify import failed_notifications as failed

    return failed(c, queue, count=limit)


@router.get("/deployments/{queue}/events", response_model=EventsOut,
            summary="A deployment's event log, oldest first (pycanary events)")
def events(queue: str, c: Conn, _: Viewer,
           deployment: Annotated[str | None, Query(description="a past deployment's id "
                                                   "(default: the current or last)")] = None,
           after: Annotated[str | None, Query(description="only events after this id")] = None,
           count: Annotated[int, Query(description="events, 1-10000")] = 1000) -> dict:
    dep, evs = rollouts.events(c, queue, deployment_id=deployment, count=count, after=after)
    return {"queue": queue, "deployment_id": dep.id, "state": dep.state, "events": evs}
