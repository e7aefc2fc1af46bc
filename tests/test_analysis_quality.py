"""Issue 10's table, row by row, at a small size with fixed seeds: the same scenarios as
bench/analysis_quality.py (which runs >= 1,000 deployments per A/A row), through the real
evaluate/decide. Each size is chosen so the old analysis would fail the row with high
probability (its measured rates: outage + card plan 100% false rollbacks, one bad sticky key
20%, tenant-first 87.5%, outage then regression caught 1.8%, low traffic promoted 31%)."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from pycanary.analysis import AnalysisState, evaluate
from pycanary.analysis.simulate import Traffic, run_deployment
from tests.test_analysis_evidence import lane, plan_of

ROOT = Path(__file__).resolve().parent.parent


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("analysis_quality",
                                                  ROOT / "bench" / "analysis_quality.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["analysis_quality"] = mod
    spec.loader.exec_module(mod)
    return mod


BENCH = _bench()
ROWS = {r.key: r for r in BENCH.rows(quick=True)}


def outcomes(key: str, runs: int, **over: object) -> dict[str, int]:
    row = ROWS[key]
    tr = dataclasses.replace(row.traffic, **over) if over else row.traffic
    out: dict[str, int] = {}
    for i in range(runs):
        o = run_deployment(BENCH.plan_named(row.plan), tr, f"test:{key}:{i}")
        out[o.outcome] = out.get(o.outcome, 0) + 1
    return out


@pytest.mark.parametrize(("key", "runs"), [
    ("outage_card", 8),  # old: every healthy canary rolled back
    ("badkey", 14),      # old: 20% -> P(no rollback in 14) = 4%
    ("tenants", 6),      # old: 87.5%
    ("aa", 4),
    ("drift", 4),
    ("timedrift", 4),
])
def test_identical_versions_are_not_rolled_back(key: str, runs: int) -> None:
    got = outcomes(key, runs)
    assert got.get("rollback", 0) == 0, got
    assert got.get("promoted", 0) >= runs // 2, got  # and mostly promoted, not stuck


def test_heavy_tails_at_low_traffic_do_not_roll_back() -> None:
    got = outcomes("lowtail", 6, horizon_s=3600.0)
    assert got.get("rollback", 0) == 0, got


@pytest.mark.parametrize(("key", "runs"), [
    ("outage_err2", 6),  # old: caught in 1.8% of runs
    ("late_err2", 4),
    ("err2", 3),
    ("lat20", 3),
])
def test_regressions_are_rolled_back(key: str, runs: int) -> None:
    assert outcomes(key, runs) == {"rollback": runs}


def test_low_traffic_regression_is_never_promoted() -> None:
    got = outcomes("low_err2", 6, horizon_s=3 * 3600.0)  # old: promoted in 31% of runs
    assert got.get("promoted", 0) == 0, got


def test_poison_retries_do_not_count_against_their_lane() -> None:
    """A poison job fails every attempt in its lane: the error test judges first attempts,
    so the canary's retries (3x the failed attempts) change nothing."""
    units_c = {"|1": (250, 3)}
    units_s = {"|1": (4750, 47)}
    base = evaluate(0, plan_of(), lane("stable", units_s), lane("canary", units_c),
                    AnalysisState(), 30.0)[1]
    retried = dataclasses.replace(lane("canary", units_c), failed=9, dead=3)
    again = evaluate(0, plan_of(), lane("stable", units_s), retried, AnalysisState(), 30.0)[1]
    assert (again.err_s, again.err_v) == (base.err_s, base.err_v)
    assert again.canary_failed == base.canary_failed == 3


def test_bench_quick_rows_cover_the_issue_table() -> None:
    assert set(ROWS) >= {"outage_err2", "outage_card", "poison", "badkey", "tenants", "lowtail",
                         "low_err2", "drift", "timedrift", "late_err2", "err2", "err3", "lat20",
                         "lat50"}
    assert BENCH.zero_tolerance_row()["met"]
    assert isinstance(ROWS["aa"].traffic, Traffic)
