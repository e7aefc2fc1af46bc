"""Canary analysis: judge the canary lane against the stable lane, one check at a time.

Pure by design (docs/design.md 1a): lane snapshots and the previous ``AnalysisState`` come in, an
``Analysis`` and the next state go out. No Redis and no clock, so the controller can store the
state anywhere, a restarted controller continues where the old one stopped, and the bench can
run thousands of simulated deployments through exactly this code.

Data windows. Each call receives the counts of the window since the previous check (disjoint,
consecutive windows; never overlapping ones, which would count the same jobs twice). The state
accumulates them two ways:

* per deployment, for the two sequential tests. An always-valid test is valid only when its
  statistic is built from *all* the data since it started; restarting it every stage would
  spend the error budget once per stage, and testing a sliding window would let the same
  evidence be re-tested forever. The tests are stratified by window (each window is compared
  within itself, then the evidence is multiplied up), so changes of weight between stages or
  of the baseline over the day do not bias them.
* per stage, for the threshold rules of the plan (``max_error_rate`` and friends): their
  thresholds are per stage, and "the canary's error rate during this stage" is what a person
  reading the plan means.

Rule semantics. A threshold rule PASSes when the observed value is within its threshold,
FAILs when it is beyond it *and* the excess is significant by an always-valid test at
``statistical.threshold_alpha``, and is INCONCLUSIVE in between (beyond the threshold on thin
evidence) or with fewer than ``min_samples`` attempts. INCONCLUSIVE holds promotion but does
not count towards rollback, so noise near a threshold delays a rollout instead of killing it.

Sequential tests (in the manner of Kayenta: judge the canary against stable, one-sided,
"canary worse"):

* ``stat_error_rate``: within each window, given the total failures E of both lanes, the
  canary's share of them is Binomial(E, q) with q = theta*pi / (theta*pi + 1 - pi), where pi is
  the canary's share of attempts and theta the failure-rate ratio. Under H0 (theta <= 1) the
  likelihood ratio against theta_k has expectation <= 1 (exactly 1 for Poisson counts; below
  1 for Bernoulli attempts, whose hypergeometric share is less dispersed than the binomial),
  so the product over windows is a non-negative supermartingale. A fixed mixture over a grid
  of ratios is one too, and Ville's inequality bounds the chance it *ever* reaches 1/alpha by
  alpha: that is what makes ~90 looks (or any number) safe. This is the two-proportion test
  of the brief, in conditional (exact, not Gaussian) form.
* ``stat_run_time``: a Mann-Whitney U per window on the two run-time histograms, ties counted
  at bucket midranks with the tie-corrected variance. Each window gives an estimate of
  P(canary slower) - 1/2 and its null variance; their inverse-variance weighted sum is (by
  the CLT, windows of >= a few dozen jobs) a Gaussian random walk under H0, tested with a
  half-normal mixture SPRT (mSPRT), closed form. Valid asymptotically, like every rank test.

Always-valid p-values are 1/max(Lambda) so far: they only go down, so a crossed test stays
crossed, which is why ``statistical.decisive`` may roll back without the usual
``failure_threshold`` debounce.

Known limit: the error test treats attempts as independent. A poison job retried in one lane,
or a multi-step workflow pinned to one lane by its sticky key, clusters failures there; heavy
clustering under identical versions can push the false-alarm rate above alpha.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from pycanary import histogram
from pycanary.plan import Plan, StageSettings, format_duration
from pycanary.stats import (
    count_above as _count_above,
)
from pycanary.stats import (
    excess_log_lr as _excess_log_lr,
)
from pycanary.stats import (
    half_normal_mixture_log_lr as _half_normal_mixture_log_lr,
)
from pycanary.stats import (
    logsumexp as _logsumexp,
)
from pycanary.stats import (
    mann_whitney as _mann_whitney,
)
from pycanary.stats import (
    merge as _merge,
)
from pycanary.stats import (
    p_from_log_lr as _p_from_log_lr,
)
from pycanary.stats import (
    quantile as _quantile,
)
from pycanary.stats import (
    quantiles as _quantiles,
)
from pycanary.stats import (
    shift_down as _shift_down,
)

__all__ = [
    "Action",
    "Analysis",
    "AnalysisState",
    "Decision",
    "LaneStats",
    "LaneTotals",
    "RuleResult",
    "Verdict",
    "decide",
    "evaluate",
    "should_rollback",
]

#: Failure-rate ratios the error test is a mixture over, with their prior weights. The smallest
#: sets the smallest regression the test pursues (about 1.2x: below that the 1.5x component
#: gains nothing); the weights favour the doublings a rollout most needs to catch quickly.
ERROR_RATIOS: tuple[float, ...] = (1.5, 2.0, 3.0, 5.0)
ERROR_WEIGHTS: tuple[float, ...] = (0.15, 0.45, 0.25, 0.15)
#: Share of statistical.alpha given to the error-rate test when both tests run. Failures are
#: rare events, so that test is short of evidence; the run-time test ranks thousands of jobs
#: per window and barely notices a smaller share. The two shares add up to alpha (Bonferroni).
ERROR_ALPHA_SHARE = 0.8
#: Prior scale of the run-time test's effect, on the P(canary slower) - 1/2 scale.
RUN_TIME_TAU = 0.1
#: The quantile that max_latency_increase compares.
LATENCY_Q = 0.95


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
    # --- new (issue 10/11, docs: the h10a/h10b interface) ---
    first_attempts: int = 0  # jobs whose FIRST attempt finished in the window (ok/failed/crashed)
    first_failed: int = 0  # of those, first attempts that failed or crashed
    crashed: int = 0  # attempts lost with their worker (reaped); also counted in `failed`
    units: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # unit -> (n, failed)
    routed: int | None = None  # jobs routed to this lane in the window; None = unknown
    weight_bp: int | None = None  # canary weight in force during the window
    cpu_hist: Mapping[int, int] = field(default_factory=dict)  # handler CPU us, histogram.py
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


# --------------------------------------------------------------------------------------------
# State


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


# --------------------------------------------------------------------------------------------
# Results


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


def _lane_summary(
    t: LaneTotals, window: LaneStats, attempts_total: int
) -> dict[str, float | int | str | None]:
    per_worker = None
    if window.workers > 0 and window.window_s > 0:
        per_worker = (window.ok + window.failed) / window.workers / window.window_s
    rate = 100.0 * t.failed / t.attempts if t.attempts else None
    p50, p95, p99 = _quantiles(t.run_hist, (0.5, 0.95, 0.99))
    return {
        "version": window.version,
        "attempts": t.attempts,
        "ok": t.ok,
        "failed": t.failed,
        "dead": t.dead,
        "error_rate_pct": _clean(rate),
        "run_p50_us": _clean(p50, 1),
        "run_p95_us": _clean(p95, 1),
        "run_p99_us": _clean(p99, 1),
        "wait_p95_us": _clean(_quantile(t.wait_hist, 0.95), 1),
        "jobs_per_s_per_worker": _clean(per_worker),
        "workers": window.workers,
        "backlog": window.backlog,
        "deployment_attempts": attempts_total,
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


# --------------------------------------------------------------------------------------------
# Threshold rules (per stage)


def _need(n_c: int, n_s: int | None, min_samples: int, what: str) -> str | None:
    if n_c < min_samples:
        return f"only {n_c} canary {what} this stage, need min_samples {min_samples}"
    if n_s is not None and n_s < min_samples:
        return f"only {n_s} stable {what} this stage, need min_samples {min_samples}"
    return None


def _excess_result(name: str, obs: dict[str, float | int | str | None], thr: float,
                   alpha: float, over: str, log_lr: float) -> RuleResult:
    """A threshold rule whose observed figure is over its threshold: FAIL once the excess is
    significant (always-valid p <= alpha), INCONCLUSIVE until then, so noise does not fail."""
    p = _p_from_log_lr(log_lr)
    obs["p_value"] = p
    if p <= alpha:
        return RuleResult(name, Verdict.FAIL, obs, thr, f"{over}, p={p:.2g}")
    return RuleResult(name, Verdict.INCONCLUSIVE, obs, thr,
                      f"{over} but not yet significant (p={p:.2g})")


def _rule_max_error_rate(thr: float, c: LaneTotals, cfg: StageSettings, alpha: float) -> RuleResult:
    n, x = c.attempts, c.failed
    rate = 100.0 * x / n if n else None
    obs: dict[str, float | int | str | None] = {"canary_error_rate_pct": rate, "canary_attempts": n}
    short = _need(n, None, cfg.min_samples, "attempts")
    if short:
        return RuleResult("max_error_rate", Verdict.INCONCLUSIVE, obs, thr, short)
    assert rate is not None
    what = f"canary error rate {_pct(rate)} ({x} of {n} attempts this stage)"
    if rate <= thr:
        return RuleResult("max_error_rate", Verdict.PASS, obs, thr, f"{what} <= {_pct(thr)}")
    return _excess_result("max_error_rate", obs, thr, alpha, f"{what} > {_pct(thr)}",
                          _excess_log_lr(x, n, thr / 100.0))


def _rule_max_error_rate_increase(
    thr: float, c: LaneTotals, s: LaneTotals, cfg: StageSettings, alpha: float
) -> RuleResult:
    name = "max_error_rate_increase"
    rc = 100.0 * c.failed / c.attempts if c.attempts else None
    rs = 100.0 * s.failed / s.attempts if s.attempts else None
    inc = None if rc is None or rs is None else rc - rs
    obs: dict[str, float | int | str | None] = {
        "canary_error_rate_pct": rc,
        "stable_error_rate_pct": rs,
        "increase_pp": inc,
    }
    short = _need(c.attempts, s.attempts, cfg.min_samples, "attempts")
    if short:
        return RuleResult(name, Verdict.INCONCLUSIVE, obs, thr, short)
    assert inc is not None and rs is not None
    what = f"canary error rate {_pct(rc)} vs stable {_pct(rs)}: {inc:+.2f}pp"
    if inc <= thr:
        return RuleResult(name, Verdict.PASS, obs, thr, f"{what} <= +{thr:.2f}pp")
    # Stable's rate is taken as the reference: it is the lane with the most data at every
    # stage below 50%, and the rule only FAILs on an excess that is significant anyway.
    return _excess_result(name, obs, thr, alpha, f"{what} > +{thr:.2f}pp",
                          _excess_log_lr(c.failed, c.attempts, (rs + thr) / 100.0))


def _rule_max_latency_increase(
    thr: float, c: LaneTotals, s: LaneTotals, cfg: StageSettings, alpha: float
) -> RuleResult:
    name = "max_latency_increase"
    n_c = sum(c.run_hist.values())
    n_s = sum(s.run_hist.values())
    pc = _quantile(c.run_hist, LATENCY_Q)
    ps = _quantile(s.run_hist, LATENCY_Q)
    inc = None if pc is None or ps is None or ps <= 0 else (pc / ps - 1.0) * 100.0
    obs: dict[str, float | int | str | None] = {
        "canary_p95_us": pc,
        "stable_p95_us": ps,
        "increase_pct": inc,
    }
    short = _need(n_c, n_s, cfg.min_samples, "run times")
    if short:
        return RuleResult(name, Verdict.INCONCLUSIVE, obs, thr, short)
    assert inc is not None and ps is not None
    what = f"canary p95 run time {_ms(pc)} vs stable {_ms(ps)}: {inc:+.1f}%"
    if inc <= thr:
        return RuleResult(name, Verdict.PASS, obs, thr, f"{what} <= +{thr:g}%")
    # "p95 above T" is "more than 5% of canary run times above T": a binomial question whose
    # always-valid answer needs no distributional assumption about run times.
    limit = ps * (1.0 + thr / 100.0)
    above = _count_above(c.run_hist, limit)
    obs["canary_share_above_limit"] = above / n_c
    return _excess_result(name, obs, thr, alpha, f"{what} > +{thr:g}%",
                          _excess_log_lr(above, n_c, 1.0 - LATENCY_Q))


def _rule_max_throughput_decrease(
    thr: float, stable: LaneStats, canary: LaneStats, prev_backlog: int | None
) -> RuleResult:
    name = "max_throughput_decrease"
    done_c = canary.ok + canary.failed
    done_s = stable.ok + stable.failed
    obs: dict[str, float | int | str | None] = {
        "canary_backlog": canary.backlog,
        "canary_backlog_before": prev_backlog,
        "canary_workers": canary.workers,
        "stable_workers": stable.workers,
    }
    # A lane that keeps up processes what arrives, so its jobs/s per worker measures demand,
    # not capacity: only a lane falling behind says anything about the version's speed.
    growing = canary.backlog > done_c and (prev_backlog is None or canary.backlog > prev_backlog)
    if not growing:
        return RuleResult(
            name, Verdict.PASS, obs, thr, f"canary lane keeps up (backlog {canary.backlog})"
        )
    if canary.workers <= 0:
        return RuleResult(
            name,
            Verdict.INCONCLUSIVE,
            obs,
            thr,
            f"canary backlog grows to {canary.backlog} with no live canary workers",
        )
    if stable.workers <= 0 or canary.window_s <= 0 or stable.window_s <= 0 or done_s <= 0:
        return RuleResult(
            name, Verdict.INCONCLUSIVE, obs, thr, "no stable throughput to compare with"
        )
    tc = done_c / canary.workers / canary.window_s
    ts = done_s / stable.workers / stable.window_s
    dec = (1.0 - tc / ts) * 100.0
    obs.update({"canary_per_worker": tc, "stable_per_worker": ts, "decrease_pct": dec})
    what = (
        f"canary lane falls behind (backlog {prev_backlog}->{canary.backlog}); "
        f"{tc:.2f} vs {ts:.2f} jobs/s per worker ({-dec:+.1f}%)"
    )
    if dec <= thr:
        return RuleResult(name, Verdict.PASS, obs, thr, f"{what}, within -{thr:g}%")
    return RuleResult(name, Verdict.FAIL, obs, thr, f"{what}, beyond -{thr:g}%")


# --------------------------------------------------------------------------------------------
# Sequential tests (per deployment)


def _error_update(
    llr: tuple[float, ...], ratios: tuple[float, ...], stable: LaneStats, canary: LaneStats
) -> tuple[float, ...]:
    n_c = canary.ok + canary.failed
    n_s = stable.ok + stable.failed
    x = canary.failed
    e = canary.failed + stable.failed
    if n_c <= 0 or n_s <= 0 or e <= 0:
        return llr
    pi = n_c / (n_c + n_s)
    out = []
    for cur, r in zip(llr, ratios, strict=True):
        q = r * pi / (r * pi + 1.0 - pi)
        out.append(cur + x * math.log(q / pi) + (e - x) * math.log((1.0 - q) / (1.0 - pi)))
    return tuple(out)


def _error_log_lambda(llr: tuple[float, ...], ratios: tuple[float, ...]) -> float:
    # A state stored with another grid keeps its own ratios; weigh those evenly.
    weights = ERROR_WEIGHTS if ratios == ERROR_RATIOS else (1.0 / len(ratios),) * len(ratios)
    return _logsumexp(v + math.log(w) for v, w in zip(llr, weights, strict=True))


def _stat_rule(name: str, enough: bool, crossed: bool, obs: dict[str, Any], alpha: float,
               short: str, fail: str, ok: str) -> RuleResult:
    """One always-valid test's result: INCONCLUSIVE before min_samples, a decisive FAIL once
    the likelihood ratio crossed 1/alpha, else PASS."""
    if not enough:
        return RuleResult(name, Verdict.INCONCLUSIVE, obs, alpha, short)
    if crossed:
        return RuleResult(name, Verdict.FAIL, obs, alpha, fail, decisive=True)
    return RuleResult(name, Verdict.PASS, obs, alpha, ok)


def _stat_rules(st: AnalysisState, plan: Plan, cfg: StageSettings) -> list[RuleResult]:
    sp = plan.statistical
    if not sp.enabled:
        return []
    if not (sp.error_rate or sp.run_time):
        return []
    share = ERROR_ALPHA_SHARE if sp.error_rate and sp.run_time else 1.0
    enough = st.canary_attempts >= cfg.min_samples and st.stable_attempts >= cfg.min_samples
    short = (
        f"only {st.canary_attempts} canary / {st.stable_attempts} stable attempts so far, "
        f"need min_samples {cfg.min_samples}"
    )
    out: list[RuleResult] = []
    if sp.error_rate:
        alpha = sp.alpha * share
        bound = math.log(1.0 / alpha)
        p = _p_from_log_lr(st.error_max_log_lr)
        rc = st.canary_failed / st.canary_attempts if st.canary_attempts else None
        rs = st.stable_failed / st.stable_attempts if st.stable_attempts else None
        ratio = rc / rs if rc is not None and rs else None
        obs: dict[str, float | int | str | None] = {
            "canary_error_rate_pct": None if rc is None else 100 * rc,
            "stable_error_rate_pct": None if rs is None else 100 * rs,
            "rate_ratio": ratio,
            "p_value": p,
            "canary_attempts": st.canary_attempts,
        }
        ratio_txt = "n/a" if ratio is None else f"{ratio:.2f}"
        out.append(_stat_rule(
            "stat_error_rate", enough, st.error_max_log_lr >= bound, obs, alpha, short,
            f"canary fails more often than stable (ratio {ratio_txt}), always-valid "
            f"p={p:.2g} <= {alpha:g} over {st.canary_attempts} canary attempts",
            f"no evidence canary fails more often (ratio {ratio_txt}, p={p:.2g})"))
    if sp.run_time:
        alpha = sp.alpha * (1.0 - share) if sp.error_rate else sp.alpha
        bound = math.log(1.0 / alpha)
        p = _p_from_log_lr(st.run_max_log_lr)
        auc = 0.5 + st.run_s / st.run_v if st.run_v > 0 else None
        obs = {
            "p_canary_slower": auc,
            "tolerance_pct": sp.run_time_tolerance,
            "p_value": p,
            "canary_attempts": st.canary_attempts,
        }
        auc_txt = "n/a" if auc is None else f"{auc:.3f}"
        out.append(_stat_rule(
            "stat_run_time", enough, st.run_max_log_lr >= bound, obs, alpha, short,
            f"canary runs more than {sp.run_time_tolerance:g}% slower than stable "
            f"(P(slower after tolerance)={auc_txt}), always-valid p={p:.2g} <= {alpha:g}",
            f"no evidence canary runs more than {sp.run_time_tolerance:g}% slower "
            f"(P(slower after tolerance)={auc_txt}, p={p:.2g})"))
    return out


# --------------------------------------------------------------------------------------------
# Entry point


def evaluate(
    stage: int,
    plan: Plan,
    stable: LaneStats,
    canary: LaneStats,
    state: AnalysisState | None,
    now_s: float,
) -> tuple[Analysis, AnalysisState]:
    """Run one check of stage ``stage`` on the window ending at ``now_s``.

    Returns the analysis and the state to pass to the next check. ``state`` None starts a
    deployment. The windows given must not overlap earlier ones (see the module docstring).
    """
    if stable.lane != "stable" or canary.lane != "canary":
        raise ValueError(f"lanes swapped or unknown: got {stable.lane!r} and {canary.lane!r}")
    cfg = plan.settings(stage)
    st = state or AnalysisState()
    window_s = max(stable.window_s, canary.window_s, 0.0)
    if st.started_s is None:
        st = replace(st, started_s=now_s - window_s)
    if st.stage != stage:
        st = st.enter_stage(stage, now_s - window_s)

    # Deployment-wide sequential evidence: every window, no matter what the rules say.
    n_c = canary.ok + canary.failed
    n_s = stable.ok + stable.failed
    llr = _error_update(st.error_llr, st.error_ratios, stable, canary)
    err_now = _error_log_lambda(llr, st.error_ratios)
    # Compare canary run times shrunk by the tolerance: under H0 ("canary at most tol slower")
    # the shrunk canary is no slower than stable, so only a larger slowdown builds evidence.
    shift = math.log1p(plan.statistical.run_time_tolerance / 100.0) / math.log(histogram.GROWTH)
    d_auc, var = _mann_whitney(_shift_down(canary.run_hist, shift), stable.run_hist)
    run_s, run_v = st.run_s, st.run_v
    if var > 0:
        run_s += d_auc / var
        run_v += 1.0 / var
    run_now = _half_normal_mixture_log_lr(run_s, run_v, RUN_TIME_TAU)
    st = replace(
        st,
        checks=st.checks + 1,
        canary_attempts=st.canary_attempts + n_c,
        canary_failed=st.canary_failed + canary.failed,
        stable_attempts=st.stable_attempts + n_s,
        stable_failed=st.stable_failed + stable.failed,
        error_llr=llr,
        error_max_log_lr=max(st.error_max_log_lr, err_now),
        run_s=run_s,
        run_v=run_v,
        run_max_log_lr=max(st.run_max_log_lr, run_now),
        stage_canary=st.stage_canary.add(canary),
        stage_stable=st.stage_stable.add(stable),
    )
    prev_backlog = st.last_backlog_canary
    st = replace(st, last_backlog_canary=canary.backlog, last_backlog_stable=stable.backlog)

    rules: list[RuleResult] = []
    talpha = plan.statistical.threshold_alpha
    if n_c == 0 or n_s == 0:
        lane = "canary" if n_c == 0 else "stable"
        verdict = {
            "hold": Verdict.INCONCLUSIVE,
            "fail": Verdict.FAIL,
            "pass": Verdict.PASS,
        }[cfg.on_no_data]
        rules.append(
            RuleResult(
                "data",
                verdict,
                {
                    "canary_attempts": n_c,
                    "stable_attempts": n_s,
                    "canary_backlog": canary.backlog,
                    "canary_workers": canary.workers,
                },
                None,
                f"no finished {lane} attempts in the last {format_duration(window_s)} "
                f"(on_no_data: {cfg.on_no_data})",
            )
        )
    else:
        c, s = st.stage_canary, st.stage_stable
        if cfg.max_error_rate is not None:
            rules.append(_rule_max_error_rate(cfg.max_error_rate, c, cfg, talpha))
        if cfg.max_error_rate_increase is not None:
            rules.append(
                _rule_max_error_rate_increase(cfg.max_error_rate_increase, c, s, cfg, talpha)
            )
        if cfg.max_latency_increase is not None:
            rules.append(_rule_max_latency_increase(cfg.max_latency_increase, c, s, cfg, talpha))
        if cfg.max_throughput_decrease is not None:
            rules.append(
                _rule_max_throughput_decrease(
                    cfg.max_throughput_decrease, stable, canary, prev_backlog
                )
            )
        rules.extend(_stat_rules(st, plan, cfg))

    verdicts = {r.verdict for r in rules}
    if Verdict.FAIL in verdicts:
        verdict = Verdict.FAIL
    elif Verdict.INCONCLUSIVE in verdicts:
        verdict = Verdict.INCONCLUSIVE
    else:
        verdict = Verdict.PASS
    # INCONCLUSIVE neither extends nor breaks a run of FAILs: a check without evidence says
    # nothing about whether the failure went away.
    if verdict is Verdict.FAIL:
        streak = st.fail_streak + 1
    elif verdict is Verdict.PASS:
        streak = 0
    else:
        streak = st.fail_streak
    st = replace(st, fail_streak=streak, last_verdict=verdict)

    failed = [r for r in rules if r.verdict is Verdict.FAIL]
    if failed:
        reason = "; ".join(f"{r.rule}: {r.reason}" for r in failed)
    elif verdict is Verdict.INCONCLUSIVE:
        reason = "; ".join(
            f"{r.rule}: {r.reason}" for r in rules if r.verdict is Verdict.INCONCLUSIVE
        )
    elif not rules:
        # The plan turned every check off: a timed ramp is what it asked for.
        reason = "no rules to judge (no conditions, statistical tests off): timed ramp"
    else:
        reason = f"all {len(rules)} rules pass"
    analysis = Analysis(
        verdict=verdict,
        stage=stage,
        now_s=now_s,
        rules=tuple(rules),
        stable=_lane_summary(st.stage_stable, stable, st.stable_attempts),
        canary=_lane_summary(st.stage_canary, canary, st.canary_attempts),
        fail_streak=streak,
        failure_threshold=cfg.failure_threshold,
        reason=reason,
        decisive=any(r.decisive for r in failed),
    )
    return analysis, st


# --------------------------------------------------------------------------------------------
# Decisions


class Action(StrEnum):
    """What the controller should do after a check."""

    CONTINUE = "continue"  # stage still running
    HOLD = "hold"  # stage time is up but the latest check did not PASS: keep looking
    PROMOTE = "promote"  # to next_stage, or to 100% when next_stage is None
    AWAIT_APPROVAL = "await_approval"  # stage passed, auto_promote is false
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class Decision:
    """The controller's next step and the one-line reason recorded in the event log."""

    action: Action
    reason: str
    stage: int
    next_stage: int | None = None
    rules: tuple[RuleResult, ...] = ()
    #: What led to the action, for code (the reason is for people): "analysis" (the checks),
    #: "deadline" (the plan's deadline passed) or "stage_time" (the stage's time elapsed).
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
        where = "100%" if nxt is None else f"stage {nxt} ({plan.stages[nxt].percentage:g}%)"
        if not cfg.auto_promote:
            return Decision(
                Action.AWAIT_APPROVAL,
                f"stage {i} passed after {format_duration(elapsed)}; promote to {where} "
                "needs approval",
                i,
                nxt,
            )
        return Decision(
            Action.PROMOTE,
            f"stage {i} passed after {format_duration(elapsed)}; promoting to {where}",
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
            f"deadline {format_duration(plan.deadline)} passed in stage {i} "
            f"(latest verdict {analysis.verdict.value}: {analysis.reason})",
            i,
            cause="deadline",
        )
    if elapsed >= cfg.duration_s:
        return Decision(
            Action.HOLD,
            f"stage {i} time is up but the latest check is {analysis.verdict.value}: "
            f"{analysis.reason}",
            i,
            cause="stage_time",
        )
    return Decision(
        Action.CONTINUE,
        f"stage {i}: {format_duration(elapsed)} of {format_duration(cfg.duration_s)}",
        i,
    )
