"""rediss:// with a CA and client certificates, against a real TLS redis-server started here."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import pycanary
from pycanary import service
from pycanary.errors import ConnectionFailedError
from tests.redis_servers import RedisTLSProcess, make_tls_certs

PW = "tlssecretpw"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisTLSProcess, dict]]:
    work = tmp_path_factory.mktemp("tls")
    certs = make_tls_certs(work / "certs")
    proc = RedisTLSProcess(work, certs, password=PW)
    try:
        yield proc, certs
    finally:
        proc.stop()


def _fetch_one(conn: pycanary.Connection, queue: str) -> list:
    qk = conn.keys.queue(queue)
    envelopes, _bad = conn.scripts.call(
        "fetch_jobs", [qk.lane_stable, qk.processing("w1"), qk.rolled_back, qk.processing_index],
        [10, "v1", "w1", "stable"])
    return envelopes


def test_enqueue_and_fetch_over_tls_with_url_params(tls: tuple[RedisTLSProcess, dict]) -> None:
    proc, c = tls
    url = (f"rediss://default:{PW}@127.0.0.1:{proc.port}/0?ssl_ca_certs={c['ca.pem']}"
           f"&ssl_certfile={c['client.pem']}&ssl_keyfile={c['client.key']}")
    conn = pycanary.connect(url, prefix="tls")
    conn.ping()
    assert PW not in repr(conn)
    service.enqueue(conn, "tq", {"n": 1})
    assert proc.client.llen("tls:{tq}:lane:stable") == 1
    fetched = _fetch_one(conn, "tq")
    assert len(fetched) == 1 and '"n":1' in fetched[0].replace(" ", "")
    assert proc.client.llen("tls:{tq}:processing:w1") == 1
    assert proc.client.llen("tls:{tq}:lane:stable") == 0


def test_tls_from_environment_settings(tls: tuple[RedisTLSProcess, dict],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    proc, c = tls
    monkeypatch.setenv("PYCANARY_REDIS_TLS_CA", str(c["ca.pem"]))
    monkeypatch.setenv("PYCANARY_REDIS_TLS_CERT", str(c["client.pem"]))
    monkeypatch.setenv("PYCANARY_REDIS_TLS_KEY", str(c["client.key"]))
    conn = pycanary.connect(f"rediss://default:{PW}@127.0.0.1:{proc.port}/0", prefix="tls-env")
    service.enqueue(conn, "tq", {"n": 2})
    assert proc.client.llen("tls-env:{tq}:lane:stable") == 1
    res = subprocess.run(
        [sys.executable, "-m", "pycanary.cli", "--redis-url",
         f"rediss://default:{PW}@127.0.0.1:{proc.port}/0", "--prefix", "tls-env", "enqueue",
         "tq", "{}"], capture_output=True, text=True, timeout=60,
        env=dict(os.environ))
    assert res.returncode == 0, res.stderr
    assert proc.client.llen("tls-env:{tq}:lane:stable") == 2


def test_without_client_certificate_fails_cleanly(tls: tuple[RedisTLSProcess, dict],
                                                  tmp_path: Path) -> None:
    proc, c = tls
    url = f"rediss://default:{PW}@127.0.0.1:{proc.port}/0?ssl_ca_certs={c['ca.pem']}"
    conn = pycanary.connect(url, prefix="tls")
    with pytest.raises(ConnectionFailedError) as err:
        conn.ping()
    assert PW not in str(err.value)
    assert str(err.value).startswith(f"cannot reach Redis at rediss://default:***@127.0.0.1:"
                                     f"{proc.port}/0"), str(err.value)
    res = subprocess.run([sys.executable, "-m", "pycanary.cli", "--redis-url", url, "status"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert PW not in res.stdout + res.stderr and "Traceback" not in res.stderr
    assert res.stderr.startswith("error: cannot reach Redis at rediss://default:***@")
