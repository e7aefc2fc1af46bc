"""The deployment-wide sequential tests (error rate, run time): always-valid evidence."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from pycanary.stats import (
    logsumexp as _logsumexp,
)
from pycanary.stats import (
    p_from_log_lr as _p_from_log_lr,
)

from .types import LaneStats, RuleResult, Verdict

if TYPE_CHECKING:
    from pycanary.plan import Plan, StageSettings

    from .state import AnalysisState

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

