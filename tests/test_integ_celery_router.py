"""The Celery router in-process (no broker, no worker): the lane of each task by the routing
contract, sticky by the chosen argument, tenant from a header, retries routed again, other
queues left alone (pycanary/integrations/celery.py)."""

from __future__ import annotations

import uuid

import pytest
from celery import Celery

from pycanary import queue_config
from pycanary.errors import ValidationError
from pycanary.integrations.celery import SENT_HEADER, Canary
from pycanary.routing import sticky_bucket


@pytest.fixture
def canary(memory_conn) -> Canary:
    app = Celery("router-test", broker="memory://")
    c = Canary(app, "payments", redis_url="memory://unused", prefix=memory_conn.keys.prefix,
               sticky="order_id")
    c._conns[__import__("os").getpid()] = memory_conn  # the test's embedded Redis
    queue_config.configure(memory_conn, "payments", stable_version="v1")
    return c


def _route(c: Canary, order: str, **options) -> str | None:
    r = c.router("app.charge", (), {"order_id": order}, options)
    return None if r is None else r["queue"]


def test_the_lane_follows_the_sticky_argument(canary, memory_conn) -> None:
    queue_config.set_weight(memory_conn, "payments", 2500)
    salt = memory_conn.client.hget(memory_conn.keys.queue("payments").config, "salt") or ""
    for i in range(200):
        order = f"order-{i}"
        want = "payments.canary" if sticky_bucket(order, salt) < 2500 else "payments"
        assert _route(canary, order) == want == _route(canary, order)
    routed = memory_conn.client.hgetall(memory_conn.keys.queue("payments").routed)
    assert int(routed["stable"]) + int(routed["canary"]) == 400
    assert memory_conn.client.hget(memory_conn.keys.queue("payments").broker, "canary") == \
        "payments.canary"


def test_tenant_header_and_sent_stamp(canary, memory_conn) -> None:
    queue_config.set_weight(memory_conn, "payments", 0)
    queue_config.set_weight(memory_conn, "payments", 10_000, tenant="internal")
    options: dict = {"headers": {"tenant": "internal"}}
    assert canary.router("app.charge", (), {"order_id": "o-1"}, options)["queue"] == \
        "payments.canary"
    assert isinstance(options["headers"][SENT_HEADER], int)  # Celery merges it into the message
    assert _route(canary, "o-1", headers={"tenant": "acme"}) == "payments"


def test_a_retry_is_routed_again_and_other_queues_are_left_alone(canary, memory_conn) -> None:
    queue_config.set_weight(memory_conn, "payments", 0)  # rolled back: weight 0
    # Celery's retry names the queue the task came from
    assert _route(canary, "o-1", queue="payments.canary", routing_key="payments.canary",
                  exchange="") == "payments"
    assert _route(canary, "o-1", queue="reports") is None
    canary.tasks = frozenset({"app.other"})
    assert _route(canary, "o-1") is None


def test_without_a_sticky_value_the_task_id_or_a_random_key(canary) -> None:
    tid = str(uuid.uuid4())
    assert canary.sticky_key((), {}, {"task_id": tid}) == tid
    assert canary.sticky_key((), {}, {}) != canary.sticky_key((), {}, {})


def test_a_worker_without_a_version_is_told_which_setting(canary, monkeypatch) -> None:
    monkeypatch.delenv("PYCANARY_VERSION", raising=False)
    with pytest.raises(ValidationError, match="PYCANARY_VERSION"):
        canary.worker_version()
