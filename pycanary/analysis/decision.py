"""decide(): turn a check into the controller's next action."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pycanary.plan import Plan, format_duration

from .state import AnalysisState
from .types import Analysis, RuleResult, Verdict


class Action(StrEnum):
    """What the controller should do after a check."""

    CONTINUE = "continue"  # stage still running
    HOLD = "hold"  # stage time is up but the latest check did not PASS: keep looking
    PROMOTE = "promote"  # to next_stage, or to 100% when next_stage is None
    AWAIT_APPROVAL = "await_approval"  # stage passed, auto_promote is false
    ROLLBACK = "rollback"
    #: no evidence either way after inconclusive_checks late checks or at the stage deadline,
    #: and the plan says ``on_inconclusive: pause``: freeze the weight and the stage timer,
    #: keep checking (a FAIL while paused still rolls back), wait for a person
    PAUSE = "pause"


@dataclass(frozen=True)
class Decision:
    """The controller's next step and the one-line reason recorded in the event log."""

    action: Action
    reason: str
    stage: int
    next_stage: int | None = None
    rules: tuple[RuleResult, ...] = ()
    #: What led to the action, for code (the reason is for people): "analysis" (the checks),
    #: "deadline" (the plan's deadline passed), "stage_time" (the stage's time elapsed),
    #: "inconclusive" (on_inconclusive after inconclusive_checks late checks) or
    #: "stage_deadline" (on_inconclusive at the stage's own deadline).
    cause: str = "analysis"

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action.value,
            "reason": self.reason,
            "stage": self.stage,
            "next_stage": self.next_stage,
            "rules": [r.to_dict() for r in self.rules],
            "cause": self.cause,
        }


def should_rollback(analysis: Analysis, plan: Plan) -> bool:
    """True after ``failure_threshold`` consecutive FAILs, or at once on a decisive FAIL."""
    if analysis.verdict is not Verdict.FAIL:
        return False
    if analysis.decisive and plan.statistical.decisive:
        return True
    return analysis.fail_streak >= analysis.failure_threshold


def decide(plan: Plan, analysis: Analysis, state: AnalysisState, now_s: float, *,
           at_manual_gate: bool = False) -> Decision:
    """Turn a check into an action. Promotion needs the stage's time *and* a PASS.

    A stage that stays without evidence (INCONCLUSIVE) after its time holds; after
    ``inconclusive_checks`` such checks, or at the stage's deadline, ``on_inconclusive``
    decides: HOLD (keep waiting), PAUSE (wait for a person) or ROLLBACK. Never a promotion.

    ``state`` is the one evaluate() returned with ``analysis`` (it knows when the stage and
    the deployment started). ``at_manual_gate`` says the deployment already waits for a
    person's approval: a passed deadline then holds (the plan is healthy, not late) instead of
    rolling back; failing checks still roll it back.
    """
    i = analysis.stage
    cfg = plan.settings(i)
    if should_rollback(analysis, plan):
        how = (
            "decisive"
            if analysis.decisive and plan.statistical.decisive
            else (f"{analysis.fail_streak} consecutive FAIL checks")
        )
        return Decision(
            Action.ROLLBACK, f"{how}: {analysis.reason}", i, None, analysis.failed_rules
        )
    started = state.stage_started_s if state.stage_started_s is not None else now_s
    elapsed = now_s - started
    if elapsed >= cfg.duration_s and analysis.verdict is Verdict.PASS:
        nxt = None if cfg.last else i + 1
        where = "100%" if nxt is None else plan.stage_label(nxt)
        if not cfg.auto_promote:
            return Decision(
                Action.AWAIT_APPROVAL,
                f"stage {i + 1} passed after {format_duration(elapsed)}; promote to {where} "
                "needs approval",
                i,
                nxt,
            )
        return Decision(
            Action.PROMOTE,
            f"stage {i + 1} passed after {format_duration(elapsed)}; promoting to {where}",
            i,
            nxt,
        )
    if (
        plan.deadline is not None
        and state.started_s is not None
        and now_s - state.started_s >= plan.deadline
    ):
        if at_manual_gate:
            return Decision(
                Action.HOLD,
                f"deadline {format_duration(plan.deadline)} passed while waiting for "
                f"approval (latest verdict {analysis.verdict.value}: {analysis.reason})",
                i,
                cause="deadline",
            )
        return Decision(
            Action.ROLLBACK,
            f"deadline {format_duration(plan.deadline)} passed in stage {i + 1} "
            f"(latest verdict {analysis.verdict.value}: {analysis.reason})",
            i,
            cause="deadline",
        )
    stage_deadline = cfg.deadline_s is not None and elapsed >= cfg.deadline_s
    too_many = state.late_inconclusive >= cfg.inconclusive_checks
    if (stage_deadline or too_many) and not at_manual_gate:
        cause = "stage_deadline" if stage_deadline else "inconclusive"
        why = (
            f"stage {i + 1} deadline {format_duration(cfg.deadline_s or 0)} passed"
            if stage_deadline
            else f"stage {i + 1} still without evidence after {state.late_inconclusive} checks "
            "past its time"
        )
        why += f" (latest verdict {analysis.verdict.value}: {analysis.reason})"
        if cfg.on_inconclusive == "rollback":
            return Decision(Action.ROLLBACK, f"{why}; on_inconclusive: rollback", i,
                            cause=cause)
        if cfg.on_inconclusive == "pause":
            return Decision(Action.PAUSE, f"{why}; on_inconclusive: pause", i, cause=cause)
        return Decision(Action.HOLD, f"{why}; on_inconclusive: hold", i, cause=cause)
    if elapsed >= cfg.duration_s:
        return Decision(
            Action.HOLD,
            f"stage {i + 1} time is up but the latest check is {analysis.verdict.value}: "
            f"{analysis.reason}",
            i,
            cause="stage_time",
        )
    return Decision(
        Action.CONTINUE,
        f"stage {i + 1}: {format_duration(elapsed)} of {format_duration(cfg.duration_s)}",
        i,
    )
