"""Simulated deployments through the real analysis code (evaluate + decide, driven the way the
controller drives them): the engine of ``pycanary plan check`` and bench/analysis_quality.py.

Pure: a seeded ``random.Random`` and plain numbers, no Redis and no clock. Each window of
``plan.interval`` seconds gets fresh per-lane counts drawn from a traffic model that covers
what production does to a canary analysis (issue 10): a base error rate that drifts, a
shared outage that fails both lanes, poison jobs that fail every attempt in their lane, one
sticky customer key whose jobs always fail, tenants routed at their own weights with their
own error rates, heavy-tailed and drifting run times, regressions that start late. The
lanes' ``LaneStats`` carry the fields of the issue-10 data plane (first attempts, units per
stratum and cluster, routed counts), as h10b's controller builds them.

Run times are drawn as an exact multinomial over the buckets of pycanary.histogram (the
same counts as bucketing each job, without drawing thousands of values per window).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pycanary import histogram
from pycanary.plan import Plan

from .check import evaluate
from .decision import Action
from .decision import decide as _decide
from .state import AnalysisState
from .types import LaneStats, Verdict

#: Clusters of the analysis units (defaults.ANALYSIS_CLUSTERS in the data plane).
CLUSTERS = 32
WORKERS = 20


# --------------------------------------------------------------------------------------------
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


def poisson(rng: random.Random, mean: float) -> int:
    """Poisson(mean) as a binomial with many trials (exact enough for traffic counts)."""
    trials = max(1000, int(mean * 100))
    return binomial(rng, trials, mean / trials)


_PROBS: dict[tuple[float, float], list[tuple[int, float]]] = {}


def bucket_probs(median_us: float, sigma: float) -> list[tuple[int, float]]:
    """P(bucket) of a log-normal run time, over pycanary.histogram's buckets."""
    key = (round(median_us, 3), round(sigma, 6))
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
            if pr > 1e-9:
                out.append((i, pr))
        total = sum(pr for _, pr in out)
        if len(_PROBS) > 4096:
            _PROBS.clear()
        _PROBS[key] = [(i, pr / total) for i, pr in out]
    return _PROBS[key]


def multinomial_hist(rng: random.Random, n: int, probs: list[tuple[int, float]]) -> dict[int, int]:
    """Exact multinomial counts via conditional binomials."""
    out: dict[int, int] = {}
    left = 1.0
    for i, pr in probs:
        if n <= 0:
            break
        k = n if pr >= left else binomial(rng, n, min(1.0, pr / left))
        if k:
            out[i] = k
        n -= k
        left -= pr
    return out


# --------------------------------------------------------------------------------------------
# Traffic model


@dataclass(frozen=True)
class Tenant:
    """A tenant with its own traffic share and error rate (both versions alike)."""

    label: str
    share: float
    p_error: float


@dataclass(frozen=True)
class Traffic:
    """What the queue sees during a simulated deployment. Rates are per first attempt."""

    jobs_per_min: float
    p_stable: float = 0.01
    p_canary: float | None = None  # None: as stable (identical versions)
    median_us: float = 50_000.0
    sigma: float = 0.5
    canary_time_factor: float = 1.0  # every canary run time times this
    canary_sigma: float | None = None  # a heavier canary tail, same median
    random_totals: bool = False  # Poisson jobs per window (low traffic), else exact
    poison_share: float = 0.0  # share of jobs that fail every attempt (both versions)
    retries: int = 2
    bad_key_share: float = 0.0  # one sticky key, this share of jobs, always fails
    sticky: bool = True
    tenants: tuple[Tenant, ...] = ()
    outage_at_s: float | None = None  # both lanes fail outage_p of jobs for outage_s
    outage_s: float = 30.0
    outage_p: float = 0.5
    onset_s: float = 0.0  # the canary's regression starts here
    error_drift: float = 0.0  # base error rate x (1 + error_drift * t / 1h)
    time_drift: float = 0.0  # every run time (both lanes) x (1 + time_drift * t / 1h)
    horizon_s: float = 3 * 3600.0


@dataclass
class Outcome:
    outcome: str  # "promoted" | "rollback" | "paused" | "held"
    minutes: float
    canary_jobs: int
    rollback_rules: list[str] = field(default_factory=list)
    minutes_after_onset: float | None = None


def _lane(name: str, version: str, n: int, x: int, extra_failed: int, dead: int,
          units: Mapping[str, tuple[int, int]], run: dict[int, int], workers: int,
          interval: float, weight_bp: int) -> LaneStats:
    return LaneStats(
        lane=name, version=version, ok=n - x + (x - dead), failed=x + extra_failed, dead=dead,
        run_hist=run, wait_hist={}, workers=workers, window_s=interval, backlog=0,
        first_attempts=n, first_failed=x, crashed=0, units=units, routed=n,
        weight_bp=weight_bp, cpu_hist={})


def _spread(rng: random.Random, units: dict[str, list[int]], stratum: str, n: int, x: int,
            col: int) -> None:
    """n first attempts (x failed) over the clusters: failures at random, successes evenly."""
    if n <= 0:
        return
    base, extra = divmod(n - x, CLUSTERS)
    for c in range(CLUSTERS):
        k = base + (1 if c < extra else 0)
        if k:
            units.setdefault(f"{stratum}|{c}", [0, 0, 0, 0])[col] += k
    for _ in range(x):
        cell = units.setdefault(f"{stratum}|{rng.randrange(CLUSTERS)}", [0, 0, 0, 0])
        cell[col] += 1
        cell[col + 1] += 1


def window(rng: random.Random, tr: Traffic, plan: Plan, stage: int, t: float,
           key_u: float, key_cluster: int
           ) -> tuple[LaneStats, LaneStats, dict[str, int]]:
    """One window's (stable, canary, strata_weights) ending at time t."""
    interval = float(plan.interval)
    mean = tr.jobs_per_min * interval / 60.0
    total = poisson(rng, mean) if tr.random_totals else round(mean)
    w_bp = plan.stages[stage].weight_bp
    tw = plan.tenant_weights_bp(stage)
    regressed = t - interval >= tr.onset_s
    scale = 1.0 + tr.error_drift * t / 3600.0
    p_s = min(1.0, tr.p_stable * scale)
    p_c = p_s if tr.p_canary is None or not regressed else min(1.0, tr.p_canary * scale)
    if tr.outage_at_s is not None and tr.outage_at_s <= t - interval < tr.outage_at_s + \
            tr.outage_s:
        p_s = p_c = max(p_s, tr.outage_p)
    strata: list[tuple[str, float, float, float]] = []  # label, share, p_stable, p_canary
    rest = 1.0
    for tn in tr.tenants:
        strata.append((tn.label, tn.share, tn.p_error * scale, tn.p_error * scale
                       * ((p_c / p_s) if p_s > 0 else 1.0)))
        rest -= tn.share
    strata.insert(0, ("", max(rest, 0.0), p_s, p_c))
    units: dict[str, list[int]] = {}
    n_lane = [0, 0]  # canary, stable
    x_lane = [0, 0]
    extra = [0, 0]
    dead = [0, 0]
    weights: dict[str, int] = {}
    for label, share, ps, pc in strata:
        if share <= 0:
            continue
        wb = tw.get(label, w_bp) if label else w_bp
        weights[label] = wb
        w = wb / 10_000
        n_g = binomial(rng, total, share) if len(strata) > 1 else total
        bad = 0
        if label == "" and tr.bad_key_share > 0:
            bad = binomial(rng, n_g, tr.bad_key_share / share)
            n_g -= bad
        n_c = binomial(rng, n_g, w)
        n_s = n_g - n_c
        for col, n, p in ((0, n_c, pc), (2, n_s, ps)):
            li = col // 2
            x = binomial(rng, n, p)
            poison = binomial(rng, n - x, tr.poison_share) if tr.poison_share else 0
            x += poison
            extra[li] += poison * tr.retries
            dead[li] += poison
            n_lane[li] += n
            x_lane[li] += x
            _spread(rng, units, label, n, x, col)
        if bad:
            to_canary = (key_u < w) if tr.sticky else None
            if to_canary is None:
                b_c = binomial(rng, bad, w)
                split = ((0, b_c), (2, bad - b_c))
            else:
                split = ((0, bad),) if to_canary else ((2, bad),)
            for col, k in split:
                if not k:
                    continue
                li = col // 2
                cell = units.setdefault(f"|{key_cluster}", [0, 0, 0, 0])
                cell[col] += k
                cell[col + 1] += k
                n_lane[li] += k
                x_lane[li] += k
                extra[li] += k * tr.retries
                dead[li] += k
    drift = 1.0 + tr.time_drift * t / 3600.0
    med_s = tr.median_us * drift
    med_c = med_s * (tr.canary_time_factor if regressed else 1.0)
    sig_c = tr.canary_sigma if (tr.canary_sigma is not None and regressed) else tr.sigma
    run_c = multinomial_hist(rng, n_lane[0], bucket_probs(med_c, sig_c))
    run_s = multinomial_hist(rng, n_lane[1], bucket_probs(med_s, tr.sigma))
    u_c = {k: (v[0], v[1]) for k, v in units.items() if v[0]}
    u_s = {k: (v[2], v[3]) for k, v in units.items() if v[2]}
    w_c = max(1, round(WORKERS * w_bp / 10_000))
    w_s = max(1, WORKERS - w_c)
    stable = _lane("stable", "v1", n_lane[1], x_lane[1], extra[1], dead[1], u_s, run_s, w_s,
                   interval, w_bp)
    canary = _lane("canary", "v2", n_lane[0], x_lane[0], extra[0], dead[0], u_c, run_c, w_c,
                   interval, w_bp)
    return stable, canary, weights


def run_deployment(plan: Plan, tr: Traffic, seed: Any) -> Outcome:
    """One simulated deployment from the first stage to promotion, rollback, pause or the
    horizon. The manual gate of the last stage counts as promotion (the analysis passed)."""
    rng = random.Random(seed)
    key_u = rng.random()  # the bad key's place in the salted hash: fresh salt per deployment
    key_cluster = rng.randrange(CLUSTERS)
    interval = float(plan.interval)
    state = AnalysisState()
    stage = 0
    t = 0.0
    while t < tr.horizon_s:
        t += interval
        stable, canary, weights = window(rng, tr, plan, stage, t, key_u, key_cluster)
        analysis, state = evaluate(stage, plan, stable, canary, state, t,
                                   strata_weights=weights)
        d = _decide(plan, analysis, state, t)
        if d.action is Action.ROLLBACK:
            after = (t - tr.onset_s) / 60.0 if tr.onset_s else t / 60.0
            return Outcome("rollback", t / 60.0, state.canary_attempts,
                           [r.rule for r in d.rules] or [d.cause], after)
        if d.action is Action.PAUSE:
            return Outcome("paused", t / 60.0, state.canary_attempts)
        if d.action in (Action.PROMOTE, Action.AWAIT_APPROVAL):
            assert analysis.verdict is Verdict.PASS  # promotion only on evidence
            if d.next_stage is None:
                return Outcome("promoted", t / 60.0, state.canary_attempts)
            stage = d.next_stage
            state = state.enter_stage(stage, t)
    return Outcome("held", t / 60.0, state.canary_attempts)


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion k/n."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)
