"""The Streams backend's scripts on real Redis: routing contract, fetch/ack/fail/retry/DLQ,
recovery of dead consumers (XAUTOCLAIM), consumer deletion, returns and the drain."""

from __future__ import annotations

import json
import threading

import pytest

from pycanary import metrics, queue_config
from pycanary.backends import streams
from pycanary.errors import QueueFullError, ValidationError
from pycanary.keys import STREAM_GROUP
from pycanary.producer import Producer
from pycanary.routing import StickyHasher

Q = "payments"


def _xadd(conn, key: str, sticky: str, *, draw: int = 0, env: str | None = None) -> list:
    qk = conn.keys.queue(Q)
    return conn.scripts.call("route_xadd", qk.stream_routing(),
                             streams.route_args([env or f'{{"id":"{sticky}"}}', sticky, "", draw,
                                                 "", ""], None))


def _ack_job(entry_id: str) -> tuple:
    return (entry_id, 3, 2, "", "1", "")


def test_route_xadd_follows_the_routing_contract(real_conn) -> None:
    conn = real_conn
    qk = conn.keys.queue(Q)
    queue_config.configure(conn, Q, backend="streams", stable_version="v1")
    queue_config.set_weight(conn, Q, 3000)
    salt = queue_config.read_config(conn, Q).salt
    hasher = StickyHasher()
    lanes = {"stable": 0, "canary": 0}
    for i in range(300):
        key = f"order-{i}"
        lane, weight, _salt, _n, dup, entry_id = _xadd(conn, Q, key)
        expected = "canary" if hasher.bucket(key, salt) < 3000 else "stable"
        assert (lane, int(weight), int(dup)) == (expected, 3000, 0)
        assert entry_id
        lanes[lane] += 1
    assert conn.client.xlen(qk.stream_canary) == lanes["canary"] > 0
    assert conn.client.xlen(qk.stream_stable) == lanes["stable"] > 0
    assert {k: int(v) for k, v in conn.client.hgetall(qk.routed).items()} == lanes
    assert conn.client.llen(qk.lane_stable) == conn.client.llen(qk.lane_canary) == 0
    # both streams carry the consumer group from their first entry
    for lane in ("stable", "canary"):
        assert [g["name"] for g in conn.client.xinfo_groups(qk.stream(lane))] == [STREAM_GROUP]
    # weight 0 holds for the very next job
    queue_config.set_weight(conn, Q, 0)
    assert _xadd(conn, Q, "order-0")[0] == "stable"


def test_backend_is_chosen_before_first_use(real_conn) -> None:
    conn = real_conn
    qk = conn.keys.queue(Q)
    queue_config.configure(conn, Q, backend="streams")
    queue_config.configure(conn, Q, backend="streams")  # the same one: fine
    _xadd(conn, Q, "k1")
    with pytest.raises(ValidationError) as err:
        queue_config.configure(conn, Q, backend="lists")
    assert err.value.field == "backend"
    assert "holds jobs (0 in lists, 1 in streams, 0 delayed retries)" in str(err.value)
    assert queue_config.read_config(conn, Q).backend == "streams"
    conn.client.delete(qk.stream_stable)
    queue_config.configure(conn, Q, backend="lists")
    assert queue_config.read_config(conn, Q).backend == "lists"


def test_fetch_ack_fail_retry_and_dead_letter(real_conn) -> None:
    conn = real_conn
    qk = conn.keys.queue(Q)
    for i in range(5):
        _xadd(conn, Q, f"j{i}")
    got = streams.fetch(conn, Q, "stable", "v1", "w1", 3)
    assert [e.raw for e in got] == [f'{{"id":"j{i}"}}' for i in range(3)]  # oldest first
    slot = metrics.slot_of(1_700_000_000_000)
    assert streams.ack(conn, Q, "stable", "v1", "w1", slot, 60,
                       [_ack_job(got[0].id)]) == streams.Settled(1, 0)
    # acked = deleted: the stream holds only unfinished jobs
    assert conn.client.xlen(qk.stream_stable) == 4
    # another consumer's ack of w1's entry is late: nothing acked, counted as late
    assert streams.ack(conn, Q, "stable", "v1", "w2", slot, 60,
                       [_ack_job(got[1].id)]) == streams.Settled(0, 1)
    retry = (got[1].id, "retry", '{"id":"j1","attempts":1}', "1000", 3, 2, "", "1", "")
    dead = (got[2].id, "dead", '{"job":"j2"}', "", 3, 2, "", "1", "")
    assert streams.fail(conn, Q, "stable", "v1", "w1", slot, 60,
                        [retry, dead]) == streams.Settled(2, 0)
    assert conn.client.zrange(qk.delayed_stable, 0, -1) == ['{"id":"j1","attempts":1}']
    assert conn.client.lrange(qk.dlq, 0, -1) == ['{"job":"j2"}']
    assert conn.client.xpending(qk.stream_stable, STREAM_GROUP)["pending"] == 0
    fields = metrics.decode(conn.client.hgetall(qk.metrics_total("v1", "stable")))
    c = fields.counts
    assert (c["ok"], c["failed"], c["retried"], c["dead"], c["late"]) == (1, 2, 1, 1, 1)
    assert (c["first_attempts"], c["first_failed"]) == (3, 2)
    # the retry re-enters as a new entry, behind what waits
    assert streams.promote_delayed(conn, Q, now_ms=2000) == (1, 0)
    rest = streams.fetch(conn, Q, "stable", "v1", "w1", 10)
    assert [e.raw for e in rest] == ['{"id":"j3"}', '{"id":"j4"}', '{"id":"j1","attempts":1}']


def test_rolled_back_version_takes_nothing(real_conn) -> None:
    conn = real_conn
    queue_config.set_weight(conn, Q, 10_000)
    _xadd(conn, Q, "k")
    conn.client.sadd(conn.keys.queue(Q).rolled_back, "v2")
    assert streams.fetch(conn, Q, "canary", "v2", "w1", 10) == streams.VERSION_ROLLED_BACK
    assert streams.depth(conn, Q, "canary") == 1
    assert conn.client.xpending(conn.keys.queue(Q).stream_canary, STREAM_GROUP)["pending"] == 0


def test_dead_consumer_entries_are_reclaimed_live_ones_are_not(real_conn) -> None:
    conn = real_conn
    qk = conn.keys.queue(Q)
    for i in range(4):
        _xadd(conn, Q, f"j{i}")
    dead = streams.fetch(conn, Q, "stable", "v1", "dead", 2)
    live = streams.fetch(conn, Q, "stable", "v1", "live", 2)
    # idle clocks: age every pending entry by claiming with an old idle time is not possible,
    # so wait just past the threshold, then the live worker touches its own entries
    threading.Event().wait(0.12)
    assert streams.touch(conn, Q, "stable", "live", [e.id for e in live]) == (2, [])
    conn.client.hset(qk.stream_running("stable"), dead[0].id, "1 |7")  # it had started one
    got = streams.reclaim(conn, Q, "stable", "rescuer", min_idle_ms=100, max_deliveries=5,
                          version="v1")
    assert sorted(e.id for e in got.entries) == sorted(e.id for e in dead)
    assert got.dead == 0 and got.consumers_deleted == 1  # 'dead' holds nothing now
    # the started one is a crashed attempt of v1 (the other was only prefetched)
    assert got.crashed == 1 and conn.client.hlen(qk.stream_running("stable")) == 0
    c = metrics.decode(conn.client.hgetall(qk.metrics_total("v1", "stable")))
    assert (c.counts["crashed"], c.counts["failed"], c.counts["first_attempts"],
            c.counts["first_failed"], c.units) == (1, 1, 1, 1, {"|7": [1, 1]})
    consumers = {c["name"] for c in conn.client.xinfo_consumers(qk.stream_stable, STREAM_GROUP)}
    assert consumers == {"live", "rescuer"}
    # the dead worker's late ack changes nothing; the rescuer's counts
    slot = metrics.slot_of(1_700_000_000_000)
    assert streams.ack(conn, Q, "stable", "v1", "dead", slot, 60,
                       [_ack_job(dead[0].id)]) == streams.Settled(0, 1)
    assert streams.touch(conn, Q, "stable", "dead", [dead[0].id]) == (0, [dead[0].id])
    assert streams.ack(conn, Q, "stable", "v1", "rescuer", slot, 60,
                       [_ack_job(e.id) for e in got.entries]) == streams.Settled(2, 0)


def test_an_entry_whose_workers_keep_dying_is_dead_lettered(real_conn) -> None:
    conn = real_conn
    qk = conn.keys.queue(Q)
    _xadd(conn, Q, "poison")
    streams.fetch(conn, Q, "stable", "v1", "w0", 1)
    for i in range(1, 3):  # deliveries 2 and 3: handed on
        threading.Event().wait(0.06)
        got = streams.reclaim(conn, Q, "stable", f"w{i}", min_idle_ms=50, max_deliveries=3)
        assert len(got.entries) == 1 and got.dead == 0
    threading.Event().wait(0.06)
    got = streams.reclaim(conn, Q, "stable", "w3", min_idle_ms=50, max_deliveries=3)
    assert got.entries == [] and got.dead == 1
    assert streams.depth(conn, Q, "stable") == 0
    [record] = conn.client.lrange(qk.dlq, 0, -1)
    assert '"attempts":4' in record and '"raw":"{\\"id\\":\\"poison\\"}"' in record


def test_give_back_goes_to_stable_when_the_canary_lane_is_closed(real_conn) -> None:
    conn = real_conn
    queue_config.set_weight(conn, Q, 10_000)
    for i in range(3):
        _xadd(conn, Q, f"c{i}")
    held = streams.fetch(conn, Q, "canary", "v2", "w1", 3)
    assert streams.give_back(conn, Q, "canary", "w1", [held[0].id]) == (1, 0, 0)
    queue_config.set_weight(conn, Q, 0)  # closed: no canary version, weight 0
    assert streams.give_back(conn, Q, "canary", "w1", [e.id for e in held]) == (2, 2, 1)
    assert [e.raw for e in streams.fetch(conn, Q, "stable", "v1", "s", 10)] == [
        '{"id":"c1"}', '{"id":"c2"}']
    assert [e.raw for e in streams.fetch(conn, Q, "canary", "v2", "w2", 10)] == ['{"id":"c0"}']


def test_drain_moves_undelivered_and_retired_entries_in_order(real_conn) -> None:
    conn = real_conn
    qk = conn.keys.queue(Q)
    queue_config.set_weight(conn, Q, 10_000)
    for i in range(50):
        _xadd(conn, Q, f"c{i:02d}")
    running = streams.fetch(conn, Q, "canary", "v2", "live", 2)  # c00, c01: keep running
    retired = streams.fetch(conn, Q, "canary", "v2", "gone", 3)  # c02..c04: moved
    queue_config.set_weight(conn, Q, 0)
    _xadd(conn, Q, "s-before")  # stable already holds one job
    rep = streams.drain(conn, Q, retired=["gone"], batch=7)
    assert (rep.moved, rep.in_flight, rep.remaining) == (48, 2, 0)
    assert rep.calls >= 50 // 7
    order = [e.raw for e in streams.fetch(conn, Q, "stable", "v1", "s", 100)]
    assert order == ['{"id":"s-before"}'] + [f'{{"id":"c{i:02d}"}}' for i in range(2, 50)]
    assert [e.id for e in running] == [x[0] for x in conn.client.xrange(qk.stream_canary)]
    assert conn.client.xpending(qk.stream_canary, STREAM_GROUP)["pending"] == 2
    slot = metrics.slot_of(1_700_000_000_000)
    assert streams.ack(conn, Q, "canary", "v2", "gone", slot, 60,
                       [_ack_job(retired[0].id)]) == streams.Settled(0, 1)  # moved: late


def test_drain_while_producers_keep_adding_loses_and_duplicates_nothing(real_conn) -> None:
    conn = real_conn
    queue_config.set_weight(conn, Q, 10_000)
    for i in range(2000):
        _xadd(conn, Q, f"c{i}", env=f'{{"id":"c{i}"}}')
    queue_config.set_weight(conn, Q, 5000)  # still open: producers keep feeding both lanes
    stop = threading.Event()
    added: list[tuple[str, str]] = []

    def produce() -> None:
        i = 0
        while not stop.is_set() or i < 200:
            lane = _xadd(conn, Q, f"p{i}", env=f'{{"id":"p{i}"}}')[0]
            added.append((lane, f'{{"id":"p{i}"}}'))
            i += 1

    t = threading.Thread(target=produce)
    t.start()
    first = streams.drain(conn, Q, batch=100, max_seconds=0.3)
    queue_config.set_weight(conn, Q, 0)
    stop.set()
    t.join()
    last = streams.drain(conn, Q, batch=100)
    assert last.complete and streams.depth(conn, Q, "canary") == 0
    stable = [e.raw for e in streams.fetch(conn, Q, "stable", "v1", "s", 1000)]
    while True:
        more = streams.fetch(conn, Q, "stable", "v1", "s", 1000)
        if not more:
            break
        stable += [e.raw for e in more]
    expected = {f'{{"id":"c{i}"}}' for i in range(2000)} | {raw for _lane, raw in added}
    assert len(stable) == len(set(stable)) == len(expected)  # nothing lost or duplicated
    assert set(stable) == expected
    drained = [r for r in stable if r.startswith('{"id":"c')]
    assert drained == [f'{{"id":"c{i}"}}' for i in range(2000)]  # in order
    assert first.moved + last.moved >= 2000


def test_producer_enqueues_to_streams_on_a_streams_queue(real_conn) -> None:
    conn = real_conn
    qk = conn.keys.queue(Q)
    queue_config.configure(conn, Q, backend="streams", stable_version="v1")
    queue_config.set_weight(conn, Q, 5000)
    producer = Producer(conn)
    one = producer.enqueue(Q, {"n": 1}, job_id="j-1")
    again = producer.enqueue(Q, {"n": 1}, job_id="j-1")  # idempotent: not added twice
    assert again.lane == one.lane
    many = producer.enqueue_many(Q, [{"n": i} for i in range(50)], sticky_keys=[
        f"k{i}" for i in range(50)])
    assert len(many) == 50
    lanes = [r.lane for r in many] + [one.lane]
    assert conn.client.xlen(qk.stream_canary) == lanes.count("canary") > 0
    assert conn.client.xlen(qk.stream_stable) == lanes.count("stable") > 0
    assert conn.client.llen(qk.lane_stable) + conn.client.llen(qk.lane_canary) == 0
    # a lists queue is untouched by any of this
    assert producer.enqueue("other", {}).lane == "stable"
    assert conn.client.llen(conn.keys.queue("other").lane_stable) == 1


def test_the_group_name_is_the_same_in_lua_and_python() -> None:
    from pycanary.scripts import lua_dir

    text = (lua_dir() / "includes" / "streams.lua").read_text()
    assert f"local STREAM_GROUP = '{STREAM_GROUP}'" in text


def test_enqueue_many_batches_are_atomic_and_ordered_per_lane(real_conn) -> None:
    conn = real_conn
    qk = conn.keys.queue(Q)
    queue_config.configure(conn, Q, backend="streams", max_backlog=200)
    queue_config.set_weight(conn, Q, 5000)
    producer = Producer(conn)
    res = producer.enqueue_many(Q, [{"n": i} for i in range(200)], batch_size=50)
    for lane in ("stable", "canary"):
        ids = [json.loads(f["e"])["id"] for _i, f in conn.client.xrange(qk.stream(lane))]
        assert ids == [r.job_id for r in res if r.lane == lane]  # input order per lane
    # a batch that would overfill a lane is refused whole (500 jobs cannot fit in 2 x 200)
    before = conn.client.xlen(qk.stream_stable) + conn.client.xlen(qk.stream_canary)
    with pytest.raises(QueueFullError):
        producer.enqueue_many(Q, [{}] * 300, batch_size=300)
    assert conn.client.xlen(qk.stream_stable) + conn.client.xlen(qk.stream_canary) == before


def test_schema_guard_reads_the_streams(real_conn) -> None:
    from pycanary import rollouts

    conn = real_conn
    queue_config.configure(conn, Q, backend="streams")
    producer = Producer(conn)
    producer.enqueue(Q, {}, schema=1)
    producer.enqueue_many(Q, [{}] * 3, schema=3)
    assert rollouts.schemas_in_queue(conn, Q) == {1, 3}
