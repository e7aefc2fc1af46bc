"""The TUI canary panel (issue 14): its service module on real Redis, its renderers, the
Textual app driven by the pilot against a real deployment, a Redis that goes away and comes
back, and snapshots of both layouts from a fixed view."""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from rich.console import Console
from textual.widgets import TabbedContent

import pycanary
from pycanary import defaults, deployments, panel, queue_config, rollouts, service
from pycanary.connection import Connection
from pycanary.tui import CanaryApp, render
from pycanary.tui.screens import ConfirmScreen, NewCanaryScreen
from tests.redis_servers import RedisProcess
from tests.test_cli import assert_user_error, run
from tests.tui_data import fixed_app, fixed_view

Q = "payments"


# -- helpers -----------------------------------------------------------------------------------
def screen_text(app: CanaryApp) -> str:
    """The screen as plain text (what a person reads), the way export_screenshot renders it."""
    w, h = app.size
    console = Console(width=w, height=h, file=io.StringIO(), force_terminal=True,
                      color_system=None, record=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(
        full=True, screen_stack=app._background_screens))
    return console.export_text()


async def until(pilot: Any, cond: Callable[[], Any], what: str, timeout: float = 15) -> None:
    """Let the app run until ``cond()`` holds (a wait, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; screen:\n"
                                 f"{screen_text(pilot.app)}")
        await pilot.pause(0.05)


def start(conn: Connection, queue: str = Q, weight: str = "10") -> deployments.Deployment:
    service.configure_queue(conn, queue, stable_version="v1")
    return rollouts.start_canary(conn, queue, "v2", weight=weight, allow_schema_change=True,
                                 force=True, actor="test")


def drive(conn: Connection, scenario: Callable[[Any, CanaryApp], Any],
          size: tuple[int, int] = (160, 48), **kw: Any) -> CanaryApp:
    app = CanaryApp(conn, actor="tui:test", **kw)

    async def go() -> None:
        async with app.run_test(size=size) as pilot:
            await until(pilot, lambda: app.view is not None, "the first reading")
            await scenario(pilot, app)

    asyncio.run(go())
    return app


def message(app: CanaryApp) -> str:
    return app.message.plain


# -- panel (service layer) ---------------------------------------------------------------------
def test_lane_series_reads_each_slot(conn: Connection) -> None:
    qk = conn.keys.queue(Q)
    now_ms = 1_796_300_004_000  # 4 s into the slot 1796300000
    last = now_ms // 1000 // 10 * 10
    conn.client.hset(qk.metrics_slot("v1", "stable", last - 20), mapping={"ok": 95, "failed": 5})
    conn.client.hset(qk.metrics_slot("v1", "stable", last), mapping={"ok": 8, "failed": 0,
                                                                      "r12": 8})
    conn.client.hset(qk.metrics_slot("v2", "canary", last - 10), mapping={"ok": 1, "failed": 3})
    conn.client.hset(qk.metrics_slot("v2", "stable", last - 10), mapping={"ok": 999})  # not ours
    out = panel.lane_series(conn, Q, {"stable": "v1", "canary": "v2"}, now_ms=now_ms, slots=4,
                            slot_s=10)
    s, c = out["stable"], out["canary"]
    assert s.slots == c.slots == [last - 30, last - 20, last - 10, last]
    assert s.jobs_per_s == [0.0, 10.0, 0.0, 2.0]  # the slot in progress: 8 jobs in 4 s
    assert s.error_rate == [None, 0.05, None, 0.0]
    assert c.jobs_per_s == [0.0, 0.0, 0.4, 0.0] and c.error_rate == [None, None, 0.75, None]
    assert s.to_dict()["version"] == "v1" and c.to_dict()["lane"] == "canary"


def test_view_selects_the_running_deployment(real_conn: Connection) -> None:
    service.configure_queue(real_conn, "aaa", stable_version="v1")
    dep = start(real_conn)
    v = panel.view(real_conn)
    assert [r["queue"] for r in v.rows] == ["aaa", Q]
    assert v.selected == Q and v.row()["deployment"]["id"] == dep.id
    assert set(v.series) == {"stable", "canary"}
    assert len(v.series["canary"].slots) == defaults.TUI_SPARK_SLOTS
    assert panel.view(real_conn, "aaa").selected == "aaa"
    assert panel.view(real_conn, "aaa").series == {}  # no deployment: no series
    assert panel.view(real_conn, "gone").selected == Q


# -- renderers ---------------------------------------------------------------------------------
def test_sparkline_pair_shares_one_scale() -> None:
    assert render.spark([0.0, 0.5, 1.0, None], 1.0) == "▁▅█·"
    assert render.spark([0.0, 0.0], 0.0) == "▁▁"
    view = fixed_view()
    text = render.sparklines(view.series, width=30).plain
    lines = text.splitlines()
    # error rate: one scale for both lanes, so the canary's higher rate draws higher bars
    stable = next(x for x in lines if x.startswith("stable") and x.endswith("%"))
    canary = next(x for x in lines if x.startswith("canary") and x.endswith("%"))
    assert stable.endswith(" 0.50%") and canary.endswith(" 0.80%")
    assert "canary vs stable +0.30pp" in text


def test_health_colours() -> None:
    rows = {r["queue"]: r for r in fixed_view().rows}
    assert render.health(rows["payments"]) == "progress"  # INCONCLUSIVE at stage 2
    assert render.health(rows["emails"]) == "failing"  # rolled back
    assert render.health(rows["orders"]) == "idle"
    passed = {**rows["payments"], "deployment": {**rows["payments"]["deployment"],
                                                 "last_analysis": {"verdict": "PASS"}}}
    assert render.health(passed) == "healthy"
    failed = {**passed, "deployment": {**passed["deployment"],
                                       "last_analysis": {"verdict": "FAIL"}}}
    assert render.health(failed) == "failing"


def test_compare_rows_side_by_side() -> None:
    rows = dict((m, (s, c, d)) for m, s, c, d in render.compare_rows(fixed_view().row()))
    assert rows["error rate"] == ("0.38%", "0.44%", "+0.06pp")
    assert rows["run p95"] == ("58.0ms", "61.2ms", "+6%")
    assert rows["throughput"] == ("160.7/s (53.6/w)", "28.4/s (28.4/w)", "")
    assert rows["DLQ"] == ("12", "2", "")
    assert rows["CPU/job p50"] == ("4.1ms", "4.3ms", "+5%")


# -- the app against a real deployment ---------------------------------------------------------
def test_keys_set_the_weight(real_conn: Connection) -> None:
    start(real_conn)

    async def scenario(pilot: Any, app: CanaryApp) -> None:
        await pilot.press("3")
        await until(pilot, lambda: queue_config.read_config(real_conn, Q).weight_bp == 3000,
                    "weight 30%")
        await until(pilot, lambda: "weight 30%" in message(app), "the message")
        assert "paused until resume" in message(app)
        await pilot.press("9")
        await until(pilot, lambda: queue_config.read_config(real_conn, Q).weight_bp == 9000,
                    "weight 90%")
        await until(pilot, lambda: "90%" in screen_text(app) and "PAUSED" in screen_text(app),
                    "the refreshed panel")

    drive(real_conn, scenario)
    dep = deployments.get(real_conn, Q)
    assert dep.state == "paused" and dep.weight_bp == 9000
    evs = deployments.events(real_conn, Q, dep.id, count=10)
    assert [e["message"] for e in evs if e["type"] == "weight"][-1].startswith(
        "weight set to 90% by tui:test")


def test_weight_above_max_weight_is_refused_with_the_reason(real_conn: Connection) -> None:
    start(real_conn)
    service.configure_queue(real_conn, Q, max_weight="50")

    async def scenario(pilot: Any, app: CanaryApp) -> None:
        await pilot.press("6")
        await until(pilot, lambda: "refused" in message(app), "the refusal")
        assert message(app) == ("set weight 60% refused: weight: 60% is above the queue's "
                                "max_weight of 50%")
        await until(pilot, lambda: "refused: weight: 60% is above" in screen_text(app),
                    "the refusal on screen")

    drive(real_conn, scenario)
    assert queue_config.read_config(real_conn, Q).weight_bp == 1000
    assert deployments.get(real_conn, Q).state == "active"


def test_rollback_after_enter(real_conn: Connection) -> None:
    dep = start(real_conn)

    async def scenario(pilot: Any, app: CanaryApp) -> None:
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
        text = screen_text(app)
        assert "Roll back v2 on payments?" in text
        assert "Weight 10% -> 0 for the very next job" in text
        await pilot.press("enter")
        await until(pilot, lambda: deployments.get(real_conn, Q).state in (
            "rolling_back", "rolled_back"), "the rollback")
        await until(pilot, lambda: "rolled back; weight 0" in message(app), "the message")
        await until(pilot, lambda: "ROLLED_BACK" in screen_text(app), "the refreshed panel")

    drive(real_conn, scenario)
    after = deployments.get(real_conn, Q)
    assert after.id == dep.id and after.state == "rolled_back"
    assert queue_config.read_config(real_conn, Q).weight_bp == 0
    assert "rolled back from the TUI by tui:test" in after.reason


def test_rollback_escape_changes_nothing(real_conn: Connection) -> None:
    dep = start(real_conn)
    cfg = queue_config.read_config(real_conn, Q)

    async def scenario(pilot: Any, app: CanaryApp) -> None:
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
        await pilot.press("escape")
        await until(pilot, lambda: message(app) == "rollback cancelled: nothing changed",
                    "the message")
        assert not isinstance(app.screen, ConfirmScreen)

    drive(real_conn, scenario)
    after = deployments.get(real_conn, Q)
    assert (after.state, after.rev, after.weight_bp) == ("active", dep.rev, 1000)
    assert queue_config.read_config(real_conn, Q).rev == cfg.rev


def test_promote_confirms_where_it_goes(real_conn: Connection) -> None:
    start(real_conn)

    async def scenario(pilot: Any, app: CanaryApp) -> None:
        await pilot.press("p")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
        assert "Promote v2 on payments to 100% (stable)?" in screen_text(app)
        await pilot.press("escape")
        await until(pilot, lambda: message(app) == "promote cancelled: nothing changed",
                    "the cancel")
        assert deployments.get(real_conn, Q).state == "active"
        await pilot.press("p")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
        await pilot.press("enter")
        await until(pilot, lambda: "v2 is now stable" in message(app), "the promotion")

    drive(real_conn, scenario)
    assert queue_config.read_config(real_conn, Q).stable_version == "v2"
    assert deployments.get(real_conn, Q).state == "completed"


def test_space_pauses_and_resumes(real_conn: Connection) -> None:
    start(real_conn)

    async def scenario(pilot: Any, app: CanaryApp) -> None:
        await pilot.press("space")
        await until(pilot, lambda: deployments.get(real_conn, Q).state == "paused", "pause")
        await until(pilot, lambda: " Resume " in screen_text(app), "the Resume label")
        await pilot.press("space")
        await until(pilot, lambda: deployments.get(real_conn, Q).state == "active", "resume")
        await until(pilot, lambda: "resumed (active)" in message(app), "the message")

    drive(real_conn, scenario)


def test_new_canary_form(real_conn: Connection) -> None:
    service.configure_queue(real_conn, Q, stable_version="v1")

    async def scenario(pilot: Any, app: CanaryApp) -> None:
        await pilot.press("ctrl+n")
        await until(pilot, lambda: isinstance(app.screen, NewCanaryScreen), "the form")
        form = app.screen
        assert form.query_one("#f-queue").value == Q  # the selected queue
        await pilot.press(*"v2", "enter")  # no live v2 worker and no --force: refused
        await until(pilot, lambda: "refused" in str(form.query_one("#form-error").render()),
                    "the refusal in the form")
        assert "no live worker of version v2" in str(form.query_one("#form-error").render())
        assert isinstance(app.screen, NewCanaryScreen) and deployments.get(real_conn, Q) is None
        form.query_one("#f-force").value = True
        form.query_one("#f-weight").value = "5"
        form.query_one("#f-version").focus()
        await pilot.press("enter")
        await until(pilot, lambda: not isinstance(app.screen, NewCanaryScreen), "the start")
        await until(pilot, lambda: "started at 5%" in message(app), "the message")

    drive(real_conn, scenario)
    dep = deployments.get(real_conn, Q)
    assert (dep.canary_version, dep.weight_bp, dep.kind, dep.actor) == ("v2", 500, "manual",
                                                                        "tui:test")


def test_new_canary_form_with_a_plan_starts_a_ramp(real_conn: Connection) -> None:
    service.configure_queue(real_conn, Q, stable_version="v1")
    plan = Path(__file__).resolve().parent.parent / "examples" / "plans" / "quick.yaml"

    async def scenario(pilot: Any, app: CanaryApp) -> None:
        await pilot.press("ctrl+n")
        await until(pilot, lambda: isinstance(app.screen, NewCanaryScreen), "the form")
        form = app.screen
        form.query_one("#f-version").value = "v2"
        form.query_one("#f-plan").value = "/nonexistent/plan.yaml"
        form.query_one("#f-force").value = True
        form.query_one("#f-plan").focus()
        await pilot.press("enter")
        await until(pilot, lambda: "cannot read plan" in str(
            form.query_one("#form-error").render()), "the plan refusal")
        assert str(form.query_one("#form-error").render()).startswith("refused: plan: ")
        form.query_one("#f-plan").value = str(plan)
        await pilot.press("enter")
        await until(pilot, lambda: not isinstance(app.screen, NewCanaryScreen), "the start")

    drive(real_conn, scenario)
    dep = deployments.get(real_conn, Q)
    assert (dep.kind, dep.canary_version, dep.state) == ("plan", "v2", "active")
    assert dep.weight_bp == dep.plan.stages[0].weight_bp


def test_narrow_terminal_shows_tabs_and_wide_three_panels(real_conn: Connection) -> None:
    start(real_conn)

    async def scenario(pilot: Any, app: CanaryApp) -> None:
        assert len(app.screen.query(TabbedContent)) == 1
        text = screen_text(app)
        assert "Control  Metrics  Workers  Events" in text
        assert "payments  v1 → v2  ACTIVE" in text
        tabs = app.screen.query_one(TabbedContent)
        assert tabs.active == "tab-control"
        await pilot.press("tab")
        assert tabs.active == "tab-metrics"
        await pilot.press("e")
        assert tabs.active == "tab-events"
        await pilot.resize_terminal(160, 48)
        await until(pilot, lambda: len(app.screen.query(TabbedContent)) == 0,
                    "the wide layout")
        await until(pilot, lambda: "Deployment control" in screen_text(app), "three panels")
        widths = [app.screen.query_one(f"#{p}").outer_size.width
                  for p in ("left", "centre", "right")]
        assert widths == [48, 64, 48]  # 30% / 40% / 30% of 160
        await pilot.press("3")  # the keys still act after the switch
        await until(pilot, lambda: queue_config.read_config(real_conn, Q).weight_bp == 3000,
                    "weight 30%")

    drive(real_conn, scenario, size=(80, 30))


def test_choosing_a_deployment_and_tab_between_panels(real_conn: Connection) -> None:
    start(real_conn)
    start(real_conn, "orders", weight="25")

    async def scenario(pilot: Any, app: CanaryApp) -> None:
        assert app.selected == "orders"  # the first running deployment, by name
        await until(pilot, lambda: "orders  v1 → v2  ACTIVE  manual" in screen_text(app),
                    "orders in the centre")
        app.screen.query_one("#deployments").focus()
        await pilot.press("down")
        await until(pilot, lambda: app.selected == Q, "payments selected")
        await until(pilot, lambda: "payments  v1 → v2  ACTIVE  manual" in screen_text(app),
                    "payments in the centre")
        await pilot.press("4")  # the keys act on the chosen deployment
        await until(pilot, lambda: queue_config.read_config(real_conn, Q).weight_bp == 4000,
                    "payments at 40%")
        assert queue_config.read_config(real_conn, "orders").weight_bp == 2500
        screen = app.screen
        await pilot.press("tab")
        assert screen.focused is screen.query_one("#centre")
        await pilot.press("tab")
        assert screen.focused is screen.query_one("#right")
        await pilot.press("tab")
        assert screen.focused is screen.query_one("#deployments")
        await pilot.press("m")
        assert screen.maximized is screen.query_one("#right")
        await pilot.press("m")
        assert screen.maximized is None

    drive(real_conn, scenario)


def test_refresh_is_at_most_once_a_second(real_conn: Connection) -> None:
    assert CanaryApp(real_conn, refresh_s=0.1).refresh_s == 1.0
    assert CanaryApp(real_conn, refresh_s=2.5).refresh_s == 2.5
    reads: list[float] = []

    def reader(sel: str | None) -> panel.PanelView:
        reads.append(time.monotonic())
        return panel.view(real_conn, sel)

    app = CanaryApp(real_conn, reader=reader)

    async def go() -> None:
        async with app.run_test(size=(160, 48)) as pilot:
            await until(pilot, lambda: len(reads) >= 3, "three readings")

    asyncio.run(go())
    # the timer's interval, not a measured speed: readings come from a 1 s interval timer
    assert app.refresh_s == 1.0 and app.refreshes >= 2


def test_redis_loss_shows_banner_and_recovers(tmp_path: Path) -> None:
    srv = RedisProcess(tmp_path)
    port = srv.port
    conn = pycanary.connect(f"redis://127.0.0.1:{port}/0", prefix="tui",
                            socket_timeout=2, socket_connect_timeout=2)
    try:
        start(conn)

        async def scenario(pilot: Any, app: CanaryApp) -> None:
            nonlocal srv
            await until(pilot, lambda: "payments  v1 → v2  ACTIVE" in screen_text(app),
                        "the deployment")
            srv.stop()
            await until(pilot, lambda: "Redis unreachable, retrying" in screen_text(app),
                        "the banner")
            assert "payments  v1 → v2  ACTIVE" in screen_text(app)  # the last data stays
            await pilot.press("5")  # acting while Redis is gone: said, not a crash
            await until(pilot, lambda: "failed: Redis unreachable" in message(app),
                        "the failed action")
            srv = RedisProcess.__new__(RedisProcess)  # the same port again, a fresh server
            srv.port = port
            srv._launch(tmp_path / "again", ["--port", str(port)],
                        redis.Redis(port=port, decode_responses=True), "redis-server")
            start(conn, weight="20")  # its data went with the old server: a new deployment
            await until(pilot, lambda: "Redis unreachable" not in screen_text(app),
                        "the banner to go")
            await until(pilot, lambda: "20%" in screen_text(app), "the new deployment")
            assert message(app) == "Redis answers again"

        drive(conn, scenario)
    finally:
        srv.stop()
        conn.close()


def test_cli_tui_command() -> None:
    res = run("tui", "--help")
    assert res.returncode == 0 and "--refresh" in res.stdout and "--queue" in res.stdout
    assert_user_error(run("tui", "--refresh", "0.5"), "refresh")
    assert_user_error(run("tui", "--queue", "bad queue"), "queue")


# -- snapshots of both layouts (a fixed view: the same screen on every run) --------------------
@pytest.fixture
def utc() -> Iterator[None]:
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old
    time.tzset()


async def _loaded(pilot: Any) -> None:
    await until(pilot, lambda: pilot.app.view is not None, "the fixed view")
    await pilot.pause()


def test_snapshot_wide(snap_compare: Any, utc: None) -> None:
    assert snap_compare(fixed_app(), terminal_size=(160, 48), run_before=_loaded)


def test_snapshot_narrow(snap_compare: Any, utc: None) -> None:
    assert snap_compare(fixed_app(), terminal_size=(80, 30), run_before=_loaded)


def test_snapshot_narrow_metrics_tab(snap_compare: Any, utc: None) -> None:
    assert snap_compare(fixed_app(), terminal_size=(80, 30), press=["m"], run_before=_loaded)


def test_fixed_view_text(utc: None) -> None:
    """What the snapshots show, as text: the split, the stage and the rules' evidence."""
    app = fixed_app()

    async def go() -> None:
        async with app.run_test(size=(160, 48)) as pilot:
            await _loaded(pilot)
            text = screen_text(app)
            assert "stage 2/4: 15% (hold 10m, 7m00s left) -> 50% -> gate -> 100%" in text
            assert "✔ max_error_rate PASS: canary 0.44% <= 0.5% (212 attempts)" in text
            assert "12:11:20 check" in text and "queue depth  stable 1,204  canary 37" in text
            assert "● emails  v3 → v4  ROLLED_BACK" in text

    asyncio.run(go())
