"""Plans: the shipped plans by name, and plan check (lint + simulation) of a plan body."""

from __future__ import annotations

from fastapi import APIRouter

from ...plan import load_named, named_plans, plan_from
from ...plan_check import check_plan, parse_error_rate, parse_rate
from ..app import Viewer
from ..models import PlanCheckIn, PlanCheckOut, PlanNamesOut, PlanOut

router = APIRouter(tags=["plans"])


@router.get("/plans", response_model=PlanNamesOut,
            summary="Names of the shipped plans (usable as plan_name)")
def plans(_: Viewer) -> dict:
    return {"plans": named_plans()}


@router.get("/plans/{name}", response_model=PlanOut, summary="A shipped plan, normalised")
def plan(name: str, _: Viewer) -> dict:
    return {"name": name, "plan": load_named(name, field="name").to_dict()}


@router.post("/plans/check", response_model=PlanCheckOut,
             summary="Lint a plan and simulate it for your traffic (pycanary plan check); "
                     "CPU-bound, runs bounded")
def check(body: PlanCheckIn, _: Viewer) -> dict:
    plan_obj = plan_from(body.plan, body.plan_name)
    per_min, p = parse_rate(str(body.rate)), parse_error_rate(str(body.error_rate))
    report = check_plan(plan_obj, per_min, p, runs=body.runs,
                        name=body.plan_name or "<request body>")
    return report.to_dict()
