"""Threshold rules of the plan, judged on the current stage's totals, and the sample-ratio check.

Every rule that can FAIL on noise is a test with its own part of the deployment's one alpha
budget (evidence.alpha_budget), always-valid over the stage's checks:

* relative rules (``max_error_rate_increase``, ``max_latency_increase``, ``max_cpu_increase``)
  are two-sample non-inferiority tests: the difference is estimated from both lanes and its
  variance counts stable's noise too (the old rules took stable's figure as a known constant,
  which at low traffic and heavy tails failed healthy canaries);
* the absolute cap ``max_error_rate`` FAILs only when the canary is significantly over the cap
  *and* significantly worse than stable: an outage that fails both lanes is reported as a
  shared problem (INCONCLUSIVE, which holds the stage), not blamed on the canary.

Error rules judge first-attempt outcomes when the data plane counts them (one per job), else
attempts. A rule PASSes when its observed figure is within its threshold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from pycanary import histogram
from pycanary.plan import StageSettings
from pycanary.stats import count_above as _count_above
from pycanary.stats import excess_log_lr as _excess_log_lr
from pycanary.stats import half_normal_mixture_log_lr as _half_normal_mixture_log_lr
from pycanary.stats import merge as _merge
from pycanary.stats import p_from_log_lr as _p_from_log_lr
from pycanary.stats import quantile as _quantile
from pycanary.stats import shift_down as _shift_down

from .evidence import LATENCY_Q
from .state import LaneTotals
from .types import LaneStats, RuleResult, Verdict, _ms, _pct

#: Prior scales of the two-sample tests' effects: error-rate difference (proportion) and
#: difference of the shares above the pooled p95.
ERROR_DIFF_TAU = 0.1
SHARE_DIFF_TAU = 0.1
#: Sample-ratio check: |z| beyond this *and* a relative deviation beyond SRM_REL is a mismatch
#: (sticky routing clusters jobs by key, so the binomial z alone would cry wolf).
SRM_Z = 5.0
SRM_REL = 0.25
SRM_MIN_ROUTED = 200


def _need(n_c: int, n_s: int | None, min_samples: int, what: str) -> str | None:
    if n_c < min_samples:
        return f"only {n_c} canary {what} this stage, need min_samples {min_samples}"
    if n_s is not None and n_s < min_samples:
        return f"only {n_s} stable {what} this stage, need min_samples {min_samples}"
    return None


def two_sample_log_lr(d: float, var: float, tau: float) -> float:
    """Always-valid (asymptotic) evidence that a difference estimate d with variance var is
    above 0: the half-normal mixture of the Gaussian walk d/var in information 1/var."""
    if var <= 0:
        return math.inf if d > 0 else 0.0
    return _half_normal_mixture_log_lr(d / var, 1.0 / var, tau)


def _rate_var(x: int, n: int) -> float:
    p = (x + 0.5) / (n + 1.0)  # never 0: a lane with no failures yet is not certain
    return p * (1.0 - p) / n if n > 0 else math.inf


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


Groups = Mapping[str, tuple[int, int, int, int]]


def compared_rates(c: LaneTotals, s: LaneTotals, groups: Groups | None
                   ) -> tuple[float, float, float, float]:
    """(canary rate, stable rate, their variances), stable's standardised to the canary's mix.

    With strata (tenants at their own weights) the lanes are different populations: stable's
    rate is re-weighted to the canary's share of each comparable group, so a tenant that is
    worse on both versions does not make the canary look worse. Without units: plain rates.
    """
    cells = [g for g in (groups or {}).values() if g[0] > 0 and g[2] > 0]
    if not cells:
        return (c.jobs_failed / c.jobs, s.jobs_failed / s.jobs,
                _rate_var(c.jobs_failed, c.jobs), _rate_var(s.jobs_failed, s.jobs))
    n_c = sum(g[0] for g in cells)
    x_c = sum(g[1] for g in cells)
    rs = vs = 0.0
    for g in cells:
        w = g[0] / n_c
        rs += w * g[3] / g[2]
        vs += w * w * _rate_var(g[3], g[2])
    return x_c / n_c, rs, _rate_var(x_c, n_c), vs


def _rule_max_error_rate(thr: float, c: LaneTotals, s: LaneTotals, cfg: StageSettings,
                         alpha: float, groups: Groups | None = None) -> RuleResult:
    name = "max_error_rate"
    n, x = c.jobs, c.jobs_failed
    rate = 100.0 * x / n if n else None
    rs = 100.0 * s.jobs_failed / s.jobs if s.jobs else None
    obs: dict[str, float | int | str | None] = {
        "canary_error_rate_pct": rate, "canary_attempts": n, "stable_error_rate_pct": rs}
    short = _need(n, None, cfg.min_samples, "jobs")
    if short:
        return RuleResult(name, Verdict.INCONCLUSIVE, obs, thr, short)
    assert rate is not None
    what = f"canary error rate {_pct(rate)} ({x} of {n} jobs this stage)"
    if rate <= thr:
        return RuleResult(name, Verdict.PASS, obs, thr, f"{what} <= {_pct(thr)}")
    over = _excess_log_lr(x, n, thr / 100.0)
    p_over = _p_from_log_lr(over)
    obs["p_value"] = p_over
    if p_over > alpha:
        return RuleResult(name, Verdict.INCONCLUSIVE, obs, thr,
                          f"{what} > {_pct(thr)} but not yet significant (p={p_over:.2g})")
    # Over the cap for sure; the canary's fault only if it is also worse than stable.
    worse = 0.0
    if s.jobs:
        r_c, r_s, v_c, v_s = compared_rates(c, s, groups)
        worse = two_sample_log_lr(r_c - r_s, v_c + v_s, ERROR_DIFF_TAU)
    p_worse = _p_from_log_lr(worse)
    obs["p_worse_than_stable"] = p_worse
    if p_worse <= alpha:
        return RuleResult(name, Verdict.FAIL, obs, thr,
                          f"{what} > {_pct(thr)} and worse than stable {_pct(rs)}, "
                          f"p={max(p_over, p_worse):.2g}")
    if rs is not None and rs > thr:
        # Both lanes are over the cap: an outage, a bad dependency, a bad hour. Reported as
        # such; the canary is judged against stable (the error test), not blamed for it.
        return RuleResult(name, Verdict.PASS, obs, thr,
                          f"{what} > {_pct(thr)}, but stable is at {_pct(rs)} too: a problem "
                          f"shared by both lanes, not the canary's (p worse than stable="
                          f"{p_worse:.2g})")
    return RuleResult(name, Verdict.INCONCLUSIVE, obs, thr,
                      f"{what} > {_pct(thr)}, stable at {_pct(rs)}; canary not yet "
                      f"significantly worse than stable (p={p_worse:.2g})")


def _rule_max_error_rate_increase(
    thr: float, c: LaneTotals, s: LaneTotals, cfg: StageSettings, alpha: float,
    groups: Groups | None = None
) -> RuleResult:
    name = "max_error_rate_increase"
    rc = rs = None
    var = 0.0
    if c.jobs and s.jobs:
        r_c, r_s, v_c, v_s = compared_rates(c, s, groups)
        rc, rs, var = 100.0 * r_c, 100.0 * r_s, v_c + v_s
    inc = None if rc is None or rs is None else rc - rs
    obs: dict[str, float | int | str | None] = {
        "canary_error_rate_pct": rc,
        "stable_error_rate_pct": rs,
        "increase_pp": inc,
    }
    short = _need(c.jobs, s.jobs, cfg.min_samples, "jobs")
    if short:
        return RuleResult(name, Verdict.INCONCLUSIVE, obs, thr, short)
    assert inc is not None and rs is not None
    what = f"canary error rate {_pct(rc)} vs stable {_pct(rs)}: {inc:+.2f}pp"
    if inc <= thr:
        return RuleResult(name, Verdict.PASS, obs, thr, f"{what} <= +{thr:.2f}pp")
    # Two-sample: both rates are estimates, so both variances count.
    return _excess_result(name, obs, thr, alpha, f"{what} > +{thr:.2f}pp",
                          two_sample_log_lr((inc - thr) / 100.0, var, ERROR_DIFF_TAU))


def _rule_quantile_increase(
    name: str, what_txt: str, thr: float, hist_c: Mapping[int, int],
    hist_s: Mapping[int, int], cfg: StageSettings, alpha: float
) -> RuleResult:
    """Canary p95 at most thr% over stable's p95, as a two-sample test.

    Shrink canary values by the tolerance; under H0 ("canary p95 at most thr% above
    stable's") the shrunk canary has no more mass above any high quantile than stable.
    Take T, the p95 of the pooled (shrunk canary + stable) values (symmetric in the lanes, so
    it favours neither), and compare the shares above T: a two-proportion difference whose
    variance counts both lanes' noise.
    """
    n_c = sum(hist_c.values())
    n_s = sum(hist_s.values())
    pc = _quantile(hist_c, LATENCY_Q)
    ps = _quantile(hist_s, LATENCY_Q)
    inc = None if pc is None or ps is None or ps <= 0 else (pc / ps - 1.0) * 100.0
    obs: dict[str, float | int | str | None] = {
        "canary_p95_us": pc,
        "stable_p95_us": ps,
        "increase_pct": inc,
    }
    short = _need(n_c, n_s, cfg.min_samples, "run times" if name.endswith("latency_increase")
                  else "samples")
    if short:
        return RuleResult(name, Verdict.INCONCLUSIVE, obs, thr, short)
    assert inc is not None and ps is not None
    what = f"canary p95 {what_txt} {_ms(pc)} vs stable {_ms(ps)}: {inc:+.1f}%"
    if inc <= thr:
        return RuleResult(name, Verdict.PASS, obs, thr, f"{what} <= +{thr:g}%")
    shift = math.log1p(thr / 100.0) / math.log(histogram.GROWTH)
    shrunk = _shift_down(hist_c, shift)
    pooled = _merge(shrunk, {float(k): float(v) for k, v in hist_s.items()})  # type: ignore[arg-type]
    t = _quantile(pooled, LATENCY_Q)  # type: ignore[arg-type]
    if t is None:
        return RuleResult(name, Verdict.INCONCLUSIVE, obs, thr, what)
    a_c = _count_above(shrunk, t)  # type: ignore[arg-type]
    a_s = _count_above(hist_s, t)
    p = (a_c + a_s) / (n_c + n_s)
    var = max(p * (1.0 - p), 0.5 / (n_c + n_s)) * (1.0 / n_c + 1.0 / n_s)
    obs["canary_share_above_limit"] = a_c / n_c
    obs["stable_share_above_limit"] = a_s / n_s
    return _excess_result(name, obs, thr, alpha, f"{what} > +{thr:g}%",
                          two_sample_log_lr(a_c / n_c - a_s / n_s, var, SHARE_DIFF_TAU))


def _rule_max_latency_increase(
    thr: float, c: LaneTotals, s: LaneTotals, cfg: StageSettings, alpha: float
) -> RuleResult:
    return _rule_quantile_increase("max_latency_increase", "run time", thr, c.run_hist,
                                   s.run_hist, cfg, alpha)


def _rule_max_cpu_increase(
    thr: float, c: LaneTotals, s: LaneTotals, cfg: StageSettings, alpha: float
) -> RuleResult:
    return _rule_quantile_increase("max_cpu_increase", "CPU time", thr, c.cpu_hist,
                                   s.cpu_hist, cfg, alpha)


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


def _rule_sample_ratio(c: LaneTotals, s: LaneTotals, stable: LaneStats, canary: LaneStats,
                       strata_weights: Mapping[str, int] | None) -> RuleResult | None:
    """Routed share against the weight in force, and finished against routed jobs per lane.

    None when the data plane does not report ``routed``. A mismatch is INCONCLUSIVE, never
    FAIL: it says the comparison is not trustworthy (a canary lane nobody consumes, a lane
    losing jobs, routing that does not follow the weight), not that the canary is worse.
    """
    if c.routed is None or s.routed is None:
        return None
    name = "sample_ratio"
    weight = canary.weight_bp if canary.weight_bp is not None else stable.weight_bp
    total = c.routed + s.routed
    obs: dict[str, float | int | str | None] = {
        "canary_routed": c.routed, "stable_routed": s.routed,
        "canary_finished": c.routed_finished, "stable_finished": s.routed_finished,
        "weight_bp": weight,
    }
    problems: list[str] = []
    mixed = strata_weights is not None and any(
        w != weight for k, w in strata_weights.items() if k != "")
    if weight is not None and 0 < weight < 10_000 and not mixed and total >= SRM_MIN_ROUTED:
        w = weight / 10_000
        share = c.routed / total
        z = (c.routed - w * total) / math.sqrt(total * w * (1.0 - w))
        obs["routed_share_pct"] = 100.0 * share
        obs["z"] = z
        if abs(z) > SRM_Z and abs(share / w - 1.0) > SRM_REL:
            problems.append(f"canary got {100 * share:.2f}% of routed jobs, the weight is "
                            f"{weight / 100:g}%")
    for lane_name, t, snap in (("canary", c, canary), ("stable", s, stable)):
        routed = t.routed or 0
        if routed < SRM_MIN_ROUTED // 2:
            continue
        if t.routed_finished < 0.5 * routed and snap.backlog > 0:
            problems.append(f"{lane_name} lane finished {t.routed_finished} of {routed} jobs "
                            f"routed to it this stage (backlog {snap.backlog}): not consumed")
        elif routed - t.routed_finished - snap.backlog > max(50, 0.2 * routed):
            problems.append(f"{lane_name} lane finished {t.routed_finished} of {routed} jobs "
                            f"routed to it this stage with backlog {snap.backlog}: losing jobs")
    if problems:
        return RuleResult(name, Verdict.INCONCLUSIVE, obs, None,
                          "sample ratio mismatch: " + "; ".join(problems))
    return RuleResult(name, Verdict.PASS, obs, None, "routed and finished jobs match the weight")

