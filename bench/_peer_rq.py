"""rq's no-op job for bench/peers.py (rq stores the import path `_peer_rq.noop`)."""

from __future__ import annotations

from typing import Any

from _peer_done import done


def noop(payload: Any) -> None:
    done()
