"""The CLI as a user runs it: exit codes, one-line errors without tracebacks, --json output."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

from tests.conftest import REAL_URL


def run(*args: str, prefix: str | None = None, url: str = REAL_URL) -> subprocess.CompletedProcess:
    base = [sys.executable, "-m", "pycanary.cli", "--redis-url", url]
    if prefix:
        base += ["--prefix", prefix]
    return subprocess.run([*base, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def prefix(real_conn) -> str:
    return real_conn.keys.prefix


def assert_user_error(res: subprocess.CompletedProcess, field: str) -> None:
    assert res.returncode == 2, res
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"error: {field}: "), lines[0]


def test_enqueue_set_weight_show_json(prefix: str) -> None:
    res = run("set-weight", "payments", "12.5", "--json", prefix=prefix)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["percent"] == 12.5
    res = run("enqueue", "payments", '{"amount": 10}', "--json", prefix=prefix)
    data = json.loads(res.stdout)
    assert data["enqueued"] == 1 and data["jobs"][0]["lane"] in ("stable", "canary")
    res = run("enqueue", "payments", "--count", "2000", "--tenant", "acme", "--json",
              prefix=prefix)
    data = json.loads(res.stdout)
    assert data["enqueued"] == 2000
    assert sum(data["lanes"].values()) == 2000
    assert 100 < data["lanes"]["canary"] < 400  # 12.5% of 2000 = 250, far inside
    res = run("queue", "show", "payments", "--json", prefix=prefix)
    info = json.loads(res.stdout)
    assert info["weight_percent"] == 12.5
    assert info["depth"]["stable"] + info["depth"]["canary"] == 2001
    res = run("queue", "show", "payments", prefix=prefix)
    assert "canary weight   12.5%" in res.stdout
    res = run("queue", "list", "--json", prefix=prefix)
    assert [q["queue"] for q in json.loads(res.stdout)] == ["payments"]


def test_text_output(prefix: str) -> None:
    res = run("enqueue", "payments", "--job-id", "order-1", prefix=prefix)
    assert res.returncode == 0
    assert res.stdout.startswith("enqueued order-1 to payments (stable lane)")
    res = run("set-weight", "payments", "5", "--tenant", "internal", prefix=prefix)
    assert res.stdout.strip() == "tenant internal on payments: canary weight - -> 5%"
    res = run("set-weight", "payments", "--tenant", "internal", "--clear", prefix=prefix)
    assert res.stdout.strip() == "tenant internal on payments: override cleared (was 5%)"


def test_queue_configure_and_guard(prefix: str) -> None:
    res = run("queue", "configure", "payments", "--max-weight", "10", "--stable-version", "v1",
              "--no-sticky", "--json", prefix=prefix)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert (info["max_weight_percent"], info["stable_version"], info["sticky"]) == (10, "v1",
                                                                                     False)
    res = run("set-weight", "payments", "20", prefix=prefix)
    assert_user_error(res, "weight")
    assert res.stderr.strip() == "error: weight: 20% is above the queue's max_weight of 10%"


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("set-weight", "payments", "150"), "weight"),
        (("set-weight", "payments", "ten"), "weight"),
        (("set-weight", "payments", "NaN"), "weight"),
        (("set-weight", "payments"), "weight"),
        (("enqueue", "payments", "{bad json"), "payload"),
        (("enqueue", "pay{ments}"), "queue"),
        (("enqueue", "payments", "--count", "0"), "count"),
        (("enqueue", "payments", "--count", "2", "--job-id", "x"), "job_id"),
        (("queue", "configure", "payments", "--backend", "kafka"), "backend"),
        (("queue", "configure", "payments"), "options"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(prefix: str, args: tuple, field: str) -> None:
    assert_user_error(run(*args, prefix=prefix), field)


def test_streams_backend_refusals_are_user_errors(prefix: str) -> None:
    """The embedded memory:// server cannot run the Streams scripts; a queue with jobs keeps
    its backend. Both: exit 2, one line naming `backend`."""
    res = run("queue", "configure", "payments", "--backend", "streams", url="memory://cli")
    assert_user_error(res, "backend")
    assert "memory://" in res.stderr
    assert run("enqueue", "payments", "{}", prefix=prefix).returncode == 0
    res = run("queue", "configure", "payments", "--backend", "streams", prefix=prefix)
    assert_user_error(res, "backend")
    assert "holds jobs" in res.stderr
    assert run("queue", "configure", "fresh", "--backend", "streams", prefix=prefix
               ).returncode == 0


def test_unreachable_redis_exits_1_without_traceback() -> None:
    res = run("queue", "list", url="redis://127.0.0.1:1/0")
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith("error: cannot reach Redis")


def test_bad_url_is_a_user_error() -> None:
    assert_user_error(run("queue", "list", url="http://127.0.0.1:6379"), "redis_url")


COMMANDS = [(), ("enqueue",), ("set-weight",), ("queue",), ("queue", "configure"),
            ("queue", "show"), ("queue", "list"), ("route", "explain"), ("demo",),
            ("worker",), ("workers",), ("canary",), ("canary", "start"), ("ramp",),
            ("status",), ("promote",), ("rollback",), ("pause",), ("resume",), ("drain",),
            ("controller",), ("metrics",), ("history",), ("events",), ("retry",), ("dlq",),
            ("dlq", "list"), ("dlq", "show"), ("dlq", "requeue"), ("dlq", "purge")]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "root")
def test_help_on_every_command(cmd: tuple) -> None:
    res = subprocess.run([sys.executable, "-m", "pycanary.cli", *cmd, "--help"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    assert "Usage" in res.stdout
    assert len(res.stdout.splitlines()) > 4



@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "root")
def test_help_reads_at_80_columns_with_an_example(cmd: tuple) -> None:
    import os

    res = subprocess.run([sys.executable, "-m", "pycanary.cli", *cmd, "--help"],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "COLUMNS": "80"})
    assert res.returncode == 0
    lines = res.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, res.stdout
    assert any(line.strip().startswith("Example: pycanary") for line in lines), res.stdout
    for label in ("<str>", "<bool>", "<int>", "<float>", "<list", "{queue}", "╭"):
        assert label not in res.stdout, (label, res.stdout)


def test_route_explain_agrees(prefix: str) -> None:
    key = f"order-{uuid.uuid4().hex}"
    res = run("route", "explain", "payments", key, "--json", prefix=prefix)
    info = json.loads(res.stdout)
    assert info["bucket"] == info["bucket_python"]


def test_version() -> None:
    from pycanary import __version__

    res = subprocess.run([sys.executable, "-m", "pycanary.cli", "--version"],
                         capture_output=True, text=True, timeout=60)
    assert (res.returncode, res.stdout) == (0, f"pycanary {__version__}\n")


def test_redis_url_and_prefix_after_the_command(prefix: str) -> None:
    base = [sys.executable, "-m", "pycanary.cli"]
    res = subprocess.run([*base, "enqueue", "payments", "--prefix", prefix, "--redis-url",
                          REAL_URL, "--json"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    res = subprocess.run([*base, "queue", "show", "payments", f"--prefix={prefix}", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and json.loads(res.stdout)["depth"]["stable"] == 1


def test_hoist_root_options() -> None:
    from pycanary.cli import hoist_root_options as hoist

    groups = ["queue", "dlq"]
    assert hoist(["status", "q", "--prefix", "p"], groups) == ["--prefix", "p", "status", "q"]
    assert hoist(["--redis-url", "u", "dlq", "list", "q", "--prefix=p"], groups) == [
        "--redis-url", "u", "--prefix=p", "dlq", "list", "q"]
    # the demo has a --redis-url of its own; after `--` nothing moves
    assert hoist(["demo", "--redis-url", "u"], groups) == ["demo", "--redis-url", "u"]
    assert hoist(["enqueue", "q", "--", "--prefix", "x"], groups) == [
        "enqueue", "q", "--", "--prefix", "x"]
