"""The application's producer for tests/test_integ_celery.py, in a process of its own (one
Celery app per process and per test prefix): sends `charge` tasks at a steady rate with sticky
order ids and records each task id and order, in publish order, until told to stop."""

from __future__ import annotations

import sys
import time

from tests.integ_celery_app import PREFIX, _r, charge

ORDERS = 60


def main(rate: float) -> None:
    i = 0
    while not _r.exists(f"{PREFIX}:integ:stop"):
        order = f"order-{i % ORDERS}"
        res = charge.apply_async(kwargs={"order_id": order, "n": i})
        _r.rpush(f"{PREFIX}:integ:sent", f"{res.id} {order}")
        i += 1
        time.sleep(1 / rate)
    _r.set(f"{PREFIX}:integ:stopped", i)


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 150.0)
