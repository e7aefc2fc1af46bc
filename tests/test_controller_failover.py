"""Controller failover on a real Redis with real processes (docs/design.md invariants 4 and 5).

Two `pycanary controller` processes (lease 1 s, poll 0.1 s) drive a real-time ramp of
`payments` (three 4 s stages, checks every second) while a v1 and a v2 worker process run the
jobs a producer thread keeps feeding. Mid-ramp the leader is

* SIGKILLed: the other takes over within two leases and the ramp goes on from the stage it was
  in to completion, every later event written by the new leader;
* SIGSTOPped, then SIGCONTed once the other leads: the woken process must not write anything
  (no event, no fence of its old epoch), and the ramp completes under the new leader.

A kill can land anywhere in a tick; the last test puts it, deterministically, with the
controller's own crash hook, between a check's read and its write: the next leader makes the
step once, and the dead leader's decided write, delivered late, is refused by the fence.

The leader is read from `Keys.leader` ("epoch:token", token "host:pid/nonce"); a controller's
actor id in the event log is its "host:pid".
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import pycanary
from pycanary import deployments, rollouts, service
from pycanary.errors import FencedError
from pycanary.producer import Producer
from tests.conftest import REAL_URL
from tests.processes import STARTUP, Holder, holder, start_controller, wait_until
from tests.test_controller_scenarios import behave, canary_workers_ready
from tests.test_worker_processes import start_worker, stop_all, wait_for

QUEUE = "payments"
LEASE = 1.0
POLL = 0.1
#: Two lease periods, plus slack for interpreter stalls on a loaded two-core machine.
TAKEOVER = 2 * LEASE + 1.0
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

    def start_controllers(self, crash: tuple[str | None, ...] = (None, None)) -> None:
        """Two controllers; ``crash[i]`` the i-th one's PYCANARY_TEST_CRASH_AT point."""
        for i, point in enumerate(crash):
            log = self.tmp / f"controller{i}.log"
            p = start_controller(self.conn, log, lease=LEASE, poll=POLL, crash=point)
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
        return holder(self.conn)

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
        return wait_until(cond, timeout, what, self.diag)


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


#: The mid-check test: no workers, silence passes (on_no_data), so each stage advances on time.
MID_CHECK_STAGE_S = 2
MID_CHECK_PLAN = {"canary_config": {
    "interval": "1s", "on_no_data": "pass",
    "stages": [{"percentage": 10, "duration": f"{MID_CHECK_STAGE_S}s", "auto_promote": True},
               {"percentage": 50, "duration": f"{MID_CHECK_STAGE_S}s", "auto_promote": True}],
}}


def test_leader_killed_mid_check_step_applied_once_by_the_next(real_conn, tmp_path) -> None:
    """The leader dies (SIGKILL, the controller's own PYCANARY_TEST_CRASH_AT=mid_check hook)
    after it read a check's data and decided to advance to stage 1, before its fenced write.
    The next leader takes over, fences the queue and makes that step itself, once; the write
    the dead leader had decided on, were it delivered late, is refused by the fence; the ramp
    ends completed with every stage entered once."""
    conn = real_conn
    service.configure_queue(conn, QUEUE, stable_version="v1")
    logs = [tmp_path / "crasher.log", tmp_path / "heir.log"]
    procs: list[subprocess.Popen] = []

    def diag() -> str:
        out = [f"leader {conn.client.get(conn.keys.leader)!r}, fence "
               f"{conn.client.get(conn.keys.queue(QUEUE).fence)!r}"]
        d = deployments.get(conn, QUEUE)
        if d is not None:
            out.append(f"deployment {d.id} {d.state} stage {d.stage} rev {d.rev}")
            out += [f"  {e['actor']} {e['type']}: {e['message'][:150]}"
                    for e in deployments.events(conn, QUEUE, d.id, count=100)]
        out += [f"--- pid {p.pid} rc={p.poll()}\n{log.read_text()[-2500:]}"
                for p, log in zip(procs, logs, strict=False)]
        return "\n".join(out)

    try:
        crasher = start_controller(conn, logs[0], lease=LEASE, poll=POLL, crash="mid_check")
        procs.append(crasher)
        old = wait_until(lambda: (h := holder(conn)) is not None and h.pid == crasher.pid and h,
                         STARTUP, "the crashing controller to lead", diag)
        heir = start_controller(conn, logs[1], lease=LEASE, poll=POLL)
        procs.append(heir)
        wait_until(lambda: "started" in logs[1].read_text(), STARTUP, "the second controller",
                   diag)
        dep = rollouts.ramp(conn, QUEUE, "v2", MID_CHECK_PLAN, actor="test", force=True)
        # what the leader holds: the deployment as its last committed check left it
        seen = dep
        deadline = time.monotonic() + 2 * MID_CHECK_STAGE_S + 20
        while crasher.poll() is None:  # while it lives, only it writes: stage 0 still
            assert time.monotonic() < deadline, "the leader never reached its step\n" + diag()
            d = deployments.get(conn, QUEUE)
            assert d is not None and d.stage == 0, diag()
            seen = d
            time.sleep(0.05)
        assert crasher.wait() == -signal.SIGKILL, diag()
        assert "test hook: SIGKILL at mid_check" in logs[0].read_text(), diag()

        new = wait_until(lambda: (h := holder(conn)) is not None and h.epoch > old.epoch and h,
                         TAKEOVER + 10, "the heir to take over", diag)
        assert new.pid == heir.pid, diag()
        wait_until(lambda: int(conn.client.get(conn.keys.queue(QUEUE).fence) or 0) == new.epoch,
                   2 * LEASE + 5, "the heir to fence payments", diag)
        # the dead leader's decided step, delivered late with its epoch: refused
        now = int(time.time() * 1000)
        stale = deployments.event("stage", "replayed: the dead leader's step", actor=old.actor,
                                  now=now, data={"stage": 1, "weight_bp": 5000})
        with pytest.raises(FencedError):
            deployments.update(conn, seen, {"stage": 1, "state": "active",
                                            "stage_started_at": now}, now=now, epoch=old.epoch,
                               weight_bp=5000, ev=stale, check_rev=False)

        final = wait_until(lambda: (d := deployments.get(conn, QUEUE)) and not d.active and d,
                           2 * MID_CHECK_STAGE_S + 20, "the heir to finish the ramp", diag)
        evs = deployments.events(conn, QUEUE, dep.id, count=500)
        d = diag()
        assert (final.id, final.state) == (dep.id, "completed"), d
        info = service.queue_info(conn, QUEUE)
        assert (info["stable_version"], info["canary_version"], info["weight_percent"]) == \
            ("v2", None, 0), d
        steps = [e for e in evs if e["type"] == "stage"]
        assert [(e["data"]["stage"], e["actor"]) for e in steps] == [(1, new.actor)], \
            "stage 1 entered once, by the heir\n" + d
        assert not any("replayed" in e["message"] for e in evs), d
        types = [e["type"] for e in evs]
        assert types[0] == "started" and types[-2:] == ["promoted", "completed"], d
        assert types.count("promoted") == types.count("completed") == 1, d
        assert all(e["actor"] == new.actor for e in evs if e["type"] in
                   ("stage", "promoted", "completed")), d
        # the crasher's last words were checks that changed nothing: no step, nothing after
        assert {e["type"] for e in evs if e["actor"] == old.actor} <= {"verdict"}, d
        # stage 1 ran its full length under the heir
        promoted = next(e for e in evs if e["type"] == "promoted")
        assert promoted["ts"] - steps[0]["ts"] >= MID_CHECK_STAGE_S * 1000, d
        assert int(conn.client.get(conn.keys.queue(QUEUE).fence)) == new.epoch
        assert heir.poll() is None, d
    finally:
        stop_all(procs)
