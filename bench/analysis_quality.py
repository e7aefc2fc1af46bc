"""How good are the canary verdicts? Simulated deployments through the real analysis code.

Every row of issue 10's table, plus drift of the base rate, heavy tails, common latency drift
and late-onset regressions. Each deployment walks its plan (a check every ``interval``) through
``pycanary.analysis.evaluate`` and ``decide`` exactly as the controller drives them, on windows
drawn by ``pycanary.analysis.simulate`` (first attempts, units per stratum and cluster,
routed counts: the issue-10 data plane). A PAUSE (on_inconclusive) ends the deployment as
"paused": a person decides, nothing is rolled back or promoted. The manual gate on the last
stage counts as promotion.

Rows and goals:

* A/A rows (identical versions): false rollbacks <= 1%. A full run simulates 1,000 deployments
  for each A/A row of issue 10's table and 300 for the others (clean traffic, drifts).
* power rows (a real regression, 60 each in a full run, fewer than A/A rows because their
  shares sit far from the goal): rolled back >= 95%, median minutes to rollback reported.
* low traffic with a real regression: promoted <= 5% (safety_alpha: promotion needs a
  confidence sequence excluding "2x stable's errors"), never promoted without a PASS.

Shares come with Wilson 95% intervals; a goal is "met" when the point estimate meets it.

Usage::

    python bench/analysis_quality.py            # full run (~50 min on 2 busy cores)
    python bench/analysis_quality.py --quick    # smoke test (100 A/A, 40 power)
    python bench/analysis_quality.py --json     # machine-readable results
    python bench/analysis_quality.py --only aa,err2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pycanary.analysis.simulate import Tenant, Traffic, run_deployment, wilson  # noqa: E402
from pycanary.plan import Plan, PlanError, load_plan, parse_plan  # noqa: E402

PLANS = ROOT / "examples" / "plans"
RATE = 10_000  # jobs/min, the design card's scale


def bench_plan() -> Plan:
    """The design card's ramp with its latency conditions, minus its absolute error caps
    (the regression rows start from a 1% baseline, which 0.5%/1% caps reject anyway)."""
    card = load_plan(PLANS / "design-card.yaml").to_dict()
    for st in card["canary_config"]["stages"]:
        st.get("conditions", {}).pop("max_error_rate", None)
    return parse_plan(card)


_PLANS: dict[str, Plan] = {}


def plan_named(name: str) -> Plan:
    if name not in _PLANS:
        if name == "bench":
            _PLANS[name] = bench_plan()
        else:
            _PLANS[name] = load_plan(PLANS / f"{name}.yaml")
    return _PLANS[name]


@dataclass(frozen=True)
class Row:
    key: str
    title: str
    plan: str
    traffic: Traffic
    kind: str  # "aa" | "power" | "promote"
    runs: int


TENANTS = (Tenant("internal", 0.05, 0.03), Tenant("bigbank", 0.30, 0.012))


def rows(quick: bool) -> list[Row]:
    aa = 100 if quick else 1000  # the A/A rows of issue 10's table
    ex = 100 if quick else 300  # A/A rows beyond the table (clean traffic, drifts)
    pw = 40 if quick else 60
    t = Traffic
    return [
        Row("aa", "A/A, 1% errors, 10k jobs/min", "bench", t(RATE), "aa", ex),
        Row("aa_card", "A/A, design-card plan verbatim, 0.2% errors", "design-card",
            t(RATE, p_stable=0.002), "aa", ex),
        Row("outage_card", "30 s outage failing both lanes, design-card plan, healthy canary",
            "design-card", t(RATE, p_stable=0.002, outage_at_s=300), "aa", aa),
        Row("poison", "poison jobs (0.2% fail every attempt, retried in their lane)", "bench",
            t(RATE, poison_share=0.002), "aa", aa),
        Row("badkey", "sticky routing, one key (0.5% of jobs) always fails", "bench",
            t(RATE, bad_key_share=0.005), "aa", aa),
        Row("tenants", "tenant-first plan, tenants worse than the rest on both versions",
            "tenant-first", t(RATE, tenants=TENANTS), "aa", aa),
        Row("lowtail", "low traffic (1k jobs/min), heavy-tailed run times, latency rule",
            "bench", t(1000, sigma=1.2, random_totals=True, horizon_s=4 * 3600), "aa", aa),
        Row("drift", "base error rate drifting 1% -> 2%/h", "bench", t(RATE, error_drift=1.0),
            "aa", ex),
        Row("timedrift", "common run-time drift (+50%/h on both lanes)", "bench",
            t(RATE, time_drift=0.5), "aa", ex),
        Row("err2", "errors 1% -> 2%", "bench", t(RATE, p_canary=0.02), "power", pw),
        Row("err3", "errors 1% -> 3%", "bench", t(RATE, p_canary=0.03), "power", pw),
        Row("lat20", "p95 +20% (all run times x1.2)", "bench", t(RATE, canary_time_factor=1.2),
            "power", pw),
        Row("lat50", "p95 +50% (all run times x1.5)", "bench", t(RATE, canary_time_factor=1.5),
            "power", pw),
        Row("outage_err2", "30 s outage on both lanes at 5 min, then errors 1% -> 2% at 6 min",
            "bench", t(RATE, p_canary=0.02, outage_at_s=300, onset_s=360), "power", pw),
        Row("late_err2", "late onset: errors 1% -> 2% from minute 25 (stage 3)", "bench",
            t(RATE, p_canary=0.02, onset_s=25 * 60), "power", pw),
        Row("low_err2", "low traffic (100 jobs/min), errors 1% -> 2%", "bench",
            t(100, p_canary=0.02, random_totals=True, horizon_s=6 * 3600), "promote", pw),
    ]


def _task(args: tuple[Row, int]) -> tuple[str, dict[str, Any]]:
    row, i = args
    o = run_deployment(plan_named(row.plan), row.traffic, f"{row.key}:{i}")
    return row.key, {"outcome": o.outcome, "minutes": o.minutes, "rules": o.rollback_rules,
                     "after": o.minutes_after_onset}


def _share(k: int, n: int) -> dict[str, Any]:
    lo, hi = wilson(k, n)
    return {"k": k, "n": n, "share": k / n if n else 0.0, "lo": lo, "hi": hi}


def summarise(row: Row, runs: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(runs)
    by: dict[str, int] = {}
    rules: dict[str, int] = {}
    for r in runs:
        by[r["outcome"]] = by.get(r["outcome"], 0) + 1
        for name in r["rules"]:
            rules[name] = rules.get(name, 0) + 1
    rb = _share(by.get("rollback", 0), n)
    pr = _share(by.get("promoted", 0), n)
    after = [r["after"] for r in runs if r["outcome"] == "rollback" and r["after"] is not None]
    out: dict[str, Any] = {
        "key": row.key, "title": row.title, "plan": row.plan, "runs": n, "outcomes": by,
        "rollback": rb, "promoted": pr, "rollback_rules": rules,
        "median_minutes_to_rollback": statistics.median(after) if after else None,
        "median_minutes_promoted": statistics.median(
            [r["minutes"] for r in runs if r["outcome"] == "promoted"]) if by.get("promoted")
        else None,
    }
    if row.kind == "aa":
        out["goal"], out["met"], out["result"] = "false rollbacks <= 1%", rb["share"] <= 0.01, rb
    elif row.kind == "power":
        out["goal"], out["met"], out["result"] = "rolled back >= 95%", rb["share"] >= 0.95, rb
    else:
        out["goal"], out["met"], out["result"] = "promoted <= 5%", pr["share"] <= 0.05, pr
    return out


def zero_tolerance_row() -> dict[str, Any]:
    """`max_error_rate_increase: 0` / `run_time_tolerance: 0`: refused at plan load now."""
    msgs = []
    for body in ({"max_error_rate_increase": 0}, {"statistical": {"run_time_tolerance": 0}}):
        try:
            parse_plan({"stages": [{"percentage": 5, "duration": "10m"}], **body})
            msgs.append("accepted")
        except PlanError as exc:
            msgs.append(exc.lines[0])
    return {"key": "zero_tol", "title": "zero tolerances", "goal": "<= 1%, or refused",
            "met": all(m != "accepted" for m in msgs), "refused": msgs}


def _pct(s: dict[str, Any]) -> str:
    return f"{100 * s['share']:.1f}% [{100 * s['lo']:.1f}, {100 * s['hi']:.1f}]"


def markdown(results: list[dict[str, Any]], zero: dict[str, Any], seconds: float,
             quick: bool, workers: int) -> str:
    lines = [
        "| condition | plan | runs | result (95% Wilson) | goal | met | rolled back / promoted"
        " / paused / held | median min to rollback |",
        "|---|---|---:|---|---|---|---|---:|",
    ]
    for r in results:
        o = r["outcomes"]
        counts = "/".join(str(o.get(k, 0)) for k in ("rollback", "promoted", "paused", "held"))
        med = r["median_minutes_to_rollback"]
        lines.append(
            f"| {r['title']} | {r['plan']} | {r['runs']} | {_pct(r['result'])} | {r['goal']} | "
            f"{'yes' if r['met'] else '**no**'} | {counts} | "
            f"{'-' if med is None else f'{med:.1f}'} |")
    lines.append(f"| {zero['title']} | - | - | refused at plan load | {zero['goal']} | "
                 f"{'yes' if zero['met'] else '**no**'} | - | - |")
    lines.append("")
    for r in results:
        if r["rollback_rules"]:
            parts = ", ".join(f"{k} {v}" for k, v in sorted(r["rollback_rules"].items()))
            lines.append(f"- {r['title']}: rollbacks by rule: {parts}")
    for m in zero["refused"]:
        lines.append(f"- zero tolerance: `{m}`")
    lines.append(f"- {'quick' if quick else 'full'} run, {seconds:.0f} s on {workers} "
                 "process(es); seeds fixed per row and deployment.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer deployments (smoke test)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    ap.add_argument("--workers", type=int, default=min(2, multiprocessing.cpu_count()))
    ap.add_argument("--only", default="", help="comma-separated row keys")
    args = ap.parse_args(argv)
    rs = rows(args.quick)
    if args.only:
        keep = set(args.only.split(","))
        rs = [r for r in rs if r.key in keep]
    tasks = [(r, i) for r in rs for i in range(r.runs)]
    t0 = time.perf_counter()
    by_key: dict[str, list[dict[str, Any]]] = {r.key: [] for r in rs}
    done = 0
    if args.workers > 1:
        with multiprocessing.Pool(args.workers) as pool:
            for key, res in pool.imap_unordered(_task, tasks, chunksize=4):
                by_key[key].append(res)
                done += 1
                if done % 200 == 0:
                    print(f"{done}/{len(tasks)} deployments, {time.perf_counter() - t0:.0f} s",
                          file=sys.stderr, flush=True)
    else:
        for task in tasks:
            key, res = _task(task)
            by_key[key].append(res)
    seconds = time.perf_counter() - t0
    results = [summarise(r, by_key[r.key]) for r in rs]
    zero = zero_tolerance_row()
    if args.json:
        print(json.dumps({"seconds": seconds, "quick": args.quick, "results": results,
                          "zero_tolerance": zero}, indent=2))
    else:
        print(markdown(results, zero, seconds, args.quick, args.workers))
    return 0 if all(r["met"] for r in results) and zero["met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
