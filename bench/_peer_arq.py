"""arq worker settings and no-op function for bench/peers.py (`arq _peer_arq.WorkerSettings`).

WorkerSettings is arq's defaults (max_jobs 10: up to ten jobs at once in the one process,
poll_delay 0.5 s). OneAtATime runs one job at a time like every other worker measured here;
arq then starts one job per poll, so it polls every 10 ms instead of 0.5 s.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from _peer_done import done
from arq.connections import RedisSettings

REDIS = RedisSettings.from_dsn(os.environ["PEERS_URL"])


async def noop(ctx: dict[str, Any], payload: Any) -> None:
    done()


class WorkerSettings:
    functions: ClassVar[list[Any]] = [noop]
    redis_settings = REDIS


class OneAtATime:  # arq reads the class's own __dict__: no inheritance
    functions: ClassVar[list[Any]] = [noop]
    redis_settings = REDIS
    max_jobs = 1
    poll_delay = 0.01
