"""A controller stand-in for tests/test_leader_processes.py (test-only; not shipped).

Loops `Leadership.tick()` and, while leading, writes "epoch:pid" as an event of the queue's
deployment with the real fenced script, `deployment_update` (the fence of
lua/includes/guard.lua and fence.lua, called through the project's script registry), exactly
as the controller writes: a bug in the real fence fails the test. Each loop it publishes its
view in a state key so the test can see what a process that was stopped and continued
believes.

    python -m tests.leader_contender URL PREFIX QUEUE LEASE_S INTERVAL_S

The queue must have an active deployment (the test starts one; no controller runs).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import pycanary
from pycanary import defaults, deployments
from pycanary.leader import Leadership

EVENT = "contender"  # the event type of the contenders' writes
MAX_RUNTIME_S = 120.0  # an orphan (test crashed before killing us) ends on its own


def fenced_append(conn: pycanary.Connection, dep: deployments.Deployment, epoch: int,
                  pid: int) -> int:
    """One controller-style write carrying ``epoch``: the new rev, or -7 if fenced."""
    ev = deployments.event(EVENT, f"{epoch}:{pid}", actor=f"contender:{pid}",
                           now=defaults.now_ms())
    keys, args = deployments.update_call(conn, dep, {}, now=defaults.now_ms(), epoch=epoch,
                                         events=[ev], check_rev=False)
    return int(conn.scripts.call("deployment_update", keys, args))


def log_entries(conn: pycanary.Connection, queue: str) -> list[tuple[int, int]]:
    """(epoch, pid) of every write that landed, in Redis' order of writes."""
    dep = deployments.get(conn, queue)
    assert dep is not None, f"no deployment on {queue}"
    evs = deployments.events(conn, queue, dep.id, count=2000)
    return [(int(e), int(p)) for e, p in (x["message"].split(":") for x in evs
                                          if x["type"] == EVENT)]


def state_key(conn: pycanary.Connection, pid: int) -> str:
    return f"{conn.keys.prefix}:test:leader_state:{pid}"


def main(url: str, prefix: str, queue: str, lease_s: float, interval: float) -> None:
    conn = pycanary.connect(url, prefix=prefix)
    lead = Leadership(conn, lease_s=lease_s, controller_id=f"contender:{os.getpid()}")
    pid = os.getpid()
    dep = deployments.get(conn, queue)
    if dep is None or not dep.active:
        raise SystemExit(f"no active deployment on {queue}")
    woke = False
    wake: dict = {}
    fenced_epoch = None

    def on_cont(signum, frame) -> None:
        nonlocal woke
        woke = True

    signal.signal(signal.SIGCONT, on_cont)

    seq = 0
    end = time.monotonic() + MAX_RUNTIME_S
    while time.monotonic() < end:
        if woke and not wake:
            # Woken from SIGSTOP: what does the local clock say, before any Redis call? And a
            # write that was in flight when we stopped still carries our old epoch: try it.
            wake = {"is_leader": lead.is_leader(), "epoch": lead.epoch}
            if lead.epoch is not None:
                wake["stale_write"] = fenced_append(conn, dep, lead.epoch, pid)
        leading = lead.tick()
        if leading and fenced_epoch != lead.epoch:
            fenced_epoch = lead.epoch if not lead.fence_queues([queue]) else None
            leading = lead.is_leader()
        result = None
        if leading and lead.epoch is not None:
            result = fenced_append(conn, dep, lead.epoch, pid)
        seq += 1
        state = {"pid": pid, "seq": seq, "leader": lead.is_leader(), "epoch": lead.epoch,
                 "last_write": result, "wake": wake}
        conn.client.set(state_key(conn, pid), json.dumps(state), px=30_000)
        time.sleep(interval)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]))
