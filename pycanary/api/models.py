"""Request and response models of the admin API (pydantic at the edge).

Responses carry the same data as the CLI's ``--json`` output of the same operation (both come
from the service layer's ``to_dict``s): the fields a client relies on are declared (and so
documented in /openapi.json), and the models allow extra fields, so a field the service layer
adds later reaches API clients without a change here.

Requests are strict (unknown fields are refused with 422 naming them) and keep the user's
values as typed: percentages may be ``5``, ``0.5`` or ``"12.25"``, checked by the same
service functions the CLI calls, so both faces accept and refuse exactly the same values.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

#: A percentage as a user types it: 5, 0.5 or "12.25" (checked by validation.percent_to_bp).
Percent = Annotated[StrictInt | StrictFloat | StrictStr,
                    Field(description="percent 0-100, at most two decimals: 5, 0.5 or \"12.25\"")]
#: The largest count of one enqueue request (the CLI goes to 10,000,000; a request should
#: finish well within an HTTP timeout).
API_MAX_COUNT = 10_000
#: The longest a spread-out enqueue request may take (count / rate), in seconds.
API_MAX_ENQUEUE_S = 30.0
#: Most simulated deployments of one plan check request (a run takes ~30 ms of CPU).
API_MAX_RUNS = 200
#: Longest reason text kept in the event log.
MAX_REASON = 1000


class Out(BaseModel):
    """A response: declared fields documented, every other field passed through."""

    model_config = ConfigDict(extra="allow")


class In(BaseModel):
    """A request body: unknown fields are an error (a typo must not be ignored)."""

    model_config = ConfigDict(extra="forbid")


# -- queues --------------------------------------------------------------------------------------
class QueueInfo(Out):
    queue: str
    enabled: bool
    sticky: bool
    salt: str
    weight_bp: int
    weight_percent: float
    max_weight_bp: int
    max_weight_percent: float
    stable_version: str | None
    canary_version: str | None
    backend: str
    max_backlog: int
    tenant_weights_bp: dict[str, int]
    tenant_weights_percent: dict[str, float]
    rev: int
    updated_at: int | None
    depth: dict[str, int] = Field(description="jobs waiting per lane (stable, canary)")
    routed: dict[str, int] = Field(description="jobs routed to each lane so far")


class QueueConfigureIn(In):
    """`pycanary queue configure`: fields left out are unchanged; at least one is needed."""

    backend: StrictStr | None = Field(None, description="lists or streams, chosen before first use "
                                               "(refused once the queue holds jobs)")
    max_weight: Percent | None = Field(None, description="guard: highest canary percent allowed")
    stable_version: StrictStr | None = None
    canary_version: StrictStr | None = Field(
        None, description="version serving the canary lane (a manual canary with set-weight)")
    sticky: StrictBool | None = Field(None, description="sticky hash (true) or random draw")
    salt: StrictStr | None = None
    enabled: StrictBool | None = Field(None, description="canary routing on or off")
    max_backlog: StrictInt | StrictStr | None = Field(
        None, description="jobs a lane may hold before enqueue is refused (429); 0 or "
                          "\"none\" = no limit")


class WeightIn(In):
    """`pycanary set-weight QUEUE PCT`."""

    percent: Percent


class TenantWeightsIn(In):
    """Several tenants' overrides at once (`set-weight --tenant T PCT` for each; null clears
    one). Every entry is checked before any is written."""

    weights: dict[str, Percent | None] = Field(
        description="tenant -> percent, or null to clear that tenant's override")


class WeightChangeOut(Out):
    queue: str
    tenant: str | None
    previous_percent: float | None
    percent: float | None = Field(description="the new weight; null: override cleared")
    rev: int
    paused_deployment: bool = Field(
        description="the change went through the active deployment, which is now paused "
                    "until resume")


class TenantWeightsOut(Out):
    queue: str
    changes: list[WeightChangeOut]


class RouteExplainOut(Out):
    queue: str
    key: str
    tenant: str | None
    mode: str
    salt: str
    weight_bp: int
    bucket: int
    bucket_python: int
    lane: str | None = Field(description="null in random mode (a draw per job)")


class EnqueueIn(In):
    """`pycanary enqueue`: ``payload`` is the job's JSON payload (default {})."""

    payload: Any = Field(None, description="the job payload, any JSON value (default {})")
    job_id: StrictStr | None = Field(None, description="default: a UUIDv7")
    sticky_key: StrictStr | None = Field(None, description="route by this key, not the job id")
    tenant: StrictStr | None = None
    count: StrictInt = Field(1, ge=1, le=API_MAX_COUNT, description="copies to enqueue")
    rate: StrictFloat | StrictInt | None = Field(
        None, description=f"jobs per second (spread out); count / rate at most "
                          f"{API_MAX_ENQUEUE_S:g} s")


class EnqueuedJob(Out):
    job_id: str
    lane: str


class EnqueueOut(Out):
    queue: str
    enqueued: int
    lanes: dict[str, int]
    jobs: list[EnqueuedJob] = Field(description="the first 1000 jobs' ids and lanes")


class DrainOut(Out):
    queue: str
    from_lane: str
    to_lane: str
    moved: int
    remaining: int
    complete: bool
    calls: int
    round_trips: int
    seconds: float


# -- workers -------------------------------------------------------------------------------------
class WorkerOut(Out):
    id: str
    version: str
    state: str = Field(description="active, outdated, retiring, standby, stopping or dead")
    last_seen_ms: int
    queues: dict[str, str]
    lanes: dict[str, str]
    host: str | None
    pid: int | None
    concurrency: int | None
    started_at: int | None
    current: int | None
    done: int | None
    failed: int | None
    rss_bytes: int | None
    schemas: str
    running: dict[str, dict[str, int]]
    last_finished_at: int | None


# -- deployments ---------------------------------------------------------------------------------
class DeploymentOut(Out):
    id: str
    queue: str
    stable_version: str
    canary_version: str
    state: str
    kind: str
    stage: int
    stages: list[float]
    weight_bp: int
    weight_percent: float
    tenants_bp: dict[str, int]
    plan: dict[str, Any]
    started_at: int
    reason: str
    actor: str


class CanaryIn(In):
    """`pycanary canary start`: a manual canary at ``weight`` until promote or rollback."""

    version: StrictStr
    weight: Percent = "10"
    tenants: dict[str, Percent] = Field(default_factory=dict,
                                        description="per-tenant percent (--tenant T=PCT)")
    sticky: StrictBool = True
    allow_schema_change: StrictBool = False
    force: StrictBool = Field(False, description="start even if no live worker of the "
                                                 "version would take the canary lane")
    salt: StrictStr | None = Field(None, description="sticky-hash salt (default: a fresh "
                                   "one per deployment), e.g. an earlier deployment's")


class RampIn(In):
    """`pycanary ramp`: a staged rollout; the plan is given whole or by a shipped plan's name
    (exactly one)."""

    version: StrictStr
    plan: dict[str, Any] | StrictStr | None = Field(
        None, description="the plan: a JSON object (canary_config or its body) or YAML text")
    plan_name: StrictStr | None = Field(None, description="a shipped plan (GET /v1/plans)")
    allow_schema_change: StrictBool = False
    force: StrictBool = Field(False, description="start even without a live worker of the "
                                                 "version or a running controller")
    salt: StrictStr | None = Field(None, description="sticky-hash salt (default: a fresh "
                                   "one per deployment), e.g. an earlier deployment's")


class RetryIn(In):
    """`pycanary retry`."""

    allow_schema_change: StrictBool = False
    force: StrictBool = False


class PromoteIn(In):
    """`pycanary promote`."""

    full: StrictBool = Field(False, description="make the canary stable now")


class RollbackIn(In):
    """`pycanary rollback`."""

    reason: StrictStr = Field("", max_length=MAX_REASON, description="kept in the event log")


class PromoteOut(Out):
    queue: str
    deployment_id: str
    action: str = Field(description="promoted (the canary is stable) or stage (advanced)")
    state: str


class RollbackOut(Out):
    queue: str
    deployment_id: str | None
    rollback: str = Field(description="done, or already (nothing to do)")
    reason: str
    drain_complete: bool
    drained_jobs: int | None
    message: str


class StatusRow(Out):
    queue: str
    config: dict[str, Any]
    depth: dict[str, int]
    leader: Any
    deployment: dict[str, Any] | None
    workers: list[dict[str, Any]]
    controller_error: dict[str, Any] | None


class Verdict(Out):
    verdict: str | None
    reason: str | None
    action: str | None
    stage: int
    ts: int | None


class HistoryRow(Out):
    id: str
    queue: str
    version: str
    stable_version: str
    kind: str
    stages: list[float]
    gates: list[bool]
    plan: dict[str, Any]
    state: str
    outcome: str = Field(description="promoted, rolled back, aborted, or the running state")
    reason: str
    rollback_rule: str | None
    actor: str
    started_at: int
    finished_at: int | None
    last_stage: int
    verdicts: list[Verdict]


class Event(Out):
    id: str = Field(description="the stream entry id (use as after=)")
    ts: int
    type: str = Field(description="started, stage, verdict, paused, resumed, weight, "
                                  "rollback, rolled_back, promoted, completed, ...")
    actor: str | None = None
    message: str
    data: dict[str, Any] | None = None


class FailedNotification(Out):
    """A notification no webhook took after every attempt (the sender's ``notify_failed``)."""

    id: str = Field(description="the record's id in the dead outbox")
    entry: str | None = Field(None, description="the notification's id in the outbox")
    notification: dict[str, Any] = Field(default_factory=dict,
                                         description="the body the webhook was sent")
    webhook: str | None = Field(None, description="scheme, host and port only")
    kind: str | None = None
    source: str | None = Field(None, description="settings or plan")
    attempts: int | None = None
    error: str | None = Field(None, description="the last attempt's error")


class EventsOut(Out):
    queue: str
    deployment_id: str
    state: str
    events: list[Event] = Field(description="oldest first; poll with after=<last id>")


# -- dead letters --------------------------------------------------------------------------------
class DeadLetterOut(Out):
    job_id: str | None
    error: str
    version: str | None
    lane: str | None
    worker: str | None
    attempts: int | None
    failed_at: int | None
    tenant: str | None
    requeueable: bool
    problem: str | None


class DeadLetterFull(DeadLetterOut):
    payload: Any
    record: Any


class DeadLettersOut(Out):
    queue: str
    total: int
    dead_letters: list[DeadLetterOut]


class DeadLetterActionIn(In):
    """`pycanary dlq requeue|purge`: job ids, or all (exactly one)."""

    job_ids: list[StrictStr] | None = Field(None, max_length=10_000)
    all: StrictBool = False


class Skipped(Out):
    job_id: str | None
    problem: str


class DeadLetterReport(Out):
    action: str
    queue: str
    done: int
    missing: int
    calls: int
    skipped: list[Skipped]


# -- plans ---------------------------------------------------------------------------------------
class PlanCheckIn(In):
    """`pycanary plan check`: the plan whole or by name (exactly one), the traffic it is for."""

    plan: dict[str, Any] | StrictStr | None = Field(
        None, description="the plan: a JSON object or YAML text")
    plan_name: StrictStr | None = None
    rate: StrictStr | StrictInt | StrictFloat = Field(
        description="traffic: 2000/min, 30/s, 100000/h (a bare number: per minute)")
    error_rate: StrictStr | StrictFloat | StrictInt = Field(
        "1%", description="base error rate of first attempts: 1% or 0.01")
    runs: StrictInt = Field(100, ge=1, le=API_MAX_RUNS,
                            description="simulated deployments of identical versions")


class PlanCheckOut(Out):
    plan: str
    rate_per_min: float
    error_rate: float
    results: list[dict[str, Any]]
    warnings: list[str]
    ok: bool


class PlanNamesOut(Out):
    plans: list[str]


class PlanOut(Out):
    name: str
    plan: dict[str, Any] = Field(description="the plan, normalised (canary_config)")
