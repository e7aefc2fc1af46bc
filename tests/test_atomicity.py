"""A weight change and an enqueue never interleave; NOSCRIPT reloads; one slot per script."""

from __future__ import annotations

import threading

import pytest
from redis.crc import key_slot

from pycanary import queue_config
from pycanary.keys import STREAM_GROUP, Keys
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
        "route_enqueue": [*qk.routing(), qk.idem("j-1")],
        "route_enqueue_many": [*qk.routing(), qk.idem("j-1")],
        "explain_route": qk.config_keys(),
        "set_weight": qk.config_keys(),
        "configure_queue": qk.config_keys(),
        "fetch_jobs": qk.fetch_keys("w:1", "canary"),
        "ack_jobs": qk.ack_keys("w:1", "v2", "canary", 1_700_000_000),
        "fail_jobs": qk.fail_keys("w:1", "v2", "canary", 1_700_000_000),
        "promote_delayed": [qk.delayed_stable, qk.delayed_canary, qk.lane_stable,
                            qk.lane_canary, qk.config],
        "requeue_jobs": qk.requeue_keys("w:1"),
        "bounce_job": [qk.processing("w:1"), qk.lane_stable, qk.lane_stable, qk.config],
        "return_job": [qk.processing("w:1"), qk.lane_canary, qk.lane_stable, qk.config],
        "adopt_stable_version": [qk.config],
        "rollback_canary": [qk.config, qk.tenant_weights, qk.rolled_back],
        "promote_canary": [qk.config, qk.tenant_weights, qk.former_stable, qk.rolled_back],
        "deployment_start": [qk.config, qk.tenant_weights, qk.rolled_back, qk.former_stable,
                             qk.deployment, qk.events("d-1"), qk.outbox,
                             qk.deployment_large],
        "deployment_update": [qk.config, qk.tenant_weights, qk.deployment, qk.events("d-1"),
                              qk.fence, qk.analyses("d-1"), qk.outbox, qk.deployment_large],
        "deployment_rollback": [qk.config, qk.tenant_weights, qk.rolled_back, qk.deployment,
                                qk.events("d-1"), qk.fence, qk.outbox, qk.deployment_large],
        "deployment_promote": [qk.config, qk.tenant_weights, qk.rolled_back, qk.former_stable,
                               qk.deployment, qk.events("d-1"), qk.fence, qk.outbox,
                               qk.deployment_large],
        "deployment_finish": [qk.deployment, qk.events("d-1"), qk.history, qk.counters,
                              qk.fence, qk.outbox, qk.deployment_large],
        "drain_lane": [qk.lane_canary, qk.lane_stable],
        "route_decide": qk.route_decide_keys(),
        "record_outcomes": qk.outcome_keys("v2", "canary", 1_700_000_000),
        "bind_broker": [qk.broker],
        # a Celery or RQ application's own lists (no hash tag): single Redis only
        "drain_broker": ["payments.canary", "payments"],
        "notify_settle": [qk.outbox, qk.outbox_dead],
        "dead_letters": qk.dead_letter_keys(),
        # the Streams backend (pycanary/backends/streams.py)
        "route_xadd": [*qk.stream_routing(), qk.idem("j-1")],
        "route_xadd_many": [*qk.stream_routing(), qk.idem("j-1")],
        "fetch_stream": qk.stream_fetch_keys("canary"),
        "ack_stream": qk.stream_ack_keys("v2", "canary", 1_700_000_000),
        "fail_stream": qk.stream_fail_keys("v2", "canary", 1_700_000_000),
        "promote_delayed_stream": qk.stream_promote_keys(),
        "touch_stream": [qk.stream_canary],
        "reclaim_stream": qk.stream_reclaim_keys("v2", "canary", 1_700_000_000),
        "return_stream": qk.stream_move_keys("canary"),
        "drain_stream": qk.stream_drain_keys(),
        "set_backend": qk.backend_keys(),
        "dead_letters_stream": [qk.dlq, qk.stream_stable],
        # global scripts: one slot of their own ({workers}, {controller})
        "heartbeat": keys.heartbeat_keys("w:1"),
        "forget_worker": keys.heartbeat_keys("w:1"),
        "release_lock": [keys.reaper_lock],
        "leader_acquire": [keys.leader, keys.leader_epoch, keys.leader_since],
        "leader_renew": [keys.leader],
        "fence_queue": [qk.fence],
    }


#: Scripts on a broker's own keys (pycanary/integrations/, docs/integrations.md): not Cluster.
SINGLE_REDIS_ONLY = {"drain_broker"}


@pytest.mark.parametrize("queue", ["payments", "a", "x.y:z-1", "payments@canary".replace("@", "_")])
@pytest.mark.parametrize("prefix", ["pycanary", "acme:prod"])
def test_every_script_call_maps_to_one_cluster_slot(queue: str, prefix: str) -> None:
    mapping = _script_keys(Keys(prefix), queue)
    assert set(mapping) == set(load_all()), "a new script needs its KEYS listed here"
    for name, keys in mapping.items():
        if name in SINGLE_REDIS_ONLY:
            continue
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


# -- every owned script refuses a wrong key type or a bad argument, changing nothing ---------
import redis as _redis  # noqa: E402

from pycanary.errors import (  # noqa: E402
    PycanaryError,
    ValidationError,
    WeightAboveMaxError,
    WrongTypeError,
    raise_for_code,
)


def _typed_calls(keys: Keys) -> dict[str, tuple[list[tuple[str, str]], list]]:
    """script -> ([(key, expected type)], valid ARGV), built as the callers build them."""
    qk = keys.queue("payments")
    ev = '{"type":"x"}'
    return {
        "route_enqueue": ([(qk.config, "hash"), (qk.tenant_weights, "hash"),
                           (qk.lane_stable, "list"), (qk.lane_canary, "list"),
                           (qk.routed, "hash"), (qk.idem("j1"), "string")],
                          ["{}", "k", "", 5, "", "", 60_000]),
        "route_enqueue_many": ([(qk.config, "hash"), (qk.tenant_weights, "hash"),
                                (qk.lane_stable, "list"), (qk.lane_canary, "list"),
                                (qk.routed, "hash"), (qk.idem("j1"), "string")],
                               ["", 60_000, "{}", "k", "", 5, "", "{}", "k2", "", 7, ""]),
        "explain_route": ([(qk.config, "hash"), (qk.tenant_weights, "hash")], ["k", "", 0]),
        "set_weight": ([(qk.config, "hash"), (qk.tenant_weights, "hash")],
                       ["100", "", 1, "set", "0"]),
        "configure_queue": ([(qk.config, "hash"), (qk.tenant_weights, "hash")],
                            [1, "max_weight_bp", "5000"]),
        "adopt_stable_version": ([(qk.config, "hash")], ["v1", 1]),
        "rollback_canary": ([(qk.config, "hash"), (qk.tenant_weights, "hash"),
                             (qk.rolled_back, "set")], ["v2", 1]),
        "promote_canary": ([(qk.config, "hash"), (qk.tenant_weights, "hash"),
                            (qk.former_stable, "zset"), (qk.rolled_back, "set")], [1]),
        "deployment_start": ([(qk.config, "hash"), (qk.tenant_weights, "hash"),
                              (qk.rolled_back, "set"), (qk.former_stable, "zset"),
                              (qk.deployment, "hash"), (qk.events("d-1"), "list"),
                              (qk.outbox, "stream"), (qk.deployment_large, "hash")],
                             [1, "v2", 100, "1", "", 1, "acme", 200, 2, "id", "d-1", "state",
                              "active", ev]),
        "deployment_update": ([(qk.config, "hash"), (qk.tenant_weights, "hash"),
                               (qk.deployment, "hash"), (qk.events("d-1"), "list"),
                               (qk.fence, "string"), (qk.analyses("d-1"), "list"),
                               (qk.outbox, "stream"), (qk.deployment_large, "hash")],
                              ["", "", 1, 200, "keep", 0, 1, "stage", "1", 1, ev, "{}", 10]),
        "deployment_rollback": ([(qk.config, "hash"), (qk.tenant_weights, "hash"),
                                 (qk.rolled_back, "set"), (qk.deployment, "hash"),
                                 (qk.events("d-1"), "list"), (qk.fence, "string"),
                                 (qk.outbox, "stream"), (qk.deployment_large, "hash")],
                                ["", "", 1, 1, "reason", "r", ev]),
        "deployment_promote": ([(qk.config, "hash"), (qk.tenant_weights, "hash"),
                                (qk.rolled_back, "set"), (qk.former_stable, "zset"),
                                (qk.deployment, "hash"), (qk.events("d-1"), "list"),
                                (qk.fence, "string"), (qk.outbox, "stream"),
                                (qk.deployment_large, "hash")],
                               ["", "", 1, 1, "reason", "r", ev]),
        "deployment_finish": ([(qk.deployment, "hash"), (qk.events("d-1"), "list"),
                               (qk.history, "list"), (qk.counters, "hash"),
                               (qk.fence, "string"), (qk.outbox, "stream"),
                               (qk.deployment_large, "hash")],
                              ["", 1, "promotions:completed", 0, ev]),
        "drain_lane": ([(qk.lane_canary, "list"), (qk.lane_stable, "list")], [100]),
        "route_decide": ([(qk.config, "hash"), (qk.tenant_weights, "hash"),
                          (qk.routed, "hash")], ["k", "", 5]),
        "bind_broker": ([(qk.broker, "hash")], ["celery", "a", "a.canary", "a", "a.canary"]),
        "record_outcomes": ([(qk.metrics_slot("v2", "canary", 1), "hash"),
                             (qk.metrics_total("v2", "canary"), "hash")],
                            [3600, "retry", "40", "", "", "1", ""]),
        "drain_broker": ([(qk.lane_canary, "list"), (qk.lane_stable, "list")],
                         [100, "celery", "payments.canary", "payments"]),
        # the Streams backend's owned scripts
        "route_xadd": ([(qk.config, "hash"), (qk.tenant_weights, "hash"),
                        (qk.stream_stable, "stream"), (qk.stream_canary, "stream"),
                        (qk.routed, "hash"), (qk.idem("j1"), "string")],
                       ["{}", "k", "", 5, "", "", STREAM_GROUP, 60_000]),
        "route_xadd_many": ([(qk.config, "hash"), (qk.tenant_weights, "hash"),
                             (qk.stream_stable, "stream"), (qk.stream_canary, "stream"),
                             (qk.routed, "hash"), (qk.idem("j1"), "string")],
                            ["", 60_000, "{}", "k", "", 5, "", "{}", "k2", "", 7, ""]),
        "drain_stream": ([(qk.stream_canary, "stream"), (qk.stream_stable, "stream")],
                         [STREAM_GROUP, 100, "-"]),
        "set_backend": ([(qk.config, "hash"), (qk.lane_stable, "list"), (qk.lane_canary, "list"),
                         (qk.stream_stable, "stream"), (qk.stream_canary, "stream"),
                         (qk.delayed_stable, "zset"), (qk.delayed_canary, "zset")],
                        [1, "lists"]),
        "dead_letters_stream": ([(qk.dlq, "list"), (qk.stream_stable, "stream")],
                                ["requeue", '{"id":"j1"}', '{"id":"j1","attempts":0}']),
        "notify_settle": ([(qk.outbox, "stream"), (qk.outbox_dead, "stream")],
                          ["g", "1-0", 1000, 1, '{"f":1}']),
        "dead_letters": ([(qk.dlq, "list"), (qk.lane_stable, "list")],
                         ["requeue", '{"id":"j1"}', '{"id":"j1","attempts":0}']),
        "fence_queue": ([(qk.fence, "string")], [3]),
        "leader_acquire": ([(keys.leader, "string"), (keys.leader_epoch, "string"),
                            (keys.leader_since, "string")], ["t", 5000, 1000]),
        "leader_renew": ([(keys.leader, "string")], ["1:t", 5000]),
        "release_lock": ([(keys.reaper_lock, "string")], ["t"]),
    }


# (script, ARGV index to replace, bad value): each must be refused by the script itself.
_BAD_ARGS = [
    ("route_enqueue", 3, "x"), ("route_enqueue", 3, "10000"), ("route_enqueue", 4, "-1"),
    ("route_enqueue", 6, "0"), ("route_enqueue", 0, ""),
    ("route_enqueue_many", 1, "0"), ("route_enqueue_many", 10, "99999"),
    ("route_enqueue_many", 7, ""),
    ("explain_route", 2, "x"),
    ("set_weight", 0, "10001"), ("set_weight", 2, "soon"), ("set_weight", 3, "add"),
    ("set_weight", 4, "yes"),
    ("configure_queue", 0, "x"), ("configure_queue", 1, "colour"),
    ("configure_queue", 2, "20000"),
    ("adopt_stable_version", 0, ""), ("adopt_stable_version", 1, "x"),
    ("rollback_canary", 1, "x"), ("promote_canary", 0, "x"),
    ("deployment_start", 0, "x"), ("deployment_start", 2, "10001"),
    ("deployment_start", 3, "2"), ("deployment_start", 5, "9"), ("deployment_start", 7, "x"),
    ("deployment_start", 8, "7"),
    ("deployment_update", 0, "e1"), ("deployment_update", 3, "20000"),
    ("deployment_update", 4, "swap"), ("deployment_update", 6, "5"),
    ("deployment_update", 9, "4"), ("deployment_update", 12, "0"),
    ("deployment_rollback", 2, "x"), ("deployment_rollback", 3, "4"),
    ("deployment_promote", 0, "e"), ("deployment_promote", 3, "-1"),
    ("deployment_finish", 1, "x"), ("deployment_finish", 3, "3"),
    ("drain_lane", 0, "0"), ("drain_lane", 0, "5001"),
    ("route_decide", 2, "x"), ("route_decide", 2, "10000"),
    ("bind_broker", 0, "kafka"), ("bind_broker", 2, "a"), ("bind_broker", 4, ""),
    ("record_outcomes", 1, "maybe"), ("record_outcomes", 2, "x"), ("record_outcomes", 5, "2"),
    ("drain_broker", 0, "0"), ("drain_broker", 1, "kafka"), ("drain_broker", 2, ""),
    ("route_xadd", 3, "x"), ("route_xadd", 6, "bad name"), ("route_xadd", 7, "0"),
    ("route_xadd", 0, ""), ("route_xadd_many", 1, "0"), ("route_xadd_many", 7, ""),
    ("drain_stream", 1, "0"), ("drain_stream", 1, "5001"), ("drain_stream", 2, "x"),
    ("drain_stream", 0, ""), ("set_backend", 1, "kafka"), ("set_backend", 0, "x"),
    ("dead_letters_stream", 0, "move"), ("dead_letters_stream", 2, ""),
    ("notify_settle", 0, ""), ("notify_settle", 1, "x"), ("notify_settle", 2, "0"),
    ("notify_settle", 3, "2"),
    ("dead_letters", 0, "move"), ("dead_letters", 1, ""), ("dead_letters", 2, ""),
    ("fence_queue", 0, "0"), ("fence_queue", 0, "x"),
    ("leader_acquire", 1, "0"), ("leader_acquire", 0, ""), ("leader_acquire", 2, "x"),
    ("leader_renew", 1, "1.5"),
    ("release_lock", 0, ""),
]


def _snapshot(conn) -> dict[str, bytes]:
    raw = _redis.Redis.from_url(conn.url)  # bytes: DUMP is binary
    try:
        return {k.decode(): raw.dump(k)
                for k in sorted(raw.scan_iter(match=f"{conn.keys.prefix}:*", count=1000))}
    finally:
        raw.close()


def _seed(conn) -> None:
    """A queue with state in every kind of key, so 'unchanged' means something."""
    qk = conn.keys.queue("payments")
    c = conn.client
    c.hset(qk.config, mapping={"stable_version": "v1", "weight_bp": "100", "rev": "3"})
    c.hset(qk.tenant_weights, "acme", "50")
    c.lpush(qk.lane_canary, "{}", "{}")
    c.lpush(qk.lane_stable, "{}")
    c.hset(qk.deployment, mapping={"state": "active", "rev": "4", "canary_version": "v2",
                                   "stable_version": "v1"})
    c.set(qk.fence, "2")
    c.sadd(qk.rolled_back, "v0")
    c.zadd(qk.former_stable, {"v-1": 1})


def _call(conn, name: str, keys: list[str], args: list) -> object:
    res = conn.scripts.call(name, keys, args)
    if isinstance(res, int) and res < 0:
        raise_for_code(res, script=name)
    return res


def _wrong_value(conn, key: str, expected: str) -> None:
    c = conn.client
    c.delete(key)
    if expected == "string":
        c.hset(key, "x", "1")
    else:
        c.set(key, "not-a-" + expected)


def _args_touching(conn, name: str, key: str, args: list) -> list:
    """ARGV of a call that reads or writes ``key``. route_enqueue checks a key's type through
    its own read or write of it (issue 15: no TYPE call per key on the hot path), so the other
    lane and tenant_weights (read only for a tenant's job) are checked by calls that use them."""
    qk = conn.keys.queue("payments")
    if name == "route_enqueue" and key == qk.tenant_weights:
        return [args[0], args[1], "acme", *args[3:]]
    if name == "route_enqueue" and key == qk.lane_canary:
        return [*args[:4], "5", "", *args[6:]]  # bucket 5 < the seeded weight 100: canary
    return args


def test_every_owned_script_refuses_wrong_key_types_changing_nothing(real_conn) -> None:
    conn = real_conn
    calls = _typed_calls(conn.keys)
    checked = 0
    for name, (typed, args) in calls.items():
        for key, expected in typed:
            _seed(conn)
            _wrong_value(conn, key, expected)
            before = _snapshot(conn)
            with pytest.raises(WrongTypeError) as exc:
                _call(conn, name, [k for k, _ in typed], _args_touching(conn, name, key, args))
            assert key in str(exc.value), (name, key, str(exc.value))
            assert not isinstance(exc.value, _redis.exceptions.ResponseError)
            assert _snapshot(conn) == before, (name, key)
            checked += 1
            for k, _ in typed:
                conn.client.delete(k)
    assert checked == sum(len(t) for t, _ in calls.values()) == 109


def test_route_enqueue_leaves_keys_it_does_not_touch_unchecked(real_conn) -> None:
    """The other lane (and tenant_weights, for a job without a tenant) is neither read nor
    written by route_enqueue, so its type does not stop the job: it lands, counted once."""
    conn = real_conn
    qk = conn.keys.queue("payments")
    typed, args = _typed_calls(conn.keys)["route_enqueue"]
    for key in (qk.lane_canary, qk.tenant_weights):
        _seed(conn)
        _wrong_value(conn, key, "list" if key == qk.lane_canary else "hash")
        lane, *_ = _call(conn, "route_enqueue", [k for k, _ in typed], args)
        assert lane == "stable"
        assert conn.client.llen(qk.lane_stable) == 2
        assert conn.client.hget(qk.routed, "stable") == "1"
        for k, _ in typed:
            conn.client.delete(k)


@pytest.mark.parametrize(("name", "index", "value"), _BAD_ARGS)
def test_every_owned_script_refuses_bad_arguments_changing_nothing(
        real_conn, name: str, index: int, value: str) -> None:
    conn = real_conn
    typed, args = _typed_calls(conn.keys)[name]
    _seed(conn)
    bad = list(args)
    bad[index] = value
    before = _snapshot(conn)
    with pytest.raises(PycanaryError) as exc:
        _call(conn, name, [k for k, _ in typed], bad)
    assert isinstance(exc.value, ValidationError | WrongTypeError) or exc.value.code in (
        "invalid", "state"), exc.value
    assert _snapshot(conn) == before, (name, index, value)


def test_garbled_stored_numbers_are_refused_before_any_write(real_conn) -> None:
    """Another client wrote text where a number lives: refused, nothing half-written."""
    conn = real_conn
    qk = conn.keys.queue("payments")
    calls = _typed_calls(conn.keys)
    for name, key, field in [("route_enqueue", qk.config, "weight_bp"),
                             ("route_enqueue", qk.config, "max_backlog"),
                             ("route_enqueue_many", qk.config, "max_backlog"),
                             ("set_weight", qk.config, "max_weight_bp"),
                             ("deployment_update", qk.config, "max_weight_bp"),
                             ("rollback_canary", qk.config, "weight_bp"),
                             ("deployment_rollback", qk.config, "weight_bp"),
                             ("deployment_finish", qk.counters, "promotions:completed")]:
        _seed(conn)
        conn.client.hset(key, field, "lots")
        typed, args = calls[name]
        before = _snapshot(conn)
        with pytest.raises(ValidationError):
            _call(conn, name, [k for k, _ in typed], args)
        assert _snapshot(conn) == before, name
    for name in ("fence_queue", "deployment_promote"):
        _seed(conn)
        conn.client.set(qk.fence, "high")
        typed, args = calls[name]
        before = _snapshot(conn)
        with pytest.raises(ValidationError):
            _call(conn, name, [k for k, _ in typed], args)
        assert _snapshot(conn) == before, name


def test_max_backlog_refusal_changes_nothing(real_conn) -> None:
    """route_enqueue(_many) called directly at a full lane: QueueFull (-14), no key touched
    (no push, no routed count, no idempotency record)."""
    from pycanary.errors import QueueFullError

    conn = real_conn
    qk = conn.keys.queue("payments")
    calls = _typed_calls(conn.keys)
    for limit in ("1", "2"):  # seeded: stable holds 1, canary 2; a batch of 2 needs room
        for name in ("route_enqueue", "route_enqueue_many"):
            _seed(conn)
            conn.client.hset(qk.config, "max_backlog", limit)
            typed, args = calls[name]
            before = _snapshot(conn)
            if name == "route_enqueue" and limit == "2":
                continue  # one job fits the stable lane at 2: not a refusal
            with pytest.raises(QueueFullError, match=f"max_backlog is {limit}"):
                _call(conn, name, [k for k, _ in typed], args)
            assert _snapshot(conn) == before, (name, limit)


def test_max_weight_guard_in_deployment_include_changes_nothing(real_conn) -> None:
    """within_max (lua/includes/deployment.lua), called directly with a tenant above max."""
    conn = real_conn
    _seed(conn)
    qk = conn.keys.queue("payments")
    conn.client.hset(qk.config, "max_weight_bp", "150")
    conn.client.hdel(qk.deployment, "state")  # no active deployment: start may proceed
    typed, args = _typed_calls(conn.keys)["deployment_start"]
    before = _snapshot(conn)
    with pytest.raises(WeightAboveMaxError):
        _call(conn, "deployment_start", [k for k, _ in typed], args)  # tenant acme at 200
    assert _snapshot(conn) == before
    typed, args = _typed_calls(conn.keys)["deployment_update"]
    _seed(conn)
    conn.client.hset(qk.config, "max_weight_bp", "150")
    before = _snapshot(conn)
    with pytest.raises(WeightAboveMaxError):
        _call(conn, "deployment_update", [k for k, _ in typed], args)  # weight 200
    assert _snapshot(conn) == before


def test_fenced_state_errors_do_not_raise_the_fence(real_conn) -> None:
    """A refused deployment write (-9 rev changed) leaves even the fence as it was."""
    conn = real_conn
    _seed(conn)
    typed, args = _typed_calls(conn.keys)["deployment_update"]
    bad = list(args)
    bad[0], bad[1] = "9", "3"  # newer epoch, stale rev (the hash has rev 4)
    before = _snapshot(conn)
    with pytest.raises(PycanaryError) as exc:
        _call(conn, "deployment_update", [k for k, _ in typed], bad)
    assert exc.value.code == "conflict"
    assert _snapshot(conn) == before


# -- the job-level fields of ack/fail and the reaper's crash keys (issue 10) -----------------
def test_reap_ack_and_fail_keys_share_the_queue_slot() -> None:
    for prefix in ("pycanary", "acme:prod"):
        qk = Keys(prefix).queue("payments")
        for keys in (qk.reap_keys("w:1", "v2", "canary", 1_700_000_000),
                     qk.ack_keys("w:1", "v2", "canary", 1), qk.fail_keys("w:1", "v2", "stable", 1)):
            assert len({key_slot(k.encode()) for k in keys}) == 1, keys
            assert all("{payments}" in k for k in keys)


@pytest.mark.parametrize(("name", "job", "bad"), [
    ("ack_jobs", ["e2", 1, 1, "", "1", "|3"], 4),
    ("ack_jobs", ["e2", 1, 1, "", "1", "|3"], 5),
    ("ack_jobs", ["e2", 1, 1, "", "1", "|3"], 3),
    ("fail_jobs", ["e2", "dead", "rec", "", 1, 1, "", "1", "|3"], 7),
    ("fail_jobs", ["e2", "dead", "rec", "", 1, 1, "", "1", "|3"], 8),
    ("fail_jobs", ["e2", "dead", "rec", "", 1, 1, "", "1", "|3"], 6),
])
def test_a_bad_job_field_late_in_a_batch_changes_nothing(real_conn, name: str, job: list,
                                                         bad: int) -> None:
    """Every job's new fields (cpu bucket, first flag, unit) are checked before the first
    write: a batch whose last job is malformed leaves even the first job in its list."""
    conn = real_conn
    qk = conn.keys.queue("payments")
    conn.client.lpush(qk.processing("w"), "e1", "e2")
    conn.client.hset(qk.running("w"), mapping={"e1": "1 |2", "e2": "1 |3"})
    keys = (qk.ack_keys if name == "ack_jobs" else qk.fail_keys)("w", "v1", "stable", 1)
    good = list(job)
    good[0], good[-1] = "e1", "|2"
    broken = list(job)
    broken[bad] = {3: "x", 4: "2", 5: "no-bar", 6: "x", 7: "2", 8: "|"}[bad]
    before = _snapshot(conn)
    assert conn.scripts.call(name, keys, [60, *good, *broken]) == -4
    assert _snapshot(conn) == before
    assert conn.scripts.call(name, keys, [60, *good, *job]) == [2, 0]
    total = conn.client.hgetall(qk.metrics_total("v1", "stable"))
    slot = conn.client.hgetall(qk.metrics_slot("v1", "stable", 1))
    assert total["first_attempts"] == "2" and total["n1||2"] == total["n1||3"] == "1"
    assert "n1||2" not in slot and slot["first_attempts"] == "2"  # units: totals only
    assert conn.client.hlen(qk.running("w")) == 0  # recorded: no longer running
