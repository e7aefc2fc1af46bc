"""pycanary's no-op handler for bench/peers.py (`--handler _peer_pycanary:noop`)."""

from __future__ import annotations

from typing import Any

from _peer_done import done


def noop(job: Any) -> None:
    done()
