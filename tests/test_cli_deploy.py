"""Deployment verbs of the CLI: confirmations, --json, exit codes, ramp --watch."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from pycanary import deployments, service
from tests.processes import run_with_controller
from tests.test_cli import assert_user_error, run

ROOT = Path(__file__).resolve().parents[1]


def test_canary_lifecycle(real_conn) -> None:
    conn = real_conn
    prefix = conn.keys.prefix
    service.configure_queue(conn, "payments", stable_version="v1")
    res = run("canary", "start", "payments", "--version", "v2", "--weight", "10", "--tenant",
              "internal=100", "--json", "--force", prefix=prefix)
    assert res.returncode == 0, res.stderr
    dep = json.loads(res.stdout)
    assert (dep["state"], dep["weight_percent"], dep["tenants_bp"]) == ("active", 10,
                                                                      {"internal": 10000})
    res = run("status", "payments", "--json", prefix=prefix)
    row = json.loads(res.stdout)[0]
    assert row["deployment"]["canary_version"] == "v2" and row["config"]["weight_percent"] == 10
    res = run("status", prefix=prefix)
    assert "deployment" in res.stdout and "no controller is running" in res.stdout
    assert run("pause", "payments", prefix=prefix).returncode == 0
    paused = json.loads(run("status", "payments", "--json", prefix=prefix).stdout)[0]
    assert paused["deployment"]["state"] == "paused"
    assert run("resume", "payments", prefix=prefix).returncode == 0
    # destructive verbs ask; without a terminal they need --yes
    assert_user_error(run("rollback", "payments", prefix=prefix), "yes")
    assert_user_error(run("promote", "payments", prefix=prefix), "yes")
    res = run("rollback", "payments", "--reason", "errors spiked", "--yes", "--json",
              prefix=prefix)
    out = json.loads(res.stdout)
    assert out["state"] == "rolled_back" and out["weight_zero_ms"] >= 0
    assert deployments.get(conn, "payments").reason == "errors spiked"
    # a second rollback: already done, exit 0 and say so; nothing else to act on: exit 2
    res = run("rollback", "payments", "--yes", prefix=prefix)
    assert res.returncode == 0 and "already rolled back" in res.stdout, res
    assert_user_error(run("pause", "payments", prefix=prefix), "queue")


def test_ramp_plan_errors_name_the_field(real_conn, tmp_path: Path) -> None:
    prefix = real_conn.keys.prefix
    service.configure_queue(real_conn, "payments", stable_version="v1")
    bad = tmp_path / "bad.yaml"
    bad.write_text("canary_config:\n  stages:\n    - percentage: 150\n      duration: 10m\n")
    res = run("ramp", "payments", "--version", "v2", "--plan", str(bad), prefix=prefix)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "stages[0].percentage" in res.stderr
    res = run("ramp", "payments", "--version", "v2", "--plan", str(tmp_path / "nope.yaml"),
              prefix=prefix)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert deployments.get(real_conn, "payments") is None


def test_ramp_watch_exits_0_when_promoted(real_conn, tmp_path: Path) -> None:
    conn = real_conn
    prefix = conn.keys.prefix
    service.configure_queue(conn, "payments", stable_version="v1")
    plan = tmp_path / "plan.yaml"
    # a timed ramp (every check off): the only plan in which no data may pass (issue 10)
    plan.write_text("canary_config:\n  interval: 1s\n  on_no_data: pass\n"
                    "  statistical: {enabled: false}\n  stages:\n"
                    "    - percentage: 10\n      duration: 1s\n")
    cmd = [sys.executable, "-m", "pycanary.cli", "--redis-url", conn.url, "--prefix", prefix,
           "ramp", "payments", "--version", "v2", "--plan", str(plan), "--watch", "--force"]
    rc, out, err = run_with_controller(conn, cmd, cwd=ROOT)
    assert rc == 0, err
    assert "completed" in err and "started" in out
    assert service.queue_info(conn, "payments")["stable_version"] == "v2"
    time.sleep(0)


def test_drain_refuses_an_open_lane(real_conn) -> None:
    prefix = real_conn.keys.prefix
    service.set_weight(real_conn, "payments", "10")
    assert_user_error(run("drain", "payments", "--yes", prefix=prefix), "queue")
    service.set_weight(real_conn, "payments", "0")
    res = run("drain", "payments", "--yes", "--json", prefix=prefix)
    assert res.returncode == 0 and json.loads(res.stdout)["moved"] == 0


def test_ramp_watch_outside_a_terminal_prints_progress_and_times_out(real_conn,
                                                                    tmp_path: Path) -> None:
    """No controller: `ramp --watch` must not hang silently in a pipe; it prints a progress
    line (stage, no controller) and gives up after --timeout with exit 3."""
    prefix = real_conn.keys.prefix
    service.configure_queue(real_conn, "payments", stable_version="v1")
    plan = tmp_path / "plan.yaml"
    plan.write_text("canary_config:\n  interval: 1s\n  stages:\n"
                    "    - percentage: 10\n      duration: 1m\n")
    res = run("ramp", "payments", "--version", "v2", "--plan", str(plan), "--watch",
              "--timeout", "2s", "--allow-schema-change", "--force", prefix=prefix)
    assert res.returncode == 3, res
    lines = res.stdout.splitlines()
    assert lines[0].startswith("started ") and "ramp of v2" in lines[0]
    assert "payments active; stage 1/2: 10% (hold 1m, " in lines[1]
    assert "no controller is running" in lines[1]
    assert "stopped watching after 2s" in res.stderr
    res = run("ramp", "payments", "--version", "v2", "--plan", str(plan), "--watch",
              "--timeout", "2s", "--json", prefix=prefix)
    assert_user_error(res, "queue")  # already active: named, not watched


def test_ramp_summary_counts_stages_from_one(real_conn) -> None:
    """The one-line summary of `ramp` (no --watch) names the stage as every view does:
    "stage 1 (5%)", never the 0-based index; a manual canary says "manual"."""
    prefix = real_conn.keys.prefix
    service.configure_queue(real_conn, "payments", stable_version="v1")
    res = run("ramp", "payments", "--version", "v2", "--plan",
              str(ROOT / "examples/plans/design-card.yaml"), "--force", prefix=prefix)
    assert res.returncode == 0, res.stderr
    assert "stage 1 (5%)" in res.stdout and "stage 0" not in res.stdout, res.stdout
    assert run("rollback", "payments", "--yes", prefix=prefix).returncode == 0
    service.configure_queue(real_conn, "orders", stable_version="v1")
    res = run("canary", "start", "orders", "--version", "v2", "--weight", "10", "--force",
              prefix=prefix)
    assert res.returncode == 0 and ", manual," in res.stdout, res.stdout


def test_salt_pins_the_sticky_hash_and_a_bad_one_is_refused(real_conn, tmp_path: Path) -> None:
    """--salt puts the same keys first as an earlier deployment (its salt is in --json);
    without it each deployment draws a fresh one; the operator's salt beats the plan's."""
    prefix = real_conn.keys.prefix
    service.configure_queue(real_conn, "payments", stable_version="v1")
    res = run("canary", "start", "payments", "--version", "v2", "--force", "--json",
              prefix=prefix)
    assert res.returncode == 0, res.stderr
    first = json.loads(res.stdout)["salt"]
    assert len(first) == 8
    assert run("rollback", "payments", "--yes", prefix=prefix).returncode == 0
    res = run("canary", "start", "payments", "--version", "v3", "--force", "--json",
              "--salt", first, prefix=prefix)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["salt"] == first
    assert deployments.get(real_conn, "payments").salt == first
    assert run("rollback", "payments", "--yes", prefix=prefix).returncode == 0
    plan = {"salt": "from-plan", "stages": [{"percentage": 5, "duration": "1m"}]}
    plan_file = tmp_path / "salted.json"
    plan_file.write_text(json.dumps(plan))
    res = run("ramp", "payments", "--version", "v4", "--plan", str(plan_file), "--force",
              "--json", "--salt", "operator", prefix=prefix)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["salt"] == "operator"
    assert run("rollback", "payments", "--yes", prefix=prefix).returncode == 0
    for bad in ("a\tb", "x" * 257):
        res = run("ramp", "payments", "--version", "v5", "--plan", str(plan_file),
                  "--force", "--salt", bad, prefix=prefix)
        assert_user_error(res, "salt")
    assert deployments.get(real_conn, "payments").state == "rolled_back"  # none started
