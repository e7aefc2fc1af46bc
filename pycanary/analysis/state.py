"""What one check carries to the next (JSON-able, so a restarted controller resumes).

Version 2 of the stored dict (issue 10) replaces the per-ratio log-likelihood ratios of the
old error test by the observed-minus-expected sums of the new one (docs/statistics.md).
A version-1 dict still loads: its running maximum of the error evidence is kept (a crossed
test stays crossed), its stage totals and run-time evidence carry on, and the new error
evidence starts from zero at the check after the restart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pycanary.stats import merge as _merge

from .types import LaneStats, Verdict

STATE_VERSION = 2


def _hist_to_json(h: Mapping[int, int]) -> dict[str, int]:
    return {str(k): int(v) for k, v in sorted(h.items()) if v}


def _hist_from_json(d: Mapping[str, Any] | None) -> dict[int, int]:
    return {int(k): int(v) for k, v in (d or {}).items()}


def has_first_attempts(*lanes: LaneStats) -> bool:
    """Does the data plane count first attempts in this window? (Either lane says so: a lane
    that finished only retries in the window reports 0 first attempts, not "unknown".)"""
    return any(s.first_attempts > 0 or s.units for s in lanes)


def first_counts(s: LaneStats, first: bool | None = None) -> tuple[int, int]:
    """(jobs, failed jobs) judged for errors: first attempts when the data plane counts them,
    else attempts (older data: retries of one job then count as separate trials)."""
    if has_first_attempts(s) if first is None else first:
        return s.first_attempts, s.first_failed
    return s.ok + s.failed, s.failed


@dataclass(frozen=True)
class LaneTotals:
    """One lane's counts accumulated over the current stage."""

    ok: int = 0
    failed: int = 0
    dead: int = 0
    run_hist: Mapping[int, int] = field(default_factory=dict)
    wait_hist: Mapping[int, int] = field(default_factory=dict)
    #: first-attempt jobs and failures (attempts for windows without first-attempt counts)
    jobs: int = 0
    jobs_failed: int = 0
    crashed: int = 0
    cpu_hist: Mapping[int, int] = field(default_factory=dict)
    #: jobs routed to the lane this stage; None until a window reported its routed count
    routed: int | None = None
    #: jobs finished (first attempts) in the windows that reported ``routed``
    routed_finished: int = 0

    @property
    def attempts(self) -> int:
        return self.ok + self.failed

    def add(self, s: LaneStats) -> LaneTotals:
        """Totals including one more window."""
        n, x = first_counts(s)
        routed = self.routed
        routed_finished = self.routed_finished
        if s.routed is not None:
            routed = (routed or 0) + s.routed
            routed_finished += n
        return LaneTotals(
            ok=self.ok + s.ok,
            failed=self.failed + s.failed,
            dead=self.dead + s.dead,
            run_hist=_merge(self.run_hist, s.run_hist),
            wait_hist=_merge(self.wait_hist, s.wait_hist),
            jobs=self.jobs + n,
            jobs_failed=self.jobs_failed + x,
            crashed=self.crashed + s.crashed,
            cpu_hist=_merge(self.cpu_hist, s.cpu_hist),
            routed=routed,
            routed_finished=routed_finished,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "failed": self.failed,
            "dead": self.dead,
            "run_hist": _hist_to_json(self.run_hist),
            "wait_hist": _hist_to_json(self.wait_hist),
            "jobs": self.jobs,
            "jobs_failed": self.jobs_failed,
            "crashed": self.crashed,
            "cpu_hist": _hist_to_json(self.cpu_hist),
            "routed": self.routed,
            "routed_finished": self.routed_finished,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> LaneTotals:
        d = d or {}
        ok, failed = int(d.get("ok", 0)), int(d.get("failed", 0))
        routed = d.get("routed")
        return cls(
            ok=ok,
            failed=failed,
            dead=int(d.get("dead", 0)),
            run_hist=_hist_from_json(d.get("run_hist")),
            wait_hist=_hist_from_json(d.get("wait_hist")),
            # v1 totals knew attempts only
            jobs=int(d.get("jobs", ok + failed)),
            jobs_failed=int(d.get("jobs_failed", failed)),
            crashed=int(d.get("crashed", 0)),
            cpu_hist=_hist_from_json(d.get("cpu_hist")),
            routed=None if routed is None else int(routed),
            routed_finished=int(d.get("routed_finished", 0)),
        )


@dataclass(frozen=True)
class AnalysisState:
    """Everything a check carries to the next one; store ``to_dict()`` (JSON) between looks.

    The sequential tests' evidence is a few dozen floats, so a restarted controller resumes
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
    # error test (evidence.py): observed-minus-expected canary failures, summed over windows
    # and strata; harm side (ratio 1) and safety side (ratio error_margin)
    err_s: float = 0.0
    err_v: float = 0.0  # model (hypergeometric) variance of err_s under ratio 1
    safe_s: float = 0.0
    safe_v: float = 0.0  # model variance of safe_s under ratio error_margin
    #: per cluster: (err_s part, safe_s part, err_v part, safe_v part); the cluster-robust
    #: variance is built from them
    err_clusters: Mapping[str, tuple[float, float, float, float]] = field(default_factory=dict)
    #: model variance of the windows without units (they cannot enter the cluster sums)
    err_v_plain: float = 0.0
    safe_v_plain: float = 0.0
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
    #: consecutive INCONCLUSIVE checks after the stage's duration was up (on_inconclusive)
    late_inconclusive: int = 0
    #: this stage's first-attempt counts per comparable stratum group (strata of one weight):
    #: group -> (canary jobs, canary failed, stable jobs, stable failed); empty without units
    stage_groups: Mapping[str, tuple[int, int, int, int]] = field(default_factory=dict)
    #: running maximum this stage of each relative threshold rule's log-evidence: a crossed
    #: always-valid test stays crossed (while the rule's figure stays over its threshold)
    stage_rule_max: Mapping[str, float] = field(default_factory=dict)

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
            late_inconclusive=0,
            stage_groups={},
            stage_rule_max={},
            started_s=now_s if self.started_s is None else self.started_s,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": STATE_VERSION,
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
            "err_s": self.err_s,
            "err_v": self.err_v,
            "safe_s": self.safe_s,
            "safe_v": self.safe_v,
            "err_clusters": {k: list(v) for k, v in sorted(self.err_clusters.items())},
            "err_v_plain": self.err_v_plain,
            "safe_v_plain": self.safe_v_plain,
            "error_max_log_lr": self.error_max_log_lr,
            "run_s": self.run_s,
            "run_v": self.run_v,
            "run_max_log_lr": self.run_max_log_lr,
            "stage_canary": self.stage_canary.to_dict(),
            "stage_stable": self.stage_stable.to_dict(),
            "last_backlog_canary": self.last_backlog_canary,
            "last_backlog_stable": self.last_backlog_stable,
            "late_inconclusive": self.late_inconclusive,
            "stage_groups": {k: list(v) for k, v in sorted(self.stage_groups.items())},
            "stage_rule_max": dict(sorted(self.stage_rule_max.items())),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AnalysisState:
        """Read a stored state, version 1 (before issue 10) or 2."""
        lv = d.get("last_verdict")
        version = int(d.get("v", 1))
        if version > STATE_VERSION:
            raise ValueError(f"analysis state version {version} is newer than this code")
        clusters = {
            str(k): (float(v[0]), float(v[1]), float(v[2]), float(v[3]))
            for k, v in (d.get("err_clusters") or {}).items()
        }
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
            err_s=float(d.get("err_s", 0.0)),
            err_v=float(d.get("err_v", 0.0)),
            safe_s=float(d.get("safe_s", 0.0)),
            safe_v=float(d.get("safe_v", 0.0)),
            err_clusters=clusters,
            err_v_plain=float(d.get("err_v_plain", 0.0)),
            safe_v_plain=float(d.get("safe_v_plain", 0.0)),
            error_max_log_lr=float(d.get("error_max_log_lr", 0.0)),
            run_s=float(d.get("run_s", 0.0)),
            run_v=float(d.get("run_v", 0.0)),
            run_max_log_lr=float(d.get("run_max_log_lr", 0.0)),
            stage_canary=LaneTotals.from_dict(d.get("stage_canary")),
            stage_stable=LaneTotals.from_dict(d.get("stage_stable")),
            last_backlog_canary=d.get("last_backlog_canary"),
            last_backlog_stable=d.get("last_backlog_stable"),
            late_inconclusive=int(d.get("late_inconclusive", 0)),
            stage_groups={
                str(k): (int(v[0]), int(v[1]), int(v[2]), int(v[3]))
                for k, v in (d.get("stage_groups") or {}).items()
            },
            stage_rule_max={
                str(k): float(v) for k, v in (d.get("stage_rule_max") or {}).items()
            },
        )
