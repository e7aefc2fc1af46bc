"""Dramatiq broker and no-op actor for bench/peers.py (`dramatiq _peer_dramatiq`)."""

from __future__ import annotations

import os
from typing import Any

import dramatiq
from _peer_done import done
from dramatiq.brokers.redis import RedisBroker

broker = RedisBroker(url=os.environ["PEERS_URL"])
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="default", max_retries=0)
def noop(payload: Any) -> None:
    done()


@dramatiq.actor(queue_name="enq", max_retries=0)
def noop_enq(payload: Any) -> None:
    """The enqueue phases' actor: its queue is never worked, so they don't feed the drain."""
    done()
