"""What one check carries to the next (JSON-able, so a restarted controller resumes)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pycanary.stats import merge as _merge

from .evidence import ERROR_RATIOS
from .types import LaneStats, Verdict


def _hist_to_json(h: Mapping[int, int]) -> dict[str, int]:
    return {str(k): int(v) for k, v in sorted(h.items()) if v}


def _hist_from_json(d: Mapping[str, Any] | None) -> dict[int, int]:
    return {int(k): int(v) for k, v in (d or {}).items()}


@dataclass(frozen=True)
class LaneTotals:
    """One lane's counts accumulated over the current stage."""

    ok: int = 0
    failed: int = 0
    dead: int = 0
    run_hist: Mapping[int, int] = field(default_factory=dict)
    wait_hist: Mapping[int, int] = field(default_factory=dict)

    @property
    def attempts(self) -> int:
        return self.ok + self.failed

    def add(self, s: LaneStats) -> LaneTotals:
        """Totals including one more window."""
        return LaneTotals(
            ok=self.ok + s.ok,
            failed=self.failed + s.failed,
            dead=self.dead + s.dead,
            run_hist=_merge(self.run_hist, s.run_hist),
            wait_hist=_merge(self.wait_hist, s.wait_hist),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "failed": self.failed,
            "dead": self.dead,
            "run_hist": _hist_to_json(self.run_hist),
            "wait_hist": _hist_to_json(self.wait_hist),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> LaneTotals:
        d = d or {}
        return cls(
            ok=int(d.get("ok", 0)),
            failed=int(d.get("failed", 0)),
            dead=int(d.get("dead", 0)),
            run_hist=_hist_from_json(d.get("run_hist")),
            wait_hist=_hist_from_json(d.get("wait_hist")),
        )


@dataclass(frozen=True)
class AnalysisState:
    """Everything a check carries to the next one; store ``to_dict()`` (JSON) between looks.

    The sequential tests' evidence is a handful of floats, so a restarted controller resumes
    them exactly. A fresh ``AnalysisState()`` starts a deployment.
    """

    started_s: float | None = None  # deployment start (start of the first window seen)
    stage: int | None = None
    stage_started_s: float | None = None
    checks: int = 0
    fail_streak: int = 0
    last_verdict: Verdict | None = None
    # deployment-cumulative attempts and failures, for min_samples and for display
    canary_attempts: int = 0
    canary_failed: int = 0
    stable_attempts: int = 0
    stable_failed: int = 0
    # sequential error-rate test: cumulative log-LR per ratio of ERROR_RATIOS, running max
    error_ratios: tuple[float, ...] = ERROR_RATIOS
    error_llr: tuple[float, ...] = tuple(0.0 for _ in ERROR_RATIOS)
    error_max_log_lr: float = 0.0
    # sequential run-time test: weighted sum, its null variance, running max of log Lambda
    run_s: float = 0.0
    run_v: float = 0.0
    run_max_log_lr: float = 0.0
    # current stage's totals for the threshold rules
    stage_canary: LaneTotals = field(default_factory=LaneTotals)
    stage_stable: LaneTotals = field(default_factory=LaneTotals)
    last_backlog_canary: int | None = None
    last_backlog_stable: int | None = None

    def enter_stage(self, stage: int, now_s: float) -> AnalysisState:
        """State for a stage that starts now: fresh stage totals, same deployment evidence.

        Call it when the weight changes; evaluate() also does it when it sees a new stage
        index, dating the start at the beginning of the window it was given.
        """
        return replace(
            self,
            stage=stage,
            stage_started_s=now_s,
            fail_streak=0,
            stage_canary=LaneTotals(),
            stage_stable=LaneTotals(),
            started_s=now_s if self.started_s is None else self.started_s,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": 1,
            "started_s": self.started_s,
            "stage": self.stage,
            "stage_started_s": self.stage_started_s,
            "checks": self.checks,
            "fail_streak": self.fail_streak,
            "last_verdict": None if self.last_verdict is None else self.last_verdict.value,
            "canary_attempts": self.canary_attempts,
            "canary_failed": self.canary_failed,
            "stable_attempts": self.stable_attempts,
            "stable_failed": self.stable_failed,
            "error_ratios": list(self.error_ratios),
            "error_llr": list(self.error_llr),
            "error_max_log_lr": self.error_max_log_lr,
            "run_s": self.run_s,
            "run_v": self.run_v,
            "run_max_log_lr": self.run_max_log_lr,
            "stage_canary": self.stage_canary.to_dict(),
            "stage_stable": self.stage_stable.to_dict(),
            "last_backlog_canary": self.last_backlog_canary,
            "last_backlog_stable": self.last_backlog_stable,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AnalysisState:
        ratios = tuple(float(x) for x in d.get("error_ratios", ERROR_RATIOS))
        llr = tuple(float(x) for x in d.get("error_llr", [0.0] * len(ratios)))
        if len(llr) != len(ratios):
            raise ValueError("error_llr and error_ratios differ in length")
        lv = d.get("last_verdict")
        return cls(
            started_s=d.get("started_s"),
            stage=d.get("stage"),
            stage_started_s=d.get("stage_started_s"),
            checks=int(d.get("checks", 0)),
            fail_streak=int(d.get("fail_streak", 0)),
            last_verdict=None if lv is None else Verdict(lv),
            canary_attempts=int(d.get("canary_attempts", 0)),
            canary_failed=int(d.get("canary_failed", 0)),
            stable_attempts=int(d.get("stable_attempts", 0)),
            stable_failed=int(d.get("stable_failed", 0)),
            error_ratios=ratios,
            error_llr=llr,
            error_max_log_lr=float(d.get("error_max_log_lr", 0.0)),
            run_s=float(d.get("run_s", 0.0)),
            run_v=float(d.get("run_v", 0.0)),
            run_max_log_lr=float(d.get("run_max_log_lr", 0.0)),
            stage_canary=LaneTotals.from_dict(d.get("stage_canary")),
            stage_stable=LaneTotals.from_dict(d.get("stage_stable")),
            last_backlog_canary=d.get("last_backlog_canary"),
            last_backlog_stable=d.get("last_backlog_stable"),
        )

