"""How good are the canary verdicts? Simulated deployments through the real analysis code.

Every deployment walks the design card's ramp (5% -> 15% -> 50%, 10m/15m/20m, a check every
30 s, about 90 looks) at 10,000 jobs/min. Each 30 s window gets fresh per-lane counts: the
canary's share of jobs is binomial, failures are binomial, and run times are log-normal,
drawn as an exact multinomial over the buckets of pycanary.histogram (the same counts as
bucketing each job with bucket_index, without drawing 5,000 values per window). The windows
go through pycanary.analysis.evaluate and decide, exactly as the controller uses them. The
manual gate on the last stage counts as reaching promotion.

Usage::

    python bench/analysis_quality.py            # full run (a few minutes on 2 cores)
    python bench/analysis_quality.py --quick    # smoke test
    python bench/analysis_quality.py --json     # machine-readable results
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pycanary import histogram  # noqa: E402
from pycanary.analysis import (  # noqa: E402
    Action,
    AnalysisState,
    LaneStats,
    Verdict,
    decide,
    evaluate,
)
from pycanary.plan import Plan, load_plan, parse_plan  # noqa: E402

CARD_PLAN = ROOT / "examples" / "plans" / "design-card.yaml"
MEDIAN_RUN_US = 50_000.0  # 50 ms median handler time
SIGMA = 0.5  # log-normal shape of run times
WORKERS = 20  # split between lanes in proportion to the weight, at least one each
ALPHA_STAR = 0.01  # the fixed test n* is computed for
POWER_STAR = 0.80

# ---------------------------------------------------------------------------------------------
# Exact binomial / multinomial sampling with the stdlib (Python 3.11 has no binomialvariate).


def binomial(rng: random.Random, n: int, p: float) -> int:
    """Exact Binomial(n, p): inversion for small means, BTRS (Hormann 1993) otherwise."""
    if n <= 0 or p <= 0.0:
        return 0
    if p >= 1.0:
        return n
    if p > 0.5:
        return n - binomial(rng, n, 1.0 - p)
    if n * p < 10:
        q = 1.0 - p
        s = p / q
        a = (n + 1) * s
        r = q**n
        u = rng.random()
        x = 0
        while u > r:
            u -= r
            x += 1
            if x > n:  # float round-off in the far tail; restart
                return binomial(rng, n, p)
            r *= a / x - s
        return x
    q = 1.0 - p
    spq = math.sqrt(n * p * q)
    b = 1.15 + 2.53 * spq
    a = -0.0873 + 0.0248 * b + 0.01 * p
    c = n * p + 0.5
    v_r = 0.92 - 4.2 / b
    alpha = (2.83 + 5.1 / b) * spq
    lpq = math.log(p / q)
    m = math.floor((n + 1) * p)
    h = math.lgamma(m + 1) + math.lgamma(n - m + 1)
    while True:
        u = rng.random() - 0.5
        v = rng.random()
        us = 0.5 - abs(u)
        k = math.floor((2 * a / us + b) * u + c)
        if k < 0 or k > n:
            continue
        if us >= 0.07 and v <= v_r:
            return k
        v = math.log(v * alpha / (a / (us * us) + b))
        if v <= h - math.lgamma(k + 1) - math.lgamma(n - k + 1) + (k - m) * lpq:
            return k


_PROBS: dict[tuple[float, float], list[tuple[int, float]]] = {}


def bucket_probs(median_us: float, sigma: float) -> list[tuple[int, float]]:
    """P(bucket) of a log-normal run time, over pycanary.histogram's buckets."""
    key = (median_us, sigma)
    if key not in _PROBS:
        mu = math.log(median_us)

        def cdf(x: float) -> float:
            if x <= 0:
                return 0.0
            if math.isinf(x):
                return 1.0
            return 0.5 * math.erfc(-(math.log(x) - mu) / (sigma * math.sqrt(2)))

        out = []
        for i in range(histogram.N_BUCKETS):
            lo, hi = histogram.bucket_bounds(i)
            pr = cdf(hi) - cdf(lo)
            if pr > 1e-12:
                out.append((i, pr))
        total = sum(pr for _, pr in out)
        _PROBS[key] = [(i, pr / total) for i, pr in out]
    return _PROBS[key]


def multinomial_hist(rng: random.Random, n: int, probs: list[tuple[int, float]]) -> dict[int, int]:
    """Exact multinomial counts via conditional binomials."""
    out: dict[int, int] = {}
    left = 1.0
    for i, pr in probs:
        if n <= 0:
            break
        k = n if pr >= left else binomial(rng, n, pr / left)
        if k:
            out[i] = k
        n -= k
        left -= pr
    return out


# ---------------------------------------------------------------------------------------------
# Scenarios


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    plan: str  # "card" (verbatim) or "bench"
    jobs_per_min: float
    p_stable: float
    p_canary: float
    median_canary: float = MEDIAN_RUN_US
    sigma_canary: float = SIGMA
    deployments: int = 200
    horizon_s: float = 45 * 60
    kind: str = "regression"  # "aa" | "regression" | "low"


def bench_plan() -> Plan:
    """The design card's ramp with its latency conditions, minus its absolute error caps.

    The card caps the error rate at 0.5% / 1% / 1%. The regression scenarios start from a 1%
    baseline, which those caps would reject with or without a regression, so they would
    measure the caps, not the comparison. Everything else is the card verbatim.
    """
    card = load_plan(CARD_PLAN).to_dict()
    for st in card["canary_config"]["stages"]:
        st.get("conditions", {}).pop("max_error_rate", None)
    return parse_plan(card)


def scenarios(quick: bool) -> list[Scenario]:
    aa_n = 100 if quick else 1000
    reg_n = 40 if quick else 240
    low_n = 10 if quick else 60
    tail_sigma = SIGMA + math.log(1.5) / statistics.NormalDist().inv_cdf(0.95)
    return [
        Scenario(
            "aa_card",
            "A/A, card plan verbatim, 0.2% errors",
            "card",
            10_000,
            0.002,
            0.002,
            deployments=aa_n,
            kind="aa",
        ),
        Scenario("aa", "A/A, 1% errors", "bench", 10_000, 0.01, 0.01, deployments=aa_n, kind="aa"),
        Scenario("err2", "errors 1% -> 2%", "bench", 10_000, 0.01, 0.02, deployments=reg_n),
        Scenario("err3", "errors 1% -> 3%", "bench", 10_000, 0.01, 0.03, deployments=reg_n),
        Scenario(
            "lat50",
            "p95 +50% (all run times x1.5)",
            "bench",
            10_000,
            0.01,
            0.01,
            median_canary=MEDIAN_RUN_US * 1.5,
            deployments=reg_n,
        ),
        Scenario(
            "tail50",
            "p95 +50% (tail only, median same)",
            "bench",
            10_000,
            0.01,
            0.01,
            sigma_canary=tail_sigma,
            deployments=reg_n,
        ),
        Scenario(
            "low",
            "low traffic, 10 jobs/min, A/A",
            "bench",
            10,
            0.01,
            0.01,
            deployments=low_n,
            horizon_s=6 * 3600,
            kind="low",
        ),
    ]


def n_star(sc: Scenario) -> int | None:
    """Jobs a fixed one-sided test at alpha 1%, power 80% needs, stable taken as known."""
    nd = statistics.NormalDist()
    za, zb = nd.inv_cdf(1 - ALPHA_STAR), nd.inv_cdf(POWER_STAR)
    if sc.kind != "regression":
        return None
    if sc.p_canary != sc.p_stable:  # one-sample binomial test of the error rate
        p0, p1 = sc.p_stable, sc.p_canary
        return math.ceil(
            ((za * math.sqrt(p0 * (1 - p0)) + zb * math.sqrt(p1 * (1 - p1))) / (p1 - p0)) ** 2
        )
    if sc.sigma_canary == SIGMA:  # location shift: Mann-Whitney (Noether, stable known)
        auc = nd.cdf(math.log(sc.median_canary / MEDIAN_RUN_US) / (SIGMA * math.sqrt(2)))
        return math.ceil((za + zb) ** 2 / (12 * (auc - 0.5) ** 2))
    # tail only: binomial test of the share of canary run times above stable's p95
    z95 = nd.inv_cdf(0.95)
    p0 = 0.05
    p1 = 1 - nd.cdf(z95 * SIGMA / sc.sigma_canary)
    return math.ceil(
        ((za * math.sqrt(p0 * (1 - p0)) + zb * math.sqrt(p1 * (1 - p1))) / (p1 - p0)) ** 2
    )


def oracle_median(sc: Scenario, runs: int) -> float | None:
    """Median canary jobs an oracle needs: Wald's SPRT of ratio 1 against the *true* ratio.

    It knows the effect in advance, so no always-valid test at the same alpha (1%, where ours
    spends 0.5% per test) can be expected to stop sooner: a floor to judge the median by.
    Same windows, same conditional likelihood, looks every 30 s. Error scenarios only.
    """
    if sc.kind != "regression" or sc.p_canary == sc.p_stable:
        return None
    plan = _plan(sc.plan)
    theta = sc.p_canary / sc.p_stable
    bound = math.log(1 / ALPHA_STAR)
    total = int(sc.jobs_per_min * plan.interval / 60)
    jobs_at: list[int] = []
    for i in range(runs):
        rng = random.Random(f"oracle:{sc.key}:{i}")
        llr = 0.0
        jobs = 0
        done = False
        while not done:  # the ramp, repeated at the last weight until the SPRT crosses
            for st in plan.stages:
                looks = st.duration // plan.interval if not done else 0
                for _ in range(looks):
                    n_c = binomial(rng, total, st.percentage / 100)
                    n_s = total - n_c
                    x = binomial(rng, n_c, sc.p_canary)
                    e = x + binomial(rng, n_s, sc.p_stable)
                    jobs += n_c
                    if e and n_c and n_s:
                        pi = n_c / total
                        q = theta * pi / (theta * pi + 1 - pi)
                        llr += x * math.log(q / pi) + (e - x) * math.log((1 - q) / (1 - pi))
                    if llr >= bound:
                        jobs_at.append(jobs)
                        done = True
                        break
    return statistics.median(jobs_at)


# ---------------------------------------------------------------------------------------------
# One deployment


def _window(
    rng: random.Random, sc: Scenario, weight: float, interval: float, t: float
) -> tuple[LaneStats, LaneStats]:
    if sc.kind == "low":
        total = binomial(rng, 10**6, sc.jobs_per_min * interval / 60 / 10**6)  # ~Poisson
    else:
        total = int(sc.jobs_per_min * interval / 60)
    n_c = binomial(rng, total, weight)
    n_s = total - n_c
    f_c = binomial(rng, n_c, sc.p_canary)
    f_s = binomial(rng, n_s, sc.p_stable)
    w_c = max(1, round(WORKERS * weight))
    w_s = max(1, WORKERS - w_c)
    wait = histogram.bucket_index(2_000)  # queue wait is shown, never judged: keep it cheap
    stable = LaneStats(
        "stable",
        "v1",
        n_s - f_s,
        f_s,
        0,
        multinomial_hist(rng, n_s, bucket_probs(MEDIAN_RUN_US, SIGMA)),
        {wait: n_s} if n_s else {},
        w_s,
        interval,
        0,
    )
    canary = LaneStats(
        "canary",
        "v2",
        n_c - f_c,
        f_c,
        0,
        multinomial_hist(rng, n_c, bucket_probs(sc.median_canary, sc.sigma_canary)),
        {wait: n_c} if n_c else {},
        w_c,
        interval,
        0,
    )
    return stable, canary


_PLANS: dict[str, Plan] = {}


def _plan(name: str) -> Plan:
    if name not in _PLANS:
        _PLANS[name] = load_plan(CARD_PLAN) if name == "card" else bench_plan()
    return _PLANS[name]


def run_deployment(sc: Scenario, index: int) -> dict[str, Any]:
    rng = random.Random(f"{sc.key}:{index}")
    plan = _plan(sc.plan)
    interval = float(plan.interval)
    state = AnalysisState()
    stage = 0
    t = 0.0
    looks = 0
    first_fail_jobs: int | None = None
    bad_promotions = 0
    outcome = "held"
    rollback_jobs: int | None = None
    rollback_rules: list[str] = []
    while t < sc.horizon_s:
        t += interval
        looks += 1
        stable, canary = _window(rng, sc, plan.stages[stage].percentage / 100, interval, t)
        analysis, state = evaluate(stage, plan, stable, canary, state, t)
        if analysis.verdict is Verdict.FAIL and first_fail_jobs is None:
            first_fail_jobs = state.canary_attempts
        d = decide(plan, analysis, state, t)
        if d.action is Action.ROLLBACK:
            outcome = "rollback"
            rollback_jobs = state.canary_attempts
            rollback_rules = [r.rule for r in d.rules] or ["deadline"]
            break
        if d.action in (Action.PROMOTE, Action.AWAIT_APPROVAL):
            if analysis.verdict is not Verdict.PASS:
                bad_promotions += 1
            if d.next_stage is None:
                outcome = "promoted"
                break
            stage = d.next_stage
            state = state.enter_stage(stage, t)
    return {
        "outcome": outcome,
        "looks": looks,
        "canary_jobs": state.canary_attempts,
        "first_fail_jobs": first_fail_jobs,
        "rollback_jobs": rollback_jobs,
        "rollback_rules": rollback_rules,
        "bad_promotions": bad_promotions,
        "minutes": t / 60,
    }


def _task(args: tuple[Scenario, int]) -> tuple[str, dict[str, Any]]:
    sc, i = args
    return sc.key, run_deployment(sc, i)


# ---------------------------------------------------------------------------------------------
# Report


def _median(xs: list[int]) -> float | None:
    return statistics.median(xs) if xs else None


def summarise(sc: Scenario, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row: counts, medians, n*, and whether the target is met."""
    n = len(runs)
    rolled = [r for r in runs if r["outcome"] == "rollback"]
    promoted = [r for r in runs if r["outcome"] == "promoted"]
    rules: dict[str, int] = {}
    for r in rolled:
        for name in r["rollback_rules"]:
            rules[name] = rules.get(name, 0) + 1
    out: dict[str, Any] = {
        "key": sc.key,
        "scenario": sc.title,
        "deployments": n,
        "rolled_back": len(rolled),
        "promoted": len(promoted),
        "held": n - len(rolled) - len(promoted),
        "rollback_share": len(rolled) / n if n else 0.0,
        "promoted_while_not_pass": sum(r["bad_promotions"] for r in runs),
        "median_jobs_at_first_fail": _median(
            [r["first_fail_jobs"] for r in rolled if r["first_fail_jobs"] is not None]
        ),
        "median_jobs_at_rollback": _median([r["rollback_jobs"] for r in rolled]),
        "n_star": n_star(sc),
        "oracle_median": oracle_median(sc, n) if sc.kind == "regression" else None,
        "first_look_jobs": int(
            sc.jobs_per_min
            * _plan(sc.plan).interval
            / 60
            * _plan(sc.plan).stages[0].percentage
            / 100
        ),
        "rollback_rules": rules,
        "median_minutes": _median([r["minutes"] for r in runs]),
        "median_minutes_promoted": _median([r["minutes"] for r in promoted]),
    }
    if sc.kind == "aa":
        out["target"] = "false rollbacks <= 1%"
        out["met"] = out["rollback_share"] <= 0.01
    elif sc.kind == "regression":
        ok_share = out["rollback_share"] >= 0.95
        ns = out["n_star"]
        med = out["median_jobs_at_rollback"]
        out["target"] = "rolled back >= 95%, median jobs <= n*"
        out["floor"] = max(out["oracle_median"] or 0, out["first_look_jobs"])
        out["met_share"] = ok_share
        out["met_median"] = med is not None and ns is not None and med <= ns
        # A median below the floor is out of reach for any method; report it, do not fail on it.
        out["median_reachable"] = ns is not None and out["floor"] <= ns
        out["met"] = ok_share and out["met_median"]
    else:
        out["target"] = "0 promotions while INCONCLUSIVE"
        out["met"] = out["promoted_while_not_pass"] == 0
    return out


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.0f}" if x.is_integer() or abs(x) >= 100 else f"{x:.2f}"
    return str(x)


def markdown(results: list[dict[str, Any]], seconds: float, quick: bool, workers: int) -> str:
    lines = [
        "| scenario | deployments | rolled back | promoted | held | median canary jobs at "
        "first FAIL / rollback | n* | floor | promoted while not PASS | target | met |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        share = f"{r['rolled_back']} ({100 * r['rollback_share']:.1f}%)"
        jobs = f"{_fmt(r['median_jobs_at_first_fail'])} / {_fmt(r['median_jobs_at_rollback'])}"
        met = "yes" if r["met"] else "**no**"
        floor = r.get("floor")
        if r.get("met_share") and not r["met_median"]:
            why = "unreachable: floor > n*" if not r["median_reachable"] else "**no**"
            met = f"share yes; median no ({why})"
        lines.append(
            f"| {r['scenario']} | {r['deployments']} | {share} | {r['promoted']} | {r['held']}"
            f" | {jobs} | {_fmt(r['n_star'])} | {_fmt(floor)} | {r['promoted_while_not_pass']}"
            f" | {r['target']}"
            f" | {met} |"
        )
    lines.append("")
    for r in results:
        if r["rollback_rules"]:
            parts = ", ".join(f"{k} {v}" for k, v in sorted(r["rollback_rules"].items()))
            lines.append(f"- {r['scenario']}: rollbacks by rule: {parts}")
    lines.append(
        "- floor: one look (~250 canary jobs: 5% of 5,000 per 30 s) or, for error rates, if "
        "larger, the median canary jobs of an oracle: the SPRT of the *true* ratio against 1 "
        "at alpha 1% on the same windows and looks. Knowing the effect in advance, it attains "
        "the lower bound log(1/alpha)/KL on the mean sample size of any test valid over "
        "unlimited looks (Wald; Lai 1981). When even its median is above n*, a median at n* is "
        "out of reach."
    )
    for r in results:
        if r["key"] == "low" and r["promoted"]:
            lines.append(
                f"- {r['scenario']}: every check is INCONCLUSIVE until each lane has "
                f"min_samples attempts; promoted deployments took a median of "
                f"{_fmt(r['median_minutes_promoted'])} min (plan: 45 min), held ones were still "
                "waiting after 6 h."
            )
    lines.append(
        f"- {'quick' if quick else 'full'} run, {seconds:.0f} s on {workers} process(es); "
        "seeds fixed per scenario and deployment."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer deployments (smoke test)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    ap.add_argument("--workers", type=int, default=min(2, multiprocessing.cpu_count()))
    ap.add_argument("--only", default="", help="comma-separated scenario keys")
    args = ap.parse_args(argv)
    scs = scenarios(args.quick)
    if args.only:
        keep = set(args.only.split(","))
        scs = [s for s in scs if s.key in keep]
    tasks = [(sc, i) for sc in scs for i in range(sc.deployments)]
    t0 = time.perf_counter()
    by_key: dict[str, list[dict[str, Any]]] = {sc.key: [] for sc in scs}
    if args.workers > 1:
        with multiprocessing.Pool(args.workers) as pool:
            for key, res in pool.imap_unordered(_task, tasks, chunksize=8):
                by_key[key].append(res)
    else:
        for task in tasks:
            key, res = _task(task)
            by_key[key].append(res)
    seconds = time.perf_counter() - t0
    results = [summarise(sc, by_key[sc.key]) for sc in scs]
    if args.json:
        print(json.dumps({"seconds": seconds, "quick": args.quick, "results": results}, indent=2))
    else:
        print(markdown(results, seconds, args.quick, args.workers))
    missed = [
        r["key"]
        for r in results
        if not r["met"] and not (r.get("met_share") and not r.get("median_reachable", True))
    ]
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
