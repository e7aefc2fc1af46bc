"""The reaper and the worker scripts' guards (issue 8), on fakeredis and real Redis: each worker
judged by its own advertised TTL, unreadable meta skipped without blocking others, orphan
processing lists found through the processing index, and every worker script refusing a
wrong-type key or a bad argument before its first write."""

from __future__ import annotations

import math
import threading
import time

import pytest
import redis

from pycanary import registry
from pycanary.errors import ValidationError
from pycanary.job import Envelope
from pycanary.producer import Producer
from pycanary.worker import Worker

Q = "payments"


def held_by(conn, wid: str, n: int, *, ttl_ms: int, seen_ago_ms: int, lane: str = "stable",
            register: bool = True) -> list[str]:
    """A worker that fetched n jobs and last heartbeated seen_ago_ms ago."""
    qk = conn.keys.queue(Q)
    fetched, bad = conn.scripts.call("fetch_jobs", qk.fetch_keys(wid, lane),
                                     [n, "v1", wid, lane])
    assert bad == [] and len(fetched) == n
    if register:
        registry.heartbeat(conn, wid, version="v1", queues={Q: lane}, info={"state": "active"},
                           ttl_ms=ttl_ms, now=registry.now_ms() - seen_ago_ms)
    return [Envelope.decode(x).id for x in fetched]


def test_each_worker_is_judged_by_its_own_ttl(conn) -> None:
    Producer(conn).enqueue_many(Q, [{"i": i} for i in range(30)])
    qk = conn.keys.queue(Q)
    held_by(conn, "fast", 5, ttl_ms=1_500, seen_ago_ms=2_000)  # dead: 2 s > its 1.5 s
    held_by(conn, "slow", 5, ttl_ms=6_000, seen_ago_ms=2_000)  # alive: 2 s < its 6 s
    # a reaper whose own TTL is short (a 0.1 s heartbeat) still spares the slow worker
    report = registry.reap(conn, ttl_ms=300, queues=[Q])
    assert (report.workers, report.jobs) == (1, 5)
    assert conn.client.llen(qk.processing("fast")) == 0
    assert conn.client.llen(qk.processing("slow")) == 5
    rows = {w.id: w.state for w in registry.list_workers(conn, ttl_ms=300)}
    assert rows == {"slow": "active"}
    assert conn.client.hkeys(qk.processing_index) == ["slow"]


def test_unreadable_meta_of_one_dead_worker_blocks_no_one(conn) -> None:
    Producer(conn).enqueue_many(Q, [{"i": i} for i in range(30)])
    qk = conn.keys.queue(Q)
    held_by(conn, "bad", 4, ttl_ms=1_000, seen_ago_ms=5_000)
    held_by(conn, "good", 3, ttl_ms=1_000, seen_ago_ms=5_000)
    for garbage in ("{not json", '{"queues": {"payments": "purple"}}'):
        conn.client.hset(conn.keys.worker_meta, "bad", garbage)
        report = registry.reap(conn, queues=[Q])
        if garbage == "{not json":
            # the good one is reaped, the bad one forgotten and its list found as an orphan
            assert report.bad_meta == ["bad"] and report.workers == 2
            assert report.jobs == 7 and report.orphans == 1
    assert conn.client.llen(qk.processing("bad")) == 0
    assert conn.client.llen(qk.processing("good")) == 0
    assert conn.client.llen(qk.lane_stable) == 30
    assert conn.client.zcard(conn.keys.registry) == 0
    assert conn.client.hlen(qk.processing_index) == 0


def test_orphan_list_of_an_unregistered_worker_is_recovered(conn) -> None:
    Producer(conn).enqueue_many(Q, [{"i": i} for i in range(10)])
    qk = conn.keys.queue(Q)
    held = held_by(conn, "ghost", 6, ttl_ms=1_000, seen_ago_ms=0, register=False)
    assert registry.reap(conn).jobs == 0  # without the queue, nothing to look at
    report = registry.reap(conn, queues=[Q])
    assert (report.orphans, report.jobs, report.workers) == (1, 6, 0)
    head = [Envelope.decode(x).id for x in conn.client.lrange(qk.lane_stable, -6, -1)]
    assert list(reversed(head)) == held  # back at the head, oldest first
    assert conn.client.hlen(qk.processing_index) == 0


def test_orphans_started_jobs_are_crashed_attempts_of_the_version_in_the_index(conn) -> None:
    """A worker lost from the registry altogether (issue 10): the processing index names its
    lane and version, so the two jobs it had started count as crashed first attempts of v1 on
    the canary lane, and come back with attempts 1; the four it only fetched, unchanged."""
    from pycanary import metrics

    ids = [r.job_id for r in Producer(conn).enqueue_many(Q, [{"i": i} for i in range(6)])]
    qk = conn.keys.queue(Q)
    conn.client.rename(qk.lane_stable, qk.lane_canary)  # as if routed there
    raws = conn.client.lrange(qk.lane_canary, -6, -1)
    held = held_by(conn, "ghost", 6, ttl_ms=1_000, seen_ago_ms=0, lane="canary",
                   register=False)
    assert sorted(held) == sorted(ids)
    assert conn.client.hget(qk.processing_index, "ghost") == "canary v1"
    started = raws[-2:]  # the two oldest, the ones a worker starts first
    for raw in started:
        env = Envelope.decode(raw)
        conn.client.hset(qk.running("ghost"), raw, f"1 {metrics.unit_of(env.id, None, None)}")
    report = registry.reap(conn, queues=[Q])
    assert (report.orphans, report.jobs, report.crashed) == (1, 6, 2)
    total = metrics.read_totals(conn, Q, "v1", "canary")
    assert {k: total.counts.get(k) for k in ("crashed", "failed", "first_attempts",
                                             "first_failed")} == {
        "crashed": 2, "failed": 2, "first_attempts": 2, "first_failed": 2}
    # the canary lane is closed (no canary version): everything goes back to stable
    back = {Envelope.decode(x).id: Envelope.decode(x).attempts
            for x in conn.client.lrange(qk.lane_stable, 0, -1)}
    assert back == {i: (1 if i in {Envelope.decode(r).id for r in started} else 0)
                    for i in ids}
    assert not conn.client.exists(qk.running("ghost"))
    assert conn.client.hlen(qk.processing_index) == 0


def test_an_index_entry_without_a_version_still_returns_the_list_uncounted(conn) -> None:
    """An entry of the older form (a bare lane) or garbage: the list goes back, to stable when
    the lane is unreadable, and nothing is counted."""
    Producer(conn).enqueue_many(Q, [{"i": i} for i in range(4)])
    qk = conn.keys.queue(Q)
    held_by(conn, "old", 2, ttl_ms=1_000, seen_ago_ms=0, register=False)
    held_by(conn, "junk", 2, ttl_ms=1_000, seen_ago_ms=0, register=False)
    conn.client.hset(qk.processing_index, mapping={"old": "stable", "junk": "purple ??"})
    report = registry.reap(conn, queues=[Q])
    assert (report.orphans, report.jobs, report.crashed) == (2, 4, 0)
    assert conn.client.llen(qk.lane_stable) == 4


def test_live_registered_worker_is_never_an_orphan(conn) -> None:
    Producer(conn).enqueue_many(Q, [{}] * 5)
    held_by(conn, "alive", 5, ttl_ms=60_000, seen_ago_ms=0)
    assert registry.reap(conn, queues=[Q]).jobs == 0
    assert conn.client.llen(conn.keys.queue(Q).processing("alive")) == 5


@pytest.mark.parametrize("heartbeat", [0.05, 0.0, -1.0, 301.0, math.nan, math.inf])
def test_heartbeat_bounds(memory_conn, heartbeat: float) -> None:
    with pytest.raises(ValidationError) as exc:
        Worker(memory_conn, [Q], "v1", print, heartbeat_s=heartbeat)
    assert exc.value.field == "heartbeat"


def test_heartbeat_ttl_validated_in_python_and_in_the_script(conn) -> None:
    for ttl in (0, 299, 900_001):
        with pytest.raises(ValidationError) as exc:
            registry.heartbeat(conn, "w", version="v1", queues={}, info={}, ttl_ms=ttl)
        assert exc.value.field == "heartbeat"
    keys = conn.keys.heartbeat_keys("w")
    for ttl in ("100", "1e999", "x", "-5"):
        assert conn.scripts.call("heartbeat", keys, ["w", registry.now_ms(), ttl, "{}"]) == -4
    assert conn.client.zcard(conn.keys.registry) == 0
    assert Worker(conn, [Q], "v1", print, heartbeat_s=0.1).ttl_ms == 300
    assert Worker(conn, [Q], "v1", print, heartbeat_s=300).ttl_ms == 900_000


def test_late_ack_counts_only_late(conn) -> None:
    qk = conn.keys.queue(Q)
    conn.client.lpush(qk.processing("w"), "held")
    keys = qk.ack_keys("w", "v1", "stable", 1)
    assert conn.scripts.call("ack_jobs", keys, [60, "held", 3, 4, 5, "1", "|7",
                                                  "gone", 3, 4, 5, "1", "|7"]) == [1, 1]
    assert conn.client.hgetall(qk.metrics_total("v1", "stable")) == {
        "ok": "1", "late": "1", "r3": "1", "w4": "1", "c5": "1", "first_attempts": "1",
        "n1||7": "1"}
    fkeys = qk.fail_keys("w", "v1", "stable", 1)
    assert conn.scripts.call("fail_jobs", fkeys, [60, "gone", "dead", "rec", "", 3, 4, 5, "1",
                                                   "|7"]) == [0, 1]
    assert conn.client.llen(qk.dlq) == 0
    assert conn.client.hget(qk.metrics_total("v1", "stable"), "late") == "2"


def _snapshot(conn) -> dict[bytes, bytes | None]:
    raw = redis.Redis.from_url(conn.url) if not conn.is_memory else None
    client = raw or conn.client
    out = {}
    for key in sorted(client.scan_iter(match=f"{conn.keys.prefix}:*")):
        out[key] = client.dump(key) if raw else repr(_value(conn, key))
    if raw:
        raw.close()
    return out


def _value(conn, key: str):
    c = conn.client
    t = c.type(key)
    return t, {"string": c.get, "list": lambda k: c.lrange(k, 0, -1),
               "hash": c.hgetall, "set": c.smembers,
               "zset": lambda k: c.zrange(k, 0, -1, withscores=True)}[t](key)


def _guard_cases(conn) -> list[tuple[str, list[str], list, str]]:
    """(script, KEYS, ARGV, key made a string) for every worker script."""
    qk, k = conn.keys.queue(Q), conn.keys
    slot_keys = qk.fail_keys("w", "v1", "stable", 1)
    ret_keys = [qk.processing("w"), qk.lane_canary, qk.lane_stable, qk.config]
    return [
        ("fetch_jobs", qk.fetch_keys("w", "stable"), [10, "v1", "w", "stable"],
         qk.processing_index),
        ("ack_jobs", qk.ack_keys("w", "v1", "stable", 1), [60, "job-0", 1, 1, "", "1", ""],
         qk.metrics_total("v1", "stable")),
        ("fail_jobs", slot_keys, [60, "job-0", "dead", "record", "", 1, 1, "", "0", ""],
         qk.dlq),
        ("fail_jobs", slot_keys, [60, "job-0", "retry", "next", "5", 1, 1, 2, "1", "a|1"],
         qk.delayed_stable),
        ("return_job", ret_keys, ["job-0"], qk.lane_canary),
        ("bounce_job", ret_keys, ["job-0"], qk.lane_canary),
        ("return_job", ret_keys, ["job-0"], qk.lane_stable),
        ("bounce_job", ret_keys, ["job-0"], qk.config),
        ("requeue_jobs", qk.requeue_keys("w"), ["stable", 10, "w"], qk.processing_index),
        ("requeue_jobs", qk.reap_keys("w", "v1", "stable", 1), ["stable", 10, "w", 60],
         qk.running("w")),
        ("requeue_jobs", qk.reap_keys("w", "v1", "stable", 1), ["stable", 10, "w", 60],
         qk.metrics_slot("v1", "stable", 1)),
        ("ack_jobs", qk.ack_keys("w", "v1", "stable", 1), [60, "job-0", 1, 1, "", "1", ""],
         qk.running("w")),
        ("forget_worker", k.heartbeat_keys("w"), ["w", 10**15, 6000], k.worker_deadlines),
        ("heartbeat", k.heartbeat_keys("w"), ["w", 1, 6000, "{}"], k.worker_meta),
        ("promote_delayed", [qk.delayed_stable, qk.delayed_canary, qk.lane_stable,
                             qk.lane_canary, qk.config], [10**12, 10], qk.lane_stable),
    ]


@pytest.mark.parametrize("case", range(15))
def test_worker_scripts_refuse_wrong_types_before_any_write(conn, case: int) -> None:
    """The fail_jobs bug: with a wrong-type DLQ its LREM ran, its push failed, the job was
    gone. Now every worker script checks all key types first: an error changes nothing."""
    qk = conn.keys.queue(Q)
    name, keys, args, broken = _guard_cases(conn)[case]
    conn.client.lpush(qk.processing("w"), "job-0", "job-1")
    conn.client.lpush(qk.lane_stable, "lane-job")
    conn.client.zadd(qk.delayed_stable, {"due-job": 1})
    registry.heartbeat(conn, "w", version="v1", queues={Q: "stable"}, info={}, ttl_ms=300,
                       now=1)
    conn.client.delete(broken)
    conn.client.set(broken, "oops")
    before = _snapshot(conn)
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        conn.scripts.call(name, keys, args)
    assert _snapshot(conn) == before, name


@pytest.mark.parametrize("name,args", [
    ("fetch_jobs", [0, "v1", "w", "stable"]), ("fetch_jobs", [10, "v1", "w", "blue"]),
    ("fetch_jobs", [10, "", "w", "stable"]), ("fetch_jobs", [1e999, "v1", "w", "stable"]),
    ("ack_jobs", [0, "j", 1, 1, "", "0", ""]), ("ack_jobs", [60, "j", "x", 1, "", "0", ""]),
    ("ack_jobs", [60, "j", 1, 1, "", "0"]), ("ack_jobs", [60, "j", 1, 1]),
    # the job-level fields: first must be 0/1, unit "<stratum>|<cluster>", cpu a bucket
    ("ack_jobs", [60, "j", 1, 1, "", "2", ""]), ("ack_jobs", [60, "j", 1, 1, "", "1", "acme"]),
    ("ack_jobs", [60, "j", 1, 1, "", "1", "a b|3"]), ("ack_jobs", [60, "j", 1, 1, "x", "1", ""]),
    ("ack_jobs", [60, "j", 1, 1, "-1", "1", ""]), ("ack_jobs", [60, "j", 1, 1, "", "1", "|x"]),
    ("fail_jobs", [60, "j", "maybe", "n", "", 1, 1, "", "0", ""]),
    ("fail_jobs", [60, "j", "retry", "n", "", 1, 1, "", "0", ""]),
    ("fail_jobs", [60, "j", "dead", "", "", 1, 1, "", "0", ""]),
    ("fail_jobs", [60, "j", "dead", "rec", "", 1, 1]),
    ("fail_jobs", [60, "j", "dead", "rec", "", 1, 1, "", "yes", ""]),
    ("fail_jobs", [60, "j", "dead", "rec", "", 1, 1, "", "1", "|"]),
    ("fail_jobs", [60, "j", "dead", "rec", "", 1, 1, "1.5", "1", ""]),
    ("requeue_jobs", ["blue", 10, "w"]), ("requeue_jobs", ["stable", 0, "w"]),
    ("reap_jobs", ["stable", 10, "w"]), ("reap_jobs", ["stable", 10, "w", 0]),
    ("reap_jobs", ["stable", 10, "w", "x"]),
    ("promote_delayed", ["soon", 10]), ("promote_delayed", [1, 0]),
])
def test_worker_scripts_refuse_bad_arguments(conn, name: str, args: list) -> None:
    qk = conn.keys.queue(Q)
    keys = {"fetch_jobs": qk.fetch_keys("w", "stable"),
            "ack_jobs": qk.ack_keys("w", "v1", "stable", 1),
            "fail_jobs": qk.fail_keys("w", "v1", "stable", 1),
            "requeue_jobs": qk.requeue_keys("w"),
            "reap_jobs": qk.reap_keys("w", "v1", "stable", 1),
            "promote_delayed": [qk.delayed_stable, qk.delayed_canary, qk.lane_stable,
                                qk.lane_canary, qk.config]}[name]
    conn.client.lpush(qk.processing("w"), "j")
    conn.client.lpush(qk.lane_stable, "lane-job")
    conn.client.zadd(qk.delayed_stable, {"due-job": 1})
    conn.client.hset(qk.running("w"), "j", "1 |3")
    before = _snapshot(conn)
    assert conn.scripts.call(name.replace("reap_", "requeue_"), keys, args) == -4
    assert _snapshot(conn) == before


def test_worker_that_cannot_record_outcomes_exits_without_deregistering(real_conn) -> None:
    """Acks refused to the end (WRONGTYPE totals): on stop the worker gives up after its grace
    period, keeps its registration (never deregisters holding jobs), and the reaper returns
    the jobs once its TTL passes."""
    conn = real_conn
    qk = conn.keys.queue(Q)
    ids = [r.job_id for r in Producer(conn).enqueue_many(Q, [{"i": i} for i in range(5)])]
    conn.client.set(qk.metrics_total("v1", "stable"), "oops")
    ran: list[str] = []
    w = Worker(conn, [Q], "v1", lambda job: ran.append(job.id), heartbeat_s=0.1,
               prefetch=5)  # fetched at once, before the first refused ack
    w.stop_grace_s = 0.5
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while len(ran) < 5:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    w.stop()
    t.join(15)
    assert not t.is_alive()
    assert conn.client.zscore(conn.keys.registry, w.id) is not None  # still registered
    assert conn.client.llen(qk.processing(w.id)) == 5  # still held, nothing lost
    time.sleep(0.4)
    report = registry.reap(conn, queues=[Q])
    assert report.workers == 1 and report.jobs == 5
    back = {Envelope.decode(x).id for x in conn.client.lrange(qk.lane_stable, 0, -1)}
    assert back == set(ids)


def test_a_worker_killed_mid_job_counts_exactly_its_running_jobs_as_crashed(real_conn) -> None:
    """kill -9 of a real worker process holding 3 running jobs and ~20 fetched ones: the
    reaper returns every job and counts exactly the 3 running ones as crashed (failed) first
    attempts of its version and lane, per analysis unit too; they come back with attempts 1,
    the unstarted ones unchanged (issue 10 item 2)."""
    import os
    import signal

    from pycanary import metrics
    from tests.test_worker_processes import start_worker, wait_for

    conn = real_conn
    qk = conn.keys.queue(Q)
    ids = [r.job_id for r in Producer(conn).enqueue_many(Q, [{"i": i} for i in range(40)])]
    proc = start_worker(conn, Q, "--version", "v1", "--handler", "tests.handlers:slow",
                        "--concurrency", "3", "--prefetch", "20",
                        env={"SLOW_S": "120"})
    started = f"{conn.keys.prefix}:test:started"
    try:
        wait_for(lambda: conn.client.llen(started) == 3, 30, "three running jobs")
        wid = next(w for w in conn.client.hkeys(qk.processing_index))
        held = conn.client.llen(qk.processing(wid))
        assert held > 3  # it prefetched more than it runs
        running = set(conn.client.lrange(started, 0, -1))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    report = registry.reap(conn, queues=[Q], now=registry.now_ms() + 600_000)
    assert (report.workers, report.jobs, report.crashed) == (1, held, 3)
    total = metrics.read_totals(conn, Q, "v1", "stable")
    assert {k: total.counts.get(k) for k in ("crashed", "failed", "first_attempts",
                                             "first_failed", "ok")} == {
        "crashed": 3, "failed": 3, "first_attempts": 3, "first_failed": 3, "ok": None}
    want_units: dict[str, list[int]] = {}
    for job_id in running:
        u = metrics.unit_of(job_id, None, None)
        want_units[u] = [want_units.get(u, [0, 0])[0] + 1, want_units.get(u, [0, 0])[1] + 1]
    assert total.units == want_units
    back = [Envelope.decode(x) for x in conn.client.lrange(qk.lane_stable, 0, -1)]
    assert sorted(e.id for e in back) == sorted(ids)  # nothing lost
    assert {e.id for e in back if e.attempts == 1} == running
    assert all(e.attempts == 0 for e in back if e.id not in running)
    assert not conn.client.exists(qk.running(wid))
