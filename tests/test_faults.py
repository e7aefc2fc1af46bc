"""Fault suite (issue 8, "No job stranded, ever"): real worker processes under faults, each case
ending with a full accounting of job ids: enqueued = run + dead-lettered + still queued, lost
== 0, duplicate runs counted, and no job left in any processing list once the workers stop.

Cases that stop, restart or starve Redis run on a private redis-server; the others on the
shared one at 6379 under the test's own prefix.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

import pycanary
from pycanary.connection import Connection
from pycanary.job import Envelope
from pycanary.producer import Producer
from tests.conftest import REAL_URL
from tests.redis_servers import free_port

ROOT = Path(__file__).resolve().parents[1]
Q = "payments"


# -- harness -----------------------------------------------------------------------------------
class PersistentRedis:
    """A private redis-server with appendonly yes + appendfsync always that can be stopped,
    killed and restarted on the same port and directory (what a restart in production does)."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        self.binary = shutil.which("redis-server") or "redis-server"
        self.port = free_port()
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir(parents=True)
        self.extra = extra
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.dir),
             "--logfile", str(self.dir / "log"), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 15
        while True:
            try:
                if client.ping():
                    break
            except (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError):
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on {self.port} did not start")
            time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Run:
    """One test's world: a Redis, a prefix, worker processes and a record file of runs."""

    url: str
    conn: Connection
    record: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    def worker(self, *args: str, heartbeat: float = 0.5, concurrency: int = 4,
               env: dict[str, str] | None = None) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "pycanary.cli", "--redis-url", self.url, "--prefix",
               self.conn.keys.prefix, "worker", Q, "--version", "v1", "--handler",
               "tests.handlers:record", "--heartbeat", str(heartbeat), "--concurrency",
               str(concurrency), "--log-level", "warning", *args]
        full_env = {**os.environ, "PYCANARY_REDIS_URL": self.url,
                    "PYCANARY_PREFIX": self.conn.keys.prefix, "PYTHONPATH": str(ROOT),
                    "RECORD_FILE": str(self.record), **(env or {})}
        log = open(self.record.with_suffix(f".w{len(self.procs)}.log"), "w")  # noqa: SIM115
        p = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=log, stderr=log)
        self.procs.append(p)
        return p

    def runs(self) -> list[str]:
        return self.record.read_text().split() if self.record.exists() else []

    def stop_all(self, timeout: float = 30) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def logs(self) -> str:
        return "\n".join(p.read_text()[-20000:] for p in sorted(
            self.record.parent.glob(f"{self.record.stem}.w*.log")))


@dataclass
class Accounting:
    enqueued: int
    ran: int  # distinct ids recorded by the handler
    duplicates: int  # runs beyond the first of an id
    dead: int  # distinct ids dead-lettered
    queued: int  # distinct ids still in a lane or retry set
    held: int  # entries still in a processing list (stranded if no worker runs)
    lost: set[str]
    ok_total: int
    late_total: int
    poison: list[dict]


def account(run: Run, ids: list[str], *, version: str = "v1") -> Accounting:
    c, qk = run.conn.client, run.conn.keys.queue(Q)
    runs = run.runs()
    counts = Counter(runs)
    dead: set[str] = set()
    poison = []
    for raw in c.lrange(qk.dlq, 0, -1):
        rec = json.loads(raw)
        if "job" in rec:
            dead.add(rec["job"]["id"])
        else:
            poison.append(rec)
    queued: set[str] = set()
    for raw in (c.lrange(qk.lane_stable, 0, -1) + c.lrange(qk.lane_canary, 0, -1)
                + c.zrange(qk.delayed_stable, 0, -1) + c.zrange(qk.delayed_canary, 0, -1)):
        queued.add(Envelope.decode(raw).id)
    lists = set(c.hkeys(qk.processing_index)) | set(c.zrange(run.conn.keys.registry, 0, -1))
    held_ids: set[str] = set()
    held = 0
    for wid in lists:
        entries = c.lrange(qk.processing(wid), 0, -1)
        held += len(entries)
        held_ids |= {Envelope.decode(x).id for x in entries}
    tot = c.hgetall(qk.metrics_total(version, "stable"))
    lost = set(ids) - set(counts) - dead - queued - held_ids
    return Accounting(len(ids), len(counts), len(runs) - len(counts), len(dead), len(queued),
                      held, lost, int(tot.get("ok", 0)), int(tot.get("late", 0)), poison)


def wait_for(cond, timeout: float, what: str, run: Run | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{run.logs() if run else ''}")
        time.sleep(0.05)


def enqueue(conn: Connection, n: int) -> list[str]:
    return [r.job_id for r in Producer(conn).enqueue_many(Q, [{"i": i} for i in range(n)])]


def all_ran(run: Run, ids: list[str]) -> bool:
    return set(ids) <= set(run.runs())


def finish(run: Run, ids: list[str], *, faults_in_redis: bool = True) -> Accounting:
    """Stop every worker (SIGTERM, a clean exit) and account; nothing may be lost or held.
    Without faults injected into Redis itself, no worker step may have failed either."""
    run.stop_all()
    if not faults_in_redis:
        assert "step failed" not in run.logs(), run.logs()
    acc = account(run, ids)
    print(f"\n{acc.enqueued} enqueued: {acc.ran} ran, {acc.duplicates} duplicate runs, "
          f"{acc.dead} dead-lettered, {acc.queued} queued, {acc.held} held; ok={acc.ok_total} "
          f"late={acc.late_total}")
    assert acc.lost == set(), f"{len(acc.lost)} jobs lost\n{run.logs()}"
    assert acc.held == 0, f"{acc.held} jobs stranded in processing lists\n{run.logs()}"
    assert acc.ran + acc.dead + acc.queued >= acc.enqueued
    return acc


@pytest.fixture
def shared(tmp_path: Path):
    conn = pycanary.connect(REAL_URL, prefix=f"pycanary-test-faults-{os.urandom(6).hex()}")
    run = Run(REAL_URL, conn, tmp_path / "runs.txt")
    try:
        yield run
    finally:
        run.stop_all(5)
        for key in list(conn.client.scan_iter(match=f"{conn.keys.prefix}:*", count=1000)):
            conn.client.delete(key)
        conn.close()


@pytest.fixture
def private(tmp_path: Path):
    server = PersistentRedis(tmp_path)
    conn = pycanary.connect(server.url, prefix="faults")
    run = Run(server.url, conn, tmp_path / "runs.txt")
    run.server = server  # type: ignore[attr-defined]
    try:
        yield run
    finally:
        run.stop_all(5)
        conn.close()
        server.stop()


# -- cases ---------------------------------------------------------------------------------------
def test_sigkill_mid_batch_other_worker_recovers(shared: Run) -> None:
    run = shared
    ids = enqueue(run.conn, 600)
    victim = run.worker(env={"SLEEP_S": "0.01"})
    wait_for(lambda: len(run.runs()) >= 50, 30, "work to start", run)
    victim.send_signal(signal.SIGKILL)
    victim.wait(5)
    qk = run.conn.keys.queue(Q)
    held = sum(run.conn.client.llen(qk.processing(w))
               for w in run.conn.client.hkeys(qk.processing_index))
    assert held > 0, "the victim should die holding a batch"
    run.worker(env={"SLEEP_S": "0.001"})
    wait_for(lambda: all_ran(run, ids), 60, "every job", run)
    acc = finish(run, ids, faults_in_redis=False)
    assert acc.ran == 600 and acc.dead == 0 and acc.ok_total == 600
    # only jobs running when it died (concurrency 4) or finished but not yet acknowledged
    assert acc.duplicates <= 8


def test_sigstop_past_heartbeat_then_sigcont_counts_acks_once(shared: Run) -> None:
    run = shared
    ids = enqueue(run.conn, 300)
    # it holds 32 jobs, so the other worker cannot reach 290 before the reaper returned them
    stopped = run.worker("--prefetch", "32", env={"SLEEP_S": "0.3"})
    wait_for(lambda: len(run.runs()) >= 8, 30, "work to start", run)
    stopped.send_signal(signal.SIGSTOP)
    time.sleep(2.0)  # past its 1.5 s TTL
    run.worker(env={"SLEEP_S": "0.002"})
    wait_for(lambda: len(set(run.runs())) >= 290, 60, "the other worker to take over", run)
    stopped.send_signal(signal.SIGCONT)
    wait_for(lambda: all_ran(run, ids), 60, "every job", run)
    acc = finish(run, ids, faults_in_redis=False)
    assert acc.ran == 300 and acc.dead == 0
    # the stopped worker's jobs were reaped and re-run; its late acks never count twice
    assert acc.ok_total == 300, acc
    assert acc.late_total >= 1, "the stopped worker's jobs should have been reaped"
    assert acc.duplicates == acc.late_total and acc.duplicates <= 32


def test_handler_sys_exit_and_keyboard_interrupt_fail_only_that_attempt(shared: Run) -> None:
    run = shared
    producer = Producer(run.conn)
    ids = enqueue(run.conn, 100)
    bad = [producer.enqueue(Q, {"exit": 3}).job_id, producer.enqueue(Q, {"exit": None}).job_id,
           producer.enqueue(Q, {"interrupt": True}).job_id]
    ids += enqueue(run.conn, 100)
    w = run.worker("--max-attempts", "2", concurrency=1)
    wait_for(lambda: all_ran(run, ids), 60, "every good job", run)
    qk = run.conn.keys.queue(Q)
    wait_for(lambda: run.conn.client.llen(qk.dlq) == 3, 30, "three dead letters", run)
    assert w.poll() is None, "the worker exited"
    acc = finish(run, ids + bad, faults_in_redis=False)
    assert acc.dead == 3 and acc.ran == 200 and acc.ok_total == 200
    dlq = [json.loads(x) for x in run.conn.client.lrange(qk.dlq, 0, -1)]
    assert sorted(d["error"].split(":")[0] for d in dlq) == [
        "KeyboardInterrupt", "SystemExit", "SystemExit"]
    assert {d["job"]["id"] for d in dlq} == set(bad) and {d["attempts"] for d in dlq} == {2}
    assert w.returncode == 0


POISON: dict[str, bytes] = {
    "deep nesting": ('{"id":"p1","queue":"payments","payload":' + "[" * 990 + "]" * 990
                     + ',"attempts":0,"enqueued_at":1,"schema":1,"v":1}').encode(),
    "1e999 enqueued_at": b'{"id":"p2","queue":"payments","attempts":0,"enqueued_at":1e999}',
    "1e999 attempts": b'{"id":"p3","queue":"payments","attempts":1e999,"enqueued_at":1}',
    "1e999 schema": b'{"id":"p4","queue":"payments","attempts":0,"enqueued_at":1,'
                    b'"schema":1e999}',
    "invalid utf-8": b'{"id":"p5\xff\xfe","queue":"payments","attempts":0,"enqueued_at":1}',
    "not json": b"this is not json",
    "wrong types": b'{"id":7,"queue":["payments"],"attempts":"0","enqueued_at":1}',
    "not an object": b"[1,2,3]",
    "lone surrogate": b'{"id":"p8","queue":"payments","payload":"\\ud800","attempts":0,'
                      b'"enqueued_at":1}',
    "empty": b"",
}


@pytest.mark.parametrize("concurrency", [1, 4])
def test_poison_envelopes_dead_lettered_worker_keeps_serving(shared: Run,
                                                             concurrency: int) -> None:
    run = shared
    qk = run.conn.keys.queue(Q)
    raw_client = redis.Redis.from_url(REAL_URL)  # bytes: what a foreign producer pushes
    ids = enqueue(run.conn, 50)
    for raw in POISON.values():
        raw_client.lpush(qk.lane_stable, raw)
    ids += enqueue(run.conn, 50)
    w = run.worker(concurrency=concurrency)
    wait_for(lambda: all_ran(run, ids), 60, "every good job", run)
    assert w.poll() is None
    # and once idle (BLMOVE path), poison still does not end it
    for raw in POISON.values():
        raw_client.lpush(qk.lane_stable, raw)
    more = enqueue(run.conn, 20)
    wait_for(lambda: all_ran(run, ids + more), 60, "jobs after the idle poison", run)
    acc = finish(run, ids + more, faults_in_redis=False)
    raw_client.close()
    assert acc.ran == 120 and acc.held == 0
    assert len(acc.poison) == 2 * len(POISON)
    back = Counter(bytes.fromhex(p["raw_hex"]) if "raw_hex" in p else p["raw"].encode()
                   for p in acc.poison)
    assert back == Counter({raw: 2 for raw in POISON.values()})
    assert all(p["error"].startswith("undecodable envelope: ") for p in acc.poison)
    assert any("nesting deeper" in p["error"] for p in acc.poison)
    assert any("not UTF-8" in p["error"] for p in acc.poison)
    assert any("non-finite" in p["error"] for p in acc.poison)
    assert w.returncode == 0


def test_wrongtype_metrics_and_dlq_keys_lose_nothing(shared: Run) -> None:
    """Someone sets the totals and the dead-letter list to strings: acks and fails are refused
    before any write, the jobs stay held, and once the keys are repaired every outcome lands."""
    run = shared
    c, qk = run.conn.client, run.conn.keys.queue(Q)
    c.set(qk.metrics_total("v1", "stable"), "oops")
    c.set(qk.dlq, "oops")
    producer = Producer(run.conn)
    c.lpush(qk.lane_stable, "poison: not json")  # cannot be dead-lettered while dlq is bad
    ids = enqueue(run.conn, 200)
    bad = producer.enqueue(Q, {"exit": 1}).job_id
    w = run.worker("--max-attempts", "1")
    wait_for(lambda: len(run.runs()) >= 1, 30, "jobs to run", run)
    time.sleep(1.5)
    ran_while_refused = len(run.runs())
    held = sum(c.llen(qk.processing(x)) for x in c.hkeys(qk.processing_index))
    assert held >= 1, "refused acks must keep the jobs held"
    assert ran_while_refused < 201, "no new work is taken while outcomes cannot be recorded"
    assert w.poll() is None
    c.delete(qk.metrics_total("v1", "stable"), qk.dlq)
    wait_for(lambda: all_ran(run, ids) and c.llen(qk.dlq) == 2, 60, "every outcome", run)
    acc = finish(run, [*ids, bad])
    assert acc.ran == 200 and acc.dead == 1 and acc.ok_total == 200 and acc.duplicates == 0
    assert [p["raw"] for p in acc.poison] == ["poison: not json"]


def test_script_flush_at_random_loses_nothing(shared: Run) -> None:
    run = shared
    ids = enqueue(run.conn, 1500)
    run.worker(env={"SLEEP_S": "0.001"})
    run.worker(env={"SLEEP_S": "0.001"})
    rng = random.Random(8)
    deadline = time.monotonic() + 60
    while not all_ran(run, ids) and time.monotonic() < deadline:
        time.sleep(rng.uniform(0.02, 0.2))
        run.conn.client.script_flush()
    wait_for(lambda: all_ran(run, ids), 30, "every job", run)
    acc = finish(run, ids)
    assert acc.ran == 1500 and acc.duplicates == 0 and acc.ok_total == 1500


def test_redis_down_during_in_flight_jobs_flushes_buffered_acks(private: Run) -> None:
    """Redis stopped for 3 s while slow jobs run, restarted on the same port and dir: the
    outcomes of jobs that finished meanwhile are flushed, nothing is stranded or re-run."""
    run = private
    server: PersistentRedis = run.server  # type: ignore[attr-defined]
    ids = enqueue(run.conn, 300)
    run.worker(heartbeat=3.0, concurrency=8, env={"SLEEP_S": "0.4"})
    run.worker(heartbeat=3.0, concurrency=8, env={"SLEEP_S": "0.4"})
    wait_for(lambda: len(run.runs()) >= 20, 30, "work to start", run)
    server.stop()
    during = len(run.runs())
    time.sleep(3.0)
    finished_while_down = len(run.runs()) - during
    server.start()
    wait_for(lambda: all_ran(run, ids), 90, "every job after the restart", run)
    acc = finish(run, ids)
    assert finished_while_down >= 8, "jobs should finish while Redis is down"
    assert acc.ran == 300 and acc.dead == 0 and acc.duplicates == 0
    assert acc.ok_total + acc.late_total >= 300 and acc.ok_total <= 300


def test_maxmemory_reached_then_raised(private: Run) -> None:
    run = private
    c = run.conn.client
    ids = enqueue(run.conn, 400)
    run.worker(concurrency=4, env={"SLEEP_S": "0.005"})
    wait_for(lambda: len(run.runs()) >= 40, 30, "work to start", run)
    used = int(c.info("memory")["used_memory"])
    c.config_set("maxmemory-policy", "noeviction")
    c.config_set("maxmemory", str(max(1, used // 2)))
    time.sleep(1.5)
    stuck = len(run.runs())
    c.config_set("maxmemory", "0")
    wait_for(lambda: all_ran(run, ids), 60, "every job after memory is back", run)
    acc = finish(run, ids)
    assert stuck < 400 and "OutOfMemoryError" in run.logs()
    assert acc.ran == 400 and acc.dead == 0 and acc.ok_total == 400


def test_mixed_heartbeats_no_duplicate_runs(shared: Run) -> None:
    """A 0.5 s worker beside 2 s ones for several heartbeats: each is judged by its own TTL,
    so no live worker's jobs are reaped (before the fix the 0.5 s worker's reaper, using its
    own 1.5 s TTL, took the 2 s workers' jobs: 64 duplicate runs per 5,000 jobs)."""
    run = shared
    ids = enqueue(run.conn, 2400)
    t0 = time.monotonic()
    run.worker(heartbeat=0.5, concurrency=2, env={"SLEEP_S": "0.01"})
    run.worker(heartbeat=2.0, concurrency=2, env={"SLEEP_S": "0.01"})
    run.worker(heartbeat=2.0, concurrency=2, env={"SLEEP_S": "0.01"})
    wait_for(lambda: all_ran(run, ids), 120, "every job", run)
    elapsed = time.monotonic() - t0
    acc = finish(run, ids, faults_in_redis=False)
    assert elapsed > 4.0, "the run must span several heartbeats to mean anything"
    assert acc.ran == 2400 and acc.duplicates == 0 and acc.ok_total == 2400
    assert acc.late_total == 0


def test_noperm_from_a_tight_acl_then_granted(private: Run) -> None:
    """The worker's user may not touch the metrics keys: every ack is refused (NOPERM) before
    it runs; the worker keeps its jobs and heartbeats, and flushes once the ACL is widened."""
    run = private
    c = run.conn.client
    pats = ["{workers}:*", "{payments}:lane:*", "{payments}:processing*", "{payments}:delayed:*",
            "{payments}:config", "{payments}:rolled_back", "{payments}:former_stable",
            "{payments}:dlq", "{payments}:tenant_weights", "{payments}:running:*"]
    c.acl_setuser("worker", enabled=True, passwords=["+pw"], commands=["+@all"],
                  keys=[f"faults:{p}" for p in pats])
    ids = enqueue(run.conn, 150)
    run.url = run.url.replace("redis://", "redis://worker:pw@")
    w = run.worker(heartbeat=0.5)
    wait_for(lambda: len(run.runs()) >= 1, 30, "jobs to run", run)
    time.sleep(1.5)
    assert len(run.runs()) < 150, "no new work while acks are refused"
    assert w.poll() is None
    assert c.zscore(run.conn.keys.registry, c.zrange(run.conn.keys.registry, 0, 0)[0])
    c.acl_setuser("worker", enabled=True, keys=["*"], commands=["+@all"])
    wait_for(lambda: all_ran(run, ids), 60, "every job once the ACL allows it", run)
    acc = finish(run, ids)
    assert "NoPermissionError" in run.logs()
    assert acc.ran == 150 and acc.duplicates == 0 and acc.ok_total == 150
