"""The routing contract of docs/design.md section 2, in Python.

The Lua scripts compute the same thing; pycanary's own producer precomputes the sticky bucket
here (saving the Lua FNV loop on the server) and the script trusts it only when the salt the
client used is the salt in force.
"""

from __future__ import annotations

from functools import lru_cache

FNV_OFFSET = 2166136261
FNV_PRIME = 16777619
BUCKETS = 10_000
MAX_WEIGHT_BP = 10_000


def fnv1a32(data: bytes, h: int = FNV_OFFSET) -> int:
    """FNV-1a-32 of data, continuing from state h."""
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & 0xFFFFFFFF
    return h


@lru_cache(maxsize=256)
def _salt_state(salt: str) -> int:
    return fnv1a32(salt.encode())


def sticky_bucket(key: str, salt: str = "") -> int:
    """bucket = FNV-1a-32(UTF-8(salt + key)) mod 10000."""
    return fnv1a32(key.encode(), _salt_state(salt)) % BUCKETS


class StickyHasher:
    """sticky_bucket with the FNV states of a key's prefixes remembered.

    Job ids made in one batch, or by one producer in one millisecond, share all but their last
    few characters (UUIDv7: same millisecond, consecutive counters), so hashing only the
    changing tail gives the same bucket for a fraction of the work. FNV-1a is a left fold, so
    state(prefix + tail) continues state(prefix) exactly; splitting a str between characters
    splits its UTF-8 bytes too. Two levels: the state of all but the last 8 characters
    (changes once per millisecond) and of all but the last 2 (changes every 256 ids), so most
    keys cost two FNV rounds.
    """

    __slots__ = ("_prefix", "_prefix2", "_salt", "_state", "_state2")

    TAIL = 8
    TAIL2 = 2

    def __init__(self) -> None:
        self._prefix: str | None = None
        self._salt = ""
        self._state = FNV_OFFSET
        self._prefix2: str | None = None
        self._state2 = FNV_OFFSET

    def bucket(self, key: str, salt: str = "") -> int:
        if len(key) <= 2 * self.TAIL:
            return fnv1a32(key.encode(), _salt_state(salt)) % BUCKETS
        prefix2 = key[: -self.TAIL2]
        if prefix2 != self._prefix2 or salt != self._salt:
            prefix = key[: -self.TAIL]
            if prefix != self._prefix or salt != self._salt:
                self._prefix, self._salt = prefix, salt
                self._state = fnv1a32(prefix.encode(), _salt_state(salt))
            self._prefix2 = prefix2
            self._state2 = fnv1a32(key[-self.TAIL : -self.TAIL2].encode(), self._state)
        h = self._state2
        for b in key[-self.TAIL2 :].encode():
            h = ((h ^ b) * FNV_PRIME) & 0xFFFFFFFF
        return h % BUCKETS
