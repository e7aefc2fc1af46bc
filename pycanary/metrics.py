"""Per-version SLO metrics: where workers write them and how the controller reads them.

Workers record outcomes in the ack/fail scripts, in the same atomic step as the ack, into one
hash per (queue, version, lane, time slot): counts (`ok`, `failed`, `retried`, `dead`, `late`,
and the job-level `first_attempts`, `first_failed`, `crashed`) and three histograms with the
fixed buckets of `histogram.py` (`r<b>` run time, `w<b>` queue wait, `c<b>` handler CPU time).
In a slot the queue wait is coarse: one bucket per 8 fine ones (`count_wait` in
lua/includes/metrics.lua), run and CPU times one per 2 (`count_pair`); the running totals keep
the fine buckets.
Slots are `slot_s` seconds long (default 120 s) and expire after `keep_s` (default 1 h). The
running totals also hold per analysis unit counts (`n1|<unit>` first attempts, `x1|<unit>`
failed first attempts; unit = ``"<stratum>|<cluster>"``, see `unit_of`), which the controller
differences into `LaneStats.units`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import defaults, histogram
from .connection import Connection
from .keys import QueueKeys
from .routing import fnv1a32

DEFAULT_SLOT_S = defaults.SLOT_S
DEFAULT_KEEP_S = defaults.KEEP_S
COUNT_FIELDS = ("ok", "failed", "retried", "dead", "late", "first_attempts", "first_failed",
                "crashed")
#: Clusters of the analysis unit (docs/statistics.md): all jobs of a sticky key share one.
ANALYSIS_CLUSTERS: int = getattr(defaults, "ANALYSIS_CLUSTERS", 32)


def unit_of(job_id: str, sticky_key: str | None, tenant: str | None,
            strata: frozenset[str] | set[str] = frozenset()) -> str:
    """A job's analysis unit ``"<stratum>|<cluster>"``: the cluster groups sticky keys
    (FNV-1a-32 of the key, no salt: the salted bucket routes, the cluster groups), the stratum
    is the tenant when it has a weight override (its jobs route at another share), else "".
    """
    cluster = fnv1a32((sticky_key or job_id).encode("utf-8")) % ANALYSIS_CLUSTERS
    stratum = tenant if tenant is not None and tenant in strata else ""
    return f"{stratum}|{cluster}"


#: Fine wait buckets per coarse one in a slot (WAIT_GROUP in lua/includes/metrics.lua).
SLOT_WAIT_GROUP = 8


def slot_wait_bucket(bucket: int) -> int:
    """The wait bucket a slot records for a fine one (what count_wait in
    lua/includes/metrics.lua computes): the middle fine bucket of its group of 8; 0 stays 0.
    The running totals keep the fine bucket."""
    if bucket <= 0:
        return 0
    return (bucket - 1) // SLOT_WAIT_GROUP * SLOT_WAIT_GROUP + 1 + SLOT_WAIT_GROUP // 2


def slot_pair_bucket(bucket: int) -> int:
    """The run or CPU bucket a slot records for a fine one (count_pair in
    lua/includes/metrics.lua): one per pair of fine buckets, named by the lower one (1-2 -> 1,
    3-4 -> 3); 0 stays 0. Growth 1.21 is fine for status's quantiles; the running totals, which
    the analysis reads, keep the fine bucket (issue 15)."""
    if bucket <= 0:
        return 0
    return (bucket - 1) // 2 * 2 + 1


def slot_of(ms: int, slot_s: int = DEFAULT_SLOT_S) -> int:
    """The slot number (start of the slot in seconds since the epoch) holding time ms."""
    return (ms // 1000) // slot_s * slot_s


@dataclass
class WindowStats:
    """What one lane did in a window: counts, histograms, and the figures derived from them."""

    queue: str
    version: str
    lane: str
    start_ms: int
    end_ms: int
    ok: int = 0
    failed: int = 0
    retried: int = 0
    dead: int = 0
    late: int = 0
    first_attempts: int = 0
    first_failed: int = 0
    crashed: int = 0
    run_hist: dict[int, int] = field(default_factory=dict)
    wait_hist: dict[int, int] = field(default_factory=dict)
    cpu_hist: dict[int, int] = field(default_factory=dict)
    slots_with_data: int = 0
    #: the lane's live workers' RSS summed (bytes), filled by the caller; None = unknown
    rss_bytes: int | None = None

    @property
    def finished(self) -> int:
        return self.ok + self.failed

    @property
    def error_rate(self) -> float | None:
        """Failed attempts / finished attempts (a retried job counts every attempt)."""
        return self.failed / self.finished if self.finished else None

    @property
    def seconds(self) -> float:
        return max(0.0, (self.end_ms - self.start_ms) / 1000)

    @property
    def throughput(self) -> float:
        """Finished attempts per second over the window."""
        return self.finished / self.seconds if self.seconds else 0.0

    def run_quantile(self, q: float) -> float | None:
        """Run time quantile in microseconds."""
        return histogram.quantile(self.run_hist, q)

    def wait_quantile(self, q: float) -> float | None:
        return histogram.quantile(self.wait_hist, q)

    def cpu_quantile(self, q: float) -> float | None:
        """Handler CPU time per job, quantile in microseconds."""
        return histogram.quantile(self.cpu_hist, q)

    def to_dict(self) -> dict[str, Any]:
        def ms(us: float | None) -> float | None:
            return None if us is None else round(us / 1000, 3)

        return {
            "queue": self.queue, "version": self.version, "lane": self.lane,
            "start_ms": self.start_ms, "end_ms": self.end_ms,
            "ok": self.ok, "failed": self.failed, "retried": self.retried, "dead": self.dead,
            "late": self.late, "finished": self.finished, "error_rate": self.error_rate,
            "first_attempts": self.first_attempts, "first_failed": self.first_failed,
            "crashed": self.crashed,
            "throughput_per_s": round(self.throughput, 3),
            "run_ms": {"p50": ms(self.run_quantile(0.5)), "p95": ms(self.run_quantile(0.95)),
                       "p99": ms(self.run_quantile(0.99))},
            "wait_ms": {"p50": ms(self.wait_quantile(0.5)), "p95": ms(self.wait_quantile(0.95)),
                        "p99": ms(self.wait_quantile(0.99))},
            "cpu_ms": {"p50": ms(self.cpu_quantile(0.5)), "p95": ms(self.cpu_quantile(0.95))},
            "rss_bytes": self.rss_bytes,
        }


@dataclass
class Fields:
    """One metrics hash (a slot or the running totals), decoded: counts, the three histograms
    and, in the totals, the analysis units (unit -> [first attempts, failed first attempts])."""

    counts: dict[str, int] = field(default_factory=dict)
    run_hist: dict[int, int] = field(default_factory=dict)
    wait_hist: dict[int, int] = field(default_factory=dict)
    cpu_hist: dict[int, int] = field(default_factory=dict)
    units: dict[str, list[int]] = field(default_factory=dict)


#: field name -> (kind, key): 0 run, 1 wait, 2 CPU bucket (key: the bucket), 3 a count (key:
#: its name), 4 / 5 a unit's first attempts / failures (key: the unit), 6 unknown. The names
#: are few (buckets, counts, units), so each is parsed once per process.
_KINDS: dict[str, tuple[int, Any]] = {}
_KIND_CACHE_MAX = 100_000


def _kind(name: str) -> tuple[int, Any]:
    k = _KINDS.get(name)
    if k is None:
        first = name[:1]
        if first and first in "rwc" and name[1:].isdigit():
            k = ("rwc".index(first), int(name[1:]))
        elif name in COUNT_FIELDS:
            k = (3, name)
        elif name[:3] in ("n1|", "x1|"):
            k = (4 if name[0] == "n" else 5, name[3:])
        else:
            k = (6, None)
        if len(_KINDS) < _KIND_CACHE_MAX:
            _KINDS[name] = k
    return k


def _fold(out: Fields, kind: int, key: Any, n: int) -> None:
    if kind < 3:
        hist = (out.run_hist, out.wait_hist, out.cpu_hist)[kind]
        hist[key] = hist.get(key, 0) + n
    elif kind == 3:
        out.counts[key] = out.counts.get(key, 0) + n
    elif kind < 6:
        pair = out.units.setdefault(key, [0, 0])
        pair[kind - 4] += n


def decode(raw: Mapping[str, str | int]) -> Fields:
    """The one decoder of the metrics hash layout (`ok`.. counts, `r<b>` run, `w<b>` wait and
    `c<b>` CPU buckets, `n1|<unit>`/`x1|<unit>` unit counts); values may be the strings Redis
    returns or ints (a difference of two hashes). Fields it does not know are ignored, so a
    newer writer does not break an older reader."""
    out = Fields()
    kinds = _KINDS
    for name, value in raw.items():
        n = int(value)
        kind, key = kinds.get(name) or _kind(name)
        _fold(out, kind, key, n)
    return out


def decode_diff(now: Mapping[str, str | int], before: Mapping[str, Any]) -> Fields:
    """decode() of the fields that moved from ``before`` to ``now`` (each moved field's
    difference), in one pass: the controller's per-check read of the running totals. A field
    is compared as stored first (strings from Redis), so unchanged buckets cost no int();
    fields missing from ``now`` are ignored (an expired total counts as no data). The fold is
    written out here (not _fold): this loop runs for every field of every lane of every
    deployment on each check."""
    out = Fields()
    if now == before:  # an idle lane: one C-level comparison
        return out
    hists = (out.run_hist, out.wait_hist, out.cpu_hist)
    counts, units = out.counts, out.units
    kinds = _KINDS
    get = before.get
    for name, v in now.items():
        b = get(name)
        if v == b:
            continue
        n = int(v) - (int(b) if b is not None else 0)
        kind, key = kinds.get(name) or _kind(name)
        if kind < 3:
            hist = hists[kind]
            hist[key] = hist.get(key, 0) + n
        elif kind == 3:
            counts[key] = counts.get(key, 0) + n
        elif kind < 6:
            pair = units.get(key)
            if pair is None:
                pair = units[key] = [0, 0]
            pair[kind - 4] += n
    return out


def add_slot(stats: WindowStats, raw: dict[str, str]) -> None:
    """Fold one slot hash into a window."""
    if not raw:
        return
    stats.slots_with_data += 1
    f = decode(raw)
    stats.run_hist = histogram.merge(stats.run_hist, f.run_hist)
    stats.wait_hist = histogram.merge(stats.wait_hist, f.wait_hist)
    stats.cpu_hist = histogram.merge(stats.cpu_hist, f.cpu_hist)
    for name, n in f.counts.items():
        setattr(stats, name, getattr(stats, name) + n)


def read_totals_on(pipe: Any, qk: QueueKeys, version: str, lane: str) -> None:
    """Queue on a pipeline the read of one running-totals hash; decode the reply with decode.
    The controller and /metrics batch many of these in one round trip."""
    pipe.hgetall(qk.metrics_total(version, lane))


def read_totals(conn: Connection, queue: str, version: str, lane: str) -> Fields:
    """The running totals of one version in one lane (what status views show)."""
    return decode(conn.client.hgetall(conn.keys.queue(queue).metrics_total(version, lane)))


def read_window(
    conn: Connection,
    queue: str,
    version: str,
    lane: str,
    start_ms: int,
    end_ms: int,
    *,
    slot_s: int = DEFAULT_SLOT_S,
) -> WindowStats:
    """Sum the slots overlapping [start_ms, end_ms) of one queue, version and lane. The
    window's start is that of its first slot (up to slot_s before start_ms), so rates divide
    by the time the summed slots cover."""
    first = slot_of(start_ms, slot_s)
    last = slot_of(max(start_ms, end_ms - 1), slot_s)
    stats = WindowStats(queue, version, lane, min(start_ms, first * 1000), end_ms)
    qk = conn.keys.queue(queue)
    slots = range(first, last + 1, slot_s)
    pipe = conn.client.pipeline(transaction=False)
    for s in slots:
        pipe.hgetall(qk.metrics_slot(version, lane, s))
    for raw in pipe.execute():
        add_slot(stats, raw)
    return stats


def read_lanes(
    conn: Connection, queue: str, versions: dict[str, str], start_ms: int, end_ms: int,
    *, slot_s: int = DEFAULT_SLOT_S,
) -> dict[str, WindowStats]:
    """Side by side: {lane: stats} for {lane: version}."""
    return {lane: read_window(conn, queue, v, lane, start_ms, end_ms, slot_s=slot_s)
            for lane, v in versions.items()}


def bucket_us(us: float) -> int:
    return histogram.bucket_index(us) if us > 0 and math.isfinite(us) else 0
