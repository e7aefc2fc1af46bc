"""Leader election with fencing (docs/design.md invariant 4), on fakeredis and on a real Redis.

Leases in Redis expire by real time, so expiry tests use leases of 0.3-0.5 s and short real
sleeps; local validity (`is_leader()`) is driven by an injected clock.
"""

from __future__ import annotations

import time

import pytest
import redis

from pycanary.errors import FENCED, INVALID_ARGUMENT, FencedError, raise_for_code
from pycanary.leader import Leadership


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def fence(conn, queue: str, epoch) -> int:
    return conn.scripts.call("fence_queue", [conn.keys.queue(queue).fence], [epoch])


def test_only_one_of_two_leads(conn) -> None:
    a, b = Leadership(conn, controller_id="a"), Leadership(conn, controller_id="b")
    assert a.holder() is None
    assert a.tick() is True
    assert b.tick() is False
    assert (a.epoch, b.epoch) == (1, None)
    assert a.is_leader() and not b.is_leader()
    assert a.holder() == b.holder() == f"1:{a.token}"
    assert a.token.startswith("a/")
    # ticking again renews, it does not take a new epoch
    assert a.tick() is True and a.epoch == 1
    assert b.tick() is False


def test_renewal_keeps_leadership(conn) -> None:
    """Two lease periods of ticks every 0.1 s: the leader keeps its epoch, the other never
    gets in."""
    a, b = Leadership(conn, lease_s=0.5), Leadership(conn, lease_s=0.5)
    assert a.tick()
    epoch = a.epoch
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        time.sleep(0.1)
        assert a.tick(), "the leader lost its lease while renewing"
        assert not b.tick()
    assert a.epoch == epoch and b.epoch is None


def test_expiry_lets_the_other_acquire_with_a_higher_epoch(conn) -> None:
    a, b = Leadership(conn, lease_s=0.3), Leadership(conn, lease_s=0.3)
    assert a.tick() and not b.tick()
    time.sleep(0.4)  # a stops renewing; its lease lapses in Redis
    assert b.tick()
    assert b.epoch is not None and a.epoch is not None and b.epoch > a.epoch
    assert not a.tick(), "the old leader's renewal must fail once the lease was taken"
    assert a.epoch is None and not a.is_leader()


def test_deposed_leaders_write_is_fenced(conn) -> None:
    """After the new leader fenced the queues it acts on, the old epoch is refused on all of
    them, including one the old leader never wrote to."""
    a, b = Leadership(conn, lease_s=0.3), Leadership(conn, lease_s=0.3)
    assert a.tick()
    old = a.epoch
    assert a.fence_queues(["payments"]) == []
    assert fence(conn, "payments", old) == 1  # the old leader's writes pass while it leads
    time.sleep(0.4)  # a is "paused" past its lease
    assert b.tick()
    assert b.fence_queues(["payments", "orders"]) == []
    for queue in ("payments", "orders"):
        code = fence(conn, queue, old)
        assert code == FENCED
        with pytest.raises(FencedError):
            raise_for_code(code, script="fence_queue")
    assert conn.client.get(conn.keys.queue("orders").fence) == str(b.epoch)
    assert fence(conn, "payments", b.epoch) == 1
    # the old leader learns it through fence_queues and stops leading at once
    assert a.epoch == old
    assert a.fence_queues(["orders", "payments"]) == ["orders", "payments"]
    assert a.epoch is None and not a.is_leader()
    assert not a.tick()
    assert b.is_leader() and b.fence_queues(["payments"]) == []


def test_release_lets_the_other_acquire_at_once(conn) -> None:
    a, b = Leadership(conn), Leadership(conn)  # 5 s lease: only release can hand over quickly
    assert a.tick() and not b.tick()
    assert a.release() is True
    assert not a.is_leader() and a.epoch is None
    assert b.tick() and b.epoch == 2
    assert a.release() is False
    assert b.holder() == f"2:{b.token}"
    # a stale release (after the lease moved on) must not delete the new leader's lease
    assert conn.scripts.call("release_lock", [conn.keys.leader], [f"1:{a.token}"]) == 0
    assert b.holder() == f"2:{b.token}"


def test_is_leader_turns_false_by_the_local_clock(conn) -> None:
    """A pause longer than 0.8 lease (simulated with the injected clock) ends leadership
    locally at once, while Redis still holds the lease; a renewal within the lease resumes."""
    clock = FakeClock()
    a = Leadership(conn, lease_s=5.0, clock=clock)
    b = Leadership(conn, lease_s=5.0)
    assert a.tick()
    clock.advance(3.9)
    assert a.is_leader()
    clock.advance(0.2)  # 4.1 s since the last confirmation: past 0.8 * 5 s
    assert not a.is_leader()
    assert a.holder() == f"{a.epoch}:{a.token}"
    assert conn.client.pttl(conn.keys.leader) > 0
    assert not b.tick()  # Redis still says a leads: nobody else may act either
    # the lease in Redis never lapsed, so a's renewal succeeds with the same epoch
    epoch = a.epoch
    assert a.tick() and a.epoch == epoch


def test_unreachable_redis_runs_out_by_the_local_clock(memory_conn, monkeypatch) -> None:
    clock = FakeClock()
    a = Leadership(memory_conn, lease_s=5.0, clock=clock)
    assert a.tick()

    def down(*args, **kwargs):
        raise redis.exceptions.ConnectionError("down")

    monkeypatch.setattr(memory_conn.scripts, "call", down)
    clock.advance(2.0)
    assert a.tick() is True  # not confirmed, but the last confirmation is still valid
    clock.advance(2.5)
    assert a.tick() is False and not a.is_leader()


def test_scripts_directly(conn) -> None:
    """Acquire is idempotent for the token holding the lease; bad arguments are refused."""
    keys = conn.keys
    acquire = [keys.leader, keys.leader_epoch, keys.leader_since]
    assert conn.scripts.call("leader_acquire", acquire, ["t1", 5000, 1000]) == [1, "1:t1"]
    assert conn.client.get(keys.leader_since) == "1:1000"
    # a retry by the holder and a refused contender leave the start record alone
    assert conn.scripts.call("leader_acquire", acquire, ["t1", 5000, 2000]) == [1, "1:t1"]
    assert conn.scripts.call("leader_acquire", acquire, ["t2", 5000, 3000]) == [0, "1:t1"]
    assert conn.client.get(keys.leader_since) == "1:1000"
    assert conn.scripts.call("leader_renew", [keys.leader], ["1:t2", 5000]) == 0
    assert conn.scripts.call("leader_renew", [keys.leader], ["1:t1", 5000]) == 1
    assert conn.scripts.call("leader_acquire", acquire, ["t1", 0, 1]) == INVALID_ARGUMENT
    assert conn.scripts.call("leader_acquire", acquire, ["", 5000, 1]) == INVALID_ARGUMENT
    for bad_now in ("", "-1", "1.5", "soon"):
        assert conn.scripts.call("leader_acquire", acquire,
                                 ["t3", 5000, bad_now]) == INVALID_ARGUMENT, bad_now
    assert conn.scripts.call("leader_renew", [keys.leader], ["1:t1", "x"]) == INVALID_ARGUMENT
    for bad in ("", "0", "-1", "1.5", "x"):
        assert fence(conn, "payments", bad) == INVALID_ARGUMENT, bad
    assert fence(conn, "payments", 3) == 1
    assert fence(conn, "payments", 3) == 1
    assert fence(conn, "payments", 2) == FENCED
    assert fence(conn, "payments", 4) == 1
    assert conn.client.get(keys.queue("payments").fence) == "4"


def test_leader_info_knows_when_the_leadership_began(conn) -> None:
    """The start record is written with a new epoch only, and read with the lease."""
    from pycanary import leader

    assert leader.leader_info(conn) is None
    a = Leadership(conn, controller_id="a")
    before = time.time_ns() // 1_000_000
    assert a.tick()
    after = time.time_ns() // 1_000_000
    info = leader.leader_info(conn)
    assert info is not None and (info.epoch, info.token) == (1, a.token)
    assert info.acquired_ms is not None and before <= info.acquired_ms <= after
    assert info.age_s(info.acquired_ms + 2500) == 2.5
    assert info.age_s(info.acquired_ms - 10) == 0.0  # a reader's clock behind: never negative
    assert a.tick()  # renewing keeps the start
    assert leader.leader_info(conn) == info
    assert a.release()
    assert leader.leader_info(conn) is None
    # a start record of another epoch is not this leadership's: its age is unknown
    conn.client.set(conn.keys.leader, f"7:{a.token}")
    assert leader.leader_info(conn) == leader.LeaderInfo(7, a.token, None)
    assert leader.decode_leader("x:y", "1:5") is None
    assert leader.decode_leader("3:t", "3:abc") == leader.LeaderInfo(3, "t", None)
