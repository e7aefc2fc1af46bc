"""A controller stand-in for tests/test_leader_processes.py (test-only; not shipped).

Loops `Leadership.tick()` and, while leading, appends "epoch:pid" to a list with a *fenced*
write: one EVAL that checks the queue's fence and pushes atomically (a check from Python and
a separate RPUSH would not be fenced). Each loop it publishes its view in a state key so the
test can see what a process that was stopped and continued believes.

    python -m tests.leader_contender URL PREFIX QUEUE LEASE_S INTERVAL_S
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import pycanary
from pycanary.leader import Leadership

# The fence check of lua/includes/fence.lua, inlined: a write and its fence check in one script.
FENCED_APPEND = """
local rcall = redis.call
local fence_key, log_key = KEYS[1], KEYS[2]
local e = tonumber(ARGV[1])
local cur = tonumber(rcall('GET', fence_key) or '0')
if e < cur then return -7 end
if e > cur then rcall('SET', fence_key, e) end
rcall('RPUSH', log_key, ARGV[1] .. ':' .. ARGV[2])
return 1
"""

MAX_RUNTIME_S = 120.0  # an orphan (test crashed before killing us) ends on its own


def log_key(conn: pycanary.Connection, queue: str) -> str:
    return f"{conn.keys.queue(queue).base}:test:log"


def state_key(conn: pycanary.Connection, pid: int) -> str:
    return f"{conn.keys.prefix}:test:leader_state:{pid}"


def main(url: str, prefix: str, queue: str, lease_s: float, interval: float) -> None:
    conn = pycanary.connect(url, prefix=prefix)
    lead = Leadership(conn, lease_s=lease_s, controller_id=f"contender:{os.getpid()}")
    pid = os.getpid()
    keys = [conn.keys.queue(queue).fence, log_key(conn, queue)]
    woke = False
    wake: dict = {}
    fenced_epoch = None

    def on_cont(signum, frame) -> None:
        nonlocal woke
        woke = True

    signal.signal(signal.SIGCONT, on_cont)

    def append(epoch: int) -> int:
        return conn.client.eval(FENCED_APPEND, len(keys), *keys, epoch, pid)

    seq = 0
    end = time.monotonic() + MAX_RUNTIME_S
    while time.monotonic() < end:
        if woke and not wake:
            # Woken from SIGSTOP: what does the local clock say, before any Redis call? And a
            # write that was in flight when we stopped still carries our old epoch: try it.
            wake = {"is_leader": lead.is_leader(), "epoch": lead.epoch}
            if lead.epoch is not None:
                wake["stale_write"] = append(lead.epoch)
        leading = lead.tick()
        if leading and fenced_epoch != lead.epoch:
            fenced_epoch = lead.epoch if not lead.fence_queues([queue]) else None
            leading = lead.is_leader()
        result = None
        if leading and lead.epoch is not None:
            result = append(lead.epoch)
        seq += 1
        state = {"pid": pid, "seq": seq, "leader": lead.is_leader(), "epoch": lead.epoch,
                 "last_write": result, "wake": wake}
        conn.client.set(state_key(conn, pid), json.dumps(state), px=30_000)
        time.sleep(interval)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]))
