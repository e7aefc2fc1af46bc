"""huey instance and no-op task for bench/peers.py (`huey_consumer _peer_huey.huey`)."""

from __future__ import annotations

import os
from typing import Any

from _peer_done import done
from huey import RedisHuey

huey = RedisHuey("peers", url=os.environ["PEERS_URL"])


@huey.task()
def noop(payload: Any) -> None:
    done()
