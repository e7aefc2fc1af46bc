"""`pycanary demo`: both scenarios end as they should, with zero lost jobs, on the embedded
default and on a real Redis; on a real Redis the demo runs where it is told (flag or
environment), under a prefix of its own, and deletes only its own keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

import pycanary
from pycanary import deployments
from pycanary.connection import redact_url
from pycanary.demo import run_demo
from tests.conftest import REAL_URL

CLI = [sys.executable, "-m", "pycanary.cli"]
#: A demo at --speed 400 takes ~15 s; the bound is for a machine under heavy load only. Each
#: test waits on the demo's own end (its process exit), never on a fixed time.
CLI_TIMEOUT_S = 600


def demo_keys(client, prefix: str) -> list[str]:
    return list(client.scan_iter(match=f"{prefix}:*", count=1000))


@pytest.mark.slow
@pytest.mark.parametrize(("url", "backend"), [("memory://", "lists"), (REAL_URL, "lists"),
                                              (REAL_URL, "streams")],
                         ids=["memory", "redis", "redis-streams"])
@pytest.mark.parametrize(("scenario", "outcome"), [("healthy", "completed"),
                                                   ("regression", "rolled_back")])
def test_demo_outcome_and_nothing_lost(url: str, backend: str, scenario: str,
                                       outcome: str) -> None:
    result = run_demo(url, scenario=scenario, speed=300, rate=150, backend=backend)
    assert result.outcome == outcome, result.summary()
    assert result.lost == 0
    assert result.enqueued > 300
    assert result.processed["v1"] > 0 and result.processed["v2"] > 0
    if url == "memory://":
        assert result.url.startswith("memory://demo-")
    else:
        assert result.url == redact_url(REAL_URL)
        conn = pycanary.connect(REAL_URL)
        try:
            assert demo_keys(conn.client, result.prefix) == [], "the demo cleans up after itself"
        finally:
            conn.close()
    types = [e["type"] for e in result.events]
    if outcome == "completed":
        assert types.count("stage") == 2 and "awaiting_promotion" in types
        assert types[-2:] == ["promoted", "completed"]
        assert result.weight_zero_ms is None
    else:
        assert "rollback" in types and types[-1] == "rolled_back"
        # (detection time is asserted by the controller scenario tests; at this speed a
        # 30 s interval is 0.1 s of real time, too short to gather samples)
        assert result.regression_to_rollback_s is not None
        assert result.weight_zero_ms is not None and 0 <= result.weight_zero_ms < 1000
        assert f"weight 0       {result.weight_zero_ms:.0f} ms after" in result.summary()


def test_demo_streams_on_the_embedded_server_is_refused_with_the_reason() -> None:
    with pytest.raises(pycanary.ValidationError) as err:
        run_demo("memory://", backend="streams")
    assert err.value.field == "backend" and "memory://" in str(err.value)


def test_demo_cli_json_and_bad_scenario() -> None:
    """The default is the embedded server: nothing to install, nothing written elsewhere."""
    env = {k: v for k, v in os.environ.items() if k != "PYCANARY_REDIS_URL"}
    res = subprocess.run([*CLI, "demo", "--speed", "400", "--json"], capture_output=True,
                         text=True, timeout=CLI_TIMEOUT_S, env=env)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["outcome"] == "completed" and data["lost"] == 0, res.stdout[-3000:]
    assert data["url"].startswith("memory://demo-")
    res = subprocess.run([*CLI, "demo", "--scenario", "chaos"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2 and res.stderr.startswith("error: scenario:")


@pytest.mark.slow
def test_demo_runs_on_the_redis_of_the_environment_and_deletes_only_its_keys(real_conn
                                                                             ) -> None:
    """PYCANARY_REDIS_URL (and PYCANARY_PREFIX) are the demo's server: its keys appear there
    while it runs, under <prefix>:demo-<random>, and are gone afterwards; keys it did not
    write, even ones that look like another demo's, are left alone."""
    c = real_conn.client
    prefix = real_conn.keys.prefix
    neighbours = {f"{prefix}:sentinel": "mine", f"{prefix}:demo-00000000:{{payments}}:config":
                  "another demo's", f"{prefix}-demo-x:{{payments}}:config": "look-alike"}
    for k, v in neighbours.items():
        c.set(k, v)
    env = {**os.environ, "PYCANARY_REDIS_URL": REAL_URL, "PYCANARY_PREFIX": prefix}
    proc = subprocess.Popen([*CLI, "demo", "--speed", "400", "--json"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: set[str] = set()
    try:
        deadline = time.monotonic() + CLI_TIMEOUT_S
        while proc.poll() is None and time.monotonic() < deadline:
            seen.update(k for k in c.scan_iter(match=f"{prefix}:demo-*:{{payments}}:deployment")
                        if not k.startswith(f"{prefix}:demo-00000000:"))
            time.sleep(0.2)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err
    data = json.loads(out)
    assert data["url"] == redact_url(REAL_URL) and data["kept"] is False
    assert data["prefix"].startswith(f"{prefix}:demo-")
    assert data["outcome"] == "completed" and data["lost"] == 0, out[-3000:]
    assert seen == {f"{data['prefix']}:{{payments}}:deployment"}, "it ran on this server"
    assert demo_keys(c, data["prefix"]) == []
    assert {k: c.get(k) for k in neighbours} == neighbours


@pytest.mark.slow
def test_demo_redis_url_flag_and_keep(real_conn) -> None:
    """`pycanary --redis-url URL demo --keep`: the run is left on the server for a look, at
    the prefix the summary names, with the deployment it drove to the end."""
    prefix = real_conn.keys.prefix
    env = {k: v for k, v in os.environ.items() if k != "PYCANARY_REDIS_URL"}
    res = subprocess.run([*CLI, "--redis-url", REAL_URL, "--prefix", prefix, "demo", "--speed",
                          "400", "--keep"], capture_output=True, text=True,
                         timeout=CLI_TIMEOUT_S, env=env)
    assert res.returncode == 0, res.stderr
    line = next(x for x in res.stdout.splitlines() if x.startswith("keys kept"))
    kept_prefix = line.split(", prefix ", 1)[1].split()[0]
    assert kept_prefix.startswith(f"{prefix}:demo-"), line
    conn = pycanary.connect(REAL_URL, prefix=kept_prefix)
    try:
        dep = deployments.get(conn, "payments")
        assert dep is not None and dep.state == "completed", res.stdout
        assert (dep.stable_version, dep.canary_version) == ("v1", "v2")
    finally:
        conn.close()
    # (real_conn's clean-up removes the kept keys: they are under its prefix)
