"""Issue 10: first-attempt, stratified, cluster-robust error evidence; threshold rules that
count stable's noise; the one alpha budget; the sample-ratio check; v1 states still load."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pycanary import histogram
from pycanary.analysis import (
    AnalysisState,
    LaneStats,
    Verdict,
    alpha_budget,
    error_evidence,
    error_window,
    evaluate,
)
from pycanary.analysis import simulate as sim
from pycanary.plan import Plan, parse_plan

MID = histogram.bucket_index(50_000)


def plan_of(**over: Any) -> Plan:
    b: dict[str, Any] = {
        "stages": [{"percentage": 5, "duration": "10m"},
                   {"percentage": 50, "duration": "10m", "auto_promote": False}],
        "statistical": {"run_time": False},
    }
    b.update(over)
    return parse_plan(b)


def lane(name: str, units: dict[str, tuple[int, int]], **kw: Any) -> LaneStats:
    n = sum(u[0] for u in units.values())
    x = sum(u[1] for u in units.values())
    return LaneStats(lane=name, version="v2" if name == "canary" else "v1", ok=n - x, failed=x,
                     dead=0, run_hist={MID: n} if n else {}, wait_hist={}, workers=1,
                     window_s=30.0, first_attempts=n, first_failed=x, units=units, **kw)


def spread_units(rng: random.Random, n: int, p: float, stratum: str = "",
                 bad: int | None = None) -> dict[str, tuple[int, int]]:
    """n jobs over 32 clusters, each failing with p; cluster ``bad`` always fails."""
    cells = [[0, 0] for _ in range(32)]
    for _ in range(n):
        c = rng.randrange(32)
        cells[c][0] += 1
        if c == bad or rng.random() < p:
            cells[c][1] += 1
    return {f"{stratum}|{c}": (a, b) for c, (a, b) in enumerate(cells) if a}


# ---------------------------------------------------------------------------------------------
# The error statistic


def test_units_and_plain_windows_give_the_same_sum() -> None:
    rng = random.Random(1)
    c = lane("canary", spread_units(rng, 250, 0.02))
    s = lane("stable", spread_units(rng, 4750, 0.01))
    units = error_window(s, c, 2.0)
    plain = error_window(s.__class__(**{**s.__dict__, "units": {}}),
                         c.__class__(**{**c.__dict__, "units": {}}), 2.0)
    assert plain.clusters is None and units.clusters is not None
    # per-cluster pi differs from the lane-wide pi only by the clusters' own mix
    assert units.s == pytest.approx(plain.s, abs=3.0)
    assert sum(p[0] for p in units.clusters.values()) == pytest.approx(units.s)


def test_one_always_failing_key_does_not_roll_back_identical_versions() -> None:
    """Sticky routing put one customer key (all jobs fail) on the canary: old code saw a
    huge excess of canary failures; the cluster-robust test sees one outlying cluster."""
    plan = plan_of()
    rng = random.Random(7)
    state = AnalysisState()
    for k in range(60):
        c = lane("canary", spread_units(rng, 250, 0.01, bad=3))
        s = lane("stable", spread_units(rng, 4750, 0.01))
        a, state = evaluate(0, plan, s, c, state, 30.0 * (k + 1))
        assert a.rule("stat_error_rate").verdict is not Verdict.FAIL  # type: ignore[union-attr]
    z = error_evidence(state).z
    assert z is not None and abs(z) < 3
    # the plain test on the same counts (no units) is fooled at once
    plain = AnalysisState()
    rng = random.Random(7)
    for k in range(3):
        c = lane("canary", spread_units(rng, 250, 0.01, bad=3))
        s = lane("stable", spread_units(rng, 4750, 0.01))
        c = c.__class__(**{**c.__dict__, "units": {}})
        s = s.__class__(**{**s.__dict__, "units": {}})
        a, plain = evaluate(0, plan, s, c, plain, 30.0 * (k + 1))
    assert a.rule("stat_error_rate").verdict is Verdict.FAIL  # type: ignore[union-attr]


def test_a_shared_outage_cannot_blind_the_error_test() -> None:
    """One window where both lanes fail half their jobs, then a real 1% -> 2% regression:
    old code piled up hundreds of nats "for no difference" and never caught it."""
    plan = plan_of()
    rng = random.Random(3)
    state = AnalysisState()
    caught = None
    for k in range(40):
        p_c, p_s = (0.5, 0.5) if k == 2 else ((0.02, 0.01) if k > 2 else (0.01, 0.01))
        c = lane("canary", spread_units(rng, 500, p_c))
        s = lane("stable", spread_units(rng, 4500, p_s))
        a, state = evaluate(0, plan, s, c, state, 30.0 * (k + 1))
        if a.verdict is Verdict.FAIL:
            caught = k
            break
    assert caught is not None and caught <= 25


def test_strata_compare_within_equal_weights_and_skip_forced_tenants() -> None:
    """A tenant routed at 50% while the rest is at 5%, failing 5% on both versions: compared
    lane against lane it makes the canary look 4x worse; within strata it is nothing."""
    plan = plan_of()
    weights = {"": 500, "acme": 5000, "internal": 10_000}
    rng = random.Random(5)
    state = AnalysisState()
    for k in range(40):
        cu = {**spread_units(rng, 240, 0.01), **spread_units(rng, 500, 0.05, "acme"),
              **spread_units(rng, 100, 0.2, "internal")}
        su = {**spread_units(rng, 4560, 0.01), **spread_units(rng, 500, 0.05, "acme")}
        a, state = evaluate(0, plan, lane("stable", su), lane("canary", cu), state,
                            30.0 * (k + 1), strata_weights=weights)
        assert a.verdict is not Verdict.FAIL, a.reason
    assert a.rule("stat_error_rate").verdict is Verdict.PASS  # type: ignore[union-attr]
    # the internal tenant (100% canary) is left out entirely
    w = error_window(lane("stable", {}), lane("canary", {"internal|1": (100, 100)}), 2.0,
                     weights)
    assert (w.s, w.v, w.clusters) == (0.0, 0.0, {})


# ---------------------------------------------------------------------------------------------
# Threshold rules


def test_absolute_cap_blames_the_canary_only_when_it_is_worse_than_stable() -> None:
    plan = plan_of(max_error_rate=1, statistical={"enabled": False})
    outage = evaluate(0, plan, lane("stable", {"|0": (4750, 950)}),
                      lane("canary", {"|0": (250, 52)}), None, 30.0)[0]
    r = outage.rule("max_error_rate")
    assert r is not None and r.verdict is Verdict.PASS
    assert "a problem shared by both lanes, not the canary's" in r.reason
    worse = evaluate(0, plan, lane("stable", {"|0": (4750, 20)}),
                     lane("canary", {"|0": (250, 52)}), None, 30.0)[0]
    assert worse.rule("max_error_rate").verdict is Verdict.FAIL  # type: ignore[union-attr]


def test_error_rate_increase_counts_stables_noise() -> None:
    """Stable 1.0% of 500 jobs, canary 1.8% of 5000 (a 50% stage): +0.8pp over a 0.5pp
    threshold, but stable's own rate is uncertain by +-0.45pp: not significant."""
    plan = plan_of(max_error_rate_increase=0.5, statistical={"enabled": False})
    a = evaluate(1, plan, lane("stable", {"|0": (500, 5)}), lane("canary", {"|0": (5000, 90)}),
                 None, 30.0)[0]
    r = a.rule("max_error_rate_increase")
    assert r is not None and r.verdict is Verdict.INCONCLUSIVE, r.reason
    a = evaluate(1, plan, lane("stable", {"|0": (5000, 50)}),
                 lane("canary", {"|0": (5000, 150)}), None, 30.0)[0]
    assert a.rule("max_error_rate_increase").verdict is Verdict.FAIL  # type: ignore[union-attr]


def test_one_alpha_budget_covers_every_rule_that_can_fail() -> None:
    card = parse_plan({"stages": [
        {"percentage": 5, "duration": "10m", "conditions": {"max_error_rate": 1,
                                                            "max_latency_increase": 10}},
        {"percentage": 50, "duration": "10m", "conditions": {"max_latency_increase": 10}}]})
    b = alpha_budget(card)
    assert b.error + b.run_time + 3 * b.threshold == pytest.approx(card.statistical.alpha)
    assert (b.error, b.run_time, b.threshold) == pytest.approx((0.0064, 0.0016, 0.002 / 3))
    off = parse_plan({"stages": [{"percentage": 5, "duration": "10m"}],
                      "max_error_rate": 1, "statistical": {"enabled": False}})
    assert alpha_budget(off).threshold == pytest.approx(0.01)


# ---------------------------------------------------------------------------------------------
# Sample-ratio check


def srm(canary_routed: int, stable_routed: int, canary_done: int, backlog: int = 0
        ) -> Verdict | None:
    plan = plan_of(statistical={"enabled": False}, max_error_rate=50)
    a = evaluate(0, plan,
                 lane("stable", {"|0": (stable_routed, 0)}, routed=stable_routed,
                      weight_bp=500),
                 lane("canary", {"|0": (canary_done, 0)}, routed=canary_routed, weight_bp=500,
                      backlog=backlog), None, 30.0)[0]
    r = a.rule("sample_ratio")
    return None if r is None else r.verdict


def test_sample_ratio_mismatch_is_inconclusive_with_its_reason() -> None:
    assert srm(250, 4750, 250) is Verdict.PASS
    assert srm(600, 4400, 600) is Verdict.INCONCLUSIVE  # 12% routed at a 5% weight
    assert srm(250, 4750, 20, backlog=230) is Verdict.INCONCLUSIVE  # not consumed
    assert srm(250, 4750, 100, backlog=0) is Verdict.INCONCLUSIVE  # losing jobs
    plan = plan_of(statistical={"enabled": False})
    a = evaluate(0, plan, lane("stable", {"|0": (4750, 0)}, routed=4750, weight_bp=500),
                 lane("canary", {"|0": (20, 0)}, routed=250, weight_bp=500, backlog=230),
                 None, 30.0)[0]
    assert a.verdict is Verdict.INCONCLUSIVE
    assert a.reason == ("sample_ratio: sample ratio mismatch: canary lane finished 20 of 250 "
                        "jobs routed to it this stage (backlog 230): not consumed")
    # unknown routed counts (older data planes): no check
    assert srm.__name__ and evaluate(0, plan, lane("stable", {"|0": (10, 0)}),
                                     lane("canary", {"|0": (10, 0)}), None, 30.0
                                     )[0].rule("sample_ratio") is None


# ---------------------------------------------------------------------------------------------
# State


def test_a_version_1_state_still_loads_and_continues() -> None:
    v1 = {"v": 1, "started_s": 0.0, "stage": 0, "stage_started_s": 0.0, "checks": 5,
          "fail_streak": 0, "last_verdict": "PASS", "canary_attempts": 1250,
          "canary_failed": 12, "stable_attempts": 23750, "stable_failed": 240,
          "error_ratios": [1.5, 2.0, 3.0, 5.0], "error_llr": [-3.0, -9.0, -20.0, -40.0],
          "error_max_log_lr": 0.4, "run_s": 1.5, "run_v": 900.0, "run_max_log_lr": 0.0,
          "stage_canary": {"ok": 1238, "failed": 12, "dead": 0, "run_hist": {str(MID): 1250},
                           "wait_hist": {}},
          "stage_stable": {"ok": 23510, "failed": 240, "dead": 0,
                           "run_hist": {str(MID): 23750}, "wait_hist": {}},
          "last_backlog_canary": 0, "last_backlog_stable": 0}
    st_ = AnalysisState.from_dict(v1)
    assert (st_.error_max_log_lr, st_.canary_attempts, st_.stage_canary.jobs) == (0.4, 1250, 1250)
    assert st_.err_s == 0.0 and st_.err_clusters == {}
    rng = random.Random(2)
    _, nxt = evaluate(0, plan_of(), lane("stable", spread_units(rng, 4750, 0.01)),
                      lane("canary", spread_units(rng, 250, 0.01)), st_, 180.0)
    assert nxt.checks == 6 and nxt.stage_canary.jobs == 1500
    assert nxt.to_dict()["v"] == 2
    assert AnalysisState.from_dict(json.loads(json.dumps(nxt.to_dict()))) == nxt
    with pytest.raises(ValueError, match="newer than this code"):
        AnalysisState.from_dict({"v": 3})


# ---------------------------------------------------------------------------------------------
# The simulator feeds the contract


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([0, 1, 2]))
def test_simulated_units_sum_to_the_lane_counts(seed: int, stage: int) -> None:
    plan = parse_plan({"stages": [{"percentage": p, "duration": "10m"} for p in (5, 15, 50)],
                       "tenants": {"acme": 40, "internal": 100}})
    tr = sim.Traffic(6000, poison_share=0.01, bad_key_share=0.01,
                     tenants=(sim.Tenant("acme", 0.2, 0.05), sim.Tenant("internal", 0.1, 0.0)))
    s, c, w = sim.window(random.Random(seed), tr, plan, stage, 30.0, 0.3, 4)
    for ls in (s, c):
        assert sum(u[0] for u in ls.units.values()) == ls.first_attempts
        assert sum(u[1] for u in ls.units.values()) == ls.first_failed
        assert all(0 <= x <= n for n, x in ls.units.values())
        assert ls.routed == ls.first_attempts and ls.failed >= ls.first_failed
    assert w == {"": plan.stages[stage].weight_bp, "acme": 4000, "internal": 10_000}
    assert math.isclose(sum(c.run_hist.values()), c.first_attempts)
