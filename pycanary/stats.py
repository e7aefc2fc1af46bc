"""Statistics behind the analysis: log-space arithmetic, likelihood-ratio mixtures, quantiles
and a Mann-Whitney test on bucketed histograms. Pure functions on numbers, kept apart from the
rules that use them so each can be read and tested on its own."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from pycanary import histogram

#: Alternatives of the threshold rules' exceedance test, as multiples of the threshold rate.
EXCESS_RATIOS = (1.25, 1.5, 2.0, 3.0)


def logsumexp(xs: Iterable[float]) -> float:
    xs = list(xs)
    m = max(xs)
    if m == -math.inf:
        return m
    return m + math.log(sum(math.exp(x - m) for x in xs))


def log_phi(z: float) -> float:
    """log of the standard normal CDF, accurate far into the lower tail."""
    if z > -30:
        return math.log(0.5 * math.erfc(-z / math.sqrt(2)))
    return -0.5 * z * z - math.log(-z) - 0.5 * math.log(2 * math.pi)


def half_normal_mixture_log_lr(s: float, v: float, tau: float) -> float:
    """log of the mSPRT statistic for a Gaussian sum s with null variance v, effect > 0.

    Lambda = integral of exp(d*s - d^2 v/2) over a half-normal(tau) prior on d > 0, which is
    2/sqrt(1 + tau^2 v) * exp(s^2 / (2a)) * Phi(s/sqrt(a)) with a = v + 1/tau^2.
    """
    if v <= 0:
        return 0.0
    a = v + 1.0 / (tau * tau)
    z = s / math.sqrt(a)
    return math.log(2.0) - 0.5 * math.log1p(tau * tau * v) + 0.5 * z * z + log_phi(z)


def excess_log_lr(x: float, n: float, p0: float) -> float:
    """log of an always-valid mixture LR that a Bernoulli rate exceeds p0 (x events in n).

    For a fixed p0 the LR depends on cumulative (x, n) only, so no per-window state is needed.
    """
    if n <= 0 or x <= p0 * n:
        return 0.0
    if p0 <= 0:
        return math.inf
    alts = [p0 * r for r in EXCESS_RATIOS if p0 * r < 1] or [(1 + p0) / 2]
    logs = [x * math.log(p1 / p0) + (n - x) * math.log((1 - p1) / (1 - p0)) for p1 in alts]
    return logsumexp(logs) - math.log(len(alts))


def p_from_log_lr(log_lr: float) -> float:
    return 1.0 if log_lr <= 0 else math.exp(-log_lr)


#: The quantile functions live in histogram.py (one for the whole project); re-exported for
#: the analysis, which imports its statistics from here.
quantiles = histogram.quantiles
quantile = histogram.quantile


def count_above(hist: Mapping[int, int], t: float) -> float:
    """Number of observations above t, splitting t's bucket as histogram.quantiles does."""
    above = 0.0
    for i, c in hist.items():
        if c <= 0:
            continue
        lo, hi = histogram.bucket_bounds(i)
        if lo >= t:
            above += c
        elif hi > t and not math.isinf(hi):
            if i <= 0:
                above += c * (hi - t) / hi
            else:
                above += c * math.log(hi / t) / math.log(hi / lo)
    return above


def merge(a: Mapping[int, int], b: Mapping[int, int]) -> dict[int, int]:
    out = dict(a)
    for i, c in b.items():
        if c:
            out[i] = out.get(i, 0) + c
    return out


def shift_down(hist: Mapping[int, int], buckets: float) -> dict[float, float]:
    """The histogram of run times divided by GROWTH**buckets (a fractional bucket shift splits
    each count between the two buckets it straddles, as if spread log-uniformly)."""
    if buckets <= 0:
        return {float(i): float(c) for i, c in hist.items()}
    whole = math.floor(buckets)
    frac = buckets - whole
    out: dict[float, float] = {}
    for i, c in hist.items():
        j = float(i - whole)
        if frac <= 1e-9:
            out[j] = out.get(j, 0.0) + c
        else:
            out[j] = out.get(j, 0.0) + c * (1.0 - frac)
            out[j - 1] = out.get(j - 1, 0.0) + c * frac
    return out


def mann_whitney(canary: Mapping[Any, float], stable: Mapping[Any, float]) -> tuple[float, float]:
    """(AUC - 1/2, its null variance) for one window; ties at bucket midranks.

    AUC = P(canary > stable) + P(tie)/2, i.e. U / (n_c n_s). Returns (0, 0) when a side is
    empty or every job fell in one bucket (no information either way).
    """
    n_c = sum(canary.values())
    n_s = sum(stable.values())
    if n_c <= 0 or n_s <= 0:
        return 0.0, 0.0
    u = 0.0
    below = 0.0
    ties = 0.0
    for i in sorted(set(canary) | set(stable)):
        c = canary.get(i, 0)
        s = stable.get(i, 0)
        u += c * (below + 0.5 * s)
        below += s
        t = c + s
        ties += t * t * t - t
    n = n_c + n_s
    var_u = n_c * n_s / 12.0 * ((n + 1) - ties / (n * (n - 1))) if n > 1 else 0.0
    if var_u <= 0:
        return 0.0, 0.0
    scale = float(n_c * n_s)
    return u / scale - 0.5, var_u / (scale * scale)
