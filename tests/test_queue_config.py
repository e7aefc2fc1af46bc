"""Weights, tenant overrides and the max_weight guard; bad input changes nothing."""

from __future__ import annotations

import pytest

from pycanary import service
from pycanary.errors import MaxWeightBelowWeightError, ValidationError, WeightAboveMaxError
from pycanary.producer import Producer


def snapshot(conn, queue: str) -> tuple[dict, dict]:
    qk = conn.keys.queue(queue)
    return conn.client.hgetall(qk.config), conn.client.hgetall(qk.tenant_weights)


@pytest.mark.parametrize("bad", [-1, 10001, "-1", "10001", "NaN", "nan", "ten", "", "12.345",
                                 float("nan"), float("inf"), True, None, "1e400"])
def test_bad_weights_rejected_and_nothing_changes(conn, bad) -> None:
    service.set_weight(conn, "payments", "10")
    before = snapshot(conn, "payments")
    with pytest.raises(ValidationError) as exc:
        if bad is None:
            service.set_weight(conn, "payments", bad)  # None without tenant: missing weight
        elif isinstance(bad, int) and not isinstance(bad, bool):
            service.set_weight(conn, "payments", bad / 1)  # as a percent: -1% or 10001%
        else:
            service.set_weight(conn, "payments", bad)
    assert exc.value.field == "weight"
    assert snapshot(conn, "payments") == before


@pytest.mark.parametrize("raw", ["-1", "10001", "nan", "ten", "", "1.5", " 5"])
def test_script_refuses_bad_weights_from_any_client(conn, raw: str) -> None:
    """Other languages call the scripts directly: the script itself checks too."""
    service.set_weight(conn, "payments", "10")
    before = snapshot(conn, "payments")
    res = conn.scripts.call("set_weight", conn.keys.queue("payments").config_keys(),
                            (raw, "", 1, "set", "0"))
    assert res == -1
    assert snapshot(conn, "payments") == before


def test_percent_parsing_two_decimals(conn) -> None:
    assert service.set_weight(conn, "q", "12.25").weight_bp == 1225
    assert service.set_weight(conn, "q", 0.5).weight_bp == 50
    assert service.set_weight(conn, "q", "100").weight_bp == 10_000
    assert service.set_weight(conn, "q", "0").weight_bp == 0


def test_max_weight_guard(conn) -> None:
    service.configure_queue(conn, "payments", max_weight="20")
    service.set_weight(conn, "payments", "20")
    before = snapshot(conn, "payments")
    with pytest.raises(WeightAboveMaxError) as exc:
        service.set_weight(conn, "payments", "20.01")
    assert "20%" in str(exc.value) and exc.value.field == "weight"
    with pytest.raises(WeightAboveMaxError):
        service.set_weight(conn, "payments", "50", tenant="acme")
    assert snapshot(conn, "payments") == before
    # lowering the guard below a weight in force is refused, naming the weight
    with pytest.raises(MaxWeightBelowWeightError) as exc2:
        service.configure_queue(conn, "payments", max_weight="10")
    assert exc2.value.field == "max_weight"
    assert snapshot(conn, "payments") == before
    service.set_weight(conn, "payments", "5")
    service.set_weight(conn, "payments", "15", tenant="acme")
    with pytest.raises(MaxWeightBelowWeightError):
        service.configure_queue(conn, "payments", max_weight="10")  # acme is at 15%


def test_explicit_promotion_may_exceed_max(conn) -> None:
    from pycanary import queue_config

    service.configure_queue(conn, "payments", max_weight="10")
    change = queue_config.set_weight(conn, "payments", 10_000, allow_above_max=True)
    assert change.weight_bp == 10_000


def test_tenant_overrides_route_per_tenant(conn) -> None:
    service.set_weight(conn, "payments", "0")
    service.set_weight(conn, "payments", "100", tenant="internal")
    service.set_weight(conn, "payments", "0", tenant="bigbank")
    producer = Producer(conn)
    assert {producer.enqueue("payments", {}, tenant="internal").lane for _ in range(50)} == {
        "canary"}
    assert {producer.enqueue("payments", {}, tenant="bigbank").lane for _ in range(50)} == {
        "stable"}
    assert {producer.enqueue("payments", {}).lane for _ in range(50)} == {"stable"}
    service.set_weight(conn, "payments", "100")
    assert {producer.enqueue("payments", {}, tenant="bigbank").lane for _ in range(50)} == {
        "stable"}
    assert {producer.enqueue("payments", {}, tenant="other").lane for _ in range(50)} == {"canary"}
    many = producer.enqueue_many("payments", [{}] * 200, tenant="bigbank")
    assert {r.lane for r in many} == {"stable"}
    service.set_weight(conn, "payments", None, tenant="bigbank")  # clear the override
    assert producer.enqueue("payments", {}, tenant="bigbank").lane == "canary"


def test_disabled_routing_sends_everything_to_stable(conn) -> None:
    service.set_weight(conn, "payments", "100")
    service.configure_queue(conn, "payments", enabled=False)
    producer = Producer(conn)
    assert {producer.enqueue("payments", {}).lane for _ in range(20)} == {"stable"}


def test_configure_rejects_bad_fields_and_changes_nothing(conn) -> None:
    service.configure_queue(conn, "payments", max_weight="30", stable_version="v1")
    before = snapshot(conn, "payments")
    cases = [
        ({"max_weight": "101"}, "max_weight"),
        ({"backend": "kafka"}, "backend"),
        ({"stable_version": "v 1"}, "stable_version"),
        ({}, "options"),
    ]
    for kwargs, field in cases:
        with pytest.raises(ValidationError) as exc:
            service.configure_queue(conn, "payments", **kwargs)
        assert exc.value.field == field
    # the script refuses unknown fields and bad values from other clients too
    keys = conn.keys.queue("payments").config_keys()
    assert conn.scripts.call("configure_queue", keys, (1, "weight_bp", "9999")) == -4
    assert conn.scripts.call("configure_queue", keys, (1, "sticky", "yes")) == -4
    assert conn.scripts.call("configure_queue", keys, (1, "stable_version", "v2",
                                                       "max_weight_bp", "x")) == -1
    assert snapshot(conn, "payments") == before


def test_queue_info_and_index(conn) -> None:
    service.configure_queue(conn, "payments", max_weight="25", stable_version="v1")
    service.set_weight(conn, "payments", "10")
    service.enqueue(conn, "payments", {"a": 1}, count=300)
    info = service.queue_info(conn, "payments")
    assert info["max_weight_percent"] == 25
    assert info["weight_percent"] == 10
    assert info["stable_version"] == "v1"
    assert info["depth"]["stable"] + info["depth"]["canary"] == 300
    assert info["routed"] == info["depth"]
    assert [q["queue"] for q in service.list_queues(conn)] == ["payments"]


# -- max_backlog ------------------------------------------------------------------------------
def test_max_backlog_configured_read_and_cleared(conn) -> None:
    from pycanary import queue_config

    assert queue_config.read_config(conn, "payments").max_backlog == 0
    assert service.configure_queue(conn, "payments", max_backlog="100_000").max_backlog == 100_000
    assert service.queue_info(conn, "payments")["max_backlog"] == 100_000
    assert service.configure_queue(conn, "payments", max_backlog="none").max_backlog == 0
    assert service.configure_queue(conn, "payments", max_backlog=7).max_backlog == 7
    assert service.configure_queue(conn, "payments", max_backlog=0).max_backlog == 0


@pytest.mark.parametrize("bad", [-1, "-1", "ten", "1.5", "", True, 10**9 + 1, "1e3"])
def test_bad_max_backlog_rejected_and_nothing_changes(conn, bad) -> None:
    service.configure_queue(conn, "payments", max_backlog=5)
    before = snapshot(conn, "payments")
    with pytest.raises(ValidationError) as exc:
        service.configure_queue(conn, "payments", max_backlog=bad)
    assert exc.value.field == "max_backlog"
    assert snapshot(conn, "payments") == before


def test_configure_queue_script_refuses_bad_max_backlog(conn) -> None:
    """The script's own guard, not only the Python pre-check."""
    qk = conn.keys.queue("payments")
    service.configure_queue(conn, "payments", max_backlog=5)
    before = snapshot(conn, "payments")
    for bad in ("-1", "x", "1000000001", ""):
        assert conn.scripts.call("configure_queue", qk.config_keys(),
                                 [1, "max_backlog", bad]) == -4
    assert snapshot(conn, "payments") == before


def test_cli_max_backlog_and_enqueue_exit_3(real_conn) -> None:
    from tests.test_cli import run

    prefix = real_conn.keys.prefix
    res = run("queue", "configure", "payments", "--max-backlog", "2", "--json", prefix=prefix)
    assert res.returncode == 0, res.stderr
    import json

    assert json.loads(res.stdout)["max_backlog"] == 2
    assert run("enqueue", "payments", "--count", "2", prefix=prefix).returncode == 0
    res = run("enqueue", "payments", "{}", prefix=prefix)
    assert res.returncode == 3, res.stderr
    assert res.stderr.strip() == (
        "error: route_enqueue: the queue is full (max_backlog): queue payments: the stable lane "
        "holds 2 jobs, max_backlog is 2; 1 more refused, nothing enqueued")
    # part way: the first batch of 100 fits (2 + 100 <= 150), the second does not
    res = run("queue", "configure", "payments", "--max-backlog", "150", prefix=prefix)
    assert res.returncode == 0
    res = run("enqueue", "payments", "--count", "250", prefix=prefix)
    assert res.returncode == 3
    assert res.stderr.startswith("error: enqueue_many stopped after 100 of 250 jobs: "
                                 "route_enqueue_many: the queue is full (max_backlog)")
    res = run("queue", "configure", "payments", "--max-backlog", "lots", prefix=prefix)
    assert res.returncode == 2 and "max_backlog" in res.stderr
    res = run("queue", "configure", "payments", "--max-backlog", "none", prefix=prefix)
    assert res.returncode == 0 and "max backlog     none" in res.stdout
    assert run("enqueue", "payments", "{}", prefix=prefix).returncode == 0
