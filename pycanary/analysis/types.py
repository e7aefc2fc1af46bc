"""The analysis' value types: verdicts, one window of a lane, one rule's and one check's result."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Verdict(StrEnum):
    """Outcome of one rule or one whole check."""

    PASS = "PASS"
    FAIL = "FAIL"
    INCONCLUSIVE = "INCONCLUSIVE"


@dataclass(frozen=True)
class LaneStats:
    """What one lane did in the window since the previous check (disjoint windows)."""

    lane: str  # "stable" | "canary"
    version: str
    ok: int  # successful attempts finished in the window
    failed: int  # failed attempts finished in the window (each retry attempt counts)
    dead: int  # jobs dead-lettered in the window
    run_hist: Mapping[int, int]  # run-time histogram, buckets of pycanary/histogram.py
    wait_hist: Mapping[int, int]  # queue-wait histogram, same buckets; shown, not judged
    workers: int = 0  # live workers of that lane
    window_s: float = 0.0  # seconds covered
    backlog: int = 0  # lane length now
    # --- issue 10/11 (docs/statistics.md); all default to "unknown", so old callers work ---
    #: jobs whose FIRST attempt finished in the window (ok, failed or crashed): one per job,
    #: so a poison job retried in its lane counts once
    first_attempts: int = 0
    first_failed: int = 0  # of those, first attempts that failed or crashed
    crashed: int = 0  # attempts lost with their worker (reaped); also counted in ``failed``
    #: analysis units "<stratum>|<cluster>" -> (first_attempts, first_failed); their sums are
    #: first_attempts and first_failed. A cluster groups sticky keys, a stratum is a tenant
    #: with its own weight ("" for the rest)
    units: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    routed: int | None = None  # jobs routed to this lane in the window; None = unknown
    weight_bp: int | None = None  # canary weight in force during the window
    cpu_hist: Mapping[int, int] = field(default_factory=dict)  # handler CPU time per job
    rss_bytes: int | None = None  # sum of the lane's live workers' RSS, None = unknown


# --------------------------------------------------------------------------------------------
# Small numeric helpers (stdlib math only: the controller runs this for every deployment).


def _clean(x: float | None, digits: int = 6) -> float | None:
    """JSON has no inf/nan; round so stored analyses do not carry float noise."""
    if x is None or not math.isfinite(x):
        return None
    return round(x, digits)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}%"


def _ms(us: float | None) -> str:
    return "n/a" if us is None else f"{us / 1000:.1f}ms"



@dataclass(frozen=True)
class RuleResult:
    """One rule's verdict with the figures behind it, ready for the event log and the TUI."""

    rule: str
    verdict: Verdict
    observed: Mapping[str, float | int | str | None]
    threshold: float | None
    reason: str
    #: True for a sequential test that crossed its boundary: the FAIL cannot be noise within
    #: the test's alpha and will not revert, so it needs no debounce.
    decisive: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "verdict": self.verdict.value,
            "observed": {
                k: (_clean(v) if isinstance(v, float) else v) for k, v in self.observed.items()
            },
            "threshold": _clean(self.threshold),
            "reason": self.reason,
            "decisive": self.decisive,
        }



@dataclass(frozen=True)
class Analysis:
    """One check: overall verdict, every rule's result, and what each lane looked like.

    Lane figures are over the current stage (what the threshold rules judge), except
    throughput, workers and backlog, which are of the latest window.
    """

    verdict: Verdict
    stage: int
    now_s: float
    rules: tuple[RuleResult, ...]
    stable: Mapping[str, float | int | str | None]
    canary: Mapping[str, float | int | str | None]
    fail_streak: int
    failure_threshold: int
    reason: str
    decisive: bool = False

    @property
    def failed_rules(self) -> tuple[RuleResult, ...]:
        return tuple(r for r in self.rules if r.verdict is Verdict.FAIL)

    def rule(self, name: str) -> RuleResult | None:
        """The result of rule ``name`` in this check, if it ran."""
        return next((r for r in self.rules if r.rule == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value,
            "stage": self.stage,
            "now_s": self.now_s,
            "reason": self.reason,
            "decisive": self.decisive,
            "fail_streak": self.fail_streak,
            "failure_threshold": self.failure_threshold,
            "rules": [r.to_dict() for r in self.rules],
            "stable": dict(self.stable),
            "canary": dict(self.canary),
        }

