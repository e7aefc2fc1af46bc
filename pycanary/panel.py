"""What the TUI canary panel shows, read through the service layer in one call.

The panel needs what `status` shows (rollouts.status: deployment, both lanes side by side,
rules with their evidence, workers, depths, events) plus a short history per lane for its
sparklines: jobs/s and error rate of each metrics slot (defaults.SLOT_S, 60 s) over the last
half hour. That history is read here, from the same per-slot hashes the workers' ack/fail
scripts write (metrics.py decodes them), so the TUI itself never talks to Redis.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import defaults, metrics, rollouts, validation
from .connection import Connection


@dataclass(frozen=True)
class LaneSeries:
    """One lane's recent history, oldest slot first: what a sparkline draws."""

    lane: str
    version: str
    slot_s: int
    #: slot starts, seconds since the epoch
    slots: list[int]
    #: finished attempts per second in each slot (the current slot over its elapsed part)
    jobs_per_s: list[float]
    #: failed / finished attempts per slot; None where nothing finished
    error_rate: list[float | None]

    def to_dict(self) -> dict[str, Any]:
        return {"lane": self.lane, "version": self.version, "slot_s": self.slot_s,
                "slots": list(self.slots), "jobs_per_s": list(self.jobs_per_s),
                "error_rate": list(self.error_rate)}


@dataclass
class PanelView:
    """Everything one refresh of the panel shows. ``rows`` are `rollouts.status` rows (one
    per queue); ``series`` is {lane: LaneSeries} of the selected queue's deployment."""

    rows: list[dict[str, Any]]
    selected: str | None
    series: dict[str, LaneSeries] = field(default_factory=dict)
    now_ms: int = 0

    def row(self, queue: str | None = None) -> dict[str, Any] | None:
        """The status row of ``queue`` (default: the selected one)."""
        q = self.selected if queue is None else queue
        return next((r for r in self.rows if r["queue"] == q), None)


def lane_series(conn: Connection, queue: str, versions: dict[str, str], *, now_ms: int,
                slots: int = defaults.TUI_SPARK_SLOTS,
                slot_s: int = defaults.SLOT_S) -> dict[str, LaneSeries]:
    """{lane: LaneSeries} for {lane: version} over the ``slots`` slots up to ``now_ms`` (the
    last one is the slot in progress, its rate taken over the part that has passed), in one
    round trip."""
    validation.queue_name(queue)
    if not 1 <= slots <= 360:
        raise ValueError(f"slots must be 1-360, got {slots}")
    last = metrics.slot_of(now_ms, slot_s)
    starts = [last - (slots - 1 - i) * slot_s for i in range(slots)]
    qk = conn.keys.queue(queue)
    pipe = conn.client.pipeline(transaction=False)
    for lane, version in versions.items():
        for s in starts:
            pipe.hgetall(qk.metrics_slot(version, lane, s))
    replies = iter(pipe.execute())
    elapsed_last = min(float(slot_s), max(1.0, now_ms / 1000 - last))
    out: dict[str, LaneSeries] = {}
    for lane, version in versions.items():
        rates: list[float] = []
        errors: list[float | None] = []
        for s in starts:
            counts = metrics.decode(next(replies)).counts
            ok, failed = counts.get("ok", 0), counts.get("failed", 0)
            finished = ok + failed
            span = elapsed_last if s == last else float(slot_s)
            rates.append(round(finished / span, 3))
            errors.append(round(failed / finished, 6) if finished else None)
        out[lane] = LaneSeries(lane, version, slot_s, starts, rates, errors)
    return out


def pick(rows: list[dict[str, Any]], selected: str | None) -> str | None:
    """The queue to show: ``selected`` if it is there, else the first with a running
    deployment, else the first with any deployment, else the first queue."""
    names = [r["queue"] for r in rows]
    if selected in names:
        return selected
    for want in (lambda d: d and d.get("state") not in ("completed", "rolled_back"),
                 lambda d: d is not None):
        for r in rows:
            if want(r.get("deployment")):
                return r["queue"]
    return names[0] if names else None


def view(conn: Connection, selected: str | None = None, *,
         events: int = defaults.TUI_EVENTS, slots: int = defaults.TUI_SPARK_SLOTS,
         now_ms: int | None = None) -> PanelView:
    """One refresh of the panel: every queue's status row (no growth sampling, which would
    sleep), and the sparkline series of the selected queue's deployment."""
    rows = rollouts.status(conn, None, events=events, growth_sample_s=0)
    now = now_ms if now_ms is not None else defaults.now_ms()
    q = pick(rows, selected)
    out = PanelView(rows=rows, selected=q, now_ms=now)
    row = out.row()
    dep = row.get("deployment") if row else None
    if dep and dep.get("stable_version") and dep.get("canary_version") and "error" not in row:
        out.series = lane_series(conn, q, {"stable": dep["stable_version"],
                                           "canary": dep["canary_version"]},
                                 now_ms=now, slots=slots)
    return out
