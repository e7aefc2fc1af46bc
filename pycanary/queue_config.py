"""A queue's routing config: read it, set its weight, configure its guards.

Writes go through `set_weight.lua` and `configure_queue.lua` so each change is checked and
applied in one atomic step; reads are plain HGETALLs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from . import defaults, validation
from .connection import Connection
from .errors import (
    ABOVE_MAX_WEIGHT,
    MAX_BELOW_WEIGHT,
    MaxWeightBelowWeightError,
    ValidationError,
    raise_for_code,
)
from .routing import MAX_WEIGHT_BP

BACKENDS = ("lists", "streams")
#: Highest max_backlog configure_queue.lua accepts.
MAX_BACKLOG = 1_000_000_000


@dataclass(frozen=True)
class QueueConfig:
    queue: str
    enabled: bool = True
    weight_bp: int = 0
    sticky: bool = True
    salt: str = ""
    max_weight_bp: int = MAX_WEIGHT_BP
    stable_version: str | None = None
    canary_version: str | None = None
    backend: str = "lists"
    #: Jobs a lane may hold before producers get QueueFullError; 0 = no limit.
    max_backlog: int = 0
    tenant_weights_bp: dict[str, int] = field(default_factory=dict)
    rev: int = 0
    updated_at: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["weight_percent"] = self.weight_bp / 100
        d["max_weight_percent"] = self.max_weight_bp / 100
        d["tenant_weights_percent"] = {t: w / 100 for t, w in self.tenant_weights_bp.items()}
        return d


def read_config(conn: Connection, queue: str) -> QueueConfig:
    validation.queue_name(queue)
    qk = conn.keys.queue(queue)
    pipe = conn.client.pipeline(transaction=False)
    pipe.hgetall(qk.config)
    pipe.hgetall(qk.tenant_weights)
    raw, tenants = pipe.execute()
    return QueueConfig(
        queue=queue,
        enabled=raw.get("enabled", "1") != "0",
        weight_bp=int(raw.get("weight_bp", 0)),
        sticky=raw.get("sticky", "1") != "0",
        salt=raw.get("salt", ""),
        max_weight_bp=int(raw.get("max_weight_bp", MAX_WEIGHT_BP)),
        stable_version=raw.get("stable_version") or None,
        canary_version=raw.get("canary_version") or None,
        backend=raw.get("backend", "lists"),
        max_backlog=int(raw.get("max_backlog") or 0),
        tenant_weights_bp={t: int(w) for t, w in sorted(tenants.items())},
        rev=int(raw.get("rev", 0)),
        updated_at=int(raw["updated_at"]) if "updated_at" in raw else None,
    )


@dataclass(frozen=True)
class WeightChange:
    queue: str
    tenant: str | None
    previous_bp: int | None
    weight_bp: int | None
    rev: int
    paused_deployment: bool = False

    def to_dict(self) -> dict[str, Any]:
        """What every face reports of a weight change (percentages; None: no override)."""
        return {"queue": self.queue, "tenant": self.tenant,
                "previous_percent": None if self.previous_bp is None else self.previous_bp / 100,
                "percent": None if self.weight_bp is None else self.weight_bp / 100,
                "rev": self.rev, "paused_deployment": self.paused_deployment}


def set_weight(
    conn: Connection,
    queue: str,
    weight_bp: int | None,
    *,
    tenant: str | None = None,
    allow_above_max: bool = False,
    now_ms: int | None = None,
) -> WeightChange:
    """Set the queue-wide weight, or a tenant's override; ``weight_bp=None`` clears an override."""
    validation.queue_name(queue)
    validation.tenant(tenant)
    if weight_bp is None:
        if tenant is None:
            raise ValidationError("a weight is required unless clearing a tenant override",
                                  field="weight")
        mode, arg = "clear", ""
    else:
        if isinstance(weight_bp, bool) or not isinstance(weight_bp, int) or not (
            0 <= weight_bp <= MAX_WEIGHT_BP
        ):
            raise ValidationError(f"must be 0-10000 basis points, got {weight_bp!r}",
                                  field="weight")
        mode, arg = "set", str(weight_bp)
    res = conn.scripts.call(
        "set_weight",
        conn.keys.queue(queue).config_keys(),
        (arg, tenant or "", now_ms if now_ms is not None else defaults.now_ms(), mode,
         "1" if allow_above_max else "0"),
    )
    if isinstance(res, int):
        detail = ""
        if res == ABOVE_MAX_WEIGHT:
            cfg = read_config(conn, queue)
            detail = f" ({cfg.max_weight_bp / 100:g}%), got {weight_bp / 100:g}%" if weight_bp \
                is not None else ""
        raise_for_code(res, script="set_weight", field="weight", detail=detail)
    conn.client.sadd(conn.keys.queues, queue)
    prev, new, rev = (int(x) for x in res)
    return WeightChange(queue, tenant, None if prev < 0 else prev, None if new < 0 else new, rev)


def configure(
    conn: Connection,
    queue: str,
    *,
    max_weight_bp: int | None = None,
    stable_version: str | None = None,
    canary_version: str | None = None,
    backend: str | None = None,
    sticky: bool | None = None,
    salt: str | None = None,
    enabled: bool | None = None,
    max_backlog: int | None = None,
    now_ms: int | None = None,
) -> QueueConfig:
    """Change a queue's config fields atomically; fields left as None are unchanged.
    ``max_backlog`` (0 = no limit) caps the jobs each lane may hold: producers get
    QueueFullError beyond it, so a rolled-back queue whose stable lane cannot keep up pushes
    back on its producers instead of growing without bound. The drain ignores it."""
    validation.queue_name(queue)
    pairs: list[str] = []
    want_backend: str | None = None
    if max_weight_bp is not None:
        if isinstance(max_weight_bp, bool) or not 0 <= max_weight_bp <= MAX_WEIGHT_BP:
            raise ValidationError(f"must be 0-10000 basis points, got {max_weight_bp!r}",
                                  field="max_weight")
        check_max_weight_against_plan(conn, queue, max_weight_bp)
        pairs += ["max_weight_bp", str(max_weight_bp)]
    if stable_version is not None:
        pairs += ["stable_version", validation.version(stable_version, "stable_version")]
    if canary_version is not None:
        pairs += ["canary_version", validation.version(canary_version, "canary_version")]
    if backend is not None:
        if backend not in BACKENDS:
            raise ValidationError(f"must be one of {', '.join(BACKENDS)}, got {backend!r}",
                                  field="backend")
        want_backend = backend
    if sticky is not None:
        pairs += ["sticky", "1" if sticky else "0"]
    if salt is not None:
        if len(salt) > 256:
            raise ValidationError("must be at most 256 characters", field="salt")
        pairs += ["salt", salt]
    if enabled is not None:
        pairs += ["enabled", "1" if enabled else "0"]
    if max_backlog is not None:
        if isinstance(max_backlog, bool) or not isinstance(max_backlog, int) or \
                not 0 <= max_backlog <= MAX_BACKLOG:
            raise ValidationError(f"must be an integer 0-{MAX_BACKLOG:,} jobs (0 = no limit), "
                                  f"got {validation.quote(max_backlog)}", field="max_backlog")
        pairs += ["max_backlog", str(max_backlog)]
    if not pairs and want_backend is None:
        raise ValidationError("nothing to change: give at least one option", field="options")
    if want_backend is not None:
        # its own script: a backend is chosen before first use, refused while jobs are held
        from .backends.streams import set_backend

        set_backend(conn, queue, want_backend, now_ms=now_ms)
        if not pairs:
            conn.client.sadd(conn.keys.queues, queue)
            return read_config(conn, queue)
    res = conn.scripts.call(
        "configure_queue",
        conn.keys.queue(queue).config_keys(),
        (now_ms if now_ms is not None else defaults.now_ms(), *pairs),
    )
    if isinstance(res, int) and res < 0:
        detail = ""
        if res == MAX_BELOW_WEIGHT:
            cfg = read_config(conn, queue)
            top = max([cfg.weight_bp, *cfg.tenant_weights_bp.values()])
            detail = f" (highest weight in force {top / 100:g}%)"
        raise_for_code(res, script="configure_queue", field="max_weight", detail=detail)
    conn.client.sadd(conn.keys.queues, queue)
    return read_config(conn, queue)


def parse_max_backlog(value: int | str | None) -> int | None:
    """A max_backlog as typed by a user: a whole number of jobs, or "none" (also 0) for no
    limit; None stays None (unchanged)."""
    if value is None or isinstance(value, int):
        return value
    text = str(value).strip().lower().replace("_", "")
    if text in ("none", "off", "unlimited"):
        return 0
    if not text.isdigit():
        raise ValidationError(f"must be a whole number of jobs or none, got "
                              f"{validation.quote(value)}", field="max_backlog")
    return int(text)


def check_max_weight_against_plan(conn: Connection, queue: str, max_weight_bp: int) -> None:
    """Refuse a max_weight below a stage (or tenant) weight of the queue's active deployment:
    the controller's next stage step would be refused by the weight guard and the ramp would
    stall there. Checked here, before configure_queue runs (which guards only the weights in
    force); a deployment started between this read and the script is the race left open,
    as for `rollouts.check_max_weight` the other way round."""
    from . import deployments  # deployments does not import this module: no cycle, but late

    try:
        dep = deployments.get(conn, queue)
    except deployments.CorruptDeploymentError:
        return  # unreadable: the controller reports it; the weights in force are still guarded
    if dep is None or dep.state not in ("active", "paused", "awaiting_promotion"):
        return  # promoting / rolling back: weight 0, no stage to come
    plan = dep.plan
    for i, stage in enumerate(plan.stages):
        weights = [(plan.stage_label(i), stage.weight_bp),
                   *((f"stage {i + 1} tenant {t} ({w / 100:g}%)", w)
                     for t, w in plan.tenant_weights_bp(i).items())]
        for what, bp in weights:
            if bp > max_weight_bp:
                raise MaxWeightBelowWeightError(
                    f"{max_weight_bp / 100:g}% is below {what} of deployment {dep.id}; "
                    "roll it back or wait until it finishes first", field="max_weight")


def list_queues(conn: Connection) -> list[str]:
    return sorted(conn.client.smembers(conn.keys.queues))
