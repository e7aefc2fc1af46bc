"""evaluate(): one check of one stage, from two lane windows and the previous state."""

from __future__ import annotations

import math
from dataclasses import replace

from pycanary import histogram
from pycanary.plan import Plan, format_duration
from pycanary.stats import half_normal_mixture_log_lr as _half_normal_mixture_log_lr
from pycanary.stats import mann_whitney as _mann_whitney
from pycanary.stats import quantile as _quantile
from pycanary.stats import quantiles as _quantiles
from pycanary.stats import shift_down as _shift_down

from .evidence import RUN_TIME_TAU, _error_log_lambda, _error_update, _stat_rules
from .rules import (
    _rule_max_error_rate,
    _rule_max_error_rate_increase,
    _rule_max_latency_increase,
    _rule_max_throughput_decrease,
)
from .state import AnalysisState, LaneTotals
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
    }



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

