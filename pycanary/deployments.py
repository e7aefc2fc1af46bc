"""Deployments persisted in Redis: one rollout of one canary version on one queue.

The deployment hash is the single source of truth (docs/design.md invariant 5): any controller, API
or CLI process can die and the next one reads where things are. Every change goes through a
deployment_*.lua script that also moves the queue's routing weight, so the two never disagree;
writes carry the rev they read (compare-and-set) and, from the controller, its leader epoch.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import redis

from .connection import Connection
from .errors import raise_for_code
from .notify import plan_webhooks_json
from .plan import Plan, parse_plan
from .validation import redact_url

#: Deployment states (the ones the scripts write). The first five are "active": at most one
#: per queue. A deployment is created "active"; it ends "completed" or "rolled_back".
ACTIVE_STATES = ("active", "paused", "awaiting_promotion", "promoting", "rolling_back")
FINISHED_STATES = ("completed", "rolled_back")
STATES = ACTIVE_STATES + FINISHED_STATES
#: Analysis records kept per deployment (compact ones, see `compact_record`): the last few
#: checks for `history` and the views; every verdict change is also an event. 3, not 5: each
#: record is ~0.45 KB of the ~12 KB a deployment may take (issue 15).
ANALYSES_KEPT = 3
#: Events kept per deployment (EVENTS_MAX in lua/includes/deployment.lua).
EVENTS_KEPT = 2000
#: The fields the controller rewrites on every check, stored together as one compact field
#: `ctl` (see `encode_ctl`): one value to write and, when unchanged, none to decode (issue 15).
CTL_FIELDS = ("totals", "analysis_state", "last_analysis", "last_decision", "last_data_at")
_CTL_EMPTY: dict[str, Any] = {"totals": {}, "analysis_state": {}, "last_analysis": None,
                              "last_decision": None, "last_data_at": {}}

_JSON_FIELDS = ("plan", "tenants_bp", "analysis_state", "last_analysis", "last_decision",
                "totals", "last_data_at", "drain", "meta")
_INT_FIELDS = ("stage", "weight_bp", "started_at", "stage_started_at", "paused_at",
               "updated_at", "finished_at", "rollback_at", "promoted_at", "last_check_at",
               "rev", "weight0_at", "drained_at", "paused_ms")




def _words(text: str) -> list[str]:
    """The words of a literal (the dictionary below is written as prose-like lists)."""
    return text.split()


def _ctl_zdict_v2() -> bytes:
    """The preset dictionary of the ``z2:`` form of `ctl`: the names and snippets a `ctl` value
    repeats (metric fields, state and analysis keys, rule names, verdicts), so that the ~7 KB
    of JSON of one check compresses against them instead of only against itself (-13% at
    level 3, and faster than level 1 without it; docs/performance.md). FROZEN: a stored value
    decodes only with the dictionary it was written with (tests/test_controller_ctl.py pins
    its digest); a change needs a new prefix (z3:) and this one kept for reading."""
    counts = _words("ok failed retried dead late first_attempts first_failed crashed")
    state = _words(
        "v started_s stage stage_started_s checks fail_streak last_verdict canary_attempts "
        "canary_failed stable_attempts stable_failed err_s err_v safe_s safe_v err_clusters "
        "err_v_plain safe_v_plain error_max_log_lr run_s run_v run_max_log_lr stage_canary "
        "stage_stable last_backlog_canary last_backlog_stable late_inconclusive "
        "stage_groups stage_rule_max")
    lane = _words("ok failed dead run_hist wait_hist jobs jobs_failed crashed cpu_hist routed "
                  "routed_finished")
    summary = _words(
        "version attempts ok failed dead error_rate_pct run_p50_us run_p95_us "
        "run_p99_us wait_p95_us jobs_per_s_per_worker workers backlog "
        "deployment_attempts first_attempts first_failed crashed cpu_p95_us rss_bytes")
    analysis = _words(
        "verdict stage now_s reason decisive fail_streak failure_threshold rules "
        "stable canary rule observed threshold action cause next_stage")
    rules = _words(
        "data sample_ratio max_error_rate max_latency_increase max_p95_latency "
        "stat_error_rate stat_run_time min_samples max_cpu_increase max_memory_increase "
        "stage_time deadline")
    words = _words(
        "PASS FAIL INCONCLUSIVE hold promote rollback pause await_approval analysis "
        "true false null canary stable routed and finished jobs match the weight "
        "no finished canary attempts in the last on_no_data: hold within threshold "
        "evidence p-value samples")
    parts = [f'"n1||{i}":"' for i in range(32)] + [f'"x1||{i}":"' for i in range(32)]
    parts += [f'"{p}{i}":"' for p in "wcr" for i in range(100)]
    parts += [f'"{c}":"' for c in counts]
    parts += [f'"{i}":' for i in range(100)]
    parts += [f'"{k}":' for k in state + lane + summary + analysis]
    parts += [f'"rule":"{r}","verdict":"' for r in rules]
    parts += words
    parts += ['{"totals":{"stable":{', '},"canary":{', '},"routed":{"stable":', ',"canary":',
              '"analysis_state":{"v":2,', '"last_analysis":{"verdict":"',
              '"last_decision":{"action":"', '"last_data_at":{"stable":',
              '"stage_canary":{"ok":', '"stage_stable":{"ok":']
    return "".join(parts).encode()


_CTL_ZDICT_V2 = _ctl_zdict_v2()


def encode_ctl(values: dict[str, Any]) -> str:
    """The `ctl` field: ``"z2:"`` + base64 of the compact JSON of the CTL_FIELDS, deflated at
    level 3 against a preset dictionary (`_ctl_zdict_v2`). A check's histograms, baselines and
    rule texts shrink ~2x, and the value stays under 3.5 KB, so its allocation is one jemalloc
    size class below the ``z1:`` form's (docs/performance.md); ~70 us per write."""
    raw = json.dumps(values, separators=(",", ":"), default=str).encode()
    c = zlib.compressobj(3, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, _CTL_ZDICT_V2)
    return "z2:" + base64.b64encode(c.compress(raw) + c.flush()).decode("ascii")


def decode_ctl(text: str) -> dict[str, Any]:
    """Read a `ctl` field: ``z2:`` (preset dictionary), ``z1:`` (plain zlib, written before
    the dictionary), or plain JSON (a person may write one)."""
    if not text:
        return {}
    if text.startswith("z2:"):
        d = zlib.decompressobj(15, _CTL_ZDICT_V2)
        packed = base64.b64decode(text[3:], validate=True)
        out = json.loads(d.decompress(packed) + d.flush())
    elif text.startswith("z1:"):
        out = json.loads(zlib.decompress(base64.b64decode(text[3:], validate=True)))
    else:
        out = json.loads(text)
    if not isinstance(out, dict):
        raise ValueError("not a JSON object")
    return out


def new_id(queue: str, now: int) -> str:
    """Sortable, readable: payments-20261127T101500-3f9a."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now / 1000))
    return f"{queue}-{stamp}-{secrets.token_hex(2)}"


class CorruptDeploymentError(ValueError):
    """A deployment hash that cannot be read (bad JSON, a non-numeric number, an unusable
    plan, a missing field). Raised so that a reader that handles many deployments (the
    controller, status) can report this one and go on with the others; ``field`` names the
    bad field, ``deployment_id`` is the id if that field was readable."""

    def __init__(self, queue: str, field: str, problem: str,
                 deployment_id: str | None = None) -> None:
        super().__init__(f"deployment of {queue}: field {field}: {problem}")
        self.queue = queue
        self.field = field
        self.problem = problem
        self.deployment_id = deployment_id


@lru_cache(maxsize=512)
def _cached_plan(plan_json: str) -> Plan:
    """Plans are immutable per deployment: parse each once per process, not every tick."""
    return parse_plan(json.loads(plan_json))


def redacted_plan(plan_raw: dict[str, Any]) -> dict[str, Any]:
    """The plan as readers see it (status, history, the API's viewers): webhook URLs cut to
    scheme://host:port/... A Slack or CI webhook URL is a secret (its path is the token), and
    reading a deployment must not hand it to everyone with a viewer token."""
    cfg = plan_raw.get("canary_config") if isinstance(plan_raw, dict) else None
    if not isinstance(cfg, dict):
        return plan_raw
    cfg = dict(cfg)
    notes = cfg.get("notifications")
    if isinstance(notes, dict) and isinstance(notes.get("webhooks"), list):
        cfg["notifications"] = {**notes, "webhooks": [
            {**h, "url": redact_url(str(h["url"]))} if isinstance(h, dict) and "url" in h else h
            for h in notes["webhooks"]]}
    if isinstance(cfg.get("stages"), list):
        cfg["stages"] = [
            {**st, "gate": {**st["gate"], "webhook": redact_url(str(st["gate"]["webhook"]))}}
            if isinstance(st, dict) and isinstance(st.get("gate"), dict)
            and "webhook" in st["gate"] else st
            for st in cfg["stages"]]
    return {**plan_raw, "canary_config": cfg}


@dataclass
class Deployment:
    id: str
    queue: str
    stable_version: str
    canary_version: str
    state: str
    plan_raw: dict[str, Any]
    stage: int = 0
    weight_bp: int = 0
    tenants_bp: dict[str, int] = field(default_factory=dict)
    sticky: bool = True
    salt: str = ""
    kind: str = "plan"  # plan | manual
    started_at: int = 0
    stage_started_at: int = 0
    paused_at: int | None = None
    paused_ms: int = 0
    updated_at: int = 0
    finished_at: int | None = None
    rollback_at: int | None = None
    promoted_at: int | None = None
    weight0_at: int | None = None
    drained_at: int | None = None
    last_check_at: int | None = None
    reason: str = ""
    manual_only: str = ""
    actor: str = ""
    rev: int = 0
    analysis_state: dict[str, Any] = field(default_factory=dict)
    last_analysis: dict[str, Any] | None = None
    last_decision: dict[str, Any] | None = None
    totals: dict[str, Any] = field(default_factory=dict)
    last_data_at: dict[str, int] = field(default_factory=dict)
    drain: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    _plan: Plan | None = field(default=None, repr=False, compare=False)
    _plan_json: str = field(default="", repr=False, compare=False)

    @property
    def plan(self) -> Plan:
        if self._plan is None:
            self._plan = _cached_plan(self._plan_json or json.dumps(self.plan_raw))
        return self._plan

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def last_stage(self) -> bool:
        return self.stage >= len(self.plan.stages) - 1

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        out["plan"] = redacted_plan(out.pop("plan_raw"))
        out["weight_percent"] = self.weight_bp / 100
        out["stages"] = [s.percentage for s in self.plan.stages]
        return out

    @classmethod
    def from_hash(cls, queue: str, raw: dict[str, str],
                  ctl: dict[str, Any] | None = None) -> Deployment:
        """Decode a deployment hash. A field that does not decode raises
        `CorruptDeploymentError` naming it (not a bare JSON or int error), and so does a plan
        that no longer parses: every reader learns at once which deployment is unusable.
        ``ctl``: the `ctl` field already decoded (the controller's cache of what it wrote),
        used instead of decoding it again; the CTL_FIELDS it holds override separate fields of
        the same names (an older layout)."""
        kw: dict[str, Any] = {}
        dep_id = raw.get("id") or None
        for name, value in raw.items():
            try:
                if name == "ctl":
                    if ctl is None:
                        ctl = decode_ctl(value)
                    continue
                if name == "plan":
                    kw["_plan_json"] = value
                if name in _JSON_FIELDS:
                    kw["plan_raw" if name == "plan" else name] = json.loads(value) if value \
                        else (None if name in ("last_analysis", "last_decision", "drain")
                              else {})
                elif name in _INT_FIELDS:
                    kw[name] = int(value) if value not in ("", None) else None
                elif name == "sticky":
                    kw[name] = value == "1"
                elif name in cls.__dataclass_fields__:
                    kw[name] = value
            except (ValueError, TypeError, zlib.error) as exc:
                raise CorruptDeploymentError(queue, name, f"{type(exc).__name__}: {exc}",
                                             dep_id) from None
        for name in CTL_FIELDS:
            if ctl is not None and name in ctl:
                kw[name] = ctl[name]
        kw.setdefault("plan_raw", {})
        for required in ("paused_ms", "stage", "weight_bp", "rev"):
            if kw.get(required) is None:
                kw[required] = 0
        kw["queue"] = queue
        missing = [f for f in ("id", "stable_version", "canary_version", "state")
                   if not kw.get(f)]
        if missing:
            raise CorruptDeploymentError(queue, missing[0], "missing", dep_id)
        if kw["state"] not in STATES:  # else it would pass for finished and be forgotten
            raise CorruptDeploymentError(queue, "state", f"unknown state {kw['state']!r}",
                                         dep_id)
        dep = cls(**kw)
        try:
            _ = dep.plan  # parse now (cached): a broken plan is a broken deployment
        except (ValueError, TypeError, KeyError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CorruptDeploymentError(queue, "plan", first, dep_id) from None
        return dep


def ctl_values(values: dict[str, Any], dep: Deployment | None) -> dict[str, Any]:
    """All CTL_FIELDS after a write of ``values``: the new ones, the others as ``dep`` holds
    them (the write is compare-and-set on dep's rev, so they are current)."""
    out = {}
    for name in CTL_FIELDS:
        if name in values:
            out[name] = values[name]
        elif dep is not None:
            out[name] = getattr(dep, name)
        else:
            out[name] = _CTL_EMPTY[name]
    return out


def encode_fields(values: dict[str, Any], dep: Deployment | None = None,
                  ctl_text: str | None = None) -> list[str]:
    """Field/value pairs for a deployment hash: JSON for structures, '' for None; the
    CTL_FIELDS go into the one `ctl` field (merged with ``dep``'s other CTL_FIELDS), or
    ``ctl_text`` when the caller encoded it already."""
    out: list[str] = []
    if ctl_text is None and any(k in values for k in CTL_FIELDS):
        ctl_text = encode_ctl(ctl_values(values, dep))
    if ctl_text is not None:
        out += ["ctl", ctl_text]
    for k, v in values.items():
        if k in CTL_FIELDS:
            continue
        if k == "plan_raw":
            k = "plan"
        if k in _JSON_FIELDS:
            out += [k, "" if v is None else json.dumps(v, separators=(",", ":"), default=str)]
        elif isinstance(v, bool):
            out += [k, "1" if v else "0"]
        else:
            out += [k, "" if v is None else str(v)]
    return out


def _pairs(pairs: list[str]) -> list[Any]:
    return [len(pairs) // 2, *pairs]


def _tenant_pairs(tenants_bp: dict[str, int] | None) -> list[str]:
    out: list[str] = []
    for t, w in sorted((tenants_bp or {}).items()):
        out += [t, str(int(w))]
    return out


def event(kind: str, message: str, *, actor: str, now: int, data: dict | None = None) -> str:
    return json.dumps({"ts": now, "type": kind, "actor": actor, "message": message,
                       "data": data or {}}, separators=(",", ":"), default=str)


# -- reads -------------------------------------------------------------------------------------
def read_on(pipe: Any, qk: Any) -> None:
    """Queue on a pipeline the two reads of a deployment (its hash, then its large values,
    see Keys.deployment_large); `merged` puts the two replies together."""
    pipe.hgetall(qk.deployment)
    pipe.hgetall(qk.deployment_large)


def merged(small: Any, large: Any) -> Any:
    """One deployment's fields from the replies of `read_on`: the hash's own fields win over
    the large ones (the scripts keep each field in one of the two; a field written into the
    hash by hand, as before issue 15, is read as written). {} when there is no deployment; a
    failed reply (an exception) is passed on."""
    if isinstance(small, Exception) or not small:
        return small
    if isinstance(large, Exception):
        return large
    if large:
        return {**large, **small}
    return small


def get(conn: Connection, queue: str) -> Deployment | None:
    pipe = conn.client.pipeline(transaction=False)
    read_on(pipe, conn.keys.queue(queue))
    raw = merged(*pipe.execute())
    return Deployment.from_hash(queue, raw) if raw else None


def get_many(conn: Connection, queues: list[str]) -> dict[str, Deployment | None]:
    pipe = conn.client.pipeline(transaction=False)
    for q in queues:
        read_on(pipe, conn.keys.queue(q))
    res = pipe.execute()
    out: dict[str, Deployment | None] = {}
    for i, q in enumerate(queues):
        raw = merged(res[2 * i], res[2 * i + 1])
        out[q] = Deployment.from_hash(q, raw) if raw else None
    return out


def active_queues(conn: Connection) -> list[str]:
    return sorted(conn.client.smembers(conn.keys.active_deployments))


def events(conn: Connection, queue: str, deployment_id: str, *, count: int = 100,
           after: str | None = None) -> list[dict[str, Any]]:
    """Oldest first; ``after`` an entry id to get only newer ones (for --watch).

    The log is a list, newest first, of ``"<seq> <JSON>"`` entries (lua/includes/deployment.lua
    log_event); an entry's id is ``"<ts>-<seq>"``, shaped like the stream ids of deployments
    started before issue 15, whose stream logs are still read (XRANGE) when the key is one."""
    key = conn.keys.queue(queue).events(deployment_id)
    c = conn.client
    try:
        if after is None:
            raw = c.lrange(key, 0, count - 1)
        else:
            seq = int(after.rsplit("-", 1)[-1])
            head = c.lindex(key, 0)
            newest = int(head.split(" ", 1)[0]) if head else 0
            # entry i holds seq newest - i: the ones after `seq`, oldest `count` of them (or
            # from the oldest kept, when the cap dropped some since `seq`)
            end = min(newest - seq, EVENTS_KEPT) - 1
            raw = [] if end < 0 else c.lrange(key, max(0, end - count + 1), end)
    except redis.exceptions.ResponseError as exc:
        if "WRONGTYPE" not in str(exc):
            raise
        return _stream_events(conn, key, count=count, after=after)
    out = []
    for entry in reversed(raw):
        seq_text, _, text = entry.partition(" ")
        e = json.loads(text)
        e["id"] = f"{e.get('ts', 0)}-{seq_text}"
        out.append(e)
    return out


def _stream_events(conn: Connection, key: str, *, count: int,
                   after: str | None) -> list[dict[str, Any]]:
    """events() of a log kept as a stream (deployments started before issue 15)."""
    entries = conn.client.xrange(key, min=f"({after}", count=count) if after else \
        conn.client.xrevrange(key, count=count)[::-1]
    out = []
    for eid, fields in entries:
        e = json.loads(fields["e"])
        e["id"] = eid
        out.append(e)
    return out


def analyses(conn: Connection, queue: str, deployment_id: str, count: int = 20) -> list[dict]:
    raw = conn.client.lrange(conn.keys.queue(queue).analyses(deployment_id), 0, count - 1)
    return [json.loads(x) for x in raw]


def history(conn: Connection, queue: str, count: int = 20) -> list[dict[str, Any]]:
    return [json.loads(x) for x in
            conn.client.lrange(conn.keys.queue(queue).history, 0, count - 1)]


# -- writes ------------------------------------------------------------------------------------
def start(
    conn: Connection,
    queue: str,
    canary_version: str,
    plan: Plan,
    *,
    kind: str,
    actor: str,
    now: int,
    message: str,
    meta: dict[str, Any] | None = None,
    salt: str | None = None,
) -> Deployment:
    """Start a deployment. Its sticky-hash salt is drawn fresh (random, from Python: scripts
    have no randomness) unless the plan sets one or ``salt`` pins it, so each deployment puts
    other keys first; within the deployment a key keeps its lane (the salt does not change)."""
    qk = conn.keys.queue(queue)
    dep_id = new_id(queue, now)
    first = plan.settings(0)
    if salt is None:
        salt = plan.salt or new_salt()
    fields = {
        "id": dep_id, "state": "active", "kind": kind, "plan_raw": plan.to_dict(),
        "stage": 0, "tenants_bp": dict(first.tenants_bp), "sticky": plan.sticky,
        "salt": salt, "started_at": now, "stage_started_at": now, "paused_ms": 0,
        "actor": actor, "reason": "", "manual_only": "", "analysis_state": {},
        "totals": {}, "last_data_at": {}, "meta": meta or {},
        # copied by the scripts into every outbox entry of this deployment (pycanary/notify.py)
        "webhooks": plan_webhooks_json(plan),
    }
    ev = event("started", message, actor=actor, now=now,
               data={"canary_version": canary_version, "weight_bp": first.weight_bp,
                     "stages": [s.percentage for s in plan.stages]})
    res = conn.scripts.call(
        "deployment_start",
        [qk.config, qk.tenant_weights, qk.rolled_back, qk.former_stable, qk.deployment,
         qk.events(dep_id), qk.outbox, qk.deployment_large],
        [now, canary_version, first.weight_bp, "1" if plan.sticky else "0", salt,
         *_pairs(_tenant_pairs(first.tenants_bp)), *_pairs(encode_fields(fields)), ev],
    )
    if isinstance(res, int) and res < 0:
        raise_for_code(res, script="deployment_start",
                       field="version" if res == -10 else "queue")
    conn.client.sadd(conn.keys.active_deployments, queue)
    conn.client.sadd(conn.keys.queues, queue)
    dep = get(conn, queue)
    assert dep is not None
    return dep


def pause_values(dep: Deployment, now: int) -> dict[str, Any]:
    """The fields a pause writes (by `pycanary pause` or the controller's on_inconclusive):
    the state it came from is kept so `resume` returns there; timers freeze from `now`."""
    return {"state": "paused", "paused_at": now,
            "meta": {**(dep.meta or {}), "paused_from": dep.state}}


def new_salt() -> str:
    """A fresh per-deployment salt of the sticky hash: 8 hex digits (32 random bits)."""
    return secrets.token_hex(4)


def _fence_args(epoch: int | None) -> str:
    return "" if epoch is None else str(epoch)


def update_call(
    conn: Connection,
    dep: Deployment,
    values: dict[str, Any],
    *,
    now: int,
    epoch: int | None = None,
    weight_bp: int | None = None,
    tenants_bp: dict[str, int] | None = None,
    events: list[str] | None = None,
    analysis: dict[str, Any] | str | None = None,
    check_rev: bool = True,
    ctl_text: str | None = None,
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of deployment_update, so a controller can pipeline many of them.
    ``analysis``: the check's record (a dict, or its JSON text); ``ctl_text``: the `ctl` field
    already encoded (see encode_fields)."""
    qk = conn.keys.queue(dep.queue)
    evs = [e for e in (events or []) if e]
    record = "" if analysis is None else analysis if isinstance(analysis, str) else \
        json.dumps(analysis, separators=(",", ":"), default=str)
    return (
        [qk.config, qk.tenant_weights, qk.deployment, qk.events(dep.id), qk.fence,
         qk.analyses(dep.id), qk.outbox, qk.deployment_large],
        [_fence_args(epoch), str(dep.rev) if check_rev else "", now,
         "" if weight_bp is None else weight_bp, "keep" if tenants_bp is None else "set",
         *_pairs(_tenant_pairs(tenants_bp)), *_pairs(encode_fields(values, dep, ctl_text)),
         len(evs), *evs,
         record, ANALYSES_KEPT],
    )


def compact_analysis(analysis: dict[str, Any]) -> dict[str, Any]:
    """What a record or a verdict event keeps of a check's analysis: the verdict, its reason
    and each rule's verdict (the full analysis, with observed values and lane summaries, is
    the deployment's `last_analysis`)."""
    return {"verdict": analysis.get("verdict"), "reason": analysis.get("reason", ""),
            "decisive": analysis.get("decisive", False),
            "fail_streak": analysis.get("fail_streak", 0),
            "rules": {r.get("rule"): r.get("verdict") for r in analysis.get("rules") or ()}}


def compact_record(ts: int, stage: int, analysis: dict[str, Any],
                   decision: dict[str, Any]) -> dict[str, Any]:
    """One entry of the analyses list: when, which stage, the compact analysis and what was
    decided (action, reason, cause, next stage). About 0.4 KB instead of 2-3 KB."""
    return {"ts": ts, "stage": stage, "analysis": compact_analysis(analysis),
            "decision": {k: decision.get(k) for k in ("action", "reason", "cause",
                                                      "next_stage")}}


def check_update(dep: Deployment, res: Any) -> int:
    """Turn deployment_update's reply into the new rev, or the mapped exception."""
    if isinstance(res, int) and res < 0:
        raise_for_code(res, script="deployment_update", field="deployment")
    dep.rev = int(res)
    return dep.rev


def update(
    conn: Connection,
    dep: Deployment,
    values: dict[str, Any],
    *,
    now: int,
    epoch: int | None = None,
    weight_bp: int | None = None,
    tenants_bp: dict[str, int] | None = None,
    ev: str = "",
    events: list[str] | None = None,
    analysis: dict[str, Any] | None = None,
    check_rev: bool = True,
) -> int:
    """Write fields (and optionally the routing weight) of an active deployment; returns rev."""
    keys, args = update_call(conn, dep, values, now=now, epoch=epoch, weight_bp=weight_bp,
                             tenants_bp=tenants_bp, events=[ev, *(events or [])],
                             analysis=analysis, check_rev=check_rev)
    return check_update(dep, conn.scripts.call("deployment_update", keys, args))


def rollback(conn: Connection, dep: Deployment, *, reason: str, actor: str, now: int,
             epoch: int | None = None, data: dict | None = None,
             check_rev: bool = False,
             values: dict[str, Any] | None = None) -> tuple[bool, int]:
    """Weight 0 and the canary closed, in one script; returns (changed, weight before).
    ``values`` are more deployment fields written by the same script (the controller's
    rollback rule in ``meta``): a crash right after the rollback cannot lose them."""
    qk = conn.keys.queue(dep.queue)
    ev = event("rollback", f"rollback: {reason}", actor=actor, now=now, data=data)
    res = conn.scripts.call(
        "deployment_rollback",
        [qk.config, qk.tenant_weights, qk.rolled_back, qk.deployment, qk.events(dep.id),
         qk.fence, qk.outbox, qk.deployment_large],
        [_fence_args(epoch), str(dep.rev) if check_rev else "", now,
         *_pairs(encode_fields({"reason": reason, "weight0_at": now, **(values or {})})), ev],
    )
    if isinstance(res, int) and res < 0:
        raise_for_code(res, script="deployment_rollback", field="queue")
    changed, rev, prev = (int(x) for x in res)
    dep.rev, dep.state = rev, "rolling_back"
    if changed:
        dep.rollback_at = dep.weight0_at = now
    return bool(changed), prev


def promote_final(conn: Connection, dep: Deployment, *, actor: str, now: int, reason: str,
                  epoch: int | None = None, check_rev: bool = False) -> bool:
    """The canary version becomes stable (then the canary lane drains into stable)."""
    qk = conn.keys.queue(dep.queue)
    ev = event("promoted", f"promoted {dep.canary_version} to stable: {reason}", actor=actor,
               now=now)
    res = conn.scripts.call(
        "deployment_promote",
        [qk.config, qk.tenant_weights, qk.rolled_back, qk.former_stable, qk.deployment,
         qk.events(dep.id), qk.fence, qk.outbox, qk.deployment_large],
        [_fence_args(epoch), str(dep.rev) if check_rev else "", now,
         *_pairs(encode_fields({"reason": reason})), ev],
    )
    if isinstance(res, int) and res < 0:
        raise_for_code(res, script="deployment_promote", field="queue")
    changed, rev = (int(x) for x in res)
    dep.rev, dep.state = rev, "promoting"
    if changed:
        dep.promoted_at = now
    return bool(changed)


def finish(conn: Connection, dep: Deployment, *, actor: str, now: int, message: str,
           counter: str, values: dict[str, Any], epoch: int | None = None) -> str:
    qk = conn.keys.queue(dep.queue)
    ev = event("completed" if dep.state == "promoting" else "rolled_back", message, actor=actor,
               now=now, data=values)
    res = conn.scripts.call(
        "deployment_finish",
        [qk.deployment, qk.events(dep.id), qk.history, qk.counters, qk.fence, qk.outbox,
         qk.deployment_large],
        [_fence_args(epoch), now, counter, *_pairs(encode_fields(values)), ev],
    )
    if isinstance(res, int) and res < 0:
        raise_for_code(res, script="deployment_finish", field="queue")
    final, rev = res
    dep.state, dep.rev = final, int(rev)
    conn.client.srem(conn.keys.active_deployments, dep.queue)
    return str(final)
