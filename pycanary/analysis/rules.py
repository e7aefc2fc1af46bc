"""Threshold rules of the plan, judged on the current stage's totals."""

from __future__ import annotations

from pycanary.plan import StageSettings
from pycanary.stats import count_above as _count_above
from pycanary.stats import excess_log_lr as _excess_log_lr
from pycanary.stats import p_from_log_lr as _p_from_log_lr
from pycanary.stats import quantile as _quantile

from .evidence import LATENCY_Q
from .state import LaneTotals
from .types import LaneStats, RuleResult, Verdict, _ms, _pct


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

