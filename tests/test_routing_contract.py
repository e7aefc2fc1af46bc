"""The routing contract (design.md section 2) holds in Python, real Redis Lua and fakeredis Lua."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pycanary import queue_config
from pycanary.producer import Producer
from pycanary.routing import StickyHasher, fnv1a32, sticky_bucket

VECTORS_PATH = Path(__file__).resolve().parents[2] / "shared" / "vectors" / "sticky_hash.json"
LOCAL_VECTORS = Path(__file__).resolve().parent / "data" / "sticky_hash.json"


def load_vectors() -> list[dict]:
    path = VECTORS_PATH if VECTORS_PATH.is_file() else LOCAL_VECTORS
    return json.loads(path.read_text())["vectors"]


VECTORS = load_vectors()
FIXTURE_OK = HealthCheck.function_scoped_fixture


def test_local_copy_of_vectors_matches_shared() -> None:
    """tests/data keeps a copy so a clone without ../shared still runs; they must agree."""
    local = json.loads(LOCAL_VECTORS.read_text())["vectors"]
    if VECTORS_PATH.is_file():
        assert local == json.loads(VECTORS_PATH.read_text())["vectors"]
    # without ../shared the copy is still pinned: its vectors, digest as of the contract
    digest = hashlib.sha256(json.dumps(local, sort_keys=True).encode()).hexdigest()
    assert (len(local), digest) == (
        200, "04c7442cb2e005bc14f269484aba39999bf829c3da495395285b43a5de2b7652")


@pytest.mark.parametrize("v", VECTORS, ids=lambda v: f"{v['salt']}|{v['key'][:12]}")
def test_python_matches_vectors(v: dict) -> None:
    assert fnv1a32((v["salt"] + v["key"]).encode()) == v["fnv1a32"]
    assert sticky_bucket(v["key"], v["salt"]) == v["bucket"]
    assert StickyHasher().bucket(v["key"], v["salt"]) == v["bucket"]


def _explain(conn, queue: str, key: str, tenant: str = "") -> list:
    return conn.scripts.call("explain_route", conn.keys.queue(queue).config_keys(),
                             (key, tenant, 0))


def test_lua_matches_vectors(conn) -> None:
    """The bucket computed inside the script (bit library on real Redis, arithmetic fallback on
    fakeredis) equals the vectors' bucket for every salt."""
    for salt in sorted({v["salt"] for v in VECTORS}):
        queue_config.configure(conn, "payments", salt=salt)
        for v in (v for v in VECTORS if v["salt"] == salt):
            _lane, _weight, bucket, salt_now, mode = _explain(conn, "payments", v["key"])
            assert (bucket, salt_now, mode) == (v["bucket"], salt, "sticky"), v["key"]


def _route_raw(conn, queue: str, key: str, client_bucket: str, client_salt: str) -> str:
    keys = conn.keys.queue(queue).routing()
    lane, *_ = conn.scripts.call("route_enqueue", keys, ("{}", key, "", 0, client_bucket,
                                                         client_salt))
    return lane


def test_precomputed_and_lua_paths_agree_on_vectors(conn) -> None:
    """At weight = bucket the key is stable, at bucket + 1 canary: through the Lua FNV path
    (no client bucket), the precomputed path (Producer) and a stale-salt bucket (recomputed)."""
    producer = Producer(conn)
    for v in VECTORS:
        queue_config.configure(conn, "payments", salt=v["salt"])
        for weight, expected in ((v["bucket"], "stable"), (v["bucket"] + 1, "canary")):
            queue_config.set_weight(conn, "payments", weight)
            assert _route_raw(conn, "payments", v["key"], "", "") == expected
            wrong = str((v["bucket"] + 5000) % 10000)
            assert _route_raw(conn, "payments", v["key"], wrong, v["salt"] + "stale") == expected
            if not v["key"]:
                continue  # the producer refuses an empty sticky key; the script paths ran above
            producer.enqueue("payments", {}, sticky_key=v["key"])  # learn the salt
            assert producer.enqueue("payments", {}, sticky_key=v["key"]).lane == expected


@settings(max_examples=40, deadline=None, suppress_health_check=[FIXTURE_OK])
@given(
    key=st.text(min_size=1, max_size=40).filter(lambda s: all(ord(c) >= 32 for c in s)),
    salt=st.sampled_from(["", "dep-7f3a", "payments/v2:"]),
)
def test_lua_matches_python_on_random_keys(conn, key: str, salt: str) -> None:
    queue_config.configure(conn, "q", salt=salt)
    assert _explain(conn, "q", key)[2] == sticky_bucket(key, salt)


@settings(max_examples=30, deadline=None, suppress_health_check=[FIXTURE_OK])
@given(
    keys=st.lists(st.text(alphabet="abcdef0123456789-:", min_size=1, max_size=24), min_size=1,
                  max_size=8, unique=True),
    weights=st.lists(st.integers(0, 10_000), min_size=2, max_size=6),
)
def test_monotone_ramp_and_stickiness(conn, keys: list[str], weights: list[int]) -> None:
    """At a fixed weight a key's lane never changes; as the weight grows it never leaves canary.
    Checked through the real script, enqueuing each key twice per weight."""
    producer = Producer(conn)
    was_canary: dict[str, bool] = {}
    for w in sorted(weights):
        queue_config.set_weight(conn, "ramp", w)
        for k in keys:
            first = producer.enqueue("ramp", None, sticky_key=k).lane
            again = producer.enqueue("ramp", None, sticky_key=k).lane
            assert first == again
            assert first == ("canary" if sticky_bucket(k) < w else "stable")
            if was_canary.get(k):
                assert first == "canary"
            was_canary[k] = first == "canary"
