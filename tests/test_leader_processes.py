"""Leader election across processes on a real Redis: two contenders (tests/leader_contender.py)
tick every 0.1 s with a 1 s lease and, while leading, write "epoch:pid" as an event of a real
deployment with the real fenced script (deployment_update, through the script registry).

SIGKILL or SIGSTOP of the leader: the other takes over within 2 lease periods (+0.5 s slack for
a loaded machine), measured from the signal. After SIGCONT the stopped one knows by its local
clock that it does not lead, its in-flight write with the old epoch is refused, and the log
never shows the old epoch after the new one's first entry.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pycanary import rollouts, service
from tests.conftest import REAL_URL
from tests.leader_contender import log_entries, state_key
from tests.processes import STARTUP, holder, start_python, wait_until
from tests.test_worker_processes import stop_all

QUEUE = "leadertest"
LEASE = 1.0
INTERVAL = 0.1
TAKEOVER = 2 * LEASE + 0.5


class Contenders:
    def __init__(self, conn, tmp_path: Path) -> None:
        self.conn = conn
        self.procs: list[subprocess.Popen] = []
        self.errs: list[Path] = []
        # the contenders write to a real deployment's event log (no controller runs)
        service.configure_queue(conn, QUEUE, stable_version="v1")
        rollouts.start_canary(conn, QUEUE, "v2", weight="10", actor="test", force=True)
        for i in range(2):
            err = tmp_path / f"contender{i}.err"
            self.errs.append(err)
            self.procs.append(start_python(
                ["-m", "tests.leader_contender", REAL_URL, conn.keys.prefix, QUEUE, str(LEASE),
                 str(INTERVAL)], err, stdout_too=False))

    def diag(self) -> str:
        return "\n".join(f"--- pid {p.pid} rc={p.poll()}\n{e.read_text()[-2000:]}"
                         for p, e in zip(self.procs, self.errs, strict=True))

    def wait_for(self, cond, timeout: float, what: str):
        return wait_until(cond, timeout, what, self.diag)

    def log(self) -> list[tuple[int, int]]:
        return log_entries(self.conn, QUEUE)

    def state(self, pid: int) -> dict | None:
        raw = self.conn.client.get(state_key(self.conn, pid))
        return json.loads(raw) if raw else None

    def started_leader(self) -> tuple[subprocess.Popen, subprocess.Popen, int]:
        """Wait until both loop and one writes; return (leader, other, leader's epoch)."""
        self.wait_for(lambda: all(self.state(p.pid) for p in self.procs), STARTUP,
                      "both contenders to run")
        epoch, pid = self.wait_for(lambda: self.log()[-1:], 5 * LEASE, "a leader to write")[0]
        leader = next(p for p in self.procs if p.pid == pid)
        other = next(p for p in self.procs if p.pid != pid)
        return leader, other, epoch

    def takeover(self, old_epoch: int, new_pid: int, since: float) -> int:
        """Wait for the first entry of a newer epoch; it must come from new_pid in time."""
        first = self.wait_for(lambda: [x for x in self.log() if x[0] > old_epoch][:1],
                              TAKEOVER + 5, "the other contender to take over")[0]
        elapsed = time.monotonic() - since
        assert first[1] == new_pid, (first, self.diag())
        assert elapsed <= TAKEOVER, f"takeover took {elapsed:.2f} s > {TAKEOVER} s"
        return first[0]

    def stop(self) -> None:
        stop_all(self.procs)  # SIGKILL also ends a stopped process


@pytest.fixture
def contenders(real_conn, tmp_path):
    c = Contenders(real_conn, tmp_path)
    try:
        yield c
    finally:
        c.stop()


def assert_fenced_log(log: list[tuple[int, int]]) -> None:
    """Epochs never go back, and each epoch was written by one process only."""
    epochs = [e for e, _ in log]
    assert epochs == sorted(epochs), log
    writers: dict[int, set[int]] = {}
    for e, p in log:
        writers.setdefault(e, set()).add(p)
    assert all(len(pids) == 1 for pids in writers.values()), writers


@pytest.mark.slow
def test_sigkill_of_the_leader_hands_over(contenders: Contenders) -> None:
    leader, other, epoch = contenders.started_leader()
    killed_at = time.monotonic()
    leader.send_signal(signal.SIGKILL)
    new_epoch = contenders.takeover(epoch, other.pid, killed_at)
    assert new_epoch > epoch
    assert_fenced_log(contenders.log())


@pytest.mark.slow
def test_sigstopped_leader_is_fenced_after_takeover(contenders: Contenders) -> None:
    c = contenders
    leader, other, epoch = c.started_leader()
    stopped_at = time.monotonic()
    leader.send_signal(signal.SIGSTOP)
    new_epoch = c.takeover(epoch, other.pid, stopped_at)
    seq_before = c.state(leader.pid)["seq"]

    leader.send_signal(signal.SIGCONT)
    # let the resumed process run several loops, writing whatever it would write
    state = c.wait_for(lambda: (s := c.state(leader.pid)) and s["seq"] >= seq_before + 5 and s,
                       10, "the resumed contender to loop")
    wake = state["wake"]
    assert wake, f"the contender did not see SIGCONT: {state}"
    assert wake["epoch"] == epoch
    assert wake["is_leader"] is False, "a process paused past its lease must know at once"
    assert wake["stale_write"] == -7, "its in-flight write with the old epoch must be refused"
    assert state["leader"] is False and state["epoch"] is None, state
    now = holder(c.conn)
    assert now is not None and (now.epoch, now.pid) == (new_epoch, other.pid), now

    log = c.log()
    first_new = next(i for i, (e, _) in enumerate(log) if e == new_epoch)
    assert all(e != epoch for e, _ in log[first_new:]), log
    assert all(p == other.pid for _, p in log[first_new:]), log
    assert_fenced_log(log)
