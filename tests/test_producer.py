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
