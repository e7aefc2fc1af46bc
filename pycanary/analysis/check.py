"""evaluate(): one check of one stage, from two lane windows and the previous state."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace

from pycanary import histogram
from pycanary.plan import Plan, StageSettings, format_duration
from pycanary.stats import half_normal_mixture_log_lr as _half_normal_mixture_log_lr
from pycanary.stats import mann_whitney as _mann_whitney
from pycanary.stats import quantile as _quantile
from pycanary.stats import quantiles as _quantiles
from pycanary.stats import shift_down as _shift_down

from .evidence import (
    RUN_TIME_TAU,
    alpha_budget,
    error_evidence,
    error_window,
    stat_rules,
    window_groups,
)
from .rules import (
    _rule_max_cpu_increase,
    _rule_max_error_rate,
    _rule_max_error_rate_increase,
    _rule_max_latency_increase,
    _rule_max_throughput_decrease,
    _rule_sample_ratio,
)
from .state import AnalysisState, LaneTotals, first_counts, has_first_attempts
from .types import Analysis, LaneStats, RuleResult, Verdict, _clean


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
        "first_attempts": t.jobs,
        "first_failed": t.jobs_failed,
        "crashed": t.crashed,
        "cpu_p95_us": _clean(_quantile(t.cpu_hist, 0.95), 1),
        "rss_bytes": window.rss_bytes,
    }



def _has_rules(plan: Plan, cfg: StageSettings) -> bool:
    """Does the stage judge anything? A plan with every check off is a timed ramp: there
    ``on_no_data: pass`` keeps meaning "promote on time", since no evidence is claimed."""
    sp = plan.statistical
    if sp.enabled and (sp.error_rate or sp.run_time):
        return True
    return any(getattr(cfg, name) is not None for name in (
        "max_error_rate", "max_error_rate_increase", "max_latency_increase",
        "max_throughput_decrease", "max_cpu_increase"))


#: Relative threshold rules whose always-valid test, once crossed this stage, stays crossed.
STICKY_RULES = ("max_error_rate_increase", "max_latency_increase", "max_cpu_increase")


def _sticky(rules: list[RuleResult], st: AnalysisState, alpha: float
            ) -> tuple[list[RuleResult], AnalysisState]:
    """Keep each relative rule's running maximum of evidence over the stage.

    Its statistic is recomputed from the stage's totals at every check, so its p-value goes
    up and down; Ville's inequality bounds the chance it *ever* crosses, so a crossing may
    stand (a FAIL that flickers back to INCONCLUSIVE would never make failure_threshold
    consecutive FAILs). Only while the rule's figure is still over its threshold.
    """
    best = dict(st.stage_rule_max)
    out = []
    bound = math.log(1.0 / alpha) if alpha > 0 else math.inf
    for r in rules:
        p = r.observed.get("p_value")
        if r.rule in STICKY_RULES and isinstance(p, float) and p > 0:
            m = max(best.get(r.rule, 0.0), -math.log(p))
            best[r.rule] = m
            if r.verdict is Verdict.INCONCLUSIVE and m >= bound:
                obs = {**r.observed, "p_value": math.exp(-m)}
                what = r.reason.split(" but not yet significant")[0]
                r = RuleResult(r.rule, Verdict.FAIL, obs, r.threshold,
                               f"{what}, p={math.exp(-m):.2g} (crossed earlier this stage)")
        out.append(r)
    return out, replace(st, stage_rule_max=best)


def evaluate(
    stage: int,
    plan: Plan,
    stable: LaneStats,
    canary: LaneStats,
    state: AnalysisState | None,
    now_s: float,
    *,
    strata_weights: Mapping[str, int] | None = None,
) -> tuple[Analysis, AnalysisState]:
    """Run one check of stage ``stage`` on the window ending at ``now_s``.

    Returns the analysis and the state to pass to the next check. ``state`` None starts a
    deployment. The windows given must not overlap earlier ones (see the package docstring).
    ``strata_weights`` maps each stratum of the lanes' ``units`` (a tenant label, ``""`` for
    the rest) to its canary weight in basis points: the error test compares lanes within
    strata of equal weight and leaves out strata at 0 or 10000.
    """
    if stable.lane != "stable" or canary.lane != "canary":
        raise ValueError(f"lanes swapped or unknown: got {stable.lane!r} and {canary.lane!r}")
    cfg = plan.settings(stage)
    sp = plan.statistical
    st = state or AnalysisState()
    window_s = max(stable.window_s, canary.window_s, 0.0)
    if st.started_s is None:
        st = replace(st, started_s=now_s - window_s)
    if st.stage != stage:
        st = st.enter_stage(stage, now_s - window_s)

    # Deployment-wide sequential evidence: every window, no matter what the rules say.
    first = has_first_attempts(stable, canary)
    n_c, x_c = first_counts(canary, first)
    n_s, x_s = first_counts(stable, first)
    ew = error_window(stable, canary, sp.error_margin, strata_weights)
    clusters = dict(st.err_clusters)
    v_plain, sv_plain = st.err_v_plain, st.safe_v_plain
    if ew.clusters is None:
        v_plain += ew.v
        sv_plain += ew.safe_v
    else:
        for k, part in ew.clusters.items():
            old = clusters.get(k, (0.0, 0.0, 0.0, 0.0))
            clusters[k] = (old[0] + part[0], old[1] + part[1], old[2] + part[2],
                           old[3] + part[3])
    # Compare canary run times shrunk by the tolerance: under H0 ("canary at most tol slower")
    # the shrunk canary is no slower than stable, so only a larger slowdown builds evidence.
    shift = math.log1p(sp.run_time_tolerance / 100.0) / math.log(histogram.GROWTH)
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
        canary_failed=st.canary_failed + x_c,
        stable_attempts=st.stable_attempts + n_s,
        stable_failed=st.stable_failed + x_s,
        err_s=st.err_s + ew.s,
        err_v=st.err_v + ew.v,
        safe_s=st.safe_s + ew.safe_s,
        safe_v=st.safe_v + ew.safe_v,
        err_clusters=clusters,
        err_v_plain=v_plain,
        safe_v_plain=sv_plain,
        run_s=run_s,
        run_v=run_v,
        run_max_log_lr=max(st.run_max_log_lr, run_now),
        stage_canary=st.stage_canary.add(canary),
        stage_stable=st.stage_stable.add(stable),
    )
    ev = error_evidence(st)
    st = replace(st, error_max_log_lr=max(st.error_max_log_lr, ev.log_harm))
    groups = dict(st.stage_groups)
    for g, cell in window_groups(stable, canary, strata_weights).items():
        old = groups.get(g, (0, 0, 0, 0))
        groups[g] = (old[0] + cell[0], old[1] + cell[1], old[2] + cell[2], old[3] + cell[3])
    st = replace(st, stage_groups=groups)
    prev_backlog = st.last_backlog_canary
    st = replace(st, last_backlog_canary=canary.backlog, last_backlog_stable=stable.backlog)

    budget = alpha_budget(plan)
    rules: list[RuleResult] = []
    talpha = budget.threshold
    c, s = st.stage_canary, st.stage_stable
    att_c, att_s = canary.ok + canary.failed, stable.ok + stable.failed
    if att_c == 0 or att_s == 0:
        lane = "canary" if att_c == 0 else "stable"
        verdict = {
            "hold": Verdict.INCONCLUSIVE,
            "fail": Verdict.FAIL,
            "pass": Verdict.PASS,
        }[cfg.on_no_data]
        reason = (f"no finished {lane} attempts in the last {format_duration(window_s)} "
                  f"(on_no_data: {cfg.on_no_data})")
        timed_ramp = not _has_rules(plan, cfg)
        if verdict is Verdict.PASS and min(c.jobs, s.jobs) < cfg.min_samples and not timed_ramp:
            # "pass" forgives a quiet window, never a canary that has not run: no data
            # never promotes (issue 10).
            verdict = Verdict.INCONCLUSIVE
            reason += (f", and only {c.jobs} canary / {s.jobs} stable jobs this stage, "
                       f"need min_samples {cfg.min_samples}")
        rules.append(
            RuleResult(
                "data",
                verdict,
                {
                    "canary_attempts": att_c,
                    "stable_attempts": att_s,
                    "canary_backlog": canary.backlog,
                    "canary_workers": canary.workers,
                },
                None,
                reason,
            )
        )
    else:
        if cfg.max_error_rate is not None:
            rules.append(_rule_max_error_rate(cfg.max_error_rate, c, s, cfg, talpha, groups))
        if cfg.max_error_rate_increase is not None:
            rules.append(
                _rule_max_error_rate_increase(cfg.max_error_rate_increase, c, s, cfg, talpha,
                                              groups)
            )
        if cfg.max_latency_increase is not None:
            rules.append(_rule_max_latency_increase(cfg.max_latency_increase, c, s, cfg, talpha))
        if cfg.max_cpu_increase is not None:
            rules.append(_rule_max_cpu_increase(cfg.max_cpu_increase, c, s, cfg, talpha))
        if cfg.max_throughput_decrease is not None:
            rules.append(
                _rule_max_throughput_decrease(
                    cfg.max_throughput_decrease, stable, canary, prev_backlog
                )
            )
        rules, st = _sticky(rules, st, talpha)
        rules.extend(stat_rules(st, plan, cfg, budget, ev))
    srm = _rule_sample_ratio(c, s, stable, canary, strata_weights)
    if srm is not None:
        rules.append(srm)

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
    started = st.stage_started_s if st.stage_started_s is not None else now_s
    late = st.late_inconclusive
    if verdict is Verdict.INCONCLUSIVE and now_s - started >= cfg.duration_s:
        late += 1
    elif verdict is not Verdict.INCONCLUSIVE:
        late = 0
    st = replace(st, fail_streak=streak, last_verdict=verdict, late_inconclusive=late)

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
