"""Bad-input corpus (issue 8 item 9): hostile or malformed input through the CLI, plan files and
the Python API. Every case must be refused with one line naming the field (exit 2 on the CLI, a
ValidationError with ``.field`` in the API), no traceback, and Redis byte-identical before and
after: a refusal that wrote half a change first would leave state nobody asked for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pycanary import plan as plan_mod
from pycanary import rollouts, service
from pycanary.cli import app
from pycanary.connection import Connection
from pycanary.errors import StateError, ValidationError
from pycanary.producer import Producer
from pycanary.worker import Worker

from .conftest import REAL_URL

ROOT = Path(__file__).resolve().parent.parent
HUGE_INT = "9" * 5000
GOOD_PLAN = """\
canary_config:
  interval: 15s
  stages:
    - percentage: 10
      duration: 3m
    - percentage: 50
      duration: 5m
"""
GOOD_PLAN_DICT: dict[str, Any] = {"interval": "15s", "stages": [
    {"percentage": 10, "duration": "3m"}, {"percentage": 50, "duration": "5m"}]}
BILLION_LAUGHS = (
    "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n"
    + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n"
              for i in range(8))
)
HOSTILE_PLANS: dict[str, str | bytes] = {
    "billion_laughs": BILLION_LAUGHS,
    "python_object": 'canary_config: !!python/object/apply:os.system ["echo x"]\n',
    "duplicate_keys": GOOD_PLAN + "canary_config:\n  interval: 1s\n",
    "list_not_map": "- percentage: 10\n- percentage: 20\n",
    "stages_map": "canary_config:\n  stages:\n    percentage: 10\n",
    "huge_file": "# " + "x" * (100 * 1024) + "\n" + GOOD_PLAN,
    "empty": "",
    "huge_int": GOOD_PLAN.replace("percentage: 10", f"percentage: {HUGE_INT}"),
    "bad_yaml": "canary_config: [unclosed\n",
    "invalid_utf8": b"canary_config:\n  interval: \xff\xfe15s\n",
}


def snapshot(conn: Connection) -> list[tuple[bytes, bytes | None]]:
    """Every key under the test's prefix and its DUMP: equal snapshots mean equal state."""
    client = conn.client
    keys = sorted(client.scan_iter(match=f"{conn.keys.prefix}:*", count=1000))
    return [(k if isinstance(k, bytes) else k.encode(), client.dump(k)) for k in keys]


def seed(conn: Connection) -> None:
    """State to protect: a configured queue with three jobs waiting."""
    service.configure_queue(conn, "payments", stable_version="v1")
    Producer(conn).enqueue_many("payments", [{"n": i} for i in range(3)])
    assert len(snapshot(conn)) >= 3  # an empty snapshot would make every comparison vacuous


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# -- CLI, in process -----------------------------------------------------------------------
# Each case: (argv after the global options, the field the error line must name, extra env).
CLI_CASES = [
    pytest.param(["set-weight", "payments", "abc"], "weight", {}, id="weight-not-number"),
    pytest.param(["set-weight", "payments", "101"], "weight", {}, id="weight-101"),
    pytest.param(["set-weight", "payments", "--", "-1"], "weight", {}, id="weight-negative"),
    pytest.param(["set-weight", "payments", "nan"], "weight", {}, id="weight-nan"),
    pytest.param(["set-weight", "payments", HUGE_INT], "weight", {}, id="weight-5000-digits"),
    pytest.param(["set-weight", "payments", "10.123"], "weight", {}, id="weight-3-decimals"),
    pytest.param(["worker", "payments", "--version", "v1", "--handler", "x:y",
                  "--concurrency", "x"], "concurrency", {}, id="concurrency-not-int"),
    pytest.param(["worker", "payments", "--version", "v1", "--handler", "x:y",
                  "--concurrency", "0"], "concurrency", {}, id="concurrency-0"),
    pytest.param(["worker", "payments", "--version", "v1", "--handler", "x:y",
                  "--heartbeat", "nan"], "heartbeat", {}, id="heartbeat-nan"),
    pytest.param(["enqueue", "payments", "--count", "0"], "count", {}, id="count-0"),
    pytest.param(["enqueue", "payments", "--count", HUGE_INT], "count", {},
                 id="count-5000-digits"),
    pytest.param(["enqueue", "payments", "--rate", "inf", "--count", "2"], "rate", {},
                 id="rate-inf"),
    pytest.param(["enqueue", "payments", "{not json"], "payload", {}, id="payload-not-json"),
    pytest.param(["enqueue", "payments", '{"a": "\\ud800"}'], "payload", {},
                 id="payload-lone-surrogate-escape"),
    pytest.param(["enqueue", "payments", '{"a": "\udcff"}'], "payload", {},
                 id="payload-invalid-utf8-arg"),
    pytest.param(["enqueue", "payments", nested(1000)], "payload", {}, id="payload-nested-1000"),
    pytest.param(["enqueue", "payments", json.dumps({"x": "y" * 2000})], "payload",
                 {"PYCANARY_MAX_PAYLOAD_BYTES": "1024"}, id="payload-over-limit"),
    pytest.param(["enqueue", "pay{ments}"], "queue", {}, id="queue-braces"),
    pytest.param(["enqueue", "pay ments"], "queue", {}, id="queue-space"),
    pytest.param(["enqueue", "q" * 4096], "queue", {}, id="queue-4kb"),
    pytest.param(["enqueue", "pay\udcffments"], "queue", {}, id="queue-invalid-utf8"),
    pytest.param(["enqueue", ""], "queue", {}, id="queue-empty"),
    pytest.param(["queue", "configure", "payments", "--max-weight", "200"], "max_weight", {},
                 id="max-weight-200"),
    pytest.param(["queue", "configure", "payments", "--backend", "kafka"], "backend", {},
                 id="backend-unknown"),
    pytest.param(["promote", "payments", "--yes"], "queue", {}, id="promote-no-deployment"),
    pytest.param(["rollback", "payments", "--yes"], "queue", {},
                 id="rollback-no-deployment"),
    pytest.param(["pause", "payments"], "queue", {}, id="pause-no-deployment"),
    pytest.param(["resume", "payments"], "queue", {}, id="resume-no-deployment"),
    pytest.param(["ramp", "payments", "--version", "v2", "--plan", "/nonexistent/plan.yaml"],
                 "plan", {}, id="ramp-plan-missing"),
    pytest.param(["promote", "pay{x}", "--yes"], "queue", {}, id="promote-queue-braces"),
    pytest.param(["canary", "start", "payments", "--version", "v2", "--weight", "101",
                  "--allow-schema-change"], "weight", {}, id="canary-start-weight-101"),
    pytest.param(["canary", "start", "payments", "--version", "v2", "--weight", HUGE_INT,
                  "--allow-schema-change"], "weight", {}, id="canary-start-weight-huge"),
    pytest.param(["canary", "start", "payments", "--version", "v{2}",
                  "--allow-schema-change"], "version", {}, id="canary-start-version-braces"),
    pytest.param(["enqueue", "payments", "--tenant", "t" * 4096], "tenant", {},
                 id="enqueue-tenant-4kb"),
    pytest.param(["enqueue", "payments", "--job-id", "j" * 4096], "job_id", {},
                 id="enqueue-job-id-4kb"),
    pytest.param(["set-weight", "payments", "5", "--tenant", "a b"], "tenant", {},
                 id="set-weight-tenant-space"),
    pytest.param(["route", "explain", "pay{x}", "k"], "queue", {}, id="route-explain-braces"),
    pytest.param(["status", "q" * 4096], "queue", {}, id="status-queue-4kb"),
    pytest.param(["workers", "--queue", "a b"], "queue", {}, id="workers-queue-space"),
    pytest.param(["drain", "pay{x}", "--yes"], "queue", {}, id="drain-queue-braces"),
    pytest.param(["controller", "--lease", "nan"], "lease", {}, id="controller-lease-nan"),
    pytest.param(["controller", "--poll", HUGE_INT], "poll", {}, id="controller-poll-huge"),
    pytest.param(["demo", "--rate", "-1"], "rate", {}, id="demo-rate-negative"),
    pytest.param(["no-such-verb"], "command", {}, id="unknown-verb"),
    pytest.param(["enqueue", "payments", "--bogus"], "option", {}, id="unknown-option"),
]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def run_cli(runner: CliRunner, conn: Connection, argv: list[str],
            env: dict[str, str] | None = None) -> Any:
    return runner.invoke(app, ["--redis-url", REAL_URL, "--prefix", conn.keys.prefix, *argv],
                         env=env or {})


def assert_one_line_error(result: Any, field: str) -> None:
    out = result.output
    assert result.exit_code == 2, (result.exit_code, out[:500], result.exception)
    assert "Traceback" not in out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out[:1000]
    assert lines[0].startswith(f"error: {field}: "), lines[0][:300]
    assert len(lines[0]) <= 600


@pytest.mark.parametrize(("argv", "field", "env"), CLI_CASES)
def test_cli_refuses(real_conn: Connection, runner: CliRunner, argv: list[str], field: str,
                     env: dict[str, str]) -> None:
    seed(real_conn)
    before = snapshot(real_conn)
    result = run_cli(runner, real_conn, argv, env)
    assert_one_line_error(result, field)
    assert snapshot(real_conn) == before


@pytest.mark.parametrize("name", sorted(HOSTILE_PLANS))
def test_cli_ramp_hostile_plan(real_conn: Connection, runner: CliRunner, tmp_path: Path,
                               name: str) -> None:
    seed(real_conn)
    path = tmp_path / "plan.yaml"
    text = HOSTILE_PLANS[name]
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    before = snapshot(real_conn)
    result = run_cli(runner, real_conn, ["ramp", "payments", "--version", "v2",
                                         "--plan", str(path)])
    assert result.exit_code == 2, (result.output[:500], result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output[:1000]
    assert "Traceback" not in result.output
    assert snapshot(real_conn) == before


def test_cli_ramp_twice(real_conn: Connection, runner: CliRunner, tmp_path: Path) -> None:
    seed(real_conn)
    path = tmp_path / "plan.yaml"
    path.write_text(GOOD_PLAN)
    first = run_cli(runner, real_conn, ["ramp", "payments", "--version", "v2",
                                        "--plan", str(path), "--allow-schema-change",
                                        "--force"])
    assert first.exit_code == 0, first.output
    before = snapshot(real_conn)
    again = run_cli(runner, real_conn, ["ramp", "payments", "--version", "v2",
                                        "--plan", str(path), "--allow-schema-change",
                                        "--force"])
    assert again.exit_code == 2, again.output
    lines = [line for line in again.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), again.output
    assert snapshot(real_conn) == before


# -- CLI, real processes ---------------------------------------------------------------------
@pytest.mark.parametrize(("argv", "field"), [
    pytest.param(["set-weight", "payments", HUGE_INT], "weight", id="proc-weight-huge"),
    pytest.param(["enqueue", "payments", nested(1000)], "payload", id="proc-nested"),
    pytest.param(["enqueue", "pay{ments}"], "queue", id="proc-queue-braces"),
    # raw bytes on the command line: argv arrives as a str with lone surrogates
    pytest.param([b"enqueue", b"pay\xffments"], "queue", id="proc-queue-invalid-utf8"),
    pytest.param([b"enqueue", b"payments", b'{"a": "\xff"}'], "payload",
                 id="proc-payload-invalid-utf8"),
])
def test_process_refuses(real_conn: Connection, argv: list[str | bytes], field: str) -> None:
    seed(real_conn)
    before = snapshot(real_conn)
    proc = subprocess.run(
        [sys.executable, "-m", "pycanary.cli", "--redis-url", REAL_URL,
         "--prefix", real_conn.keys.prefix, *argv],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stderr[:1000]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}: "), proc.stderr[:1000]
    assert snapshot(real_conn) == before


# -- Python API ------------------------------------------------------------------------------
def _deep(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


def _handler(job: Any) -> None:
    return None


API_CASES: list[Any] = [
    pytest.param(lambda c: Producer(c).enqueue("payments", {"a": object()}), "payload",
                 id="enqueue-object"),
    pytest.param(lambda c: Producer(c).enqueue("payments", {1, 2}), "payload",
                 id="enqueue-set"),
    pytest.param(lambda c: Producer(c).enqueue("payments", _deep(1000)), "payload",
                 id="enqueue-nested-1000"),
    pytest.param(lambda c: Producer(c).enqueue("payments", "a\ud800b"), "payload",
                 id="enqueue-lone-surrogate"),
    pytest.param(lambda c: Producer(c).enqueue("payments", float("nan")), "payload",
                 id="enqueue-nan"),
    pytest.param(lambda c: Producer(c).enqueue("new-queue", {"a": object()}), "payload",
                 id="enqueue-new-queue-bad-payload"),
    pytest.param(lambda c: Producer(c).enqueue("payments", {}, schema=10**5000), "schema",
                 id="enqueue-schema-huge"),
    pytest.param(lambda c: Producer(c).enqueue("payments", {}, job_id=""), "job_id",
                 id="enqueue-job-id-empty"),
    pytest.param(lambda c: Producer(c).enqueue("payments", {}, job_id="x" * 5000), "job_id",
                 id="enqueue-job-id-5000"),
    pytest.param(lambda c: Producer(c).enqueue("payments", {}, job_id="a\ud800"), "job_id",
                 id="enqueue-job-id-surrogate"),
    pytest.param(lambda c: Producer(c).enqueue("pay{ments}", {}), "queue",
                 id="enqueue-queue-braces"),
    pytest.param(lambda c: Producer(c).enqueue_many(
        "payments", [{"i": 0}, {"i": 1}, {"i": 2}, {"i": "\ud800"}, {"i": 4}]), "payload",
        id="enqueue-many-surrogate-at-3"),
    pytest.param(lambda c: Producer(c).enqueue_many(
        "payments", [{}, _deep(1000)]), "payload", id="enqueue-many-nested"),
    pytest.param(lambda c: Producer(c).enqueue_many(
        "payments", [{}, object()]), "payload", id="enqueue-many-object"),
    pytest.param(lambda c: Producer(c).enqueue_many(
        "payments", [{}], schema=10**5000), "schema", id="enqueue-many-schema-huge"),
    pytest.param(lambda c: Producer(c).enqueue_many(
        "payments", [{}, {}], job_ids=["ok", ""]), "job_id", id="enqueue-many-bad-job-id"),
    pytest.param(lambda c: Worker(c, ["payments"], "v1", _handler, heartbeat_s=float("nan")),
                 "heartbeat", id="worker-heartbeat-nan"),
    pytest.param(lambda c: Worker(c, ["payments"], "v1", _handler, heartbeat_s=1e-9),
                 "heartbeat", id="worker-heartbeat-tiny"),
    pytest.param(lambda c: Worker(c, ["payments"], "v1", _handler, concurrency=0),
                 "concurrency", id="worker-concurrency-0"),
    pytest.param(lambda c: Worker(c, ["pay{x}"], "v1", _handler), "queue",
                 id="worker-queue-braces"),
    pytest.param(lambda c: service.set_weight(c, "pay ments", 10), "queue",
                 id="service-set-weight-queue"),
    pytest.param(lambda c: service.configure_queue(c, "pay{x}", stable_version="v1"), "queue",
                 id="service-configure-queue"),
    pytest.param(lambda c: service.queue_info(c, "q" * 4096), "queue",
                 id="service-queue-info-4kb"),
    pytest.param(lambda c: service.lanes_of(c, "pay{x}"), "queue", id="service-lanes-of"),
    pytest.param(lambda c: rollouts.set_weight_with_deployment(c, "pay{x}", 100, None),
                 "queue", id="rollouts-set-weight-queue"),
    pytest.param(lambda c: rollouts.drain(c, "pay{x}"), "queue", id="rollouts-drain-queue"),
    pytest.param(lambda c: rollouts.promote(c, "payments"), "queue",
                 id="rollouts-promote-no-deployment"),
    pytest.param(lambda c: rollouts.rollback(c, "payments"), "queue",
                 id="rollouts-rollback-no-deployment"),
    pytest.param(lambda c: rollouts.pause(c, "payments"), "queue",
                 id="rollouts-pause-no-deployment"),
    pytest.param(lambda c: rollouts.resume(c, "payments"), "queue",
                 id="rollouts-resume-no-deployment"),
    pytest.param(lambda c: rollouts.ramp(c, "pay{x}", "v2", GOOD_PLAN_DICT,
                                         allow_schema_change=True), "queue",
                 id="rollouts-ramp-queue"),
    pytest.param(lambda c: rollouts.ramp(c, "payments", "v2", "/nonexistent/plan.yaml",
                                         allow_schema_change=True), "plan",
                 id="rollouts-ramp-plan-missing"),
    pytest.param(lambda c: rollouts.start_canary(c, "payments", "v2", weight=float("nan"),
                                                 allow_schema_change=True), "weight",
                 id="rollouts-canary-weight-nan"),
    pytest.param(lambda c: rollouts.start_canary(c, "payments", "v2", weight=10**5000,
                                                 allow_schema_change=True), "weight",
                 id="rollouts-canary-weight-huge"),
]


@pytest.mark.parametrize(("call", "field"), API_CASES)
def test_api_refuses(real_conn: Connection, call: Callable[[Connection], Any],
                     field: str) -> None:
    seed(real_conn)
    before = snapshot(real_conn)
    # user mistakes are ValidationError; a verb in the wrong state is StateError (also exit 2)
    with pytest.raises((ValidationError, StateError)) as info:
        call(real_conn)
    got = info.value.field
    # a batch names the job too: jobs[3].payload
    assert got is not None and (got == field or got.endswith("." + field)), (
        got, str(info.value)[:300])
    assert len(str(info.value)) < 1000
    assert snapshot(real_conn) == before


@pytest.mark.parametrize("name", sorted(HOSTILE_PLANS))
def test_parse_plan_hostile(name: str) -> None:
    text = HOSTILE_PLANS[name]
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    with pytest.raises(plan_mod.PlanError) as info:
        plan_mod.parse_plan(text, name="hostile.yaml")
    assert isinstance(info.value, ValidationError)
    assert info.value.field
    assert len(str(info.value)) < 2000
