"""Example handlers for the README tour: `--handler examples.handlers:process_payment`.

The version under test misbehaves when PAYMENTS_FAIL_RATE / PAYMENTS_SLOW_MS are set, so a
tour can show both a healthy ramp and an automatic rollback without changing code.
"""

from __future__ import annotations

import os
import random
import time

from pycanary import Job

_rng = random.Random()


def process_payment(job: Job) -> None:
    """Pretend to charge a card: a few milliseconds of work; a flaky gateway declines one
    payment in twenty (the tour's plan, examples/plans/quick.yaml, is checked for that)."""
    slow_ms = float(os.environ.get("PAYMENTS_SLOW_MS", "0"))
    time.sleep((0.003 + slow_ms / 1000) * _rng.lognormvariate(0, 0.3))
    fail_rate = float(os.environ.get("PAYMENTS_FAIL_RATE", "0.05"))
    if _rng.random() < fail_rate:
        raise RuntimeError(f"gateway declined payment {job.id} (attempt {job.attempt})")
