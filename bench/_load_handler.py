"""Handler run by the `pycanary worker` processes of bench/load.py (``_load_handler:record``).

Each finished job appends ``id enqueued_at_ms done_ms`` to a per-process file in
$LOAD_OUT_DIR (buffered, flushed at exit), so the bench can count every job that ran and its
end-to-end time without adding Redis calls to the measured load.
"""

from __future__ import annotations

import atexit
import os
import threading
import time

from pycanary.job import Job

_lock = threading.Lock()
_lines: list[str] = []


def _flush() -> None:
    with _lock, open(os.path.join(os.environ["LOAD_OUT_DIR"], f"done-{os.getpid()}.txt"),
                     "a") as f:
        f.write("".join(_lines))
        _lines.clear()


atexit.register(_flush)


def record(job: Job) -> None:
    line = f"{job.id} {job.enqueued_at} {time.time() * 1000:.3f}\n"
    with _lock:
        _lines.append(line)
