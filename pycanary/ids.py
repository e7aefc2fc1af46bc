"""Job ids: UUIDv7 (RFC 9562), time-ordered so ids sort by enqueue time, monotonic per process."""

from __future__ import annotations

import os
import threading

from . import defaults

_lock = threading.Lock()
_last_ms = 0
_last_rand = 0
_RAND_BITS = 74


def _reserve(n: int, now_ms: int | None) -> tuple[int, int]:
    """Reserve n consecutive (ms, counter) values; within one millisecond the 74 random bits are
    incremented, so ids made by one process are strictly increasing."""
    global _last_ms, _last_rand
    ms = defaults.now_ms() if now_ms is None else now_ms
    with _lock:
        if ms <= _last_ms and _last_rand + n < (1 << _RAND_BITS):
            ms = _last_ms
            rand = _last_rand + 1
        else:
            ms = max(ms, _last_ms + (ms <= _last_ms))
            # leave headroom so a batch of increments never overflows the 74 bits
            rand = int.from_bytes(os.urandom(10), "big") >> 7
        _last_ms, _last_rand = ms, rand + n - 1
    return ms, rand


def _format(ms: int, rand: int) -> str:
    value = (
        (ms & ((1 << 48) - 1)) << 80
        | 0x7 << 76
        | ((rand >> 62) & 0xFFF) << 64
        | 0b10 << 62
        | (rand & ((1 << 62) - 1))
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


#: (ms, rand >> 48, the first 24 characters) of the last id made: one tuple, read and replaced
#: whole, so a thread never pairs one id's head with another's key.
_head: tuple[int, int, str] = (-1, -1, "")


def uuid7(now_ms: int | None = None) -> str:
    """A new UUIDv7 string.

    Ids made in the same millisecond share their first 24 characters (time, version, the high
    random bits): those are formatted once per millisecond, each id formats only its last 12
    (a producer's per-call cost, issue 15)."""
    global _head
    ms, rand = _reserve(1, now_ms)
    hi = rand >> 48
    cached = _head
    if cached[0] != ms or cached[1] != hi:
        cached = _head = (ms, hi, _format(ms, rand)[:24])
    return f"{cached[2]}{rand & 0xFFFFFFFFFFFF:012x}"


def uuid7_many(n: int, now_ms: int | None = None) -> list[str]:
    """n new UUIDv7 strings, consecutive, reserved under one lock acquisition.

    Consecutive ids share all but their low 48 bits unless a carry crosses them, so the shared
    24 characters are formatted once and only the last 12 per id.
    """
    if n <= 0:
        return []
    ms, rand = _reserve(n, now_ms)
    low = rand & 0xFFFFFFFFFFFF
    if low + n > 0xFFFFFFFFFFFF:  # a carry would change the shared part: format each fully
        return [_format(ms, rand + i) for i in range(n)]
    head = _format(ms, rand)[:24]
    return [f"{head}{low + i:012x}" for i in range(n)]
