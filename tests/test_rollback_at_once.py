"""A rollback stops the bad version at once (issue 11), on a real Redis with real worker
processes: a busy canary worker (one slot, 1 s jobs, dozens queued) is rolled back with
`pycanary rollback`; no job starts on the rolled-back version later than one heartbeat after
the rollback, every job runs (once on canary before, or on stable after), the running job
finishes and is recorded, SIGTERM leaves nothing in the canary lane, `--exit-when-retired`
exits on its own and `--prefetch 1` holds at most one job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from pycanary import metrics, queue_config, registry
from pycanary.keys import STREAM_GROUP
from pycanary.producer import Producer
from tests.conftest import REAL_URL
from tests.test_worker_processes import HEARTBEAT, ROOT, start_worker, stop_all, wait_for

HEARTBEAT_MS = int(HEARTBEAT * 1000)


def cli(conn, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pycanary.cli", "--redis-url", REAL_URL,
                           "--prefix", conn.keys.prefix, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def records(conn, what: str) -> list[tuple[str, str, str, int]]:
    """(job id, version, lane, ms) recorded by tests.handlers:versioned."""
    rows = conn.client.lrange(f"{conn.keys.prefix}:test:{what}", 0, -1)
    return [(i, v, lane, int(ms)) for i, v, lane, ms in (r.split() for r in rows)]


def canary_queue(conn, n: int) -> list[str]:
    queue_config.configure(conn, "payments", stable_version="v1", canary_version="v2")
    queue_config.set_weight(conn, "payments", 10_000)  # every job to the canary lane
    ids = [r.job_id for r in Producer(conn).enqueue_many("payments", [{"n": i}
                                                                      for i in range(n)])]
    qk = conn.keys.queue("payments")
    assert conn.client.llen(qk.lane_canary) + conn.client.xlen(qk.stream_canary) == n
    return ids


def canary_worker(conn, *args: str, slow_s: str = "1") -> subprocess.Popen:
    return start_worker(conn, "payments", "--version", "v2", "--handler",
                        "tests.handlers:versioned", "--concurrency", "1", *args,
                        env={"SLOW_S": slow_s})


@pytest.mark.parametrize("prefetch", [None, 8])
def test_busy_canary_worker_starts_nothing_a_heartbeat_after_the_rollback(
        real_conn, prefetch: int | None) -> None:
    """Prefetch default (the concurrency: it holds only the running job), and 8 (it holds 7
    unstarted jobs while busy, which must come back at once and never start on v2)."""
    conn = real_conn
    qk = conn.keys.queue("payments")
    ids = canary_queue(conn, 40)
    canary = canary_worker(conn, *(["--prefetch", str(prefetch)] if prefetch else []))
    procs = [canary]
    try:
        wait_for(lambda: len(records(conn, "starts")) >= 2 and
                 conn.client.llen(qk.processing(registry.list_workers(
                     conn, ttl_ms=60_000)[0].id)) == (prefetch or 1), 30,
                 "a busy canary worker")
        res = cli(conn, "rollback", "payments", "--yes", "--json")
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        rolled_back_at = int(conn.client.hget(qk.config, "updated_at"))
        assert out["still_running"]["version"] == "v2"
        assert out["still_running"]["running_jobs"] in (0, 1)  # as of its last heartbeat
        # the held jobs came back at once, while the only slot is still busy (what stays in
        # its processing list are jobs it started: the running one, one not yet acknowledged)
        wid = registry.list_workers(conn, ttl_ms=60_000)[0].id

        def unstarted() -> set[str]:
            held = {json.loads(x)["id"] for x in conn.client.lrange(qk.processing(wid), 0, -1)}
            return held - {s[0] for s in records(conn, "starts")}

        wait_for(lambda: not unstarted(),
                 max(0.0, (rolled_back_at + HEARTBEAT_MS) / 1000 - time.time()) + 0.05,
                 "unstarted jobs given back within a heartbeat of the rollback")
        assert conn.client.llen(qk.lane_canary) == 0
        procs.append(start_worker(conn, "payments", "--version", "v1", "--handler",
                                  "tests.handlers:versioned", "--concurrency", "4",
                                  env={"SLOW_S": "0.02"}))
        wait_for(lambda: {r[0] for r in records(conn, "finishes")} == set(ids), 60,
                 "every job to finish")
        time.sleep(2 * HEARTBEAT)  # the retired worker's heartbeat says it runs nothing
        starts, finishes = records(conn, "starts"), records(conn, "finishes")
        on_v2 = [s for s in starts if s[1] == "v2"]
        late = [s for s in on_v2 if s[3] > rolled_back_at + HEARTBEAT_MS]
        assert not late, f"started on v2 more than a heartbeat after the rollback: {late}"
        assert all(s[2] == "canary" for s in on_v2)
        assert all(s[1:3] == ("v1", "stable") and s[3] >= rolled_back_at
                   for s in starts if s[1] != "v2")
        # every job ran exactly once: nobody died, so nothing was delivered twice
        assert Counter(s[0] for s in starts) == Counter(ids)
        assert Counter(f[0] for f in finishes) == Counter(ids)
        # the job running at the rollback finished on v2 and was recorded as done
        last_v2 = max(on_v2, key=lambda s: s[3])
        assert (last_v2[0], "v2") in {(f[0], f[1]) for f in finishes}
        now = registry.now_ms()
        st = metrics.read_window(conn, "payments", "v2", "canary", now - 600_000, now + 1000)
        assert st.ok == len(on_v2) and st.failed == 0
        print(f"\nprefetch {prefetch or 'default'}, 40 jobs: {len(on_v2)} ran on v2 before "
              f"the rollback, "
              f"{len(starts) - len(on_v2)} on v1 after; last v2 start "
              f"{last_v2[3] - rolled_back_at} ms after the rollback")
        # status: nothing runs on v2 any more, and when the last one finished
        res = cli(conn, "status", "payments", "--json")
        [r] = json.loads(res.stdout)[0]["rolled_back_running"]
        v2_done = max(f[3] for f in finishes if f[1] == "v2")
        assert (r["version"], r["running_jobs"], r["workers"]) == ("v2", 0, 1)
        assert abs(r["last_finished_at"] - v2_done) < 1000
        assert "no job running on rolled-back v2; the last one finished" in cli(
            conn, "status", "payments").stdout
        assert canary.poll() is None  # it retires, it does not exit (no --exit-when-retired)
        canary.send_signal(signal.SIGTERM)
        assert canary.wait(15) == 0
        assert conn.client.llen(qk.lane_canary) == 0 and conn.client.llen(qk.lane_stable) == 0
    finally:
        stop_all(procs)


def test_rolled_back_worker_stopped_with_sigterm_leaves_nothing_in_the_canary_lane(
        real_conn) -> None:
    """The runbook's step (stop the rolled-back workers) once left 36 jobs in a lane nobody
    reads: whatever the worker still holds goes to the stable lane."""
    conn = real_conn
    qk = conn.keys.queue("payments")
    ids = canary_queue(conn, 30)
    canary = canary_worker(conn, "--prefetch", "20")
    try:
        wait_for(lambda: len(records(conn, "starts")) >= 1, 30, "a busy canary worker")
        assert cli(conn, "rollback", "payments", "--yes").returncode == 0
        canary.send_signal(signal.SIGTERM)  # at once: the worker may not have seen it yet
        assert canary.wait(15) == 0, canary.stderr.read()
        assert conn.client.llen(qk.lane_canary) == 0
        started = {s[0] for s in records(conn, "starts")}
        assert {f[0] for f in records(conn, "finishes")} == started  # the running job ended
        back = conn.client.lrange(qk.lane_stable, 0, -1)
        assert sorted(json.loads(x)["id"] for x in back) == sorted(set(ids) - started)
    finally:
        stop_all([canary])


def test_exit_when_retired_exits_after_the_rollback(real_conn) -> None:
    conn = real_conn
    qk = conn.keys.queue("payments")
    canary_queue(conn, 10)
    canary = canary_worker(conn, "--exit-when-retired", "--log-level", "info", slow_s="0.5")
    try:
        wait_for(lambda: len(records(conn, "starts")) >= 1, 30, "a busy canary worker")
        assert cli(conn, "rollback", "payments", "--yes").returncode == 0
        assert canary.wait(10) == 0
        err = canary.stderr.read()
        assert "exits: retired on every queue it served (payments: version v2 was rolled " \
               "back)" in err
        assert "retired (payments: version v2 was rolled back)" in err
        assert conn.client.llen(qk.lane_canary) == 0
        assert registry.list_workers(conn, ttl_ms=60_000) == []  # deregistered
        started = {s[0] for s in records(conn, "starts")}
        assert {f[0] for f in records(conn, "finishes")} == started
        assert conn.client.llen(qk.lane_stable) == 10 - len(started)
    finally:
        stop_all([canary])


def test_prefetch_one_holds_at_most_one_job(real_conn) -> None:
    conn = real_conn
    qk = conn.keys.queue("payments")
    canary_queue(conn, 30)
    bad = cli(conn, "worker", "payments", "--version", "v2", "--handler",
              "tests.handlers:versioned", "--concurrency", "2", "--prefetch", "1")
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "--prefetch must be 2-1000" in bad.stderr
    canary = canary_worker(conn, "--prefetch", "1", slow_s="0.05")
    try:
        wait_for(lambda: registry.list_workers(conn, ttl_ms=60_000), 30, "the worker")
        wid = registry.list_workers(conn, ttl_ms=60_000)[0].id
        most = 0
        while len(records(conn, "finishes")) < 30:
            most = max(most, conn.client.llen(qk.processing(wid)))
            time.sleep(0.005)
        assert most == 1  # the running job only: nothing unstarted held
    finally:
        stop_all([canary])


def test_streams_busy_canary_worker_starts_nothing_a_heartbeat_after_the_rollback(
        real_conn) -> None:
    """The same rollback on the Streams backend: the 7 entries a busy canary worker holds
    unstarted are given back (to the stable stream) within a heartbeat, nothing starts on v2
    after it, and every job runs exactly once."""
    conn = real_conn
    qk = conn.keys.queue("payments")
    queue_config.configure(conn, "payments", backend="streams")
    ids = canary_queue(conn, 40)
    canary = canary_worker(conn, "--prefetch", "8")
    procs = [canary]

    def held_ids() -> set[str]:
        """Job ids of the entries pending on the canary worker (its processing list)."""
        wid = registry.list_workers(conn, ttl_ms=60_000)[0].id
        rows = conn.client.xpending_range(qk.stream_canary, STREAM_GROUP, "-", "+", 100,
                                          consumername=wid)
        out = set()
        for r in rows:
            for _id, fields in conn.client.xrange(qk.stream_canary, r["message_id"],
                                                  r["message_id"]):
                out.add(json.loads(fields["e"])["id"])
        return out

    def held() -> int:
        return len(held_ids())

    try:
        wait_for(lambda: len(records(conn, "starts")) >= 2 and held() == 8, 30,
                 "a busy canary worker")
        res = cli(conn, "rollback", "payments", "--yes", "--json")
        assert res.returncode == 0, res.stderr
        rolled_back_at = int(conn.client.hget(qk.config, "updated_at"))
        # what stays pending are jobs it started: the running one, one not yet acknowledged
        wait_for(lambda: not held_ids() - {s[0] for s in records(conn, "starts")},
                 max(0.0, (rolled_back_at + HEARTBEAT_MS) / 1000 - time.time()) + 0.05,
                 "unstarted entries given back within a heartbeat of the rollback")
        procs.append(start_worker(conn, "payments", "--version", "v1", "--handler",
                                  "tests.handlers:versioned", "--concurrency", "4",
                                  env={"SLOW_S": "0.02"}))
        wait_for(lambda: {r[0] for r in records(conn, "finishes")} == set(ids), 60,
                 "every job to finish")
        starts, finishes = records(conn, "starts"), records(conn, "finishes")
        on_v2 = [s for s in starts if s[1] == "v2"]
        late = [s for s in on_v2 if s[3] > rolled_back_at + HEARTBEAT_MS]
        assert not late, f"started on v2 more than a heartbeat after the rollback: {late}"
        assert Counter(s[0] for s in starts) == Counter(ids)
        assert Counter(f[0] for f in finishes) == Counter(ids)
        wait_for(lambda: conn.client.xlen(qk.stream_canary) == 0 and
                 conn.client.xlen(qk.stream_stable) == 0, 10, "both streams empty")
        assert conn.client.llen(qk.lane_canary) == conn.client.llen(qk.lane_stable) == 0
    finally:
        stop_all(procs)
