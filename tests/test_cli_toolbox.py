"""The operator's toolbox on a real Redis: history, events, retry, unknown queues."""

from __future__ import annotations

import json

from pycanary import defaults, deployments, rollouts, service
from tests.processes import run_with_controller
from tests.test_cli import assert_user_error, run


def _rolled_back_by_analysis(conn, queue: str = "payments") -> deployments.Deployment:
    """A deployment the controller's analysis rolled back (its rule kept in meta)."""
    service.configure_queue(conn, queue, stable_version="v1")
    dep = rollouts.start_canary(conn, queue, "v2", weight="10", allow_schema_change=True,
                                force=True, actor="test")
    deployments.rollback(conn, dep, reason="canary error rate 12% above 0.5% (3 FAIL checks)",
                         actor="controller:test", now=defaults.now_ms(),
                         values={"meta": {"rollback_rule": "error_rate"}})
    rollouts.finish_outcome(conn, dep, actor="test")
    return dep


def test_history_shows_outcomes_and_reasons(real_conn) -> None:
    conn, prefix = real_conn, real_conn.keys.prefix
    first = _rolled_back_by_analysis(conn)
    second = rollouts.start_canary(conn, "payments", "v3", allow_schema_change=True,
                                   force=True, actor="test")
    rollouts.rollback(conn, "payments", reason="operator saw a bad log line", actor="test")
    third = rollouts.start_canary(conn, "payments", "v4", allow_schema_change=True,
                          force=True, actor="test")
    res = run("history", "payments", "--json", prefix=prefix)
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert [(r["id"], r["version"], r["outcome"]) for r in rows] == [
        (third.id, "v4", "active"), (second.id, "v3", "aborted"),
        (first.id, "v2", "rolled back")]
    assert rows[2]["reason"] == "canary error rate 12% above 0.5% (3 FAIL checks)"
    assert rows[2]["rollback_rule"] == "error_rate" and rows[2]["finished_at"] >= \
        rows[2]["started_at"]
    assert rows[2]["stages"] == [10.0] and rows[2]["stable_version"] == "v1"
    res = run("history", "payments", "--limit", "2", prefix=prefix)
    assert res.returncode == 0, res.stderr
    text = res.stdout
    assert f"{second.id}  v3  ABORTED" in text and first.id not in text
    assert "   reason: operator saw a bad log line" in text
    assert_user_error(run("history", "payments", "--limit", "0", prefix=prefix), "limit")


def test_events_of_current_and_past_deployments(real_conn) -> None:
    conn, prefix = real_conn, real_conn.keys.prefix
    first = _rolled_back_by_analysis(conn)
    res = run("events", "payments", "--json", prefix=prefix)
    assert res.returncode == 0, res.stderr
    types = [json.loads(line)["type"] for line in res.stdout.splitlines()]
    assert types == ["started", "rollback", "rolled_back"]
    rollouts.start_canary(conn, "payments", "v3", allow_schema_change=True,
                          force=True, actor="test")
    res = run("events", "payments", prefix=prefix)
    assert res.returncode == 0 and "manual canary of v3 at 10%" in res.stdout
    assert "v2" not in res.stdout
    res = run("events", "payments", "--deployment", first.id, prefix=prefix)
    assert "rollback: canary error rate 12% above 0.5% (3 FAIL checks)" in res.stdout
    # --follow on a finished deployment prints its log and ends
    res = run("events", "payments", "--deployment", first.id, "--follow", prefix=prefix)
    assert res.returncode == 0 and sum(line[:1].isdigit() for line in res.stdout.splitlines()) == 3
    assert_user_error(run("events", "payments", "--deployment", "nope", prefix=prefix),
                      "deployment")


def test_follow_events_stops_when_the_deployment_ends(real_conn) -> None:
    conn = real_conn
    service.configure_queue(conn, "payments", stable_version="v1")
    rollouts.start_canary(conn, "payments", "v2", allow_schema_change=True,
                          force=True, actor="test")
    ticks = []

    def sleep(_s: float) -> None:
        ticks.append(1)
        if len(ticks) == 2:
            rollouts.rollback(conn, "payments", reason="enough", actor="test")

    seen = [e["type"] for e in rollouts.follow_events(conn, "payments", sleep=sleep)]
    assert seen == ["started", "rollback", "rolled_back"] and len(ticks) == 2


def test_read_commands_on_an_unknown_queue_exit_2_naming_the_known_ones(real_conn) -> None:
    prefix = real_conn.keys.prefix
    service.configure_queue(real_conn, "payments", stable_version="v1")
    for args in (("history", "paymnts"), ("events", "paymnts"), ("status", "paymnts"),
                 ("queue", "show", "paymnts"), ("workers", "--queue", "paymnts"),
                 ("dlq", "list", "paymnts"), ("status", "paymnts", "--watch")):
        res = run(*args, prefix=prefix)
        assert_user_error(res, "queue")
        assert res.stderr.strip() == \
            "error: queue: no such queue 'paymnts' (known: payments)", args


def test_retry_starts_the_last_rolled_back_version_with_its_plan(real_conn, tmp_path) -> None:
    conn, prefix = real_conn, real_conn.keys.prefix
    service.configure_queue(conn, "payments", stable_version="v1")
    assert_user_error(run("retry", "payments", prefix=prefix), "queue")  # nothing to retry
    plan = tmp_path / "plan.yaml"
    plan.write_text("canary_config:\n  interval: 10s\n  stages:\n"
                    "    - percentage: 5\n      duration: 1m\n"
                    "    - percentage: 25\n      duration: 1m\n      auto_promote: false\n")
    first = rollouts.ramp(conn, "payments", "v2", plan, allow_schema_change=True,
                          force=True, actor="t")
    # ramping twice names the active deployment and the command to see it
    res = run("ramp", "payments", "--version", "v3", "--plan", str(plan),
              "--allow-schema-change", prefix=prefix)
    assert_user_error(res, "queue")
    assert f"deployment {first.id} of v2 is already active on payments: see `pycanary " \
           "status payments`" in res.stderr
    res = run("rollback", "payments", "--yes", "--reason", "bad", prefix=prefix)
    assert res.returncode == 0, res.stderr
    res = run("rollback", "payments", "--yes", "--json", prefix=prefix)
    assert res.returncode == 0 and json.loads(res.stdout)["rollback"] == "already"
    assert res.stdout.count("already rolled back") == 1
    # a retry has the ramp's preflight: no live v2 worker here
    assert_user_error(run("retry", "payments", "--allow-schema-change", prefix=prefix), "version")
    res = run("retry", "payments", "--json", "--allow-schema-change", "--force", prefix=prefix)
    assert res.returncode == 0, res.stderr
    dep = json.loads(res.stdout)
    assert dep["id"] != first.id and dep["canary_version"] == "v2"
    assert dep["stages"] == [5.0, 25.0] and dep["plan"] == first.plan_raw
    assert dep["weight_percent"] == 5 and dep["state"] == "active"
    assert rollouts.events(conn, "payments")[1][0]["message"].startswith(
        f"retry of v2 (after {first.id})")
    assert_user_error(run("retry", "payments", "--watch", "--timeout", "soon", prefix=prefix),
                      "timeout")


def _dep(**kw):
    base = {"stages": [5.0, 15.0, 50.0], "gates": [False, False, True],
            "durations_s": [600, 900, 1200], "stage": 1, "state": "active",
            "stage_duration_s": 900, "stage_elapsed_s": 660}
    return {**base, **kw}


def test_stage_line_numbers_stages_from_1_and_shows_them_whole() -> None:
    from pycanary.watch import gate_line, stage_line

    assert stage_line(_dep()) == "stage 2/4: 15% (hold 15m, 4m00s left) -> 50% -> gate -> 100%"
    assert stage_line(_dep(stage=0, stage_duration_s=600, stage_elapsed_s=0)) == \
        "stage 1/4: 5% (hold 10m, 10m00s left) -> 15% -> 50% -> gate -> 100%"
    assert stage_line(_dep(stage_elapsed_s=950)) == \
        "stage 2/4: 15% (hold 15m passed, next passing check moves on) -> 50% -> gate -> 100%"
    gate = _dep(stage=2, state="awaiting_promotion", stage_duration_s=1200,
                stage_elapsed_s=1300)
    assert stage_line(gate) == "stage 3/4: 50% (hold 20m passed) -> gate -> 100%"
    assert gate_line("payments", gate) == ("waiting at a manual gate: run `pycanary promote "
                                           "payments` to go on (or `pycanary rollback "
                                           "payments`)")
    assert gate_line("payments", _dep()) is None
    # no time left once it ended
    assert stage_line(_dep(state="completed")) == "stage 4/4: 100% (promoted)"
    assert stage_line(_dep(state="rolled_back")) == "stage 2/4 (15%): rolled back (weight 0)"
    # a weight set by hand is shown beside the plan's share (it is what routes now)
    assert stage_line(_dep(weight_percent=30)) == ("stage 2/4: 15% (hold 15m, 4m00s left, "
                                                   "weight 30% set by hand) -> 50% -> gate -> "
                                                   "100%")
    assert "set by hand" not in stage_line(_dep(weight_percent=15))
    assert stage_line(_dep(state="paused")).startswith("stage 2/4: 15% (hold 15m, 4m00s "
                                                       "left, paused)")


def test_shorten_and_wrap_never_cut_mid_word() -> None:
    from pycanary.watch import shorten, wrap

    text = "canary error rate 12.5% above the 0.5% limit for 3 checks in a row"
    for width in range(12, len(text) + 2):
        short = shorten(text, width)
        assert len(short) <= width
        assert short == text or (short.endswith("...") and
                                 text.startswith(short[:-3]) and text[len(short) - 3] in " ,")
        lines = wrap(text, max(width, 20), "   ")
        assert all(len(line) <= max(width, 20) for line in lines)
        assert " ".join(line.strip() for line in lines) == text


def test_status_watch_reattaches_and_exits_with_the_outcome(real_conn, tmp_path) -> None:
    import sys


    conn, prefix = real_conn, real_conn.keys.prefix
    service.configure_queue(conn, "payments", stable_version="v1")
    plan = tmp_path / "plan.yaml"
    plan.write_text("canary_config:\n  interval: 1s\n  on_no_data: pass\n"
                    "  statistical: {enabled: false}\n  stages:\n"
                    "    - percentage: 10\n      duration: 2s\n")
    rollouts.ramp(conn, "payments", "v2", plan, allow_schema_change=True,
                          force=True, actor="t")
    # no controller: the watch gives up after its timeout, exit 3, with progress lines
    res = run("status", "payments", "--watch", "--timeout", "2s", prefix=prefix)
    assert res.returncode == 3, res
    assert "payments active; stage 1/2: 10% (hold 2s" in res.stdout
    assert "no controller is running" in res.stdout
    assert "`pycanary status payments --watch` re-attaches" in res.stderr
    cmd = [sys.executable, "-m", "pycanary.cli", "--redis-url", conn.url, "--prefix", prefix,
           "status", "payments", "--watch", "--timeout", "1m"]
    rc, out, err = run_with_controller(conn, cmd)
    assert rc == 0, err
    assert "payments: completed" in err and "stage 2/2: 100% (promoted)" in out
    # a finished deployment: the watch exits at once with its outcome
    res = run("status", "payments", "--watch", prefix=prefix)
    assert res.returncode == 0 and "payments: completed" in res.stderr
    rollouts.ramp(conn, "payments", "v3", plan, allow_schema_change=True,
                          force=True, actor="t")
    rollouts.rollback(conn, "payments", reason="bad", actor="t")
    res = run("status", "payments", "--watch", "--timeout", "5s", prefix=prefix)
    assert res.returncode == 1 and "payments: rolled_back (bad)" in res.stderr


def test_text_controller_logs_carry_the_deployment_on_every_line() -> None:
    import logging

    from pycanary.controller import TextFormatter

    rec = logging.LogRecord("pycanary.controller", logging.WARNING, __file__, 1, "rollback",
                            None, None)
    rec.fields = {"deployment_id": "payments-1", "queue": "payments", "canary_version": "v2",
                  "stage": 1, "reason": "canary error rate 12% above 0.5%"}
    line = TextFormatter().format(rec)
    assert line.endswith(' WARNING rollback queue=payments version=v2 deployment=payments-1 '
                         'stage=2 reason="canary error rate 12% above 0.5%"'), line
    plain = logging.LogRecord("pycanary.controller", logging.INFO, __file__, 1,
                              "leading as epoch %s", (3,), None)
    assert TextFormatter().format(plain).endswith(" INFO leading as epoch 3")
    assert rec.getMessage() == "rollback"  # the record is left as it was


def test_controller_refuses_a_bad_log_format_or_level() -> None:
    assert_user_error(run("controller", "--log-format", "xml"), "log_format")
    assert_user_error(run("controller", "--log-level", "loud"), "log_level")


def test_newcomer_mistakes_get_the_fix_in_one_line(real_conn) -> None:
    prefix = real_conn.keys.prefix
    res = run("history", prefix=prefix)
    assert_user_error(res, "queue")
    assert res.stderr.strip() == "error: queue: missing (give QUEUE; see --help)"
    res = run("status", "payments", "--timeout", "5m", prefix=prefix)
    assert res.stderr.strip() == "error: timeout: applies to --watch only: add --watch"
    service.configure_queue(real_conn, "payments", stable_version="v1")
    assert_user_error(run("dlq", "requeue", "payments", prefix=prefix), "job_id")
    res = run("events", "payments", prefix=prefix)
    assert res.stderr.strip() == "error: queue: no deployment on payments yet"


def test_status_text_shows_resources_and_stable_growth_of_both_lanes() -> None:
    """Issue 11: CPU per job and RSS side by side, and the stable lane's net growth after a
    rollback (the design card's "queue depth growing faster than processing rate")."""
    from pycanary.watch import render_status

    lane = {"finished": 10, "error_rate": 0.0, "run_ms": {"p50": 1, "p95": 2},
            "wait_ms": {"p95": 3}}
    row = {"queue": "payments",
           "config": {"stable_version": "v1", "canary_version": "v2", "weight_percent": 0},
           "depth": {"stable": 3, "canary": 0},
           "deployment": {"id": "d1", "state": "rolled_back", "weight_percent": 0, "stage": 0,
                          "stages": [5, 15], "plan": None},
           "lanes": {"stable": {**lane, "version": "v1", "cpu_ms": {"p50": 0.4, "p95": 1.1},
                                "rss_bytes": 50 * 2**20},
                     "canary": {**lane, "version": "v2", "cpu_ms": {"p50": 2.5, "p95": 9.0},
                                "rss_bytes": 80 * 2**20}},
           "stable_growth": {"inflow_per_s": 12.0, "outflow_per_s": 10.0, "net_per_s": 2.0}}
    text = " ".join(render_status([row], 200).split())
    assert ("resources: stable cpu/job p50 0.4ms p95 1.1ms, rss 50 MiB; canary cpu/job p50 "
            "2.5ms p95 9.0ms, rss 80 MiB") in text
    assert ("stable lane since the rollback: 12 jobs/s in, 10 out, net +2/s (growing faster "
            "than it is processed)") in text


def test_side_by_side_figures_cover_the_deployment_not_minutes_before_it(real_conn) -> None:
    """A deployment a minute old: its lane figures start when it started (a rate averaged over
    five minutes before the canary existed reads low for both lanes), and the label says so."""
    from pycanary import rollouts, service
    from pycanary.watch import window_label

    service.configure_queue(real_conn, "payments", stable_version="v1")
    dep = rollouts.start_canary(real_conn, "payments", "v2", weight="10", force=True)
    lanes = rollouts.status(real_conn, "payments", growth_sample_s=0)[0]["lanes"]
    # the window starts in the slot the deployment started in (read_window starts a window
    # where its first slot starts, so rates divide by the time the slots cover)
    from pycanary import defaults

    starts = {s["start_ms"] for s in lanes.values()}
    assert len(starts) == 1 and 0 <= dep.started_at - starts.pop() < defaults.SLOT_S * 1000
    assert window_label(lanes).startswith("since the start, ")
    five_min = {"stable": {"start_ms": 0, "end_ms": 300_000}}
    assert window_label(five_min) == "last 5 min" and window_label({}) == "last 5 min"
