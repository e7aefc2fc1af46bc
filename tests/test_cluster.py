"""pycanary on a real three-node Redis Cluster started for this module (loopback, own ports)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.crc import key_slot

import pycanary
from pycanary import queue_config, service
from pycanary.producer import Producer
from tests.redis_servers import RedisCluster3

QUEUES = ["payments", "emails", "images", "reports", "search", "billing"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster3]:
    c = RedisCluster3(Path(tmp_path_factory.mktemp("cluster")))
    yield c
    c.stop()


def test_routing_on_cluster(cluster: RedisCluster3) -> None:
    conn = pycanary.connect(cluster.url)
    assert conn.is_cluster
    slots = {key_slot(q.encode()) for q in QUEUES}
    nodes = {conn.client.get_node_from_key(f"{{{q}}}").port for q in QUEUES}
    assert len(slots) == len(QUEUES) and len(nodes) > 1, "queues should spread over nodes"
    producer = Producer(conn)
    for q in QUEUES:
        queue_config.configure(conn, q, max_weight_bp=5000, salt="s")
        queue_config.set_weight(conn, q, 5000)
        lanes = [producer.enqueue(q, {"i": i}).lane for i in range(50)]
        lanes += [r.lane for r in producer.enqueue_many(q, [{}] * 450)]
        info = service.queue_info(conn, q)
        assert info["depth"]["stable"] + info["depth"]["canary"] == 500
        assert info["routed"]["canary"] == lanes.count("canary")
        assert 150 < lanes.count("canary") < 350
        with pytest.raises(pycanary.ValidationError):
            queue_config.set_weight(conn, q, 6000)
    assert sorted(queue_config.list_queues(conn)) == sorted(QUEUES)


def test_noscript_reload_on_cluster(cluster: RedisCluster3) -> None:
    conn = pycanary.connect(cluster.url)
    producer = Producer(conn)
    producer.enqueue("payments", {})
    for node in cluster.nodes:
        node.client.script_flush()
    producer.enqueue("payments", {})
    for node in cluster.nodes:
        node.client.script_flush()
    assert len(producer.enqueue_many("emails", [{}] * 300)) == 300


def test_streams_backend_on_cluster(cluster: RedisCluster3) -> None:
    """The Streams backend over queues spread on three nodes: route_xadd, a StreamWorker per
    queue set, rollback drain (drain_stream) and every job processed once."""
    import threading
    import time

    from pycanary import rollouts
    from pycanary.backends import streams
    from pycanary.backends.stream_worker import StreamWorker

    conn = pycanary.connect(cluster.url, prefix="streams-cluster")
    queues = ["s-payments", "s-emails", "s-images"]
    assert len({conn.client.get_node_from_key(f"{{{q}}}").port for q in queues}) > 1
    producer = Producer(conn)
    seen: list[str] = []
    lock = threading.Lock()

    def handler(job) -> None:
        with lock:
            seen.append(job.id)

    ids: list[str] = []
    for q in queues:
        service.configure_queue(conn, q, backend="streams", stable_version="v1",
                                canary_version="v2")
        queue_config.set_weight(conn, q, 5000)
        ids += [r.job_id for r in producer.enqueue_many(q, [{}] * 200)]
        assert sum(service.queue_info(conn, q)["depth"].values()) == 200
    for q in queues:  # no canary worker ran: rollback drains the whole canary stream
        report = rollouts.rollback(conn, q)
        assert report["drain_complete"] and streams.depth(conn, q, "canary") == 0
    w = StreamWorker(conn, queues, "v1", handler, concurrency=4, heartbeat_s=0.25)
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    while len(seen) < len(ids) and time.monotonic() < deadline:
        time.sleep(0.05)
    w.stop()
    t.join(10)
    assert sorted(seen) == sorted(ids)  # every job once
    assert all(streams.depth(conn, q, lane) == 0 for q in queues for lane in ("stable", "canary"))
