"""Controller failover on a real Redis with real processes (docs/design.md invariants 4 and 5).

Two `pycanary controller` processes (lease 1 s, poll 0.1 s) drive a real-time ramp of
`payments` (three 4 s stages, checks every second) while a v1 and a v2 worker process run the
jobs a producer thread keeps feeding. Mid-ramp the leader is

* SIGKILLed: the other takes over within two leases and the ramp goes on from the stage it was
  in to completion, every later event written by the new leader;
* SIGSTOPped, then SIGCONTed once the other leads: the woken process must not write anything
  (no event, no fence of its old epoch), and the ramp completes under the new leader.

A stop can land anywhere in a tick; the last test puts it, deterministically and in-process,
between a leader's read and its writes: a deposed leader's check must leave no trace.

The leader is read from `Keys.leader` ("epoch:token", token "host:pid/nonce"); a controller's
actor id in the event log is its "host:pid".
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import pycanary
from pycanary import deployments, rollouts, service
from pycanary.controller import Controller
from pycanary.errors import FencedError
from pycanary.leader import Leadership
from pycanary.producer import Producer
from tests.conftest import REAL_URL
from tests.test_controller_scenarios import behave, canary_workers_ready
from tests.test_worker_processes import start_worker, stop_all, wait_for

ROOT = Path(__file__).resolve().parents[1]
QUEUE = "payments"
LEASE = 1.0
POLL = 0.1
#: Two lease periods, plus slack for interpreter stalls on a loaded two-core machine.
TAKEOVER = 2 * LEASE + 1.0
STARTUP = 25.0  # interpreter and import start of four processes on a loaded machine
STAGE_S = 4

PLAN = {"canary_config": {
    "interval": "1s",
    "min_samples": 20,
    "failure_threshold": 5,
    # generous: a healthy canary passes every check; this test is about failover, not analysis
    "max_error_rate": 25,
    "max_latency_increase": 400,
    "statistical": {"enabled": False},
    "stages": [
        {"percentage": 20, "duration": f"{STAGE_S}s", "auto_promote": True},
        {"percentage": 50, "duration": f"{STAGE_S}s", "auto_promote": True},
        {"percentage": 80, "duration": f"{STAGE_S}s", "auto_promote": True},
    ],
}}


@dataclass(frozen=True)
class Holder:
    epoch: int
    pid: int
    actor: str  # the controller id, "host:pid", as written in the event log


def parse_holder(value: str | None) -> Holder | None:
    """ "epoch:host:pid/nonce" -> Holder."""
    if not value:
        return None
    epoch, token = value.split(":", 1)
    actor = token.rsplit("/", 1)[0]
    return Holder(int(epoch), int(actor.rsplit(":", 1)[1]), actor)


class Rig:
    """The processes of one test: two workers, two controllers, a producer thread. Everything
    started here is stopped by `stop()` (also a SIGSTOPped controller: SIGKILL ends it)."""

    def __init__(self, conn, tmp_path: Path) -> None:
        self.conn = conn
        self.workers: list[subprocess.Popen] = []
        self.controllers: list[subprocess.Popen] = []
        self.logs: dict[int, Path] = {}
        self._stop = threading.Event()
        self._producer: threading.Thread | None = None
        self.enqueued = 0
        self.producer_error: BaseException | None = None
        self.tmp = tmp_path

    # -- processes -----------------------------------------------------------------------
    def start_workers(self) -> None:
        service.configure_queue(self.conn, QUEUE, stable_version="v1")
        behave(self.conn, "v1", fail=0.01, sleep_ms=5.0)
        behave(self.conn, "v2", fail=0.01, sleep_ms=5.0)
        self.workers = [start_worker(self.conn, QUEUE, "--version", v, "--handler",
                                     "tests.handlers:scenario", "--concurrency", "4")
                        for v in ("v1", "v2")]

    def start_controllers(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for i in range(2):
            log = self.tmp / f"controller{i}.log"
            with log.open("w") as fh:
                p = subprocess.Popen(
                    [sys.executable, "-m", "pycanary.cli", "--redis-url", REAL_URL, "--prefix",
                     self.conn.keys.prefix, "controller", "--lease", str(LEASE), "--poll",
                     str(POLL), "--log-format", "json"],
                    cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
            self.controllers.append(p)
            self.logs[p.pid] = log

    def start_producer(self, per_tick: int = 15, every_s: float = 0.1) -> None:
        """About 150 jobs/s from a thread with its own connection, until stop()."""
        conn = pycanary.connect(REAL_URL, prefix=self.conn.keys.prefix)
        producer = Producer(conn)

        def run() -> None:
            try:
                while not self._stop.is_set():
                    producer.enqueue_many(QUEUE, [{}] * per_tick)
                    self.enqueued += per_tick
                    self._stop.wait(every_s)
            except BaseException as exc:  # surfaced by the test's diagnostics
                self.producer_error = exc
            finally:
                conn.close()

        self._producer = threading.Thread(target=run, name="producer", daemon=True)
        self._producer.start()

    def stop(self) -> None:
        self._stop.set()
        if self._producer is not None:
            self._producer.join(10)
        stop_all(self.controllers)  # SIGKILL: also ends a stopped process
        stop_all(self.workers)

    # -- views -----------------------------------------------------------------------------
    def holder(self) -> Holder | None:
        return parse_holder(self.conn.client.get(self.conn.keys.leader))

    def fence(self) -> int:
        return int(self.conn.client.get(self.conn.keys.queue(QUEUE).fence) or 0)

    def proc(self, pid: int) -> subprocess.Popen:
        return next(p for p in self.controllers if p.pid == pid)

    def other(self, pid: int) -> subprocess.Popen:
        return next(p for p in self.controllers if p.pid != pid)

    def log_lines(self, pid: int) -> list[dict]:
        out = []
        for line in self.logs[pid].read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"message": line})
        return out

    def diag(self, dep_id: str | None = None) -> str:
        parts = [f"enqueued {self.enqueued}, producer error {self.producer_error!r}",
                 f"leader {self.conn.client.get(self.conn.keys.leader)!r}, fence {self.fence()}"]
        dep = deployments.get(self.conn, QUEUE)
        if dep is not None:
            parts.append(f"deployment {dep.id} {dep.state} stage {dep.stage} rev {dep.rev}")
            parts += [f"  {e['id']} {e['actor']} {e['type']}: {e['message'][:160]}"
                      for e in deployments.events(self.conn, QUEUE, dep_id or dep.id, count=60)]
        for p in self.controllers:
            parts.append(f"--- controller pid {p.pid} rc={p.poll()}")
            parts.append(self.logs[p.pid].read_text()[-2500:])
        return "\n".join(parts)

    def wait(self, cond, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while True:
            value = cond()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out ({timeout:.1f} s) waiting for {what}\n"
                                     f"{self.diag()}")
            time.sleep(0.02)


@pytest.fixture
def rig(real_conn, tmp_path) -> Iterator[Rig]:
    r = Rig(real_conn, tmp_path)
    try:
        r.start_workers()
        r.start_controllers()
        yield r
    finally:
        r.stop()


def start_ramp_mid_stage(rig: Rig) -> tuple[deployments.Deployment, Holder]:
    """Both controllers up, one leading; the ramp running on real traffic and in stage 1.
    Returns the deployment and the leader that put it there."""
    conn = rig.conn
    wait_for(lambda: len(service.list_workers(conn)) == 2, STARTUP, "2 workers registered")
    pids = {p.pid for p in rig.controllers}
    rig.wait(lambda: (h := rig.holder()) is not None and h.pid in pids, STARTUP,
             "one of our controllers to lead")
    # both loops must run before we rely on the second one: it logs once it started
    rig.wait(lambda: all("started" in rig.logs[p].read_text() for p in pids), STARTUP,
             "both controllers to start")
    rig.start_producer()
    dep = rollouts.ramp(conn, QUEUE, "v2", PLAN, actor="test", force=True)
    canary_workers_ready(conn)
    rig.wait(lambda: (d := deployments.get(conn, QUEUE)) and d.stage == 1 and d, 3 * STAGE_S + 8,
             "the ramp to reach stage 1")
    leader = rig.holder()
    assert leader is not None and leader.pid in pids, rig.diag()
    return dep, leader


def redis_ms(conn) -> int:
    sec, usec = conn.client.time()
    return sec * 1000 + usec // 1000


def stream_ms(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


def wait_takeover(rig: Rig, old: Holder, since: float) -> Holder:
    new = rig.wait(lambda: (h := rig.holder()) is not None and h.epoch > old.epoch and h,
                   TAKEOVER + 10, "the other controller to take over")
    elapsed = time.monotonic() - since
    assert new.pid == rig.other(old.pid).pid, rig.diag()
    assert elapsed <= TAKEOVER, f"takeover took {elapsed:.2f} s > {TAKEOVER} s\n{rig.diag()}"
    print(f"\ntakeover after {elapsed:.2f} s")
    return new


def wait_completed(rig: Rig) -> deployments.Deployment:
    return rig.wait(lambda: (d := deployments.get(rig.conn, QUEUE)) and not d.active and d,
                    3 * STAGE_S + 10, "the ramp to finish")


def check_ramp_log(rig: Rig, dep_id: str, old: Holder, new: Holder,
                   paused: tuple[int, int] | None = None) -> list[dict]:
    """Completed, v2 stable, each stage entered once and in order, and once the new leader
    wrote its first event, only it wrote (by stream order, which is Redis' order of writes).

    Analysis records (newest first) must be in time order. With ``paused`` = (time of the old
    leader's last committed check, time it was stopped), one exception: the record of that
    committed check may land late (it follows the fenced write; a stop in between delays it).
    A check the old leader ran after that one was refused by the fence and must have left no
    record at all."""
    conn = rig.conn
    final = deployments.get(conn, QUEUE)
    evs = deployments.events(conn, QUEUE, dep_id, count=1000)
    diag = rig.diag(dep_id)
    assert final.state == "completed", diag
    info = service.queue_info(conn, QUEUE)
    assert (info["stable_version"], info["canary_version"], info["weight_percent"]) == \
        ("v2", None, 0), diag
    assert [e["data"]["stage"] for e in evs if e["type"] == "stage"] == [1, 2], \
        "no stage repeated or skipped\n" + diag
    types = [e["type"] for e in evs]
    assert types[0] == "started" and types[-2:] == ["promoted", "completed"], diag
    assert types.count("promoted") == types.count("completed") == 1, diag
    actors = {e["actor"] for e in evs[1:]}
    assert actors <= {old.actor, new.actor}, diag
    first_new = next(i for i, e in enumerate(evs) if e["actor"] == new.actor)
    assert all(e["actor"] == new.actor for e in evs[first_new:]), \
        "an event of the old leader after the new one took over\n" + diag
    stage1 = next(e for e in evs if e["type"] == "stage" and e["data"]["stage"] == 1)
    assert stage1["actor"] == old.actor, "stage 1 was the old leader's doing\n" + diag
    after = evs[first_new:]
    assert {"stage", "promoted", "completed"} <= {e["type"] for e in after}, diag
    # the writers' clocks: a stale write would carry a time older than one before it
    ts = [e["ts"] for e in evs]
    assert ts == sorted(ts), diag
    checks = [a["ts"] for a in deployments.analyses(conn, QUEUE, dep_id, count=50)]
    diag += f"\nanalyses (newest first): {checks}, paused: {paused}"
    if paused is not None:
        committed, stopped = paused
        assert not [t for t in checks if committed < t <= stopped], \
            "a refused check of the old leader was recorded\n" + diag
        newer = [t for t in checks[checks.index(committed) + 1:] if t > committed] \
            if committed in checks else []
        print(f"\nrecord of the old leader's last committed check landed "
              f"{'late (after the takeover)' if newer else 'in order'}")
        checks = [t for t in checks if t != committed]
    assert checks == sorted(checks, reverse=True), "an analysis out of order\n" + diag
    # stage 2 ran its full length under the new leader, from where stage 1 left off
    stage2 = next(e for e in evs if e["type"] == "stage" and e["data"]["stage"] == 2)
    assert stage2["ts"] - stage1["ts"] >= STAGE_S * 1000, diag
    return evs


@pytest.mark.slow
def test_sigkill_of_the_leading_controller_mid_ramp(rig: Rig) -> None:
    dep, old = start_ramp_mid_stage(rig)
    killed_at = time.monotonic()
    rig.proc(old.pid).send_signal(signal.SIGKILL)
    new = wait_takeover(rig, old, killed_at)
    assert new.actor != old.actor
    wait_completed(rig)
    evs = check_ramp_log(rig, dep.id, old, new)
    assert rig.fence() == new.epoch
    assert rig.proc(new.pid).poll() is None, rig.diag()
    print(f"\nSIGKILL: takeover by epoch {new.epoch}; {len(evs)} events, "
          f"{rig.enqueued} jobs enqueued")


@pytest.mark.slow
def test_sigstopped_controller_does_not_write_after_takeover(rig: Rig) -> None:
    conn = rig.conn
    dep, old = start_ramp_mid_stage(rig)
    stopped = rig.proc(old.pid)
    stopped_at = time.monotonic()
    stopped_ms = int(time.time() * 1000)  # the controllers' clock (same host)
    stopped.send_signal(signal.SIGSTOP)
    time.sleep(0.1)  # a write already sent still lands
    committed = deployments.get(conn, QUEUE).last_check_at  # its last committed check
    new = wait_takeover(rig, old, stopped_at)
    # the new leader raises the fence of every active queue right after acquiring
    rig.wait(lambda: rig.fence() == new.epoch, 2 * LEASE, "the new leader to fence payments")
    takeover_ms = redis_ms(conn)
    log_before = len(rig.log_lines(old.pid))
    stopped.send_signal(signal.SIGCONT)
    # it wakes, finds the lease is not its own and stays a follower
    rig.wait(lambda: any("lost controller leadership" in x.get("message", "") or
                         "fenced" in x.get("message", "")
                         for x in rig.log_lines(old.pid)[log_before:]),
             5 * LEASE, "the resumed controller to notice it lost the lease")
    wait_completed(rig)
    # a little longer: a stale writer would have had time to try
    time.sleep(3 * POLL + 0.5)
    evs = check_ramp_log(rig, dep.id, old, new, paused=(committed, stopped_ms))
    diag = rig.diag(dep.id)
    late = [e for e in evs if e["actor"] == old.actor and stream_ms(e["id"]) >= takeover_ms]
    assert not late, f"the resumed controller wrote events {late}\n{diag}"
    assert rig.fence() == new.epoch, "fence moved: someone else wrote with another epoch"
    assert rig.holder() == new, "the resumed controller took the lease back"
    assert int(conn.client.get(conn.keys.leader_epoch)) == new.epoch, \
        "the resumed controller acquired a new leadership"
    assert stopped.poll() is None, "the resumed controller died\n" + diag
    resumed = rig.log_lines(old.pid)[log_before:]
    assert not any(x.get("message", "").startswith("leading as epoch") for x in resumed), diag
    print(f"\nSIGSTOP: epoch {old.epoch} paused, epoch {new.epoch} took over; "
          f"{len(evs)} events, {rig.enqueued} jobs enqueued")


def test_deposed_leader_mid_check_leaves_no_trace(real_conn) -> None:
    """The old leader read the deployment and ran its check, then paused; a new leader took
    over. On waking, its writes are refused (fenced) and nothing of its check lands: no event,
    no analysis record, no change of the deployment or the routing weight."""
    conn = real_conn
    service.configure_queue(conn, QUEUE, stable_version="v1")
    plan = {"canary_config": {"interval": "1s",
                              "stages": [{"percentage": 10, "duration": "60s"}]}}
    dep = rollouts.ramp(conn, QUEUE, "v2", plan, actor="test", force=True)
    now = [time.time()]
    old = Controller(conn, clock=lambda: now[0],
                     leadership=Leadership(conn, lease_s=0.3, controller_id="old"))
    assert old.tick().actions == [f"{QUEUE}: baseline taken"]
    now[0] += 2
    assert old.tick().actions, "a first check"
    seen = deployments.get(conn, QUEUE)  # what the old leader holds when it pauses

    def trace() -> tuple:
        d = deployments.get(conn, QUEUE)
        return (d.rev, d.weight_bp, d.last_check_at,
                len(deployments.events(conn, QUEUE, dep.id, count=100)),
                conn.client.lrange(conn.keys.queue(QUEUE).analyses(dep.id), 0, -1))

    before = trace()
    time.sleep(0.45)  # its lease lapses
    new = Controller(conn, clock=lambda: now[0],
                     leadership=Leadership(conn, lease_s=0.3, controller_id="new"))
    assert new.tick().leader and new.epoch > old.epoch
    assert int(conn.client.get(conn.keys.queue(QUEUE).fence)) == new.epoch
    now[0] += 2  # a check is due
    with pytest.raises(FencedError):
        old.process(seen, {})  # wakes mid-tick, past its leadership check
    assert trace() == before, "the deposed leader's check left a trace"
