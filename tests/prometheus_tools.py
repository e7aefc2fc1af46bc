"""Debian's `prometheus` and `promtool` for tests: find the binaries (skip with the reason when
missing, fail instead under PYCANARY_REQUIRE_PROMETHEUS=1, as CI sets), and run a throwaway
Prometheus on a free loopback port with its own config and storage in a temp directory.

The machine's Prometheus service, if any, is never started or touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.api_server import free_port

REQUIRE_ENV = "PYCANARY_REQUIRE_PROMETHEUS"


def binary(name: str) -> str:
    """The path of ``name`` (prometheus, promtool), or skip/fail the test saying why."""
    path = shutil.which(name)
    if path:
        return path
    reason = (f"{name} is not installed (Debian package `prometheus`; .ci/run installs it: "
              "apt-get install -y prometheus)")
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason}, and {REQUIRE_ENV}=1 requires it")
    pytest.skip(reason)


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary("promtool"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


class PrometheusProcess:
    """``prometheus`` with ``config`` (YAML text) written into ``workdir``; stop() ends it."""

    def __init__(self, workdir: Path, config: str, startup_s: float = 60.0) -> None:
        exe = binary("prometheus")
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        (workdir / "prometheus.yml").write_text(config)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "prometheus.log"
        with self.log.open("w") as fh:
            self.proc = subprocess.Popen(
                [exe, f"--config.file={workdir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}",
                 "--storage.tsdb.retention.time=1h"],
                cwd=workdir, stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + startup_s
        while True:
            try:
                with urllib.request.urlopen(f"{self.base}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"prometheus did not become ready:\n{self.log_text()}")
            time.sleep(0.2)

    def log_text(self) -> str:
        return self.log.read_text()[-4000:] if self.log.exists() else ""

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the ``data`` of a success answer."""
        url = f"{self.base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector: [{"metric": {...}, "value": [ts, "text"]}, ...]."""
        return self.api("query", query=expr)["result"]

    def wait_for(self, expr: str, ok: Any, timeout_s: float = 60.0) -> list[dict[str, Any]]:
        """Query ``expr`` until ``ok(result)`` holds; the result that passed."""
        deadline = time.monotonic() + timeout_s
        result: list[dict[str, Any]] = []
        while True:
            result = self.query(expr)
            if ok(result):
                return result
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"{expr} never matched; last {result}\n{self.log_text()}")
            time.sleep(0.5)

    def wait_for_rules(self, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """The rule groups once every rule was evaluated at least once (health not unknown)."""
        deadline = time.monotonic() + timeout_s
        while True:
            groups = self.api("rules")["groups"]
            rules = [r for g in groups for r in g["rules"]]
            if rules and all(r["health"] != "unknown" for r in rules):
                return groups
            if time.monotonic() > deadline:
                raise AssertionError(f"rules never evaluated: {groups}\n{self.log_text()}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
