"""arq worker settings and no-op function for bench/peers.py (`arq _peer_arq.WorkerSettings`).

max_jobs 1: one job at a time, as every other peer's worker here; other settings arq's defaults.
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
    max_jobs = 1
