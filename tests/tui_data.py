"""A fixed panel view (shaped like `panel.view` output) for the TUI's snapshot tests and the
screenshot in docs/tui.svg: fixed ids, timestamps and figures, so the screen is the same on
every run. Event times are shown in local time: callers set TZ=UTC.

Regenerate the screenshot: `.venv/bin/python -m tests.tui_data docs/tui.svg`.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

from pycanary.panel import LaneSeries, PanelView

T0 = 1_796_300_000_000  # fixed epoch ms (2026-12-03 12:13:20 UTC)
SLOT_S = 10
SLOTS = [T0 // 1000 // SLOT_S * SLOT_S - (29 - i) * SLOT_S for i in range(30)]


def _lane(lane: str, version: str, *, finished: int, failed: int, p50: float, p95: float,
          tput: float, dead: int, cpu: float) -> dict[str, Any]:
    return {"queue": "payments", "version": version, "lane": lane, "start_ms": T0 - 300_000,
            "end_ms": T0, "ok": finished - failed, "failed": failed, "retried": failed,
            "dead": dead, "late": 0, "finished": finished,
            "error_rate": failed / finished if finished else None,
            "first_attempts": finished, "first_failed": failed, "crashed": 0,
            "throughput_per_s": tput,
            "run_ms": {"p50": p50, "p95": p95, "p99": p95 * 1.4},
            "wait_ms": {"p50": 2.0, "p95": 9.0, "p99": 14.0},
            "cpu_ms": {"p50": cpu, "p95": cpu * 2}, "rss_bytes": 96 * 2**20}


def _worker(wid: str, version: str, lane: str, state: str = "active",
            current: int = 2) -> dict[str, Any]:
    return {"id": wid, "version": version, "state": state, "last_seen_ms": T0 - 1000,
            "queues": {"payments": lane}, "host": "web-1", "pid": 4242, "concurrency": 4,
            "started_at": T0 - 3_600_000, "current": current, "done": 1000, "failed": 3,
            "rss_bytes": 48 * 2**20, "schemas": "any", "running": {"payments": {lane: current}},
            "last_finished_at": T0 - 500, "lanes": {"payments": lane}}


def _config(queue: str, stable: str, canary: str | None, weight_bp: int,
            max_bp: int = 10_000) -> dict[str, Any]:
    return {"queue": queue, "enabled": True, "weight_bp": weight_bp, "sticky": True,
            "salt": "5eed", "max_weight_bp": max_bp, "stable_version": stable,
            "canary_version": canary, "backend": "lists", "max_backlog": 0,
            "tenant_weights_bp": {}, "rev": 7, "updated_at": T0,
            "weight_percent": weight_bp / 100, "max_weight_percent": max_bp / 100,
            "tenant_weights_percent": {}}


def _rule(rule: str, verdict: str, reason: str) -> dict[str, Any]:
    return {"rule": rule, "verdict": verdict, "observed": {}, "threshold": None,
            "reason": reason, "decisive": False}


def _events() -> list[dict[str, Any]]:
    rows = [(0, "started", "ramp of v2: 5% -> 15% -> 50% -> 100%"),
            (300_000, "check", "PASS: error rate 0.41% vs 0.38%, p95 +3%"),
            (600_000, "stage", "advanced to stage 2 (15%) by controller"),
            (780_000, "check", "INCONCLUSIVE: 212 canary jobs, 400 needed")]
    return [{"ts": T0 - 900_000 + dt, "type": t, "actor": "controller:ctl-1", "message": m,
             "data": {}, "id": f"{T0 - 900_000 + dt}-0"} for dt, t, m in rows]


def fixed_view() -> PanelView:
    """payments: a ramp of v2 at stage 2 (15%), both lanes busy; orders: no deployment;
    emails: a deployment the analysis rolled back."""
    dep = {"id": "payments-20261203T120000-a1b2", "queue": "payments",
           "stable_version": "v1", "canary_version": "v2", "state": "active", "stage": 1,
           "weight_bp": 1500, "tenants_bp": {}, "sticky": True, "salt": "5eed", "kind": "plan",
           "started_at": T0 - 900_000, "stage_started_at": T0 - 300_000, "paused_at": None,
           "paused_ms": 0, "updated_at": T0, "finished_at": None, "rollback_at": None,
           "promoted_at": None, "reason": "", "manual_only": "", "actor": "cli:ops@web-1",
           "rev": 9, "last_decision": None, "meta": {}, "weight_percent": 15.0,
           "stages": [5.0, 15.0, 50.0], "stage_elapsed_s": 180.0, "stage_duration_s": 600,
           "durations_s": [300, 600, 1200], "gates": [False, False, True], "last_error": None,
           "last_analysis": {
               "verdict": "INCONCLUSIVE", "stage": 1, "now_s": T0 / 1000,
               "reason": "too few canary samples", "decisive": False, "fail_streak": 0,
               "failure_threshold": 3,
               "rules": [
                   _rule("max_error_rate", "PASS", "canary 0.44% <= 0.5% (212 attempts)"),
                   _rule("max_latency_increase", "PASS", "canary p95 61.2ms vs stable "
                         "58.0ms: +5.5% <= 15%"),
                   _rule("min_samples", "INCONCLUSIVE", "212 canary attempts, 400 needed"),
               ],
               "stable": {}, "canary": {}}}
    payments = {
        "queue": "payments", "config": _config("payments", "v1", "v2", 1500),
        "depth": {"stable": 1_204, "canary": 37}, "leader": "ctl-1", "deployment": dep,
        "controller_error": None, "rolled_back_running": [],
        "workers": [_worker("w-s1", "v1", "stable"), _worker("w-s2", "v1", "stable"),
                    _worker("w-s3", "v1", "stable", current=1),
                    _worker("w-c1", "v2", "canary", current=1)],
        "lanes": {"stable": _lane("stable", "v1", finished=48_210, failed=183, p50=21.4,
                                  p95=58.0, tput=160.7, dead=12, cpu=4.1),
                  "canary": _lane("canary", "v2", finished=8_505, failed=37, p50=22.0,
                                  p95=61.2, tput=28.4, dead=2, cpu=4.3)},
        "events": _events()}
    orders = {"queue": "orders", "config": _config("orders", "v7", None, 0, 2000),
              "depth": {"stable": 12, "canary": 0}, "leader": "ctl-1", "deployment": None,
              "controller_error": None, "workers": [], "rolled_back_running": []}
    emails_dep = {**dep, "id": "emails-20261203T110000-c3d4", "queue": "emails",
                  "stable_version": "v3", "canary_version": "v4", "state": "rolled_back",
                  "stage": 0, "weight_bp": 0, "weight_percent": 0.0, "kind": "manual",
                  "reason": "canary error rate 6.10% above 0.5% (3 FAIL checks)",
                  "last_analysis": None}
    emails = {"queue": "emails", "config": _config("emails", "v3", None, 0),
              "depth": {"stable": 3, "canary": 0}, "leader": "ctl-1",
              "deployment": emails_dep, "controller_error": None, "workers": [],
              "rolled_back_running": [], "lanes": {}, "events": []}
    rate_s = [150 + (i * 7) % 23 for i in range(30)]
    rate_c = [round(r * 0.176, 1) for r in rate_s]
    err_s = [0.004 + ((i * 3) % 5) / 2000 for i in range(30)]
    err_c = [None] * 4 + [0.004 + ((i * 5) % 7) / 1500 for i in range(26)]
    series = {"stable": LaneSeries("stable", "v1", SLOT_S, SLOTS, [float(x) for x in rate_s],
                                   err_s),
              "canary": LaneSeries("canary", "v2", SLOT_S, SLOTS, rate_c, err_c)}
    return PanelView(rows=[emails, orders, payments], selected="payments", series=series,
                     now_ms=T0)


def fixed_app() -> Any:
    from pycanary.tui import CanaryApp

    view = fixed_view()
    return CanaryApp(reader=lambda _sel: view, where="redis://127.0.0.1:6379/0 prefix demo",
                     queue="payments", actor="tui:test")


async def _wait_loaded(pilot: Any) -> None:
    for _ in range(200):
        if pilot.app.view is not None:
            break
        await pilot.pause(0.02)
    await pilot.pause()


def main(path: str) -> None:
    os.environ["TZ"] = "UTC"
    time.tzset()

    async def go() -> None:
        app = fixed_app()
        async with app.run_test(size=(160, 48)) as pilot:
            await _wait_loaded(pilot)
            app.save_screenshot(os.path.basename(path), path=os.path.dirname(path) or ".")

    asyncio.run(go())


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/tui.svg")
