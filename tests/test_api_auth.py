"""Who may do what, on every route of the app (iterated, so a new route cannot be left out):
no token -> 401, a viewer changing something -> 403 with nothing changed in Redis, an
operator -> allowed; tokens never echoed in a response or the server's log; `pycanary api`
refuses to start without tokens, with --no-auth off loopback, or with a short token."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from pycanary import service
from pycanary.api import create_app
from pycanary.api.app import operator, viewer
from pycanary.api.auth import parse_tokens
from pycanary.connection import Connection
from tests.api_server import ROOT, running_api
from tests.conftest import REAL_URL
from tests.test_api import OP, OPERATOR, VIEWER, VW, fake_worker

#: Values for the path parameters of the routes (a queue that exists, a shipped plan).
PATH_VALUES = {"queue": "payments", "tenant": "acme", "job_id": "job-0", "name": "quick"}
#: Routes anyone may call: a probe must not carry secrets.
OPEN = {("GET", "/healthz")}


@dataclass(frozen=True)
class RouteCase:
    method: str
    path: str
    url: str
    change: bool  # needs an operator

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def api_routes(app) -> list[RouteCase]:
    """Every API route of the app with its role, from its dependencies: `operator` for a
    change, `viewer` for a read; a route with neither (other than OPEN) is a test failure."""
    out = []

    def contexts(routes) -> Iterator:
        for r in routes:
            if hasattr(r, "effective_route_contexts"):  # an included router
                yield from r.effective_route_contexts()
            elif getattr(r, "dependant", None) is not None:
                yield r

    for r in contexts(app.routes):
        calls = set()
        stack = list(r.dependant.dependencies)
        while stack:
            d = stack.pop()
            calls.add(d.call)
            stack.extend(d.dependencies)
        for method in sorted(r.methods - {"HEAD"}):
            if (method, r.path) in OPEN:
                continue
            assert operator in calls or viewer in calls, f"{method} {r.path} has no auth"
            url = r.path
            for name, value in PATH_VALUES.items():
                url = url.replace("{" + name + "}", value)
            assert "{" not in url, f"no test value for a parameter of {r.path}"
            out.append(RouteCase(method, r.path, url, operator in calls))
    return out


def snapshot(conn: Connection) -> dict[bytes, bytes]:
    """Every key under the test's prefix with its DUMP: any write shows."""
    raw = redis.Redis.from_url(REAL_URL)
    try:
        return {k: raw.dump(k) for k in sorted(raw.scan_iter(match=f"{conn.keys.prefix}:*"))}
    finally:
        raw.close()


@pytest.fixture
def app(real_conn: Connection):
    service.configure_queue(real_conn, "payments", stable_version="v1")
    fake_worker(real_conn, "w1", "v2")
    return create_app(real_conn, tokens=parse_tokens(f"viewer:{VIEWER},operator:{OPERATOR}"))


def _call(client: TestClient, case: RouteCase, headers: dict[str, str]):
    body = None if case.method in ("GET", "DELETE") else {}
    return client.request(case.method, case.url, headers=headers, json=body)


def _assert_envelope(res, status: int, code: str) -> None:
    assert res.status_code == status, (res.status_code, res.text)
    err = res.json()["error"]
    assert err["code"] == code and err["message"] and set(err) == {"code", "message", "field"}


def test_the_auth_matrix_on_every_route(app, real_conn: Connection) -> None:
    cases = api_routes(app)
    assert len(cases) >= 30 and sum(c.change for c in cases) >= 15
    seen: list[str] = []
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        for case in cases:
            for headers in ({}, {"Authorization": "Bearer not-a-token-at-all-000"},
                            {"Authorization": f"Basic {OPERATOR}"}):
                res = _call(client, case, headers)
                _assert_envelope(res, 401, "unauthorized")
                assert res.headers["www-authenticate"] == "Bearer", case
                seen.append(res.text + json.dumps(dict(res.headers)))
            before = snapshot(real_conn)
            res = _call(client, case, VW)
            if case.change:
                _assert_envelope(res, 403, "forbidden")
                assert snapshot(real_conn) == before, f"{case}: a viewer changed Redis"
            else:
                assert res.status_code not in (401, 403), (str(case), res.text)
                assert res.status_code < 500, (str(case), res.text)
            seen.append(res.text + json.dumps(dict(res.headers)))
        for case in (c for c in cases if c.change):
            res = _call(client, case, OP)
            assert res.status_code not in (401, 403), (str(case), res.text)
            assert res.status_code < 500, (str(case), res.text)
            seen.append(res.text + json.dumps(dict(res.headers)))
        who = client.get("/v1/whoami", headers=OP)
        assert who.json() == {"role": "operator", "token": "operator#1"}
        assert client.get("/v1/whoami", headers=VW).json()["role"] == "viewer"
    for text in seen:
        assert OPERATOR not in text and VIEWER not in text


def test_no_auth_app_treats_every_caller_as_an_operator(real_conn: Connection) -> None:
    with TestClient(create_app(real_conn, tokens=None)) as client:
        assert client.get("/v1/whoami").json() == {"role": "operator", "token": "no-auth"}
        res = client.put("/v1/queues/payments/weight", json={"percent": 3})
        assert res.status_code == 200, res.text


# -- the real server ----------------------------------------------------------------------------
def _get(url: str, token: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_the_server_starts_and_never_logs_a_token(real_conn: Connection,
                                                  tmp_path: Path) -> None:
    service.configure_queue(real_conn, "payments", stable_version="v1")
    log = tmp_path / "api.log"
    with running_api(real_conn.keys.prefix, tokens=f"viewer:{VIEWER},operator:{OPERATOR}",
                     log=log, extra=("--log-level", "debug")) as base:
        assert _get(f"{base}/v1/whoami", OPERATOR) == \
            (200, json.dumps({"role": "operator", "token": "operator#1"}, separators=(",", ":")))
        status, text = _get(f"{base}/v1/queues/payments", VIEWER)
        assert status == 200 and json.loads(text)["stable_version"] == "v1"
        status, text = _get(f"{base}/v1/queues/payments", VIEWER[:-1] + "x")
        assert status == 401 and VIEWER[:-1] not in text
        # a token where it does not belong: in the path and the query string
        status, text = _get(f"{base}/v1/queues/{OPERATOR}?token={VIEWER}", VIEWER)
        assert status == 404 and OPERATOR not in text and VIEWER not in text
        status, _ = _get(f"{base}/metrics", VIEWER)
        assert status == 200
        assert _get(f"{base}/healthz")[0] == 200
    text = log.read_text()
    assert "pycanary api on http://127.0.0.1:" in text and "bearer tokens" in text
    assert OPERATOR not in text and VIEWER not in text and VIEWER[:-1] not in text


def _api(*args: str, tokens: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PYCANARY_API_TOKENS", None)
    if tokens is not None:
        env["PYCANARY_API_TOKENS"] = tokens
    return subprocess.run([sys.executable, "-m", "pycanary.cli", "--redis-url", REAL_URL,
                           "api", "--port", "1", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_the_server_refuses_to_start_unsafely() -> None:
    res = _api(tokens=None)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip() == (
        'error: PYCANARY_API_TOKENS: no API tokens: set PYCANARY_API_TOKENS="viewer:<token>,'
        'operator:<token>" (or --no-auth on a loopback --host)')
    res = _api("--no-auth", "--host", "0.0.0.0", tokens=None)
    assert res.returncode == 2
    assert res.stderr.strip() == ("error: host: --no-auth is allowed only on a loopback "
                                  "address, not '0.0.0.0': set PYCANARY_API_TOKENS instead")
    res = _api(tokens="operator:tooshort")
    assert res.returncode == 2 and "tooshort" not in res.stderr
    assert res.stderr.strip() == ("error: PYCANARY_API_TOKENS: entry 1: a token must be at "
                                  "least 16 characters")
    res = _api(tokens=f"admin:{OPERATOR}")
    assert res.returncode == 2 and OPERATOR not in res.stderr
    assert "entry 1 must be viewer:<token> or operator:<token>" in res.stderr
