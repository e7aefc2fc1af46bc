"""The deployment-wide sequential tests (error rate, run time): always-valid evidence.

Error test (issue 10, docs/statistics.md). Per window and per stratum (tenants routed at the
same weight, merged; tenants forced to 0% or 100% left out), given the E first-attempt failures
of both lanes, the canary's expected share of them is pi, its share of first attempts. The
observed-minus-expected count D = x - pi*E has mean 0 when the versions fail alike, whatever
the base rate does (an outage that fails both lanes moves x and pi*E together). D is summed
per cluster of sticky keys over the whole deployment; the sum S is tested against the larger
of two variances:

* the model variance, sum of E*pi*(1-pi)*(N-E)/(N-1) (hypergeometric: the exact conditional
  variance of x given E when attempts are exchangeable), and
* the cluster-robust variance, K/(K-1) * sum over clusters of (S_k - S/K)^2: a key whose jobs
  always fail sits in one cluster, so its failures inflate this variance as much as they move
  S, and one bad customer gives |Z| about 1, not 10.

Z = S/sqrt(V) is a Gaussian random walk in V (time-uniform CLT); the half-normal mixture of
``stats.half_normal_mixture_log_lr`` turns it into an always-valid statistic whose running
maximum crossing log(1/alpha) is the FAIL. A shared bad moment inflates V once, by its own
size: it cannot pile up evidence against a later regression the way a product of
per-window likelihood ratios did (hundreds of nats "for no difference" from one outage).

Safety (promotion) is the same machinery under the margin: with q0 = m*pi/(m*pi + 1 - pi) the
share expected when the canary fails m = ``error_margin`` times as often, S0 = sum(x - q0*E)
drifts down when the canary is better than the margin; the error test PASSes only while the
mixture statistic of -S0 is above log(1/safety_alpha), i.e. while a confidence sequence
excludes ratios >= m. Before that it is INCONCLUSIVE: no evidence is not evidence of safety.

Windows without units (data planes before issue 10) use the model variance alone, on first
attempts when counted, else on attempts: the plain test.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pycanary.stats import half_normal_mixture_log_lr as _half_normal_mixture_log_lr
from pycanary.stats import p_from_log_lr as _p_from_log_lr

from .state import first_counts, has_first_attempts
from .types import LaneStats, RuleResult, Verdict

if TYPE_CHECKING:
    from pycanary.plan import Plan, StageSettings

    from .state import AnalysisState

#: Share of the statistical tests' alpha given to the error-rate test when both tests run.
#: Failures are rare events, so that test is short of evidence; the run-time test ranks
#: thousands of jobs per window and barely notices a smaller share (Bonferroni).
ERROR_ALPHA_SHARE = 0.8
#: Share of alpha the threshold rules get when the plan has any and statistical tests run;
#: it is split evenly over every (stage, rule) pair that can FAIL.
THRESHOLD_ALPHA_SHARE = 0.2
#: Prior scale of the error test's effect lambda (per failure, about log of the ratio).
ERROR_TAU = 1.0
#: Prior scale of the run-time test's effect, on the P(canary slower) - 1/2 scale.
RUN_TIME_TAU = 0.1
#: The quantile that max_latency_increase and max_cpu_increase compare.
LATENCY_Q = 0.95
#: Clusters with fewer than this many populated ones use the uncentred robust variance.
MIN_CENTRED_CLUSTERS = 4
#: With at least this many populated clusters the most extreme one is left out (one bad key).
MIN_TRIMMED_CLUSTERS = 8
#: Threshold rules that FAIL on a statistical test, and so share the alpha budget.
BUDGETED_RULES = ("max_error_rate", "max_error_rate_increase", "max_latency_increase",
                  "max_cpu_increase")


@dataclass(frozen=True)
class Budget:
    """One alpha budget per deployment, split over every rule that can FAIL on noise."""

    error: float
    run_time: float
    threshold: float  # each (stage, rule) pair's own share


_BUDGETS: dict[int, tuple[Plan, Budget]] = {}


def alpha_budget(plan: Plan) -> Budget:
    """Bonferroni split of ``statistical.alpha`` (docs/statistics.md, "One budget").

    Cached per plan object (plans are frozen): the controller checks ~50 deployments a tick.
    """
    hit = _BUDGETS.get(id(plan))
    if hit is not None and hit[0] is plan:
        return hit[1]
    budget = _alpha_budget(plan)
    if len(_BUDGETS) >= 256:
        _BUDGETS.clear()
    _BUDGETS[id(plan)] = (plan, budget)
    return budget


def _alpha_budget(plan: Plan) -> Budget:
    sp = plan.statistical
    err_on = sp.enabled and sp.error_rate
    run_on = sp.enabled and sp.run_time
    pairs = 0
    for i in range(len(plan.stages)):
        cfg = plan.settings(i)
        pairs += sum(getattr(cfg, name) is not None for name in BUDGETED_RULES)
    stat_total = sp.alpha
    thr_total = 0.0
    if pairs:
        if sp.threshold_alpha is not None:
            thr_total = sp.threshold_alpha
        elif err_on or run_on:
            thr_total = sp.alpha * THRESHOLD_ALPHA_SHARE
            stat_total = sp.alpha - thr_total
        else:
            thr_total = sp.alpha
    share = ERROR_ALPHA_SHARE if err_on and run_on else 1.0
    return Budget(
        error=stat_total * share if err_on else 0.0,
        run_time=stat_total * (1.0 - share if err_on else 1.0) if run_on else 0.0,
        threshold=thr_total / pairs if pairs else 0.0,
    )


# --------------------------------------------------------------------------------------------
# Error evidence


@dataclass(frozen=True)
class ErrorWindow:
    """One window's contribution to the error test."""

    s: float = 0.0  # observed minus expected canary failures under ratio 1
    v: float = 0.0  # its model variance
    safe_s: float = 0.0  # observed minus expected under ratio error_margin
    safe_v: float = 0.0
    #: cluster -> (s part, safe_s part, v part, safe_v part); None without units (plain test)
    clusters: Mapping[str, tuple[float, float, float, float]] | None = None


def _group_key(stratum: str, strata_weights: Mapping[str, int] | None) -> str | None:
    """Strata routed at the same weight are one group; None leaves a stratum out (0%/100%)."""
    if strata_weights is None or stratum not in strata_weights:
        return f"s:{stratum}"
    w = int(strata_weights[stratum])
    if w <= 0 or w >= 10_000:
        return None
    return f"w:{w}"


def _group_terms(n_c: int, x_c: int, n_s: int, x_s: int, margin: float
                 ) -> tuple[float, float, float, float] | None:
    """(pi, q0, model variance, safety model variance) of one group, None if not comparable."""
    if n_c <= 0 or n_s <= 0:
        return None
    n = n_c + n_s
    e = x_c + x_s
    pi = n_c / n
    q0 = margin * pi / (margin * pi + 1.0 - pi)
    fpc = (n - e) / (n - 1) if n > 1 else 0.0
    return pi, q0, e * pi * (1.0 - pi) * fpc, e * q0 * (1.0 - q0) * fpc


def error_window(stable: LaneStats, canary: LaneStats, margin: float,
                 strata_weights: Mapping[str, int] | None = None) -> ErrorWindow:
    """The error test's statistics of one window (see the module docstring)."""
    if not (canary.units or stable.units):
        first = has_first_attempts(stable, canary)
        n_c, x_c = first_counts(canary, first)
        n_s, x_s = first_counts(stable, first)
        t = _group_terms(n_c, x_c, n_s, x_s, margin)
        if t is None:
            return ErrorWindow()
        pi, q0, v, sv = t
        e = x_c + x_s
        return ErrorWindow(x_c - pi * e, v, x_c - q0 * e, sv, None)
    # group -> cluster -> [n_c, x_c, n_s, x_s]
    groups: dict[str, dict[str, list[int]]] = {}
    keys: dict[str, str | None] = {}
    for col, lane_stats in ((0, canary), (2, stable)):
        for unit, (n, x) in lane_stats.units.items():
            stratum, _, cluster = str(unit).rpartition("|")
            g = keys[stratum] if stratum in keys else keys.setdefault(
                stratum, _group_key(stratum, strata_weights))
            if g is None or n <= 0:
                continue
            cell = groups.setdefault(g, {}).setdefault(cluster, [0, 0, 0, 0])
            cell[col] += int(n)
            cell[col + 1] += int(x)
    s = v = safe_s = safe_v = 0.0
    clusters: dict[str, tuple[float, float, float, float]] = {}
    for cells in groups.values():
        for cluster, (n_c, x_c, n_s, x_s) in cells.items():
            # pi per cluster (and stratum): the jobs of one heavy key change their cluster's
            # share, not everyone's
            t = _group_terms(n_c, x_c, n_s, x_s, margin)
            e = x_c + x_s
            if t is None or e == 0:
                continue
            pi, q0, cv, csv = t
            d, d0 = x_c - pi * e, x_c - q0 * e
            s += d
            safe_s += d0
            v += cv
            safe_v += csv
            a, b, va, vb = clusters.get(cluster, (0.0, 0.0, 0.0, 0.0))
            clusters[cluster] = (a + d, b + d0, va + cv, vb + csv)
    return ErrorWindow(s, v, safe_s, safe_v, clusters)


def window_groups(stable: LaneStats, canary: LaneStats,
                  strata_weights: Mapping[str, int] | None) -> dict[str, tuple[int, int, int, int]]:
    """First-attempt counts of one window per comparable stratum group (for the threshold
    rules' stratified comparison); empty when the lanes carry no units."""
    out: dict[str, list[int]] = {}
    keys: dict[str, str | None] = {}
    for col, lane_stats in ((0, canary), (2, stable)):
        for unit, (n, x) in lane_stats.units.items():
            stratum = str(unit).rpartition("|")[0]
            g = keys[stratum] if stratum in keys else keys.setdefault(
                stratum, _group_key(stratum, strata_weights))
            if g is None:
                continue
            cell = out.setdefault(g, [0, 0, 0, 0])
            cell[col] += int(n)
            cell[col + 1] += int(x)
    return {k: (v[0], v[1], v[2], v[3]) for k, v in out.items()}


def robust_variance(parts: list[float]) -> float:
    """Cluster-robust variance of a sum of per-cluster parts (centred when clusters allow)."""
    k = len(parts)
    if k == 0:
        return 0.0
    if k < MIN_CENTRED_CLUSTERS:
        return sum(p * p for p in parts)
    mean = sum(parts) / k
    return k / (k - 1) * sum((p - mean) ** 2 for p in parts)


@dataclass(frozen=True)
class ErrorEvidence:
    log_harm: float  # mixture log-statistic for "canary fails more often"
    log_safe: float  # mixture log-statistic for "canary fails less than margin times as often"
    z: float | None  # S / sqrt(V)
    v: float  # variance used


def _robust_sum(total: float, v_model: float, v_plain: float,
                parts: list[tuple[float, float]]) -> tuple[float, float]:
    """(sum, variance) of the error statistic, robust to one outlying cluster.

    With enough clusters the one with the largest |part| is left out of the sum and of both
    variances: a single customer key that always fails (one cluster) then costs 1/K of the
    data instead of the whole test. Under H0 the parts are centred and exchangeable across
    clusters, so dropping the most extreme by absolute value keeps the sum centred.
    """
    if len(parts) >= MIN_TRIMMED_CLUSTERS:
        drop = max(range(len(parts)), key=lambda i: abs(parts[i][0]))
        total -= parts[drop][0]
        v_model -= parts[drop][1]
        parts = parts[:drop] + parts[drop + 1:]
    v = max(v_model, robust_variance([a for a, _ in parts]) + v_plain)
    return total, v


def error_evidence(st: AnalysisState) -> ErrorEvidence:
    """Current evidence of the error test from the accumulated state."""
    cl = list(st.err_clusters.values())
    s, v = _robust_sum(st.err_s, st.err_v, st.err_v_plain, [(c[0], c[2]) for c in cl])
    s0, sv = _robust_sum(st.safe_s, st.safe_v, st.safe_v_plain, [(c[1], c[3]) for c in cl])
    harm = _half_normal_mixture_log_lr(s, v, ERROR_TAU) if v > 0 else 0.0
    safe = _half_normal_mixture_log_lr(-s0, sv, ERROR_TAU) if sv > 0 else 0.0
    return ErrorEvidence(harm, safe, s / math.sqrt(v) if v > 0 else None, v)


def run_time_safe_log_lr(st: AnalysisState) -> float:
    """Evidence that the canary is at most run_time_tolerance slower (the mirror test)."""
    return _half_normal_mixture_log_lr(-st.run_s, st.run_v, RUN_TIME_TAU)


# --------------------------------------------------------------------------------------------
# Rules


def _stat_rule(name: str, enough: bool, crossed: bool, safe: bool, obs: dict[str, Any],
               alpha: float, short: str, fail: str, ok: str, unsure: str) -> RuleResult:
    """One always-valid test's result: INCONCLUSIVE before min_samples, a decisive FAIL once
    its statistic crossed 1/alpha, PASS only on evidence of safety, else INCONCLUSIVE."""
    if not enough:
        return RuleResult(name, Verdict.INCONCLUSIVE, obs, alpha, short)
    if crossed:
        return RuleResult(name, Verdict.FAIL, obs, alpha, fail, decisive=True)
    if safe:
        return RuleResult(name, Verdict.PASS, obs, alpha, ok)
    return RuleResult(name, Verdict.INCONCLUSIVE, obs, alpha, unsure)


def stat_rules(st: AnalysisState, plan: Plan, cfg: StageSettings, budget: Budget,
               ev: ErrorEvidence | None = None) -> list[RuleResult]:
    sp = plan.statistical
    if not sp.enabled or not (sp.error_rate or sp.run_time):
        return []
    enough = st.canary_attempts >= cfg.min_samples and st.stable_attempts >= cfg.min_samples
    short = (
        f"only {st.canary_attempts} canary / {st.stable_attempts} stable attempts so far, "
        f"need min_samples {cfg.min_samples}"
    )
    safe_bound = math.log(1.0 / sp.safety_alpha)
    out: list[RuleResult] = []
    if sp.error_rate:
        alpha = budget.error
        ev = ev or error_evidence(st)
        p = _p_from_log_lr(st.error_max_log_lr)
        rc = st.canary_failed / st.canary_attempts if st.canary_attempts else None
        rs = st.stable_failed / st.stable_attempts if st.stable_attempts else None
        ratio = rc / rs if rc is not None and rs else None
        obs: dict[str, float | int | str | None] = {
            "canary_error_rate_pct": None if rc is None else 100 * rc,
            "stable_error_rate_pct": None if rs is None else 100 * rs,
            "rate_ratio": ratio,
            "p_value": p,
            "z": ev.z,
            "excess_failures": st.err_s,
            "safety_p_value": _p_from_log_lr(ev.log_safe),
            "margin_ratio": sp.error_margin,
            "canary_attempts": st.canary_attempts,
        }
        ratio_txt = "n/a" if ratio is None else f"{ratio:.2f}"
        out.append(_stat_rule(
            "stat_error_rate", enough, st.error_max_log_lr >= math.log(1.0 / alpha),
            ev.log_safe >= safe_bound, obs, alpha, short,
            f"canary fails more often than stable (ratio {ratio_txt}, "
            f"{st.err_s:+.1f} failures over expected), always-valid p={p:.2g} <= {alpha:.2g} "
            f"over {st.canary_attempts} canary jobs",
            f"canary fails less than {sp.error_margin:g}x as often as stable (ratio "
            f"{ratio_txt}, confidence {1 - sp.safety_alpha:.0%})",
            f"no evidence yet that canary fails less than {sp.error_margin:g}x as often as "
            f"stable (ratio {ratio_txt}, p={p:.2g}, safety p="
            f"{_p_from_log_lr(ev.log_safe):.2g} > {sp.safety_alpha:g})"))
    if sp.run_time:
        alpha = budget.run_time
        p = _p_from_log_lr(st.run_max_log_lr)
        safe_log = run_time_safe_log_lr(st)
        auc = 0.5 + st.run_s / st.run_v if st.run_v > 0 else None
        obs = {
            "p_canary_slower": auc,
            "tolerance_pct": sp.run_time_tolerance,
            "p_value": p,
            "safety_p_value": _p_from_log_lr(safe_log),
            "canary_attempts": st.canary_attempts,
        }
        auc_txt = "n/a" if auc is None else f"{auc:.3f}"
        tol = sp.run_time_tolerance
        out.append(_stat_rule(
            "stat_run_time", enough, st.run_max_log_lr >= math.log(1.0 / alpha),
            safe_log >= safe_bound, obs, alpha, short,
            f"canary runs more than {tol:g}% slower than stable "
            f"(P(slower after tolerance)={auc_txt}), always-valid p={p:.2g} <= {alpha:.2g}",
            f"canary runs at most {tol:g}% slower than stable "
            f"(P(slower after tolerance)={auc_txt}, confidence {1 - sp.safety_alpha:.0%})",
            f"no evidence yet that canary runs at most {tol:g}% slower "
            f"(P(slower after tolerance)={auc_txt}, p={p:.2g})"))
    return out
