"""Producer: envelopes, ids, validation that names the field, nothing written on refusal."""

from __future__ import annotations

import uuid

import pytest

import pycanary
from pycanary.errors import PayloadTooLargeError, ValidationError
from pycanary.ids import uuid7, uuid7_many
from pycanary.job import Envelope as Job
from pycanary.producer import Producer


def lanes_total(conn, queue: str) -> int:
    qk = conn.keys.queue(queue)
    return conn.client.llen(qk.lane_stable) + conn.client.llen(qk.lane_canary)


def test_envelope_round_trip(conn) -> None:
    producer = Producer(conn, clock_ms=lambda: 1_700_000_000_123)
    res = producer.enqueue("payments", {"amount": 10, "note": "café 漢字"}, tenant="acme",
                           sticky_key="order-42", schema=2)
    raw = conn.client.lindex(conn.keys.queue("payments").lane(res.lane), 0)
    job = Job.decode(raw)
    assert job == Job(id=res.job_id, queue="payments", payload={"amount": 10, "note": "café 漢字"},
                      tenant="acme", sticky_key="order-42", attempts=0,
                      enqueued_at=1_700_000_000_123, schema=2)
    assert Job.decode(job.encode()) == job
    assert uuid.UUID(res.job_id).version == 7


def test_user_job_id_is_kept_and_escaped(conn) -> None:
    producer = Producer(conn)
    res = producer.enqueue("payments", None, job_id='order "7" \\ é')
    raw = conn.client.lindex(conn.keys.queue("payments").lane(res.lane), 0)
    assert Job.decode(raw).id == 'order "7" \\ é'


def test_ids_sort_by_time_and_are_unique() -> None:
    ids = [uuid7(1000), *uuid7_many(1000, 1000), uuid7(999), uuid7(2000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(i).version == 7 for i in ids)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"queue": "pay ments"}, "queue"),
        ({"queue": "pay{ments}"}, "queue"),
        ({"queue": "payments@canary"}, "queue"),
        ({"queue": ""}, "queue"),
        ({"queue": "x" * 129}, "queue"),
        ({"tenant": "a b"}, "tenant"),
        ({"job_id": ""}, "job_id"),
        ({"job_id": "a\nb"}, "job_id"),
        ({"sticky_key": "k" * 1025}, "sticky_key"),
        ({"payload": {1, 2}}, "payload"),
        ({"payload": float("nan")}, "payload"),
        ({"schema": 0}, "schema"),
    ],
)
def test_validation_names_the_field_and_writes_nothing(conn, kwargs: dict, field: str) -> None:
    producer = Producer(conn)
    args = {"queue": "payments", "payload": {}} | kwargs
    queue = args.pop("queue")
    payload = args.pop("payload")
    with pytest.raises(ValidationError) as exc:
        producer.enqueue(queue, payload, **args)
    assert exc.value.field == field
    assert lanes_total(conn, "payments") == 0


def test_payload_size_limit(conn) -> None:
    producer = Producer(conn, max_payload_bytes=1000)
    producer.enqueue("payments", "x" * 800)
    with pytest.raises(PayloadTooLargeError) as exc:
        producer.enqueue("payments", "é" * 500)  # 1000 bytes of payload alone
    assert exc.value.field == "payload"
    with pytest.raises(PayloadTooLargeError) as exc:
        producer.enqueue_many("payments", ["ok", "ok", "x" * 2000])
    assert exc.value.field == "jobs[2].payload"
    assert lanes_total(conn, "payments") == 1  # the batch wrote nothing
    default = Producer(conn)
    assert default.max_payload_bytes == 1024 * 1024
    with pytest.raises(PayloadTooLargeError):
        default.enqueue("payments", "x" * (1024 * 1024))


def test_enqueue_many_validates_everything_first(conn) -> None:
    producer = Producer(conn)
    with pytest.raises(ValidationError) as exc:
        producer.enqueue_many("payments", [{}, {}, {1}])
    assert exc.value.field == "jobs[2].payload"
    with pytest.raises(ValidationError) as exc:
        producer.enqueue_many("payments", [{}, {}], sticky_keys=["a"])
    assert exc.value.field == "sticky_keys"
    assert lanes_total(conn, "payments") == 0


def test_enqueue_many_order_and_counts(conn) -> None:
    producer = Producer(conn)
    res = producer.enqueue_many("payments", [{"i": i} for i in range(1234)], batch_size=100)
    assert len(res) == 1234
    assert [r.job_id for r in res] == sorted(r.job_id for r in res)
    stable = conn.keys.queue("payments").lane_stable
    # workers pop from the right: the first enqueued job is the first out
    assert Job.decode(conn.client.lindex(stable, -1)).payload == {"i": 0}
    assert Job.decode(conn.client.lindex(stable, 0)).payload == {"i": 1233}
    assert pycanary.__version__


def test_sticky_key_groups_jobs(conn) -> None:
    from pycanary import service

    service.set_weight(conn, "payments", "50")
    producer = Producer(conn)
    for key in ("wf-1", "wf-2", "wf-3", "wf-4"):
        lanes = {producer.enqueue("payments", {}, sticky_key=key).lane for _ in range(10)}
        lanes |= {r.lane for r in producer.enqueue_many("payments", [{}] * 10,
                                                        sticky_keys=[key] * 10)}
        assert len(lanes) == 1


def test_connect_urls() -> None:
    with pytest.raises(ValidationError) as exc:
        pycanary.connect("http://127.0.0.1")
    assert exc.value.field == "redis_url"
    with pytest.raises(ValidationError):
        pycanary.connect("memory://", prefix="a{b}")
    a = pycanary.connect("memory://shared-x")
    b = pycanary.connect("memory://shared-x")
    a.client.set("pycanary:k", "1")
    assert b.client.get("pycanary:k") == "1"
    assert pycanary.connect("memory://other-x").client.get("pycanary:k") is None


def test_stale_zero_weight_cache_still_routes_by_the_contract(conn) -> None:
    """At weight 0 the producer stops sending buckets; when the weight rises the script
    computes the bucket itself, so the very next job already follows the new weight."""
    from pycanary import service
    from pycanary.routing import sticky_bucket

    producer = Producer(conn)
    assert producer.enqueue("payments", {}, sticky_key="k").weight_bp == 0
    service.set_weight(conn, "payments", "50")
    keys = [f"order-{i}" for i in range(200)]
    lanes = [producer.enqueue("payments", {}, sticky_key=k).lane for k in keys[:100]]
    service.set_weight(conn, "payments", "0")
    producer.enqueue("payments", {})
    service.set_weight(conn, "payments", "50")
    lanes += [r.lane for r in producer.enqueue_many("payments", [{}] * 100,
                                                    sticky_keys=keys[100:])]
    want = ["canary" if sticky_bucket(k) < 5000 else "stable" for k in keys]
    assert lanes == want


# -- all-or-nothing batches, pycanary's own errors, safe retries ----------------------------
import threading  # noqa: E402
import time  # noqa: E402

import redis  # noqa: E402

from pycanary.errors import (  # noqa: E402
    EnqueueTimeoutError,
    PartialEnqueueError,
    QueueFullError,
    QueueUnavailableError,
)
from tests.redis_servers import RedisProcess, free_port  # noqa: E402


def test_lone_surrogate_deep_in_a_batch_enqueues_nothing(conn) -> None:
    producer = Producer(conn)
    payloads = [{"i": i} for i in range(5000)]
    payloads[4500] = {"note": "bad \ud800 text"}
    with pytest.raises(ValidationError) as exc:
        producer.enqueue_many("payments", payloads)
    assert exc.value.field == "jobs[4500].payload"
    assert lanes_total(conn, "payments") == 0
    assert not conn.client.exists(conn.keys.queue("payments").routed)


def test_max_payload_bytes_setting_is_applied(conn, monkeypatch) -> None:
    from pycanary import service

    monkeypatch.setenv("PYCANARY_MAX_PAYLOAD_BYTES", "200")
    producer = Producer(conn)
    assert producer.max_payload_bytes == 200
    with pytest.raises(PayloadTooLargeError):
        producer.enqueue("payments", "x" * 300)
    with pytest.raises(PayloadTooLargeError):
        service.enqueue(conn, "payments", "x" * 300)
    assert lanes_total(conn, "payments") == 0
    assert Producer(conn, max_payload_bytes=1000).enqueue("payments", "x" * 300)


def test_caller_job_id_is_idempotent_and_keeps_its_first_lane(conn) -> None:
    from pycanary import queue_config

    producer = Producer(conn)
    first = producer.enqueue("payments", {"n": 1}, job_id="order-1")
    assert first.lane == "stable"
    queue_config.set_weight(conn, "payments", 10_000)
    again = Producer(conn).enqueue("payments", {"n": 1}, job_id="order-1")
    assert (again.job_id, again.lane) == ("order-1", "stable")
    assert lanes_total(conn, "payments") == 1
    assert conn.client.hgetall(conn.keys.queue("payments").routed) == {"stable": "1"}
    assert producer.enqueue("payments", {}, job_id="order-2").lane == "canary"
    ttl = conn.client.pttl(conn.keys.queue("payments").idem("order-1"))
    assert 0 < ttl <= 600_000


def test_unreachable_redis_raises_queue_unavailable_quickly() -> None:
    conn = pycanary.connect(f"redis://127.0.0.1:{free_port()}/0", prefix="pycanary-test-x")
    sleeps: list[float] = []
    producer = Producer(conn, retries=2, retry_backoff_s=0.01, sleep=sleeps.append)
    t0 = time.monotonic()
    with pytest.raises(QueueUnavailableError) as exc:
        producer.enqueue("payments", {})
    assert time.monotonic() - t0 < 2
    assert isinstance(exc.value, pycanary.errors.ConnectionFailedError)
    assert sleeps == [0.01, 0.02]
    with pytest.raises(QueueUnavailableError):
        Producer(conn).enqueue_many("payments", [{}] * 10)


@pytest.fixture
def own_redis(tmp_path):
    server = RedisProcess(tmp_path, "--enable-debug-command", "local")
    try:
        yield server
    finally:
        server.stop()


def _block_server(server: RedisProcess, seconds: float) -> threading.Thread:
    t = threading.Thread(target=lambda: redis.Redis(port=server.port).execute_command(
        "DEBUG", "SLEEP", seconds))
    t.start()
    time.sleep(0.05)
    return t


def test_timeout_says_outcome_unknown_and_a_retry_does_not_duplicate(own_redis) -> None:
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    conn = pycanary.connect(url, prefix="pycanary-test-t", socket_timeout=0.2)
    producer = Producer(conn)
    producer.enqueue("payments", {})  # registers the queue, loads the scripts
    qk = conn.keys.queue("payments")
    blocker = _block_server(own_redis, 0.6)
    with pytest.raises(EnqueueTimeoutError) as exc:
        producer.enqueue("payments", {"n": 1}, job_id="pay-7")
    assert exc.value.job_id == "pay-7" and "may or may not" in str(exc.value)
    blocker.join()
    assert conn.client.llen(qk.lane_stable) == 2  # it had landed (exactly once)
    again = Producer(conn).enqueue("payments", {"n": 1}, job_id="pay-7")
    assert again.lane == "stable" and conn.client.llen(qk.lane_stable) == 2
    # with retries the producer settles it itself: one job, its first lane
    blocker = _block_server(own_redis, 0.5)
    res = Producer(conn, retries=5, retry_backoff_s=0.2).enqueue("payments", {"n": 2})
    blocker.join()
    assert res.lane == "stable" and conn.client.llen(qk.lane_stable) == 3
    conn.close()


def test_oom_raises_queue_full_and_lands_nothing(own_redis) -> None:
    conn = pycanary.connect(f"redis://127.0.0.1:{own_redis.port}/0", prefix="pycanary-test-o")
    producer = Producer(conn)
    producer.enqueue("payments", {})
    own_redis.client.config_set("maxmemory", "1")
    try:
        with pytest.raises(QueueFullError):
            producer.enqueue("payments", {})
        with pytest.raises(QueueFullError):
            producer.enqueue_many("payments", [{}] * 300)
    finally:
        own_redis.client.config_set("maxmemory", "0")
    assert lanes_total(conn, "payments") == 1
    conn.close()


class _LoseReply:
    """Wraps the producer's script pipeline: round trip number `lose` runs on the server, then
    its reply is lost (as when the connection drops after sending)."""

    def __init__(self, producer: Producer, lose: int, times: int = 1) -> None:
        self.real = producer.scripts.pipeline
        self.lose, self.times, self.n = lose, times, 0
        producer.scripts.pipeline = self  # type: ignore[method-assign]

    def __call__(self):
        outer = self
        pipe = self.real()
        execute = pipe.execute

        def lossy(raise_on_error: bool = True):
            outer.n += 1
            out = execute(raise_on_error)
            if outer.n >= outer.lose and outer.times > 0:
                outer.times -= 1
                raise redis.exceptions.TimeoutError("Timeout reading from socket")
            return out

        pipe.execute = lossy  # type: ignore[method-assign]
        return pipe


def test_lost_reply_mid_batch_says_which_ids_landed(real_conn) -> None:
    conn = real_conn
    producer = Producer(conn)
    producer.enqueue("payments", {})
    _LoseReply(producer, lose=2)
    with pytest.raises(PartialEnqueueError) as exc:
        producer.enqueue_many("payments", [{"i": i} for i in range(5000)])
    err = exc.value
    # the lost round's batch records were read back: its 2000 jobs are known to have landed
    assert len(err.landed_ids) == 4000 and err.unknown_ids == []
    assert len(err.not_sent_ids) == 1000
    assert len(set(err.landed_ids + err.not_sent_ids)) == 5000
    stable = conn.keys.queue("payments").lane_stable
    on_lane = {Job.decode(x).id for x in conn.client.lrange(stable, 0, -1)}
    assert set(err.landed_ids) <= on_lane
    assert not set(err.not_sent_ids) & on_lane
    assert len(on_lane) == 1 + 4000
    # sending the rest again (same ids) completes the queue without duplicates
    rest = producer.enqueue_many("payments", [{}] * 1000, job_ids=err.not_sent_ids)
    assert len(rest) == 1000 and lanes_total(conn, "payments") == 5001


def test_unknown_outcome_when_records_cannot_be_read(real_conn) -> None:
    conn = real_conn
    producer = Producer(conn)
    producer.enqueue("payments", {})
    _LoseReply(producer, lose=2)

    def down(*_a, **_k):
        raise redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379.")

    producer.client.mget = down  # the read-back of the batch records finds Redis gone
    with pytest.raises(PartialEnqueueError) as exc:
        producer.enqueue_many("payments", [{"i": i} for i in range(5000)])
    del producer.client.mget
    err = exc.value
    assert (len(err.landed_ids), len(err.unknown_ids), len(err.not_sent_ids)) == (2000, 2000,
                                                                                   1000)
    assert isinstance(err.cause, EnqueueTimeoutError)


def test_lost_reply_is_retried_without_duplicates(real_conn) -> None:
    conn = real_conn
    producer = Producer(conn, retries=2, retry_backoff_s=0)
    producer.enqueue("payments", {})
    _LoseReply(producer, lose=2)
    res = producer.enqueue_many("payments", [{"i": i} for i in range(5000)])
    assert len(res) == 5000 and len({r.job_id for r in res}) == 5000
    assert lanes_total(conn, "payments") == 5001
    assert conn.client.hget(conn.keys.queue("payments").routed, "stable") == "5001"


def test_payload_nested_deeper_than_workers_accept_is_refused(conn) -> None:
    """A job every worker would dead-letter as poison is refused at the producer instead."""
    from pycanary.job import MAX_NESTING, Envelope

    deep: object = 1
    for _ in range(MAX_NESTING - 1):
        deep = [deep]
    p = Producer(conn)
    job_id = p.enqueue("payments", deep).job_id  # the deepest payload a worker takes
    raw = conn.client.lindex(conn.keys.queue("payments").lane_stable, 0)
    assert Envelope.decode(raw).id == job_id
    for too_deep in ([deep], [[0] * 3, {"a": [deep]}]):
        with pytest.raises(ValidationError) as err:
            p.enqueue("payments", too_deep)
        assert err.value.field == "payload"
        assert f"nesting deeper than {MAX_NESTING - 1} levels" in err.value.message
    very_deep: object = 1
    for _ in range(990):
        very_deep = [very_deep]
    with pytest.raises(ValidationError) as err:
        p.enqueue_many("payments", [{}, very_deep])
    assert err.value.field == "jobs[1].payload"
    assert conn.client.llen(conn.keys.queue("payments").lane_stable) == 1


# -- max_backlog: QueueFull before any write --------------------------------------------------
def test_max_backlog_refuses_single_and_batch_changing_nothing(real_conn) -> None:
    from pycanary import service
    from pycanary.errors import QueueFullError
    from tests.test_atomicity import _snapshot

    conn = real_conn
    service.configure_queue(conn, "payments", stable_version="v1", max_backlog=5)
    producer = Producer(conn)
    assert len(producer.enqueue_many("payments", [{}] * 4)) == 4
    producer.enqueue("payments", {})  # the 5th fits exactly
    before = _snapshot(conn)
    with pytest.raises(QueueFullError) as exc:
        producer.enqueue("payments", {"n": 6})
    assert str(exc.value) == (
        "route_enqueue: the queue is full (max_backlog): queue payments: the stable lane holds "
        "5 jobs, max_backlog is 5; 1 more refused, nothing enqueued")
    with pytest.raises(QueueFullError) as exc:
        producer.enqueue("payments", {"n": 6}, job_id="order-6")  # with an idempotency record
    assert "holds 5 jobs, max_backlog is 5" in str(exc.value)
    with pytest.raises(QueueFullError) as exc:
        producer.enqueue_many("payments", [{}] * 3)
    assert str(exc.value).startswith("route_enqueue_many: the queue is full (max_backlog): "
                                     "queue payments: the stable lane holds 5 jobs, "
                                     "max_backlog is 5; 3 more refused")
    assert _snapshot(conn) == before  # DUMP of every key unchanged: no record, no count


def test_max_backlog_batch_is_all_or_nothing_and_batches_keep_the_partial_contract(
        real_conn) -> None:
    from pycanary import service
    from pycanary.errors import PartialEnqueueError

    conn = real_conn
    service.configure_queue(conn, "payments", stable_version="v1", max_backlog=10)
    producer = Producer(conn)
    producer.enqueue_many("payments", [{}] * 7)
    ids = [f"job-{i}" for i in range(6)]
    with pytest.raises(PartialEnqueueError) as exc:
        producer.enqueue_many("payments", [{}] * 6, batch_size=2, job_ids=ids)
    # batch 1 (2 jobs) fits 7 -> 9; batch 2 (2 jobs) would make 11: refused whole, and so is
    # batch 3 (2 jobs) -- nothing of a refused batch lands
    assert exc.value.landed_ids == ids[:2]
    assert exc.value.not_sent_ids == ids[2:] and exc.value.unknown_ids == []
    assert exc.value.cause.code == "queue_full"
    assert lanes_total(conn, "payments") == 9
    # a batch that fits (1 job) still lands: the limit is a ceiling, not a latch
    assert len(producer.enqueue_many("payments", [{}])) == 1
    assert lanes_total(conn, "payments") == 10


def test_max_backlog_counts_the_lane_the_job_goes_to(conn) -> None:
    """Per lane: a full canary lane refuses canary jobs while stable ones still land; a job
    already landed (its idempotency record) is answered, not refused."""
    from pycanary import service
    from pycanary.errors import QueueFullError

    service.configure_queue(conn, "payments", stable_version="v1", max_backlog=2)
    service.set_weight(conn, "payments", "100")
    producer = Producer(conn)
    first = producer.enqueue("payments", {}, job_id="c1")
    producer.enqueue("payments", {}, job_id="c2")
    with pytest.raises(QueueFullError, match="the canary lane holds 2 jobs"):
        producer.enqueue("payments", {}, job_id="c3")
    again = producer.enqueue("payments", {}, job_id="c1")  # a retry of a landed job
    assert (again.lane, first.lane) == ("canary", "canary")
    service.set_weight(conn, "payments", "0")
    assert producer.enqueue("payments", {}).lane == "stable"
    qk = conn.keys.queue("payments")
    assert (conn.client.llen(qk.lane_canary), conn.client.llen(qk.lane_stable)) == (2, 1)


def test_drain_is_never_refused_by_max_backlog(real_conn) -> None:
    """A rollback moves every canary job to stable even past the limit: nothing is dropped;
    only producers are pushed back."""
    from pycanary import rollouts, service
    from pycanary.errors import QueueFullError

    conn = real_conn
    service.configure_queue(conn, "payments", stable_version="v1")
    rollouts.start_canary(conn, "payments", "v2", weight="50", force=True, actor="t")
    ids = [r.job_id for r in Producer(conn).enqueue_many("payments", [{}] * 400)]
    qk = conn.keys.queue("payments")
    canary = conn.client.llen(qk.lane_canary)
    assert 100 < canary < 300
    service.configure_queue(conn, "payments", max_backlog=100)
    out = rollouts.rollback(conn, "payments", actor="t")
    assert out["drain_complete"] and out["drained_jobs"] == canary
    assert conn.client.llen(qk.lane_canary) == 0
    held = [Job.decode(raw).id for raw in conn.client.lrange(qk.lane_stable, 0, -1)]
    assert sorted(held) == sorted(ids) and len(held) == 400
    with pytest.raises(QueueFullError, match="the stable lane holds 400 jobs, max_backlog is 100"):
        Producer(conn).enqueue("payments", {})
