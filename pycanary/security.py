"""Least-privilege Redis ACL rules per role, generated in one place for docs, tests and operators.

Why selectors: Redis checks EVALSHA's KEYS as read-write (EVAL's key spec), so a producer that
runs ``route_enqueue`` must hold write permission on ``config`` at the EVALSHA level. Granting
that in a root rule whose only commands are ``evalsha``, ``script|load`` and ``ping`` is safe,
because every ``redis.call`` inside a script is checked again, command by command, against the
user's rules. Those in-script commands live in one selector where the keys the role may only
read are ``%R~`` patterns. So ``HSET config`` from ``set_weight`` (or from any script the user
could load) is refused with NOPERM, while ``HMGET config`` from ``route_enqueue`` passes.

The in-script command list is parsed from the scripts themselves (``rcall('CMD'``), so it
follows the Lua in lua/ without a second list to maintain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ValidationError
from .keys import DEFAULT_PREFIX
from .scripts import load_all

#: A command a script runs: rcall('X', ...), redis.call / redis.pcall / rpcall, and guard_core's
#: checked_call(i, 'type', 'X', ...) (a pcall that maps WRONGTYPE to -13).
_CALL = re.compile(r"""(?:(?:rcall|redis\.call|redis\.pcall|rpcall)\(|"""
                   r"""checked_call\([^,()]*(?:\([^()]*\))?[^,()]*,\s*['"]\w+['"]\s*,)\s*['"]([A-Za-z]+)['"]""")

#: Read commands the Python side issues outside scripts (status, worker lane refresh, controller
#: reads, registry reads). Key patterns decide on which keys they are allowed.
_PLAIN_READS = ("get", "hget", "hmget", "hgetall", "llen", "lindex", "lrange", "smembers",
                "sismember", "zcard", "zscore", "zrange", "zrangebyscore", "xrange", "xrevrange",
                "xlen", "xpending", "xinfo")

#: Per-queue key suffixes (after ``P:{q}:``) and global keys (after ``P:``), as in keys.py.
_Q = "{*}:"


@dataclass(frozen=True)
class Role:
    """What one role runs and touches. ``reads``/``writes`` are key patterns after ``P:``."""

    name: str
    summary: str
    scripts: tuple[str, ...]
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    plain_writes: tuple[str, ...] = ()


_ALL_SCRIPTS = tuple(sorted(load_all()))

ROLES: dict[str, Role] = {
    "producer": Role(
        "producer", "enqueue jobs; reads routing config, never changes it",
        scripts=("route_enqueue", "route_enqueue_many", "route_xadd", "route_xadd_many"),
        reads=(_Q + "config", _Q + "tenant_weights"),
        writes=(_Q + "lane:stable", _Q + "lane:canary", _Q + "stream:stable",
                _Q + "stream:canary", _Q + "routed", _Q + "idem:*", "queues"),
        plain_writes=("sadd",),
    ),
    "worker": Role(
        "worker", "fetch, ack, fail, retry, heartbeat, reap; reads config (set the stable "
        "version with `queue configure --stable-version` first: adopting it is a config write)",
        scripts=("fetch_jobs", "ack_jobs", "fail_jobs", "bounce_job", "return_job",
                 "promote_delayed", "requeue_jobs", "heartbeat", "forget_worker",
                 "release_lock", "fetch_stream", "ack_stream", "fail_stream",
                 "promote_delayed_stream", "touch_stream", "reclaim_stream", "return_stream"),
        reads=(_Q + "config", _Q + "rolled_back", _Q + "former_stable", _Q + "tenant_weights"),
        writes=(_Q + "lane:*", _Q + "stream:*", _Q + "stream_running:*", _Q + "processing:*",
                _Q + "running:*",
                _Q + "processing_index", _Q + "delayed:*",
                _Q + "dlq", _Q + "m:*", _Q + "mt:*", "{workers}:*"),
        plain_writes=("blmove", "set", "hset"),
    ),
    "controller": Role(
        "controller", "leader election and every deployment write (weights, promote, rollback, "
        "drain); reads metrics and the worker registry",
        scripts=("deployment_start", "deployment_update", "deployment_promote",
                 "deployment_rollback", "deployment_finish", "fence_queue", "drain_lane",
                 "drain_broker", "drain_stream", "leader_acquire", "leader_renew",
                 "release_lock", "notify_settle"),
        # broker: a Celery or RQ queue's binding (docs/integrations.md: its broker lists
        # need key patterns of their own)
        reads=(_Q + "mt:*", _Q + "m:*", _Q + "routed", _Q + "broker", "{workers}:*", "queues"),
        writes=(_Q + "config", _Q + "tenant_weights", _Q + "lane:*", _Q + "stream:*",
                _Q + "rolled_back",
                _Q + "former_stable", _Q + "fence", _Q + "deployment", _Q + "deployment:large",
                _Q + "events:*",
                _Q + "analyses:*", _Q + "history", _Q + "counters", _Q + "outbox",
                _Q + "outbox:dead", "deployments:active",
                "{controller}:*"),
        # the notification sender (pycanary/notify.py), which runs in the controller process
        plain_writes=("sadd", "srem", "xgroup|create", "xreadgroup", "xautoclaim", "xclaim",
                      "xinfo|consumers", "xgroup|delconsumer"),
    ),
    "operator": Role(
        "operator", "every CLI verb (set-weight, queue configure, canary, ramp, promote, "
        "rollback, pause, resume, drain, status, workers); every key under the prefix",
        scripts=_ALL_SCRIPTS,
        reads=(),
        writes=("*",),
        plain_writes=("sadd", "srem", "blmove", "set", "xgroup|create", "xreadgroup",
                      "xautoclaim", "xclaim", "xinfo|consumers", "xgroup|delconsumer"),
    ),
}


def script_commands(scripts: tuple[str, ...]) -> list[str]:
    """Redis commands the given scripts call (includes expanded), lower case, sorted."""
    loaded = load_all()
    found: set[str] = set()
    for name in scripts:
        found.update(c.lower() for c in _CALL.findall(loaded[name].source))
    return sorted(found)


def acl_rules(role: str, prefix: str = DEFAULT_PREFIX) -> list[str]:
    """ACL SETUSER rule tokens (after ``on >password``) for a role; one selector is one token."""
    spec = ROLES.get(role)
    if spec is None:
        raise ValidationError(f"unknown role {role!r}; one of {', '.join(ROLES)}", field="role")
    reads = [f"%R~{prefix}:{p}" for p in spec.reads]
    writes = [f"~{prefix}:{p}" for p in spec.writes]
    root = ["resetkeys", "resetchannels", "-@all", "+ping", "+evalsha", "+script|load",
            *[f"~{prefix}:{p}" for p in (*spec.reads, *spec.writes)]]
    commands = sorted({*script_commands(spec.scripts), *_PLAIN_READS, *spec.plain_writes})
    selector = "(" + " ".join([*(f"+{c}" for c in commands), *reads, *writes]) + ")"
    return [*root, "clearselectors", selector]


def acl_setuser(role: str, user: str | None = None, prefix: str = DEFAULT_PREFIX,
                password: str = "<password>") -> str:
    """The redis-cli line that creates the role's user (selector quoted for the shell)."""
    tokens = acl_rules(role, prefix)
    shown = [f"'{t}'" if any(c in t for c in " {}()*~%|") else t for t in tokens]
    return f"ACL SETUSER {user or f'{prefix}-{role}'} reset on '>{password}' " + " ".join(shown)


def acl_doc_table(prefix: str = DEFAULT_PREFIX) -> str:
    """Markdown table of the roles (docs/security.md embeds it; a test checks they agree)."""
    lines = ["| role | may | read-only keys | read-write keys |", "| --- | --- | --- | --- |"]
    for r in ROLES.values():
        ro = ", ".join(f"`{prefix}:{p}`" for p in r.reads) or "-"
        rw = ", ".join(f"`{prefix}:{p}`" for p in r.writes)
        lines.append(f"| {r.name} | {r.summary} | {ro} | {rw} |")
    return "\n".join(lines)
