"""Plan files: the stages a canary walks through and the conditions each check must meet.

The design card's format is accepted verbatim::

    canary_config:
      stages:
        - percentage: 5
          duration: 10m
          auto_promote: true
          conditions: {max_error_rate: 0.5, max_latency_increase: 15}

Extensions (docs/design.md section 6). Condition keys may sit at the top of ``canary_config`` (they
become defaults for every stage) and inside any stage's ``conditions`` (they override the default
for that stage only)::

    max_error_rate           canary error rate, percent, absolute
    max_error_rate_increase  canary error rate minus stable error rate, percentage points
    max_latency_increase     canary p95 run time over stable p95 run time, percent (may exceed 100)
    max_throughput_decrease  canary jobs/s per worker below stable's, percent; judged only while
                             the canary lane does not keep up (its backlog grows)
    min_samples              finished attempts each lane must have behind a check (default 100)
    failure_threshold        consecutive FAIL checks before rollback (default 3)
    max_cpu_increase         canary p95 handler CPU time per job over stable's, percent
    on_no_data               hold | fail | pass: the verdict of a check whose window saw no
                             finished attempts in a lane (default hold); ``pass`` lets an empty
                             window pass only once the stage has min_samples canary attempts
                             (a canary that never ran never passes)
    on_inconclusive          hold | pause | rollback: what happens to a stage still without
                             evidence after inconclusive_checks checks past its duration, or
                             at its deadline (default pause)
    inconclusive_checks      those checks (default 20)

A stage may set ``deadline`` (default 3x its duration): by then it has passed, or
on_inconclusive applies. ``max_error_rate_increase`` and ``statistical.run_time_tolerance``
must be above 0: a zero tolerance fails healthy canaries on noise alone.

Deployment-wide keys, top of ``canary_config`` only::

    interval     time between checks (default 30s)
    deadline     the plan must reach its final gate by then or it is rolled back (optional)
    max_weight   guard for critical queues: no stage and no tenant may exceed it (percent)
    sticky       route by hash of the sticky key (default true) or by random draw
    salt         per-deployment salt of the sticky hash (default "")
    statistical  settings of the sequential tests (see ``Statistical``); deployment-wide because
                 those tests carry evidence across stages and their error bound covers all looks

Tenants. ``tenants`` maps a tenant label to the canary percentage its jobs get, whatever the
stage: ``tenants: {internal: 100, bigbank: 0}``. A stage may carry its own ``tenants`` map; it is
merged over the top-level one for that stage only, so a tenant can ramp on its own schedule
(``stages[1].tenants: {acme: 50}``). Tenants not listed follow the stage's percentage. A stage
may be at 0% when some tenant is above 0 (tenant-first rollouts).

Durations: ``30s``, ``10m``, ``1h30m``, ``2d``, or a bare integer of seconds; they must be
positive. Percentages: 0-100 with at most two decimals (``12.25``); every model exposes the
basis points (0..10000) the routing scripts use, so no float ever reaches Redis.

Errors: one ``PlanError`` whose lines read ``stages[1].percentage: must be 0-100, got 150``,
most useful first, so CLI and API can show the first line alone and still be helpful. It is a
``pycanary.errors.ValidationError`` whose ``field`` is the first line's path (``plan`` for a
file that cannot be read or parsed).

Limits, applied before anything is expanded, because a plan may come from an API client:
files and texts above ``MAX_PLAN_BYTES`` (64 KB) are refused unread; YAML may nest at most
``MAX_DEPTH`` levels and hold at most ``MAX_NODES`` nodes *after* alias expansion (a "billion
laughs" document is refused while it is composed, before any object is built); a plan has at
most ``MAX_STAGES`` stages; durations are at most ``MAX_DURATION_S`` (366 days); error lines
quote at most ~60 characters of a rejected value and at most ``MAX_ERROR_LINES`` are kept.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from . import errors as _errors
from .defaults import GATE_TIMEOUT_S
from .validation import WEBHOOK_KINDS, quote, redact_url, webhook_url_problem

__all__ = [
    "DEFAULT_FAILURE_THRESHOLD",
    "DEFAULT_INTERVAL_S",
    "DEFAULT_MIN_SAMPLES",
    "Conditions",
    "Gate",
    "Notifications",
    "Plan",
    "PlanError",
    "Stage",
    "StageSettings",
    "Statistical",
    "Webhook",
    "format_duration",
    "load_named",
    "load_plan",
    "named_plans",
    "parse_duration",
    "parse_plan",
    "percent_to_bp",
    "plan_from",
    "resolve_plan",
]

DEFAULT_MIN_SAMPLES = 100
DEFAULT_FAILURE_THRESHOLD = 3
DEFAULT_INTERVAL_S = 30
DEFAULT_ON_NO_DATA = "hold"
DEFAULT_ON_INCONCLUSIVE = "pause"
#: Checks in a row that stay INCONCLUSIVE after the stage's time is up before on_inconclusive
#: applies: 20 checks (10 minutes at the default interval) give a stage that is close to its
#: evidence the time to reach it, and then stop waiting without a person's word.
DEFAULT_INCONCLUSIVE_CHECKS = 20
#: A stage without its own deadline gets this many times its duration: nothing waits forever.
DEFAULT_STAGE_DEADLINE_FACTOR = 3

OnNoData = Literal["hold", "fail", "pass"]
OnInconclusive = Literal["hold", "pause", "rollback"]

MAX_PLAN_BYTES = 64 * 1024
MAX_DEPTH = 32
MAX_NODES = 20_000
MAX_STAGES = 100
MAX_DURATION_S = 366 * 86_400
MAX_ERROR_LINES = 20
#: Longest a webhook gate's call may be allowed to take, and most webhooks per plan.
MAX_GATE_TIMEOUT_S = 300.0
MAX_WEBHOOKS = 10

_FIELD_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\[\d+\]|\.[^\s:]+)*): ")


class PlanError(_errors.ValidationError):
    """A plan that cannot be used; ``lines`` holds one ``path: problem`` per defect.

    A ValidationError (so faces report it like any user mistake, and still a ValueError):
    ``field`` is the path of the first line, or ``plan`` when the first line is about the
    file or its YAML; ``message`` is the rest of the first line; ``str()`` is every line."""

    code = "invalid_plan"

    def __init__(self, lines: list[str], *, field: str | None = None) -> None:
        lines = list(lines) or ["plan: invalid"]
        if len(lines) > MAX_ERROR_LINES:
            lines = [*lines[:MAX_ERROR_LINES],
                     f"plan: {len(lines) - MAX_ERROR_LINES} more problems not shown"]
        self.lines = lines
        first = lines[0]
        m = _FIELD_RE.match(first) if field is None else None
        if field is not None:
            message = first.removeprefix(f"{field}: ")
        elif m is not None:
            field, message = m.group(1), first[m.end():]
        else:
            field, message = "plan", first
        super().__init__(message, field=field)

    def __str__(self) -> str:
        return "\n".join(self.lines)


# --------------------------------------------------------------------------------------------
# Scalar parsers. They raise PydanticCustomError so the message reaches the user unprefixed.


def _got(v: Any) -> str:
    """Render a rejected value the way the user wrote it (YAML spelling for null and booleans).

    Bounded: never more than ~60 characters, and never the cost of expanding the value (a
    shared YAML structure, a 5,000-digit integer)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer() and math.isfinite(v) and abs(v) < 1e16:
        return str(int(v))
    if isinstance(v, int) and v.bit_length() <= 64:
        return str(v)
    if isinstance(v, float):
        return repr(v)
    return quote(v, 60)


def _fail(kind: str, message: str, value: Any) -> PydanticCustomError:
    return PydanticCustomError(kind, message + ", got {got}", {"got": _got(value)})


_DURATION_RE = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def parse_duration(value: Any) -> int:
    """Seconds in ``30s``, ``10m``, ``1h30m``, ``2d`` or a bare integer; positive only.

    Zero is refused because every duration in a plan (stage, interval, deadline) is a span of
    observation or a timeout, and none of them means anything at zero.
    """
    if isinstance(value, bool):
        raise _fail("duration", "must be a duration like 30s, 10m, 1h30m", value)
    if isinstance(value, float):
        if not value.is_integer():
            raise _fail("duration", "must be whole seconds", value)
        value = int(value)
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str):
        text = value.strip().lower()
        if len(text) > 32:  # a 5,000-digit number is no duration; refuse before int() it
            raise _fail("duration", "must be a duration like 30s, 10m, 1h30m", value)
        if text.lstrip("-").isdigit():
            seconds = int(text)
        else:
            m = _DURATION_RE.fullmatch(text)
            if not text or m is None:
                raise _fail("duration", "must be a duration like 30s, 10m, 1h30m", value)
            d, h, mi, s = (int(g) if g else 0 for g in m.groups())
            seconds = ((d * 24 + h) * 60 + mi) * 60 + s
    else:
        raise _fail("duration", "must be a duration like 30s, 10m, 1h30m", value)
    if seconds <= 0:
        raise _fail("duration", "must be above 0s", value)
    if seconds > MAX_DURATION_S:
        raise _fail("duration", "must be at most 366d", value)
    return seconds


def format_duration(seconds: float) -> str:
    """Inverse of parse_duration for display: 5400 -> ``1h30m``."""
    s = round(seconds)
    if s <= 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if s >= size:
            parts.append(f"{s // size}{unit}")
            s %= size
    return "".join(parts)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or value is None:
        raise _fail("number", f"must be {what}", value)
    if isinstance(value, str):
        text = value.strip().removesuffix("%").strip()
        if len(text) > 64:  # no percentage needs more; float() of 5,000 digits is inf
            raise _fail("number", f"must be {what}", value)
        try:
            value = float(text)
        except ValueError:
            raise _fail("number", f"must be {what}", value) from None
    if isinstance(value, int) and value.bit_length() > 64:
        raise _fail("number", f"must be {what}", value)  # float() would overflow
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail("number", f"must be {what}", value)
    return float(value)


def _two_decimals(x: float, original: Any) -> float:
    if abs(x * 100 - round(x * 100)) > 1e-6:
        raise _fail("percent", "must have at most two decimals", original)
    return round(x, 2)


def _percent(value: Any) -> float:
    x = _number(value, "a percentage 0-100")
    if not 0 <= x <= 100:
        raise _fail("percent", "must be 0-100", value)
    return _two_decimals(x, value)


def _increase(value: Any) -> float:
    """Relative increases (latency) may exceed 100%: +200% is a tripling."""
    x = _number(value, "a percentage >= 0")
    if x < 0:
        raise _fail("percent", "must be >= 0", value)
    return _two_decimals(x, value)


def _probability(value: Any) -> float:
    x = _number(value, "a probability")
    if not 0 < x <= 0.2:
        raise _fail("probability", "must be above 0 and at most 0.2", value)
    return x


def _count(lo: int, hi: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            number = int(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            raise _fail("count", f"must be a whole number {lo}-{hi}", value)
        if not lo <= number <= hi:
            raise _fail("count", f"must be {lo}-{hi}", value)
        return number

    return check


def _on_no_data(value: Any) -> str:
    if value not in ("hold", "fail", "pass"):
        raise _fail("choice", "must be one of hold, fail, pass", value)
    return str(value)


def _on_inconclusive(value: Any) -> str:
    if value not in ("hold", "pause", "rollback"):
        raise _fail("choice", "must be one of hold, pause, rollback", value)
    return str(value)


def _positive_percent(value: Any) -> float:
    """A tolerance of exactly 0 is refused: with tied values (bucketed run times, equal error
    rates) any noise is "an increase", so a zero tolerance rolls back healthy canaries."""
    x = _percent(value)
    if x <= 0:
        raise _fail("percent", "must be above 0 (a zero tolerance fails on noise alone; "
                    "use 0.1 or more)", value)
    return x


def _positive_increase(value: Any) -> float:
    x = _increase(value)
    if x <= 0:
        raise _fail("percent", "must be above 0 (a zero tolerance fails on noise alone; "
                    "use 1 or more)", value)
    return x


def _ratio(value: Any) -> float:
    x = _number(value, "a ratio above 1")
    if not 1 < x <= 100:
        raise _fail("ratio", "must be above 1 and at most 100", value)
    return x


def _strict_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail("bool", "must be true or false", value)
    return value


def _salt(value: Any) -> str:
    # An unquoted YAML salt such as 0123 arrives as an octal int; refusing it beats hashing a
    # different salt from the one the user sees.
    if not isinstance(value, str):
        raise _fail("string", "must be a string (quote it in YAML)", value)
    if len(value) > 256:
        raise _fail("string", "must be at most 256 characters", value)
    return value


_TENANT_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _tenants(value: Any) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _fail("mapping", "must map tenant to percentage", value)
    out: dict[str, float] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not _TENANT_RE.fullmatch(k):
            raise _fail("tenant", "tenant names are 1-128 characters of A-Za-z0-9._:-", k)
        out[k] = v  # the percentage is checked per key below so the path names the tenant
    return out


def _webhook_url(value: Any) -> str:
    """An http(s) URL; a refusal shows only its scheme and host (the rest may be a token)."""
    problem = webhook_url_problem(value)
    if problem is not None:
        shown = redact_url(value) if isinstance(value, str) else _got(value)
        raise PydanticCustomError("url", problem + ", got {got}", {"got": shown})
    return str(value)


def _webhook_kind(value: Any) -> str:
    if value not in WEBHOOK_KINDS:
        raise _fail("choice", f"must be one of {', '.join(WEBHOOK_KINDS)}", value)
    return str(value)


def _gate_timeout(value: Any) -> float:
    x = _number(value, "seconds")
    if not 0 < x <= MAX_GATE_TIMEOUT_S:
        raise _fail("timeout", f"must be above 0 and at most {MAX_GATE_TIMEOUT_S:g} seconds",
                    value)
    return x


def _none_as_empty(value: Any) -> Any:
    # ``conditions:`` with nothing under it is YAML null; it plainly means "no conditions".
    return {} if value is None else value


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def run(value: Any) -> Any:
        return None if value is None else check(value)

    return run


Percent = Annotated[float, BeforeValidator(_percent)]
OptPercent = Annotated[float | None, BeforeValidator(_optional(_percent))]
OptIncrease = Annotated[float | None, BeforeValidator(_optional(_increase))]
Duration = Annotated[int, BeforeValidator(parse_duration)]
OptDuration = Annotated[int | None, BeforeValidator(_optional(parse_duration))]
OptSamples = Annotated[int | None, BeforeValidator(_optional(_count(1, 10_000_000)))]
OptThreshold = Annotated[int | None, BeforeValidator(_optional(_count(1, 1000)))]
OptNoData = Annotated[OnNoData | None, BeforeValidator(_optional(_on_no_data))]
OptOnInconclusive = Annotated[OnInconclusive | None, BeforeValidator(_optional(_on_inconclusive))]
OptPositivePercent = Annotated[float | None, BeforeValidator(_optional(_positive_percent))]
OptChecks = Annotated[int | None, BeforeValidator(_optional(_count(1, 10_000)))]
Bool = Annotated[bool, BeforeValidator(_strict_bool)]
Probability = Annotated[float, BeforeValidator(_probability)]
TenantMap = Annotated[dict[str, Percent], BeforeValidator(_tenants)]
WebhookUrl = Annotated[str, BeforeValidator(_webhook_url)]


def percent_to_bp(pct: float) -> int:
    """Percent with two decimals -> basis points, the unit of every routing weight."""
    return round(pct * 100)


# --------------------------------------------------------------------------------------------
# Models


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _ConditionFields(_Strict):
    max_error_rate: OptPercent = None
    max_error_rate_increase: OptPositivePercent = None
    max_latency_increase: OptIncrease = None
    max_throughput_decrease: OptPercent = None
    max_cpu_increase: OptIncrease = None
    min_samples: OptSamples = None
    failure_threshold: OptThreshold = None
    on_no_data: OptNoData = None
    on_inconclusive: OptOnInconclusive = None
    inconclusive_checks: OptChecks = None


CONDITION_KEYS = tuple(_ConditionFields.model_fields)


class Conditions(_ConditionFields):
    """Per-stage conditions; None means "inherit the top-level default"."""


class Statistical(_Strict):
    """Sequential tests that compare canary with stable over the whole deployment.

    ``alpha`` bounds the chance that identical versions are rolled back by these tests over
    all looks of one deployment; with both tests on it is split 80/20 between the error-rate
    and the run-time test (Bonferroni, so the bound holds for the pair; failures are rare
    events and need the budget more than run times, which come by the thousand).
    ``decisive`` lets a crossed boundary roll back at once:
    an always-valid test that has crossed never uncrosses, so waiting for
    ``failure_threshold`` more checks only adds exposure.

    One budget (issue 10): ``alpha`` bounds every rule that can FAIL on noise, the two
    sequential tests *and* the threshold rules (max_error_rate and friends, each stage's
    test of each rule getting an equal part of 20% of alpha). ``threshold_alpha``, when set,
    is instead the threshold rules' own total budget, on top of ``alpha`` (older plans).

    Promotion needs evidence of safety: ``error_margin`` (a failure-rate ratio, default 2)
    and ``run_time_tolerance`` are the margins a confidence sequence at ``safety_alpha`` must
    show the canary within before a stage PASSes.

    ``run_time_tolerance`` (percent) is the slowdown the run-time test accepts: without one,
    ~100,000 canary jobs make a 2% slowdown "significant", and a tool that rolls back every
    version 2% slower gets switched off. The error-rate test pursues ratios above 1 and
    needs many failures to notice a small one (that is the threshold rules' job).
    """

    enabled: Bool = True
    alpha: Probability = 0.01
    error_rate: Bool = True
    run_time: Bool = True
    decisive: Bool = True
    threshold_alpha: Annotated[float | None, BeforeValidator(_optional(_probability))] = None
    run_time_tolerance: Annotated[float, BeforeValidator(_positive_increase)] = 10.0
    error_margin: Annotated[float, BeforeValidator(_ratio)] = 2.0
    safety_alpha: Probability = 0.05


class Webhook(_Strict):
    """Where notifications go: ``kind`` json (the generic body) or slack (``{"text": ...}``)."""

    url: WebhookUrl
    kind: Annotated[str, BeforeValidator(_webhook_kind)] = "json"


def _webhook_list(value: Any) -> Any:
    if isinstance(value, list) and len(value) > MAX_WEBHOOKS:
        raise _fail("webhooks", f"must list at most {MAX_WEBHOOKS} webhooks", len(value))
    return value


class Notifications(_Strict):
    """The plan's own webhooks, notified on top of those in ``PYCANARY_WEBHOOKS``."""

    webhooks: Annotated[list[Webhook], BeforeValidator(_webhook_list)] = Field(
        default_factory=list)


class Gate(_Strict):
    """A webhook gate (Flagger's confirm-promotion): once the stage has passed, the controller
    calls ``webhook`` (POST, in the background) and advances only after a 2xx answer; any
    other answer or a timeout keeps the stage waiting, and the call is repeated at the next
    check."""

    webhook: WebhookUrl
    timeout_s: Annotated[float, BeforeValidator(_gate_timeout)] = GATE_TIMEOUT_S


class Stage(_Strict):
    """One step of the ramp: route ``percentage`` of new jobs to the canary for ``duration``."""

    percentage: Percent
    duration: Duration
    auto_promote: Bool = True
    conditions: Annotated[Conditions, BeforeValidator(_none_as_empty)] = Field(
        default_factory=Conditions
    )
    tenants: TenantMap = Field(default_factory=dict)
    #: The stage's own deadline: when it has not passed by then, on_inconclusive applies.
    #: Default DEFAULT_STAGE_DEADLINE_FACTOR times its duration.
    deadline: OptDuration = None
    #: A webhook that must answer 2xx before the stage advances (None: no webhook gate).
    gate: Gate | None = None

    @property
    def deadline_s(self) -> int:
        """Seconds after the stage's start at which on_inconclusive applies at the latest."""
        if self.deadline is not None:
            return self.deadline
        return min(self.duration * DEFAULT_STAGE_DEADLINE_FACTOR, MAX_DURATION_S)

    @property
    def weight_bp(self) -> int:
        """Routing weight of the stage in basis points."""
        return percent_to_bp(self.percentage)


@dataclass(frozen=True)
class StageSettings:
    """Everything a check needs for one stage, defaults already applied."""

    index: int
    last: bool
    percentage: float
    weight_bp: int
    duration_s: int
    auto_promote: bool
    max_error_rate: float | None
    max_error_rate_increase: float | None
    max_latency_increase: float | None
    max_throughput_decrease: float | None
    min_samples: int
    failure_threshold: int
    on_no_data: str
    tenants_bp: Mapping[str, int]
    max_cpu_increase: float | None = None
    on_inconclusive: str = DEFAULT_ON_INCONCLUSIVE
    inconclusive_checks: int = DEFAULT_INCONCLUSIVE_CHECKS
    deadline_s: int | None = None


class Plan(_ConditionFields):
    """The body of ``canary_config``: stages plus deployment-wide settings and defaults."""

    stages: list[Stage]
    interval: Duration = DEFAULT_INTERVAL_S
    deadline: OptDuration = None
    max_weight: OptPercent = None
    sticky: Bool = True
    salt: Annotated[str, BeforeValidator(_salt)] = ""
    tenants: TenantMap = Field(default_factory=dict)
    statistical: Annotated[Statistical, BeforeValidator(_none_as_empty)] = Field(
        default_factory=Statistical
    )
    notifications: Annotated[Notifications, BeforeValidator(_none_as_empty)] = Field(
        default_factory=Notifications
    )

    @model_validator(mode="after")
    def _cross_checks(self) -> Plan:
        issues: list[tuple[str, str]] = []
        if not self.stages:
            issues.append(("stages", "must list at least one stage, got []"))
        if len(self.stages) > MAX_STAGES:
            issues.append(("stages", f"must list at most {MAX_STAGES} stages, "
                                     f"got {len(self.stages)}"))
        cap = self.max_weight
        if cap is not None and cap <= 0:
            issues.append(("max_weight", f"must be above 0, got {_got(cap)}"))
            cap = None
        for name, pct in self.tenants.items():
            if cap is not None and pct > cap:
                issues.append((f"tenants.{name}", f"above max_weight {_got(cap)}, got {_got(pct)}"))
        prev: float | None = None
        total = 0
        for i, st in enumerate(self.stages):
            where = f"stages[{i}]"
            total += st.duration
            if st.gate is not None and not st.auto_promote:
                issues.append((f"{where}.gate", "auto_promote: false already waits for a "
                               "person's promote; a stage has one gate (drop gate, or set "
                               "auto_promote: true), got a webhook gate"))
            if st.percentage >= 100:
                issues.append(
                    (
                        f"{where}.percentage",
                        "must be below 100 (the stable lane would get nothing to compare with; "
                        "promotion after the last stage takes the canary to 100%), got "
                        + _got(st.percentage),
                    )
                )
            elif prev is not None and st.percentage < prev:
                issues.append(
                    (
                        f"{where}.percentage",
                        f"must not be below the previous stage's {_got(prev)}, "
                        f"got {_got(st.percentage)}",
                    )
                )
            elif cap is not None and st.percentage > cap:
                issues.append(
                    (
                        f"{where}.percentage",
                        f"above max_weight {_got(cap)}, got {_got(st.percentage)}",
                    )
                )
            for name, pct in st.tenants.items():
                if cap is not None and pct > cap:
                    issues.append(
                        (
                            f"{where}.tenants.{name}",
                            f"above max_weight {_got(cap)}, got {_got(pct)}",
                        )
                    )
            if st.deadline is not None and st.deadline < st.duration:
                issues.append(
                    (
                        f"{where}.deadline",
                        f"shorter than the stage's duration {format_duration(st.duration)}, "
                        f"got {format_duration(st.deadline)}",
                    )
                )
            if st.duration < self.interval:
                issues.append(
                    (
                        f"{where}.duration",
                        f"shorter than interval {format_duration(self.interval)} (the stage "
                        f"would end before its first check), got {format_duration(st.duration)}",
                    )
                )
            merged = {**self.tenants, **st.tenants}
            if st.percentage == 0 and not any(p > 0 for p in merged.values()):
                issues.append(
                    (
                        f"{where}.percentage",
                        "sends no jobs to the canary (0% and no tenant above 0), got 0",
                    )
                )
            prev = st.percentage if prev is None else max(prev, st.percentage)
        if self.deadline is not None and self.stages and self.deadline < total:
            issues.append(
                (
                    "deadline",
                    f"shorter than the stages' total duration {format_duration(total)}, "
                    f"got {format_duration(self.deadline)}",
                )
            )
        if issues:
            raise PydanticCustomError("plan_checks", "plan checks failed", {"issues": issues})
        return self

    # ---- derived views -------------------------------------------------------------------

    @property
    def max_weight_bp(self) -> int:
        """The max_weight guard in basis points (10000 when unset)."""
        return 10_000 if self.max_weight is None else percent_to_bp(self.max_weight)

    @property
    def total_duration(self) -> int:
        """Seconds the stages take when every check passes on time."""
        return sum(st.duration for st in self.stages)

    def tenant_weights_bp(self, index: int) -> dict[str, int]:
        """Per-tenant routing weights of stage ``index``: top-level map, stage map on top."""
        merged = {**self.tenants, **self.stages[index].tenants}
        return {k: percent_to_bp(v) for k, v in merged.items()}

    def stage_label(self, index: int) -> str:
        """How people read stage ``index``: counted from 1, with its percentage. Field paths
        (``stages[0]``) stay 0-based like the YAML; every message to a person uses this."""
        return f"stage {index + 1} ({self.stages[index].percentage:g}%)"

    def settings(self, index: int) -> StageSettings:
        """Stage ``index`` with every condition resolved (stage, else top level, else default)."""
        if not 0 <= index < len(self.stages):
            raise IndexError(f"stage {index} out of range 0..{len(self.stages) - 1}")
        st = self.stages[index]
        c = st.conditions

        def pick(name: str, default: Any) -> Any:
            v = getattr(c, name)
            if v is None:
                v = getattr(self, name)
            return default if v is None else v

        return StageSettings(
            index=index,
            last=index == len(self.stages) - 1,
            percentage=st.percentage,
            weight_bp=st.weight_bp,
            duration_s=st.duration,
            auto_promote=st.auto_promote,
            max_error_rate=pick("max_error_rate", None),
            max_error_rate_increase=pick("max_error_rate_increase", None),
            max_latency_increase=pick("max_latency_increase", None),
            max_throughput_decrease=pick("max_throughput_decrease", None),
            min_samples=pick("min_samples", DEFAULT_MIN_SAMPLES),
            failure_threshold=pick("failure_threshold", DEFAULT_FAILURE_THRESHOLD),
            on_no_data=pick("on_no_data", DEFAULT_ON_NO_DATA),
            tenants_bp=self.tenant_weights_bp(index),
            max_cpu_increase=pick("max_cpu_increase", None),
            on_inconclusive=pick("on_inconclusive", DEFAULT_ON_INCONCLUSIVE),
            inconclusive_checks=pick("inconclusive_checks", DEFAULT_INCONCLUSIVE_CHECKS),
            deadline_s=st.deadline_s,
        )

    def to_dict(self) -> dict[str, Any]:
        """Canonical JSON-able form (durations in seconds) that ``parse_plan`` reads back."""
        body = self.model_dump(mode="json", exclude_none=True)
        if not body.get("notifications", {}).get("webhooks"):
            body.pop("notifications", None)
        for st in body["stages"]:
            if not st.get("conditions"):
                st.pop("conditions", None)
            if not st.get("tenants"):
                st.pop("tenants", None)
        return {"canary_config": body}


# --------------------------------------------------------------------------------------------
# Error conversion


_MODEL_AT: dict[str, type[BaseModel]] = {
    "conditions": Conditions,
    "statistical": Statistical,
    "notifications": Notifications,
    "gate": Gate,
}


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Field names allowed where an unknown key was found, for a did-you-mean hint."""
    if not loc:
        return [*Plan.model_fields, "canary_config"]
    last = loc[-1]
    if isinstance(last, int) and len(loc) >= 2 and loc[-2] == "stages":
        return list(Stage.model_fields)
    if isinstance(last, int) and len(loc) >= 2 and loc[-2] == "webhooks":
        return list(Webhook.model_fields)
    if isinstance(last, str) and last in _MODEL_AT:
        return list(_MODEL_AT[last].model_fields)
    return []


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,40}")


def _path(loc: tuple[Any, ...]) -> str:
    """``stages[1].tenants.acme``; a key the user made up (4 KB, a newline, a dot) is quoted
    and shortened, so the path stays one short line and cannot be mistaken for nesting."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = str(part)
            if not _PLAIN_KEY.fullmatch(text):
                text = quote(text, 40)
            out += ("." if out else "") + text
    return out or "canary_config"


_TYPE_MESSAGES = {
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "string_type": "must be a string",
}


def _errors_to_lines(err: ValidationError) -> list[str]:
    ranked: list[tuple[int, int, str]] = []
    for n, e in enumerate(err.errors(include_url=False)):
        loc = tuple(e["loc"])
        kind = e["type"]
        if kind == "plan_checks":
            for path, msg in e["ctx"]["issues"]:
                ranked.append((0, n, f"{path}: {msg}"))
            continue
        path = _path(loc)
        if kind == "extra_forbidden":
            allowed = _fields_at(loc[:-1])
            hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
            msg = "unknown field"
            if hint:
                msg += f"; did you mean '{hint[0]}'?"
            elif allowed:
                msg += f" (allowed: {', '.join(allowed)})"
            ranked.append((0, n, f"{path}: {msg}"))
        elif kind == "missing":
            ranked.append((1, n, f"{path}: required field missing"))
        elif kind in _TYPE_MESSAGES:
            ranked.append((0, n, f"{path}: {_TYPE_MESSAGES[kind]}, got {_got(e.get('input'))}"))
        elif kind in ("too_short",) and loc and loc[-1] == "stages":
            ranked.append((0, n, f"{path}: must list at least one stage, got []"))
        elif "got" in (e.get("ctx") or {}):
            ranked.append((0, n, f"{path}: {e['msg']}"))
        else:
            msg = e["msg"]
            if kind.startswith(("value_error", "assertion_error")):
                msg = msg.split(", ", 1)[-1]
            if "got" not in msg:
                msg = f"{msg[:1].lower()}{msg[1:]}, got {_got(e.get('input'))}"
            ranked.append((0, n, f"{path}: {msg}"))
    ranked.sort(key=lambda t: (t[0], t[1]))
    return [line for _, _, line in ranked]


# --------------------------------------------------------------------------------------------
# Loading


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (with plain YAML the last one silently wins)
    and bounds the document while it is composed, before any Python object exists.

    Aliases are allowed (``conditions: *strict`` is handy), but each one counts as the whole
    subtree it stands for, so ``MAX_NODES`` bounds the *expanded* size and a billion-laughs
    document stops after a few thousand events. Depth counts through aliases too.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._nodes = 0  # nodes so far, each alias counted as the subtree it stands for
        self._depth = 0  # nesting of the node being composed
        self._height = 0  # tallest child so far of the node being composed
        self._sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded nodes, height)

    def _refuse(self, what: str, mark: Any) -> None:
        raise yaml.composer.ComposerError(None, None, what, mark)

    def compose_node(self, parent: Any, index: Any) -> Any:
        mark = self.peek_event().start_mark
        if self.check_event(yaml.AliasEvent):
            node = super().compose_node(parent, index)
            size, height = self._sizes.get(id(node), (1, 1))
            self._nodes += size
            if self._nodes > MAX_NODES:
                self._refuse(f"too large: more than {MAX_NODES} values once aliases are "
                             "expanded", mark)
            if self._depth + height > MAX_DEPTH:
                self._refuse(f"nested deeper than {MAX_DEPTH} levels", mark)
            self._height = max(self._height, height)
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            self._refuse(f"nested deeper than {MAX_DEPTH} levels", mark)
        self._nodes += 1
        if self._nodes > MAX_NODES:
            self._refuse(f"too large: more than {MAX_NODES} values", mark)
        start, outer = self._nodes, self._height
        self._height = 0
        node = super().compose_node(parent, index)
        height = self._height + 1
        self._height = max(outer, height)
        self._sizes[id(node)] = (self._nodes - start + 1, height)
        self._depth -= 1
        return node


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            dup = key in seen
        except TypeError:
            dup = False
        if dup:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        with contextlib.suppress(TypeError):  # unhashable keys fail later, with a line
            seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _load_yaml(text: str, name: str) -> Any:
    """YAML text -> Python data, with the limits above; every failure is one PlanError line."""
    size = len(text) if len(text) * 4 <= MAX_PLAN_BYTES else len(
        text.encode("utf-8", "surrogatepass"))
    if size > MAX_PLAN_BYTES:
        raise PlanError([f"{name}: too large: {size} bytes, the limit is {MAX_PLAN_BYTES}"],
                        field="plan")
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = (exc.problem or exc.context or "invalid YAML").strip()
        if len(problem) > 160:
            problem = problem[:157] + "..."
        raise PlanError([f"{name}{line}: {problem}"], field="plan") from None
    except yaml.YAMLError as exc:
        raise PlanError([f"{name}: {quote(str(exc), 160)[1:-1]}"], field="plan") from None
    except (ValueError, OverflowError, RecursionError) as exc:
        # a scalar PyYAML cannot convert (an int of 5,000 digits exceeds 3.11's limit)
        raise PlanError([f"{name}: invalid value: {quote(str(exc), 120)[1:-1]}"],
                        field="plan") from None


def _check_shape(data: Any) -> None:
    """Bound an already-parsed plan (the API path) the way the loader bounds YAML: at most
    MAX_NODES values and MAX_DEPTH levels, walked iteratively (a self-referencing dict ends
    at the depth limit, a shared structure at the node limit), before pydantic sees it."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    nodes = 0
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise PlanError([f"plan: too large: more than {MAX_NODES} values"], field="plan")
        if depth > MAX_DEPTH:
            raise PlanError([f"plan: nested deeper than {MAX_DEPTH} levels"], field="plan")
        if isinstance(value, Mapping):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend((v, depth + 1) for v in value)


def parse_plan(source: Mapping[str, Any] | str, *, name: str = "<string>") -> Plan:
    """Validate a plan given as YAML/JSON text or an already-parsed mapping.

    The mapping may be the design card's ``{canary_config: {...}}`` or the ``canary_config``
    body itself (what an API client naturally posts). Error paths are relative to the body.
    """
    if isinstance(source, bytes):
        try:
            source = source.decode("utf-8")
        except UnicodeDecodeError:
            raise PlanError([f"{name}: not UTF-8 text"], field="plan") from None
    if isinstance(source, str):
        data: Any = _load_yaml(source, name)
    else:
        data = source
        _check_shape(data)
    if data is None:
        raise PlanError([f"{name}: the plan is empty"], field="plan")
    if not isinstance(data, Mapping):
        raise PlanError([f"canary_config: must be a mapping, got {_got(data)}"])
    if "canary_config" in data:
        extra = [k for k in data if k != "canary_config"]
        if extra:
            raise PlanError(
                [f"{_path((k,))}: unknown field (allowed at the top: canary_config)"
                 for k in extra]
            )
        data = data["canary_config"]
        if not isinstance(data, Mapping):
            raise PlanError([f"canary_config: must be a mapping, got {_got(data)}"])
    try:
        return Plan.model_validate(dict(data))
    except ValidationError as exc:
        raise PlanError(_errors_to_lines(exc)) from None
    except RecursionError:  # pragma: no cover - _check_shape bounds depth first
        raise PlanError([f"plan: nested deeper than {MAX_DEPTH} levels"], field="plan") from None


def load_plan(path: str | Path) -> Plan:
    """Read and validate a plan file; errors name the file for YAML problems (file:line).

    The size is checked before reading (and the read is bounded, for a file that grows or a
    FIFO), so a 1 GB "plan" costs nothing."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_PLAN_BYTES + 1)
    except OSError as exc:
        raise PlanError([f"{p}: cannot read plan: {exc.strerror or exc}"],
                        field="plan") from None
    if len(raw) > MAX_PLAN_BYTES:
        raise PlanError([f"{p}: too large: above the limit of {MAX_PLAN_BYTES} bytes"],
                        field="plan")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PlanError([f"{p}: not UTF-8 text (byte {exc.start})"], field="plan") from None
    return parse_plan(text, name=str(p))


# -- named plans ---------------------------------------------------------------------------------
#: A plan name: the stem of a file in the named-plans folder (design-card, quick, ...).
PLAN_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def plans_dir() -> Path | None:
    """Where the named plans live: examples/plans in a source checkout, or pycanary/plans in
    a wheel (pyproject force-include); None if neither is there."""
    here = Path(__file__).resolve().parent
    for d in (here / "plans", here.parent / "examples" / "plans"):
        if d.is_dir():
            return d
    return None


def named_plans() -> list[str]:
    """Names of the plans shipped with pycanary, sorted."""
    d = plans_dir()
    return sorted(p.stem for p in d.glob("*.yaml") if PLAN_NAME_RE.match(p.stem)) if d else []


def load_named(name: str, *, field: str = "plan_name") -> Plan:
    """A shipped plan by name. Only names listed by `named_plans` are read: a name is never
    a path (an API client cannot make the server read a file of its choice)."""
    known = named_plans()
    if not isinstance(name, str) or name not in known:
        raise PlanError([f"{field}: no plan named {quote(name)} (known: "
                         f"{', '.join(known) or 'none'})"], field=field)
    d = plans_dir()
    assert d is not None  # known is not empty
    return load_plan(d / f"{name}.yaml")


def resolve_plan(ref: str | Path) -> Plan:
    """The CLI's ``--plan``: a plan file, or, when no such file exists and the text is a
    plan's name (``--plan design-card``), the shipped plan of that name."""
    p = Path(ref)
    if not p.exists() and PLAN_NAME_RE.match(str(ref)) and str(ref) in named_plans():
        return load_named(str(ref), field="plan")
    return load_plan(p)


def plan_from(plan: Mapping[str, Any] | str | None = None, name: str | None = None) -> Plan:
    """A plan given either whole (YAML/JSON text or a parsed mapping: an API body) or by a
    shipped plan's name; exactly one of the two."""
    if (plan is None) == (name is None):
        raise PlanError(["plan: give either plan (the plan itself) or plan_name (a shipped "
                         "plan), not both or neither"], field="plan")
    if name is not None:
        return load_named(name)
    try:
        return parse_plan(plan, name="plan")  # type: ignore[arg-type]
    except PlanError as exc:  # name the field inside the request: plan.stages[0].percentage
        if exc.field and exc.field != "plan" and not exc.field.startswith("plan."):
            exc.field = f"plan.{exc.field}"
        raise
