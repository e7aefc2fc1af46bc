"""``pycanary plan check``: lint a plan, then simulate it for the traffic it is meant for.

Lint is plan loading itself (every problem at once, ``PlanError``). The simulation runs
deployments through the real analysis (``pycanary.analysis.simulate``: evaluate + decide as
the controller drives them) for the given traffic, and reports, with Wilson 95% intervals:

* identical versions: false rollbacks, promotions (and median minutes to promotion), pauses;
* standard regressions (errors x2, x3; p95 +20%, +50%): power (rolled back), median minutes
  to rollback, and the chance a bad canary is promoted;

and warns when a regression is caught in fewer than 80% of runs, when healthy canaries are
promoted in fewer than 80% of runs (the stages are too short for the traffic to show safety),
when false rollbacks exceed 1%, or when a stage is too short to collect min_samples jobs.

Pure apart from reading the plan file: no Redis, no clock (a faces' progress callback may
print). The CLI (``pycanary plan check``) is a thin face over ``check_plan``.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .analysis.simulate import Tenant, Traffic, run_deployment, wilson
from .errors import ValidationError
from .plan import Plan, format_duration, resolve_plan

#: Deployments simulated per scenario by default (identical versions; regressions get half).
DEFAULT_RUNS = 100
MIN_POWER = 0.80
MIN_PROMOTED = 0.80
MAX_FALSE_ROLLBACK = 0.01

_RATE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(?:/\s*(s|sec|m|min|h|hour))?\s*$", re.I)


def parse_rate(text: str) -> float:
    """Jobs per minute from ``2000/min``, ``30/s``, ``100000/h`` or a bare number (per min)."""
    m = _RATE_RE.match(str(text))
    if not m:
        raise ValidationError(f"must be like 2000/min, 30/s or 100000/h, got {text!r}",
                              field="rate")
    value = float(m.group(1))
    unit = (m.group(2) or "min").lower()
    per_min = value * {"s": 60, "sec": 60, "m": 1, "min": 1, "h": 1 / 60, "hour": 1 / 60}[unit]
    if not 0.1 <= per_min <= 10_000_000:
        raise ValidationError(f"must be 0.1-10000000 jobs/min, got {text!r}", field="rate")
    return per_min


def parse_error_rate(text: str) -> float:
    """A probability from ``1%`` or ``0.01``."""
    t = str(text).strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise ValidationError(f"must be like 1% or 0.01, got {text!r}",
                              field="error_rate") from None
    if not 0 <= value < 0.5:
        raise ValidationError(f"must be 0-50%, got {text!r}", field="error_rate")
    return value


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    regression: bool
    traffic: Traffic


#: Share of the traffic each tenant named in the plan is assumed to send (the plan does not
#: say; a tenant-first plan is judged on those tenants' jobs in its 0% stages).
TENANT_SHARE = 0.10


def scenarios(rate: float, error_rate: float, horizon_s: float,
              tenants: tuple[str, ...] = ()) -> list[Scenario]:
    share = min(TENANT_SHARE, 0.5 / len(tenants)) if tenants else 0.0
    base = Traffic(rate, p_stable=error_rate, random_totals=rate < 2000, horizon_s=horizon_s,
                   tenants=tuple(Tenant(t, share, error_rate) for t in tenants))
    return [
        Scenario("aa", "identical versions", False, base),
        Scenario("errors_x2", "errors x2", True,
                 replace(base, p_canary=min(0.99, 2 * error_rate))),
        Scenario("errors_x3", "errors x3", True,
                 replace(base, p_canary=min(0.99, 3 * error_rate))),
        Scenario("p95_20", "p95 +20%", True, replace(base, canary_time_factor=1.2)),
        Scenario("p95_50", "p95 +50%", True, replace(base, canary_time_factor=1.5)),
    ]


@dataclass
class CheckReport:
    plan: str
    rate_per_min: float
    error_rate: float
    results: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: Facts about the simulation worth knowing that are no problem (webhook gates assumed).
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"plan": self.plan, "rate_per_min": self.rate_per_min,
                "error_rate": self.error_rate, "results": self.results,
                "warnings": self.warnings, "notes": self.notes, "ok": not self.warnings}

    def text(self) -> str:
        lines = [f"plan {self.plan}: valid; simulated at {self.rate_per_min:g} jobs/min, "
                 f"{100 * self.error_rate:g}% errors"]
        for r in self.results:
            def pct(s: dict[str, Any]) -> str:
                return f"{100 * s['share']:.1f}% [{100 * s['lo']:.1f}-{100 * s['hi']:.1f}]"

            if r["regression"]:
                med = r["median_minutes_to_rollback"]
                lines.append(
                    f"  {r['title']:<20} caught {pct(r['rollback'])}"
                    f"{'' if med is None else f' in a median {med:.1f} min'}; "
                    f"promoted {pct(r['promoted'])} ({r['runs']} runs)")
            else:
                med = r["median_minutes_promoted"]
                lines.append(
                    f"  {r['title']:<20} false rollbacks {pct(r['rollback'])}; promoted "
                    f"{pct(r['promoted'])}"
                    f"{'' if med is None else f' after a median {med:.0f} min'}; paused "
                    f"{pct(r['paused'])} ({r['runs']} runs)")
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"warning: {w}" for w in self.warnings] or ["ok: no warnings"]
        return "\n".join(lines)


def _share(k: int, n: int) -> dict[str, Any]:
    lo, hi = wilson(k, n)
    return {"k": k, "n": n, "share": k / n if n else 0.0, "lo": lo, "hi": hi}


def stage_warnings(plan: Plan, rate: float) -> list[str]:
    """Stages whose duration cannot collect min_samples jobs in each lane at this traffic."""
    out = []
    for i, st in enumerate(plan.stages):
        cfg = plan.settings(i)
        w = st.weight_bp / 10_000
        tenants = cfg.tenants_bp
        if w == 0 and tenants:
            continue  # tenant-first stage: its share depends on the tenants' traffic
        jobs = rate * st.duration / 60.0
        least = jobs * min(w, 1 - w)
        if least < cfg.min_samples:
            out.append(f"stages[{i}]: {format_duration(st.duration)} at {st.percentage:g}% of "
                       f"{rate:g} jobs/min gives ~{least:.0f} jobs to the smaller lane, below "
                       f"min_samples {cfg.min_samples}: the stage is too short for its traffic")
    return out


def _remote_http(url: str) -> bool:
    """Plain http to a host that is not this machine: the body (and any token in the URL)
    crosses the network unencrypted."""
    parts = urlsplit(url)
    return parts.scheme == "http" and (parts.hostname or "") not in ("127.0.0.1", "::1",
                                                                     "localhost")


def webhook_warnings(plan: Plan) -> list[str]:
    """Lint of the plan's webhooks: gates whose timeout is not below the check interval (a
    check then finds the call still running, and the stage waits a check longer each time),
    and webhooks over plain http to a remote host."""
    out = []
    for i, st in enumerate(plan.stages):
        if st.gate is None:
            continue
        if st.gate.timeout_s >= plan.interval:
            out.append(f"stages[{i}].gate.timeout_s: {st.gate.timeout_s:g}s is not below the "
                       f"interval {format_duration(plan.interval)}: a slow gate makes the stage "
                       "wait at least one more check per call")
        if _remote_http(st.gate.webhook):
            out.append(f"stages[{i}].gate.webhook: plain http to a remote host; use https")
    for j, hook in enumerate(plan.notifications.webhooks):
        if _remote_http(hook.url):
            out.append(f"notifications.webhooks[{j}].url: plain http to a remote host; use "
                       "https")
    return out


def check_plan(path: str | Path | Plan, rate_per_min: float, error_rate: float = 0.01, *,
               runs: int = DEFAULT_RUNS, seed: str = "plan-check",
               progress: Callable[[int, int], None] | None = None,
               name: str | None = None) -> CheckReport:
    """Lint (raises PlanError with every problem) and simulate a plan for the traffic: a
    file, a shipped plan's name (`plan.resolve_plan`) or a parsed plan (the API's body),
    reported as ``name`` (default: the path)."""
    plan = path if isinstance(path, Plan) else resolve_plan(path)
    if runs < 1 or runs > 100_000:
        raise ValidationError(f"must be 1-100000, got {runs}", field="runs")
    horizon = sum(st.deadline_s for st in plan.stages) + plan.interval
    if plan.deadline is not None:
        horizon = min(horizon, plan.deadline + plan.interval)
    report = CheckReport(name or str(path), rate_per_min, error_rate)
    names = sorted({*plan.tenants, *(t for st in plan.stages for t in st.tenants)})
    scs = scenarios(rate_per_min, error_rate, float(horizon), tuple(names))
    total = runs + (len(scs) - 1) * max(1, runs // 2)
    done = 0
    for sc in scs:
        n = runs if not sc.regression else max(1, runs // 2)
        outs = []
        for i in range(n):
            outs.append(run_deployment(plan, sc.traffic, f"{seed}:{sc.key}:{i}"))
            done += 1
            if progress is not None:
                progress(done, total)
        count = {k: sum(o.outcome == k for o in outs) for k in
                 ("rollback", "promoted", "paused", "held")}
        after = [o.minutes_after_onset for o in outs
                 if o.outcome == "rollback" and o.minutes_after_onset is not None]
        promoted = [o.minutes for o in outs if o.outcome == "promoted"]
        report.results.append({
            "key": sc.key, "title": sc.title, "regression": sc.regression, "runs": n,
            "outcomes": count,
            "rollback": _share(count["rollback"], n),
            "promoted": _share(count["promoted"], n),
            "paused": _share(count["paused"], n),
            "median_minutes_to_rollback": statistics.median(after) if after else None,
            "median_minutes_promoted": statistics.median(promoted) if promoted else None,
        })
    for r in report.results:
        if r["regression"] and r["rollback"]["share"] < MIN_POWER:
            report.warnings.append(
                f"{r['title']}: caught in {100 * r['rollback']['share']:.0f}% of runs, below "
                f"{100 * MIN_POWER:.0f}% power at this traffic")
        if r["regression"] and r["promoted"]["k"]:
            report.warnings.append(
                f"{r['title']}: the bad canary was promoted in {r['promoted']['k']} of "
                f"{r['runs']} runs")
        if not r["regression"] and r["rollback"]["share"] > MAX_FALSE_ROLLBACK:
            report.warnings.append(
                f"identical versions rolled back in {100 * r['rollback']['share']:.1f}% of "
                f"runs (above {100 * MAX_FALSE_ROLLBACK:.0f}%)")
        if not r["regression"] and r["promoted"]["share"] < MIN_PROMOTED:
            report.warnings.append(
                f"identical versions promoted in only {100 * r['promoted']['share']:.0f}% of "
                f"runs (paused {r['outcomes']['paused']}, held {r['outcomes']['held']}): the "
                "stages are too short for this traffic to show the canary safe")
    report.warnings.extend(stage_warnings(plan, rate_per_min))
    report.warnings.extend(webhook_warnings(plan))
    gated = [i for i, st in enumerate(plan.stages) if st.gate is not None]
    if gated:
        report.notes.append("the simulation takes the webhook gate"
                            + (" of stage " if len(gated) == 1 else "s of stages ")
                            + ", ".join(str(i + 1) for i in gated) + " as answering 2xx at once")
    return report
