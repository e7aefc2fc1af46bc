"""BoundScript (pycanary/scripts.py): route_enqueue with its KEYS fixed, sent on a pooled
connection without redis-py's execute_command (issue 15). It must answer exactly as
Scripts.call does, on real Redis and on fakeredis, and keep redis-py's connection behaviour:
NOSCRIPT reloads, a guard's refusal is mapped, a connection the server closed is replaced."""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

import pytest

import pycanary
from pycanary.errors import ValidationError, WrongTypeError
from pycanary.producer import Producer
from pycanary.scripts import BoundScript
from tests.redis_servers import RedisProcess

ENV = '{"id":"j"}'


def _args(i: int) -> tuple:
    return (ENV, f"key-{i}", "", i % 10_000, "", "")


def test_bound_answers_as_scripts_call(conn) -> None:
    """Same replies for the same calls (fixed seed), on both backends; the direct path only
    on a plain redis.Redis client."""
    qk = conn.keys.queue("payments")
    conn.client.hset(qk.config, mapping={"weight_bp": "3000", "sticky": "1", "salt": "s1"})
    bound = conn.scripts.bound("route_enqueue", qk.routing())
    assert isinstance(bound, BoundScript)
    assert (bound._pool is not None) == (not conn.is_memory)
    rng = random.Random(7)
    for _ in range(200):
        args = (ENV, f"key-{rng.randrange(10**6)}", "", rng.randrange(10_000), "", "")
        via_bound = bound(*args)
        via_call = conn.scripts.call("route_enqueue", qk.routing(), args)
        assert via_bound == via_call
    assert conn.client.llen(qk.lane_stable) + conn.client.llen(qk.lane_canary) == 400
    routed = conn.client.hgetall(qk.routed)
    assert sum(int(v) for v in routed.values()) == 400


def test_bound_packs_what_redis_py_packs(real_conn) -> None:
    qk = real_conn.keys.queue("payments")
    bound = real_conn.scripts.bound("route_enqueue", qk.routing())
    pool = real_conn.client.connection_pool
    c = pool.get_connection()
    try:
        for args in (_args(3), ("é ü", "k", "acme", 0, 9999, "salt"), (ENV, "", "", 1, 2, "")):
            assert bound._pack(args) == b"".join(c.pack_command(*bound._head, *args))
    finally:
        pool.release(c)


def test_bound_maps_guard_refusals(conn) -> None:
    qk = conn.keys.queue("payments")
    bound = conn.scripts.bound("route_enqueue", qk.routing())
    with pytest.raises(ValidationError, match=r"draw must be 0\.\.9999"):
        bound(ENV, "k", "", 10_000, "", "")
    conn.client.set(qk.config, "not a hash")
    with pytest.raises(WrongTypeError, match=re.escape(qk.config)):
        bound(*_args(1))
    assert conn.client.llen(qk.lane_stable) == 0


@pytest.fixture
def private(tmp_path: Path):
    server = RedisProcess(tmp_path)
    try:
        yield server
    finally:
        server.stop()


def test_bound_reloads_after_script_flush(private) -> None:
    conn = pycanary.connect(f"redis://127.0.0.1:{private.port}/0", prefix="bt")
    try:
        producer = Producer(conn, rng=random.Random(1))
        assert producer.enqueue("payments", {"n": 1}).lane == "stable"
        private.client.script_flush()
        assert producer.enqueue("payments", {"n": 2}).lane == "stable"
        assert conn.client.llen(conn.keys.queue("payments").lane_stable) == 2
        producer.close()
    finally:
        conn.close()


def test_a_connection_the_server_closed_is_replaced(private) -> None:
    """The server drops every client (restart, `timeout`): the next enqueue still lands, as
    through redis-py's execute_command (its pool checks a connection before handing it out)."""
    conn = pycanary.connect(f"redis://127.0.0.1:{private.port}/0", prefix="bt")
    try:
        producer = Producer(conn, rng=random.Random(2))
        producer.enqueue("payments", {"n": 1})
        killed = private.client.client_kill_filter(_type="normal", skipme=True)
        assert killed >= 1
        for n in range(3):
            producer.enqueue("payments", {"n": n})
        assert conn.client.llen(conn.keys.queue("payments").lane_stable) == 4
        producer.close()
    finally:
        conn.close()


def test_threads_share_a_producer(real_conn) -> None:
    """Eight threads on one Producer: one uses the kept connection at a time, the others
    borrow from the pool; every job lands once, every reply is the caller's own."""
    import threading

    producer = Producer(real_conn, rng=random.Random(3))
    results: list[list] = [[] for _ in range(8)]

    def run(n: int) -> None:
        for i in range(150):
            results[n].append(producer.enqueue("payments", {"t": n, "i": i}))

    threads = [threading.Thread(target=run, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [r.job_id for rs in results for r in rs]
    assert len(ids) == len(set(ids)) == 1200
    qk = real_conn.keys.queue("payments")
    assert real_conn.client.llen(qk.lane_stable) == 1200
    producer.close()


def test_a_forked_child_takes_its_own_connection(real_conn) -> None:
    """A child forked after the parent enqueued must not talk on the parent's socket."""
    import os

    producer = Producer(real_conn, rng=random.Random(4))
    producer.enqueue("payments", {"who": "parent"})
    bound = producer._routes["payments"]
    parent_conn = bound._conn
    assert parent_conn is not None
    pid = os.fork()
    if pid == 0:  # the child: enqueue, exit without running the parent's clean-up
        code = 1
        try:
            producer.enqueue("payments", {"who": "child"})
            code = 0 if bound._conn is not parent_conn else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    producer.enqueue("payments", {"who": "parent again"})
    qk = real_conn.keys.queue("payments")
    assert real_conn.client.llen(qk.lane_stable) == 3
    producer.close()


def test_close_releases_the_kept_connection(private) -> None:
    conn = pycanary.connect(f"redis://127.0.0.1:{private.port}/0", prefix="bt")
    try:
        def producer_clients() -> int:  # every client but the test's own and conn's idle one
            return sum(1 for c in private.client.client_list() if c["cmd"] == "evalsha")

        producer = Producer(conn, rng=random.Random(5))
        producer.enqueue("payments", {"n": 1})
        assert producer_clients() == 1
        producer.close()
        deadline = time.monotonic() + 5
        while producer_clients() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert producer_clients() == 0
    finally:
        conn.close()
