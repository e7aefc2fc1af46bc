"""Fixtures: every routing test runs on the embedded fakeredis and on a real Redis server.

Real Redis comes from PYCANARY_TEST_REDIS_URL (default redis://127.0.0.1:6379/0). It is never
skipped: a missing server fails the run. Each test gets its own key prefix and deletes only the
keys under it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis

import pycanary
from pycanary.connection import Connection

REAL_URL = os.environ.get("PYCANARY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _drop_prefix(conn: Connection) -> None:
    client = conn.client
    # admin path (tests only): remove what this test created, nothing else
    for key in list(client.scan_iter(match=f"{conn.keys.prefix}:*", count=1000)):
        client.delete(key)


def make_conn(backend: str) -> Connection:
    prefix = f"pycanary-test-{uuid.uuid4().hex[:12]}"
    if backend == "memory":
        return pycanary.connect(f"memory://test-{uuid.uuid4().hex}", prefix=prefix)
    conn = pycanary.connect(REAL_URL, prefix=prefix)
    try:
        conn.client.ping()
    except redis.exceptions.ConnectionError as exc:  # pragma: no cover - environment problem
        pytest.fail(f"real Redis required at {REAL_URL} (set PYCANARY_TEST_REDIS_URL): {exc}")
    return conn


@contextmanager
def _fresh(backend: str) -> Iterator[Connection]:
    c = make_conn(backend)
    try:
        yield c
    finally:
        _drop_prefix(c)
        c.close()


@pytest.fixture(params=["memory", "redis"])
def conn(request: pytest.FixtureRequest) -> Iterator[Connection]:
    with _fresh(request.param) as c:
        yield c


@pytest.fixture
def real_conn() -> Iterator[Connection]:
    with _fresh("redis") as c:
        yield c


@pytest.fixture
def memory_conn() -> Iterator[Connection]:
    with _fresh("memory") as c:
        yield c
