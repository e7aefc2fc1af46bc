"""A weight change and an enqueue never interleave; NOSCRIPT reloads; one slot per script."""

from __future__ import annotations

import threading

import pytest
from redis.crc import key_slot

from pycanary import queue_config
from pycanary.keys import Keys
from pycanary.producer import Producer
from pycanary.scripts import load_all

THREADS = 8
FLIPS = 1000


def test_flipping_weight_while_enqueuing(conn) -> None:
    """8 producers enqueue while another thread flips the weight 0 <-> 100% a thousand times.
    Every job's lane agrees with the weight its own script call saw, both weights were seen,
    and after the final flip to 0 no job lands in canary."""
    queue_config.set_weight(conn, "payments", 0)
    stop = threading.Event()
    records: list[list[tuple[str, int]]] = [[] for _ in range(THREADS)]
    errors: list[BaseException] = []

    def produce(i: int) -> None:
        producer = Producer(conn)
        try:
            while not stop.is_set():
                r = producer.enqueue("payments", {"t": i})
                records[i].append((r.lane, r.weight_bp))
        except BaseException as exc:  # pragma: no cover - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for n in range(FLIPS):
        queue_config.set_weight(conn, "payments", 10_000 if n % 2 == 0 else 0)
    # FLIPS is even: the last flip set 0
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    flat = [rec for recs in records for rec in recs]
    assert flat, "no job was enqueued"
    for lane, weight in flat:
        assert weight in (0, 10_000)
        assert lane == ("canary" if weight == 10_000 else "stable")
    assert {w for _, w in flat} == {0, 10_000}, "the flips were not observed by producers"

    after = Producer(conn).enqueue_many("payments", [{}] * 500)
    after += [Producer(conn).enqueue("payments", {}) for _ in range(50)]
    assert {r.lane for r in after} == {"stable"}
    qk = conn.keys.queue("payments")
    routed = conn.client.hgetall(qk.routed)
    assert int(routed["canary"]) == conn.client.llen(qk.lane_canary)
    assert int(routed["stable"]) == conn.client.llen(qk.lane_stable)
    assert int(routed["canary"]) == sum(lane == "canary" for lane, _ in flat)


def test_noscript_reload_single_and_pipelined(real_conn) -> None:
    """SCRIPT FLUSH (as after a restart or failover) between calls: both paths reload."""
    conn = real_conn
    queue_config.set_weight(conn, "payments", 5000)
    producer = Producer(conn)
    producer.enqueue("payments", {"n": 1})
    conn.client.script_flush()
    assert producer.enqueue("payments", {"n": 2}).lane in ("stable", "canary")
    conn.client.script_flush()
    assert len(producer.enqueue_many("payments", [{"n": i} for i in range(250)])) == 250
    conn.client.script_flush()
    assert queue_config.set_weight(conn, "payments", 100).weight_bp == 100
    qk = conn.keys.queue("payments")
    assert conn.client.llen(qk.lane_stable) + conn.client.llen(qk.lane_canary) == 252


def test_noscript_on_fakeredis(memory_conn) -> None:
    conn = memory_conn
    producer = Producer(conn)
    producer.enqueue("payments", {})
    conn.client.script_flush()
    producer.enqueue("payments", {})
    conn.client.script_flush()
    assert len(producer.enqueue_many("payments", [{}] * 10)) == 10


# Which keys each script receives, built by keys.py exactly as the callers build them.
def _script_keys(keys: Keys, queue: str) -> dict[str, list[str]]:
    qk = keys.queue(queue)
    return {
        "route_enqueue": qk.routing(),
        "route_enqueue_many": qk.routing(),
        "explain_route": qk.config_keys(),
        "set_weight": qk.config_keys(),
        "configure_queue": qk.config_keys(),
        "fetch_jobs": qk.fetch_keys("w:1", "canary"),
        "ack_jobs": qk.ack_keys("w:1", "v2", "canary", 1_700_000_000),
        "fail_jobs": qk.fail_keys("w:1", "v2", "canary", 1_700_000_000),
        "promote_delayed": [qk.delayed_stable, qk.delayed_canary, qk.lane_stable,
                            qk.lane_canary, qk.config],
        "requeue_jobs": qk.requeue_keys("w:1"),
        "bounce_job": [qk.processing("w:1"), qk.lane_stable],
        "return_job": [qk.processing("w:1"), qk.lane_canary],
        "adopt_stable_version": [qk.config],
        "rollback_canary": [qk.config, qk.tenant_weights, qk.rolled_back],
        "promote_canary": [qk.config, qk.tenant_weights, qk.former_stable, qk.rolled_back],
        "deployment_start": [qk.config, qk.tenant_weights, qk.rolled_back, qk.former_stable,
                             qk.deployment, qk.events("d-1")],
        "deployment_update": [qk.config, qk.tenant_weights, qk.deployment, qk.events("d-1"),
                              qk.fence],
        "deployment_rollback": [qk.config, qk.tenant_weights, qk.rolled_back, qk.deployment,
                                qk.events("d-1"), qk.fence],
        "deployment_promote": [qk.config, qk.tenant_weights, qk.rolled_back, qk.former_stable,
                               qk.deployment, qk.events("d-1"), qk.fence],
        "deployment_finish": [qk.deployment, qk.events("d-1"), qk.history, qk.counters,
                              qk.fence],
        "drain_lane": [qk.lane_canary, qk.lane_stable],
        # global scripts: one slot of their own ({workers}, {controller})
        "heartbeat": keys.heartbeat_keys("w:1"),
        "forget_worker": keys.heartbeat_keys("w:1"),
        "release_lock": [keys.reaper_lock],
        "leader_acquire": [keys.leader, keys.leader_epoch],
        "leader_renew": [keys.leader],
        "fence_queue": [qk.fence],
    }


@pytest.mark.parametrize("queue", ["payments", "a", "x.y:z-1", "payments@canary".replace("@", "_")])
@pytest.mark.parametrize("prefix", ["pycanary", "acme:prod"])
def test_every_script_call_maps_to_one_cluster_slot(queue: str, prefix: str) -> None:
    mapping = _script_keys(Keys(prefix), queue)
    assert set(mapping) == set(load_all()), "a new script needs its KEYS listed here"
    for name, keys in mapping.items():
        slots = {key_slot(k.encode()) for k in keys}
        assert len(slots) == 1, (name, keys)
        tag = next((t for t in ("{workers}", "{controller}") if t in keys[0]), f"{{{queue}}}")
        assert all(tag in k for k in keys), name
    assert key_slot(f"{prefix}:{{{queue}}}:x".encode()) == key_slot(queue.encode())


def test_every_script_documents_keys_and_argv() -> None:
    for script in load_all().values():
        head = script.source.split("]]", 1)[0]
        assert head.lstrip().startswith("--[["), script.name
        for word in ("KEYS[1]", "ARGV[1]", "Returns"):
            assert word in head, (script.name, word)
        assert "local rcall = redis.call" in script.source
        assert "math.random" not in script.source and "TIME" not in script.source
