"""The producer's per-call shortcuts (issue 15) give exactly what the plain code gives."""

from __future__ import annotations

import random
import uuid

import pytest

from pycanary import ids
from pycanary.job import encode_json, encode_payload
from pycanary.routing import StickyHasher, sticky_bucket

PAYLOADS = [None, 0, -1.5, 1e300, "", "é\"\\\n\u2028", [1, [2, {"a": None}]],
            {"order_id": "ord-1", "amount_cents": 1999, "nested": {"k": [True, False]}},
            {"ü": "x" * 300}, 2**70]


@pytest.mark.parametrize("payload", PAYLOADS, ids=range(len(PAYLOADS)))
def test_fast_payload_encoder_gives_the_same_text(payload: object) -> None:
    assert encode_payload(payload) == encode_json(payload)


def test_fast_payload_encoder_refuses_what_encode_json_refuses() -> None:
    for bad, exc in ((float("nan"), ValueError), (float("inf"), ValueError),
                     ({1, 2}, TypeError), (object(), TypeError)):
        with pytest.raises(exc):
            encode_json(bad)
        with pytest.raises(exc):
            encode_payload(bad)
    circular: list = []
    circular.append(circular)
    with pytest.raises(RecursionError):  # the producer reports it as too deeply nested
        encode_payload(circular)


def test_uuid7_head_cache_matches_full_formatting() -> None:
    """Ids of one millisecond reuse the formatted head; each must equal the full format of
    its (ms, counter), across a carry into the head's bits and a change of millisecond."""
    made = []
    ids._last_ms, ids._last_rand = 5_000, (1 << 48) - 3  # next ids carry into bit 48
    for _ in range(6):
        made.append((ids.uuid7(5_000), ids._last_ms, ids._last_rand))
    made.append((ids.uuid7(5_001), ids._last_ms, ids._last_rand))
    for text, ms, rand in made:
        assert text == ids._format(ms, rand)
        assert uuid.UUID(text).version == 7
    texts = [t for t, _m, _r in made]
    assert texts == sorted(texts) and len(set(texts)) == len(texts)
    assert len({t[:24] for t in texts[:6]}) == 2  # the carry changed the head once


def test_sticky_hasher_caches_give_the_plain_bucket() -> None:
    """Consecutive ids (tails that change in the last 2, then the last 8 characters), other
    salts in between, short keys and non-ASCII tails: always sticky_bucket's answer."""
    rng = random.Random(7)
    h = StickyHasher()
    keys = ids.uuid7_many(600, 9_000) + [ids.uuid7(9_001) for _ in range(50)]
    keys += ["short", "k" * 17, "prefix-of-a-key-é", "prefix-of-a-key-ü€"]
    for key in keys:
        salt = rng.choice(["", "", "", "s1", "9f"])
        assert h.bucket(key, salt) == sticky_bucket(key, salt), (key, salt)
