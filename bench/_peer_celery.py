"""Celery app and no-op task for bench/peers.py (`celery -A _peer_celery worker`).

Redis broker at $PEERS_URL, no result backend (Celery's default), default queue `celery`.
"""

from __future__ import annotations

import os
from typing import Any

from _peer_done import done
from celery import Celery

app = Celery("peers", broker=os.environ["PEERS_URL"])
app.conf.update(broker_connection_retry_on_startup=True, worker_hijack_root_logger=False,
                task_ignore_result=True)


@app.task(name="noop")
def noop(payload: Any) -> None:
    done()
