"""Canary analysis: judge the canary lane against the stable lane, one check at a time.

Pure by design (docs/design.md 1a): lane snapshots and the previous ``AnalysisState`` come in, an
``Analysis`` and the next state go out. No Redis and no clock, so the controller can store the
state anywhere, a restarted controller continues where the old one stopped, and the bench can
run thousands of simulated deployments through exactly this code.

Data windows. Each call receives the counts of the window since the previous check (disjoint,
consecutive windows; never overlapping ones, which would count the same jobs twice). The state
accumulates them two ways:

* per deployment, for the two sequential tests. An always-valid test is valid only when its
  statistic is built from *all* the data since it started; restarting it every stage would
  spend the error budget once per stage, and testing a sliding window would let the same
  evidence be re-tested forever. The tests are stratified by window (each window is compared
  within itself, then the evidence is multiplied up), so changes of weight between stages or
  of the baseline over the day do not bias them.
* per stage, for the threshold rules of the plan (``max_error_rate`` and friends): their
  thresholds are per stage, and "the canary's error rate during this stage" is what a person
  reading the plan means.

Rule semantics. A threshold rule PASSes when the observed value is within its threshold,
FAILs when it is beyond it *and* the excess is significant by an always-valid test at
``statistical.threshold_alpha``, and is INCONCLUSIVE in between (beyond the threshold on thin
evidence) or with fewer than ``min_samples`` attempts. INCONCLUSIVE holds promotion but does
not count towards rollback, so noise near a threshold delays a rollout instead of killing it.

Sequential tests (in the manner of Kayenta: judge the canary against stable, one-sided,
"canary worse"):

* ``stat_error_rate``: within each window, given the total failures E of both lanes, the
  canary's share of them is Binomial(E, q) with q = theta*pi / (theta*pi + 1 - pi), where pi is
  the canary's share of attempts and theta the failure-rate ratio. Under H0 (theta <= 1) the
  likelihood ratio against theta_k has expectation <= 1 (exactly 1 for Poisson counts; below
  1 for Bernoulli attempts, whose hypergeometric share is less dispersed than the binomial),
  so the product over windows is a non-negative supermartingale. A fixed mixture over a grid
  of ratios is one too, and Ville's inequality bounds the chance it *ever* reaches 1/alpha by
  alpha: that is what makes ~90 looks (or any number) safe. This is the two-proportion test
  of the brief, in conditional (exact, not Gaussian) form.
* ``stat_run_time``: a Mann-Whitney U per window on the two run-time histograms, ties counted
  at bucket midranks with the tie-corrected variance. Each window gives an estimate of
  P(canary slower) - 1/2 and its null variance; their inverse-variance weighted sum is (by
  the CLT, windows of >= a few dozen jobs) a Gaussian random walk under H0, tested with a
  half-normal mixture SPRT (mSPRT), closed form. Valid asymptotically, like every rank test.

Always-valid p-values are 1/max(Lambda) so far: they only go down, so a crossed test stays
crossed, which is why ``statistical.decisive`` may roll back without the usual
``failure_threshold`` debounce.

Known limit: the error test treats attempts as independent. A poison job retried in one lane,
or a multi-step workflow pinned to one lane by its sticky key, clusters failures there; heavy
clustering under identical versions can push the false-alarm rate above alpha.
"""

from __future__ import annotations

# Statistics re-exported under their historical private names (tests and tools use them).
from pycanary.stats import count_above as _count_above
from pycanary.stats import excess_log_lr as _excess_log_lr
from pycanary.stats import mann_whitney as _mann_whitney
from pycanary.stats import quantile as _quantile
from pycanary.stats import quantiles as _quantiles
from pycanary.stats import shift_down as _shift_down

from .check import evaluate
from .decision import Action, Decision, decide, should_rollback
from .evidence import (
    ERROR_ALPHA_SHARE,
    ERROR_TAU,
    LATENCY_Q,
    RUN_TIME_TAU,
    THRESHOLD_ALPHA_SHARE,
    Budget,
    alpha_budget,
    error_evidence,
    error_window,
)
from .state import AnalysisState, LaneTotals
from .types import Analysis, LaneStats, RuleResult, Verdict

__all__ = [
    "ERROR_ALPHA_SHARE",
    "ERROR_TAU",
    "LATENCY_Q",
    "RUN_TIME_TAU",
    "THRESHOLD_ALPHA_SHARE",
    "Action",
    "Analysis",
    "AnalysisState",
    "Budget",
    "Decision",
    "LaneStats",
    "LaneTotals",
    "RuleResult",
    "Verdict",
    "_count_above",
    "_excess_log_lr",
    "_mann_whitney",
    "_quantile",
    "_quantiles",
    "_shift_down",
    "alpha_budget",
    "decide",
    "error_evidence",
    "error_window",
    "evaluate",
    "should_rollback",
]
