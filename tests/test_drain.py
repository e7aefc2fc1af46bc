"""Draining a lane (design.md invariant 2): bounded calls, drained jobs next and in their order,
nothing lost or duplicated while producers keep enqueuing, nothing routed to a closed canary."""

from __future__ import annotations

import json
import threading

import pytest

from pycanary import queue_config
from pycanary.drain import DrainReport, drain_lane
from pycanary.errors import ValidationError
from pycanary.producer import Producer

Q = "payments"


def _lanes(conn, queue: str = Q) -> tuple[str, str]:
    qk = conn.keys.queue(queue)
    return qk.lane_canary, qk.lane_stable


def _push_in_order(conn, key: str, items: list[str]) -> None:
    """Enqueue like a producer: LPUSH one by one, items[0] first (oldest, rightmost)."""
    for i in range(0, len(items), 500):
        conn.client.lpush(key, *items[i : i + 500])  # LPUSH a b c leaves c leftmost


def _take_all(conn, key: str) -> list[str]:
    """Everything in the order workers would take it: from the right end."""
    return list(reversed(conn.client.lrange(key, 0, -1)))


def _rollback(conn, queue: str = Q) -> list:
    qk = conn.keys.queue(queue)
    return conn.scripts.call("rollback_canary", [qk.config, qk.tenant_weights, qk.rolled_back],
                             ["", 1_700_000_000_000])


# -- the script --------------------------------------------------------------------------------
def test_script_moves_newest_to_head_and_keeps_order_across_calls(conn) -> None:
    """The proof of the LEFT -> RIGHT choice, call by call: 7 jobs, 3 per call."""
    canary, stable = _lanes(conn)
    _push_in_order(conn, canary, [f"c{i}" for i in range(7)])  # c0 oldest
    _push_in_order(conn, stable, ["s0", "s1"])
    assert conn.scripts.call("drain_lane", [canary, stable], [3]) == [3, 4]
    # the three newest moved, oldest of them rightmost (taken next); c0..c3 still in canary
    assert _take_all(conn, stable) == ["c4", "c5", "c6", "s0", "s1"]
    assert conn.scripts.call("drain_lane", [canary, stable], [3]) == [3, 1]
    assert _take_all(conn, stable) == ["c1", "c2", "c3", "c4", "c5", "c6", "s0", "s1"]
    assert conn.scripts.call("drain_lane", [canary, stable], [3]) == [1, 0]
    assert conn.scripts.call("drain_lane", [canary, stable], [3]) == [0, 0]
    assert _take_all(conn, stable) == [f"c{i}" for i in range(7)] + ["s0", "s1"]
    assert conn.client.exists(canary) == 0


@pytest.mark.parametrize("bad", ["0", "-1", "1.5", "x", "", "5001"])
def test_script_refuses_bad_max(conn, bad: str) -> None:
    canary, stable = _lanes(conn)
    _push_in_order(conn, canary, ["c0", "c1"])
    assert conn.scripts.call("drain_lane", [canary, stable], [bad]) == -4
    assert conn.client.llen(canary) == 2 and conn.client.llen(stable) == 0


def test_script_refuses_same_list(conn) -> None:
    canary, _ = _lanes(conn)
    _push_in_order(conn, canary, ["c0", "c1"])
    assert conn.scripts.call("drain_lane", [canary, canary], [10]) == -4
    assert _take_all(conn, canary) == ["c0", "c1"]


# -- drain_lane() ------------------------------------------------------------------------------
def test_order_preserved_across_many_batches(conn) -> None:
    """2,500 canary jobs, batch 100: after the drain, taking from the right of stable yields the
    canary jobs oldest first, then the jobs stable already had."""
    canary, stable = _lanes(conn)
    c_jobs = [f"c{i:05d}" for i in range(2_500)]
    s_jobs = [f"s{i:03d}" for i in range(100)]
    _push_in_order(conn, canary, c_jobs)
    _push_in_order(conn, stable, s_jobs)
    seen: list[tuple[int, int]] = []
    report = drain_lane(conn, Q, batch=100, progress=lambda m, r: seen.append((m, r)))
    assert isinstance(report, DrainReport)
    assert (report.moved, report.remaining, report.calls) == (2_500, 0, 25)
    assert report.complete and report.round_trips == 1 + 6  # 1 probing call, then 24 in 4s
    assert report.max_call_ms <= report.max_round_trip_ms
    assert seen[0] == (100, 2_400) and seen[-1] == (2_500, 0)
    assert [m for m, _ in seen] == sorted(m for m, _ in seen)
    assert _take_all(conn, stable) == c_jobs + s_jobs
    assert conn.client.exists(canary) == 0


@pytest.mark.parametrize("batch", [1, 7, 1000])
def test_order_for_batch_sizes_that_do_not_divide(conn, batch: int) -> None:
    canary, stable = _lanes(conn)
    c_jobs = [f"c{i:04d}" for i in range(333)]
    _push_in_order(conn, canary, c_jobs)
    _push_in_order(conn, stable, ["s0"])
    report = drain_lane(conn, Q, batch=batch, calls_per_round_trip=3)
    assert report.moved == 333 and report.calls == -(-333 // batch)
    assert _take_all(conn, stable) == [*c_jobs, "s0"]


def test_one_call_larger_than_the_scripts_push_chunk(conn) -> None:
    """The script pushes in chunks of 1,000 (Lua stack); a 4,321-job call keeps the order."""
    canary, stable = _lanes(conn)
    c_jobs = [f"c{i:04d}" for i in range(4_321)]
    _push_in_order(conn, canary, c_jobs)
    _push_in_order(conn, stable, ["s0"])
    assert conn.scripts.call("drain_lane", [canary, stable], [5_000]) == [4_321, 0]
    assert _take_all(conn, stable) == [*c_jobs, "s0"]


def test_empty_lane(conn) -> None:
    canary, stable = _lanes(conn)
    _push_in_order(conn, stable, ["s0", "s1"])
    calls: list[tuple[int, int]] = []
    report = drain_lane(conn, Q, progress=lambda m, r: calls.append((m, r)))
    assert (report.moved, report.remaining, report.calls, report.round_trips) == (0, 0, 1, 1)
    assert calls == [(0, 0)]
    assert _take_all(conn, stable) == ["s0", "s1"]
    assert conn.client.exists(canary) == 0


def test_promotion_direction_and_reverse(conn) -> None:
    """from_lane/to_lane are free: stable -> canary works the same way."""
    canary, stable = _lanes(conn)
    _push_in_order(conn, stable, ["s0", "s1", "s2"])
    _push_in_order(conn, canary, ["c0"])
    report = drain_lane(conn, Q, from_lane="stable", to_lane="canary", batch=2)
    assert report.moved == 3
    assert _take_all(conn, canary) == ["s0", "s1", "s2", "c0"]


def test_each_call_is_bounded_by_batch(conn) -> None:
    """A single call never moves more than `batch`; the loop stops at max_seconds and says
    what is left (a fake clock that advances 1 s per reading)."""
    canary, stable = _lanes(conn)
    _push_in_order(conn, canary, [f"c{i:03d}" for i in range(500)])
    ticks = iter(range(1_000_000))
    progress: list[tuple[int, int]] = []
    report = drain_lane(conn, Q, batch=50, max_seconds=3, clock=lambda: float(next(ticks)),
                        calls_per_round_trip=2, progress=lambda m, r: progress.append((m, r)))
    # start=0; round trip 1 (1 call) at t=1..2, check at 3 (<3? no: 3-0 >= 3) -> stop
    assert report.calls == 1 and report.moved == 50 and report.remaining == 450
    assert not report.complete
    assert progress == [(50, 450)]
    assert conn.client.llen(stable) == 50 and conn.client.llen(canary) == 450
    # draining again resumes where it stopped, order intact
    again = drain_lane(conn, Q, batch=50, calls_per_round_trip=2)
    assert again.moved == 450 and again.calls == 9 and again.complete
    assert _take_all(conn, stable) == [f"c{i:03d}" for i in range(500)]


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"batch": 0}, "batch"),
    ({"batch": 5_001}, "batch"),
    ({"batch": True}, "batch"),
    ({"from_lane": "stable"}, "to_lane"),
    ({"from_lane": "blue"}, "from_lane"),
    ({"to_lane": "green"}, "to_lane"),
    ({"max_seconds": 0}, "max_seconds"),
    ({"calls_per_round_trip": 0}, "calls_per_round_trip"),
])
def test_bad_arguments_move_nothing(conn, kwargs: dict, field: str) -> None:
    canary, stable = _lanes(conn)
    _push_in_order(conn, canary, ["c0", "c1"])
    with pytest.raises(ValidationError) as err:
        drain_lane(conn, Q, **kwargs)
    assert err.value.field == field
    assert conn.client.llen(canary) == 2 and conn.client.llen(stable) == 0


def test_bad_queue_name(conn) -> None:
    with pytest.raises(ValidationError):
        drain_lane(conn, "bad queue{}")


# -- concurrency -------------------------------------------------------------------------------
def test_drain_while_producer_enqueues_loses_and_duplicates_nothing(conn) -> None:
    """A producer thread keeps enqueuing (routed to stable: the canary is rolled back) while
    the drain runs in small batches. Every id is there exactly once, and the drained jobs still
    come first and in order, since producers push at the other end."""
    queue_config.set_weight(conn, Q, 10_000)
    canary, stable = _lanes(conn)
    producer = Producer(conn)
    drained = [r.job_id for r in producer.enqueue_many(Q, [{"c": i} for i in range(3_000)])]
    _rollback(conn)
    before = [r.job_id for r in producer.enqueue_many(Q, [{"s": i} for i in range(200)])]
    assert conn.client.llen(canary) == 3_000 and conn.client.llen(stable) == 200

    produced: list[str] = []
    lanes: set[str] = set()
    started, stop = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def produce() -> None:
        p = Producer(conn)
        try:
            while not stop.is_set():
                res = p.enqueue_many(Q, [{"p": len(produced)}] * 10, batch_size=5)
                lanes.update(r.lane for r in res)
                produced.extend(r.job_id for r in res)
                started.set()
        except BaseException as exc:  # pragma: no cover - surfaced below
            errors.append(exc)
            started.set()

    t = threading.Thread(target=produce)
    t.start()
    try:
        assert started.wait(10)
        seen = [len(produced)]
        report = drain_lane(conn, Q, batch=25, calls_per_round_trip=2,
                            progress=lambda m, r: seen.append(len(produced)))
    finally:
        stop.set()
        t.join()
    assert not errors
    assert report.moved == 3_000 and report.complete
    assert lanes == {"stable"} and produced
    assert seen[-1] > seen[0], "the producer did not enqueue while the drain ran"
    assert conn.client.llen(canary) == 0

    ids = [json.loads(raw)["id"] for raw in _take_all(conn, stable)]
    assert len(ids) == len(set(ids)), "a job was duplicated"
    assert len(ids) == 3_000 + 200 + len(produced), "a job was lost"
    assert ids == drained + before + produced


def test_after_rollback_and_drain_no_enqueue_lands_in_canary(conn) -> None:
    """Rollback (weight 0, tenant overrides gone) then drain: every later enqueue, single or
    batched, with or without a tenant, lands in stable; the canary lane stays empty."""
    queue_config.set_weight(conn, Q, 10_000)
    queue_config.set_weight(conn, Q, 10_000, tenant="acme")
    producer = Producer(conn)
    assert {r.lane for r in producer.enqueue_many(Q, [{}] * 300)} == {"canary"}
    assert producer.enqueue(Q, {}, tenant="acme").lane == "canary"
    canary, stable = _lanes(conn)
    prev_weight, _version = _rollback(conn)
    assert int(prev_weight) == 10_000

    assert producer.enqueue(Q, {}).lane == "stable"  # the very next enqueue
    report = drain_lane(conn, Q, batch=64)
    assert report.moved == 301 and report.complete
    after = producer.enqueue_many(Q, [{}] * 500)
    after += producer.enqueue_many(Q, [{}] * 50, tenant="acme")
    after += [producer.enqueue(Q, {}, tenant=t) for t in (None, "acme", "other") for _ in range(20)]
    after += [producer.enqueue(Q, {}, sticky_key=f"order-{i}") for i in range(50)]
    assert {r.lane for r in after} == {"stable"}
    assert {r.weight_bp for r in after} == {0}
    assert conn.client.llen(canary) == 0
    assert conn.client.llen(stable) == 301 + 1 + len(after)
    cfg = queue_config.read_config(conn, Q)
    assert cfg.weight_bp == 0 and cfg.tenant_weights_bp == {}


# -- the same two stories on the Streams backend (real Redis: fakeredis cannot run them) -------
def _stream_ids(conn, lane: str) -> list[str]:
    """Job ids in the order the lane's consumer group would deliver them."""
    key = conn.keys.queue(Q).stream(lane)
    return [json.loads(fields["e"])["id"] for _id, fields in conn.client.xrange(key)]


def _subsequence(part: list[str], whole: list[str]) -> bool:
    it = iter(whole)
    return all(x in it for x in part)


def test_streams_drain_while_producer_enqueues_loses_and_duplicates_nothing(real_conn) -> None:
    """As on lists, through the same drain_lane call: every id exactly once; the drained jobs
    in their order and the producer's in theirs. A stream only appends, so drained jobs queue
    behind what stable held, interleaved with what producers add meanwhile."""
    conn = real_conn
    queue_config.configure(conn, Q, backend="streams")
    queue_config.set_weight(conn, Q, 10_000)
    producer = Producer(conn)
    drained = [r.job_id for r in producer.enqueue_many(Q, [{"c": i} for i in range(3_000)])]
    _rollback(conn)
    before = [r.job_id for r in producer.enqueue_many(Q, [{"s": i} for i in range(200)])]
    assert len(_stream_ids(conn, "canary")) == 3_000 and len(_stream_ids(conn, "stable")) == 200

    produced: list[str] = []
    lanes: set[str] = set()
    started, stop = threading.Event(), threading.Event()

    def produce() -> None:
        p = Producer(conn)
        while not stop.is_set():
            res = p.enqueue_many(Q, [{"p": len(produced)}] * 10)
            lanes.update(r.lane for r in res)
            produced.extend(r.job_id for r in res)
            started.set()

    t = threading.Thread(target=produce)
    t.start()
    try:
        assert started.wait(10)
        n0 = len(produced)
        report = drain_lane(conn, Q, batch=25)
        n1 = len(produced)
    finally:
        stop.set()
        t.join()
    assert report.moved == 3_000 and report.complete
    assert lanes == {"stable"} and n1 > n0, "the producer did not enqueue while the drain ran"
    assert _stream_ids(conn, "canary") == []
    ids = _stream_ids(conn, "stable")
    assert len(ids) == len(set(ids)), "a job was duplicated"
    assert set(ids) == set(drained) | set(before) | set(produced), "a job was lost"
    assert ids[:200] == before
    assert _subsequence(drained, ids) and _subsequence(produced, ids)


def test_streams_after_rollback_and_drain_no_enqueue_lands_in_canary(real_conn) -> None:
    conn = real_conn
    queue_config.configure(conn, Q, backend="streams")
    queue_config.set_weight(conn, Q, 10_000)
    queue_config.set_weight(conn, Q, 10_000, tenant="acme")
    producer = Producer(conn)
    assert {r.lane for r in producer.enqueue_many(Q, [{}] * 300)} == {"canary"}
    assert producer.enqueue(Q, {}, tenant="acme").lane == "canary"
    prev_weight, _version = _rollback(conn)
    assert int(prev_weight) == 10_000
    assert producer.enqueue(Q, {}).lane == "stable"  # the very next enqueue
    report = drain_lane(conn, Q, batch=64)
    assert report.moved == 301 and report.complete
    after = producer.enqueue_many(Q, [{}] * 100, tenant="acme")
    after += [producer.enqueue(Q, {}, sticky_key=f"order-{i}") for i in range(50)]
    assert {r.lane for r in after} == {"stable"}
    assert _stream_ids(conn, "canary") == []
    assert len(_stream_ids(conn, "stable")) == 301 + 1 + len(after)
