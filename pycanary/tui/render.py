"""Pure renderers of the panel: status rows and series in, Rich text and tables out.

No Redis, no clock: everything shown comes from a `panel.PanelView` (the service layer's
reading), so the same view always draws the same screen (the snapshot tests rely on it).
Event times are shown in local time, as `pycanary status` shows them.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..panel import LaneSeries, PanelView
from ..watch import gate_line, shorten, stage_line, window_label

#: Status colour of a deployment in the list (the issue's green / yellow / red).
COLOURS = {"healthy": "green", "progress": "yellow", "failing": "red", "idle": "grey50"}
STABLE_STYLE = "dodger_blue2"
CANARY_STYLE = "dark_orange"
VERDICT_STYLE = {"PASS": "green", "FAIL": "bold red", "INCONCLUSIVE": "yellow"}
VERDICT_MARK = {"PASS": "✔", "FAIL": "✘", "INCONCLUSIVE": "…"}
BLOCKS = "▁▂▃▄▅▆▇█"
FINISHED = ("completed", "rolled_back")


def health(row: dict[str, Any]) -> str:
    """healthy (its last check passed, or it was promoted), progress (no verdict yet,
    inconclusive, paused, at a gate), failing (a FAIL, a rollback, a controller error), idle
    (no deployment)."""
    dep = row.get("deployment")
    if dep is None:
        return "idle"
    state = dep.get("state")
    verdict = (dep.get("last_analysis") or {}).get("verdict")
    if state in ("rolling_back", "rolled_back") or row.get("error") or \
            dep.get("last_error") or verdict == "FAIL":
        return "failing"
    if state == "completed" or (verdict == "PASS" and state == "active"):
        return "healthy"
    return "progress"


def weight_of(row: dict[str, Any]) -> float:
    """The canary percent in force: the deployment's, else the queue's routing weight."""
    dep = row.get("deployment")
    if dep is not None and dep.get("state") not in FINISHED:
        return float(dep.get("weight_percent") or 0)
    return float(row["config"].get("weight_percent") or 0)


def split_bar(canary_pct: float, width: int) -> Text:
    """stable share then canary share of new jobs, ``width`` cells."""
    width = max(2, width)
    n = round(width * canary_pct / 100)
    if canary_pct > 0:
        n = max(1, n)
    bar = Text()
    bar.append("█" * (width - n), style=STABLE_STYLE)
    bar.append("█" * n, style=CANARY_STYLE)
    return bar


def deployment_item(row: dict[str, Any], width: int = 40) -> Text:
    """One entry of the deployments list: colour dot, queue, versions, state, split bar."""
    kind = health(row)
    dep = row.get("deployment")
    cfg = row["config"]
    t = Text()
    t.append("● ", style=COLOURS[kind])
    t.append(row["queue"], style="bold")
    if dep is None:
        t.append(f"  {cfg.get('stable_version') or '-'}  no deployment", style="grey62")
    else:
        t.append(f"  {shorten(dep.get('stable_version') or '-', 12)} → "
                 f"{shorten(dep.get('canary_version') or '-', 12)}")
        t.append(f"  {str(dep.get('state', '?')).upper()}", style=COLOURS[kind])
    pct = weight_of(row)
    t.append("\n  ")
    t.append_text(split_bar(pct, max(4, width - 14)))
    t.append(f" {pct:g}%", style=CANARY_STYLE)
    return t


def _pct(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}ms"


def detail_header(row: dict[str, Any] | None) -> Text:
    """The selected deployment: versions, state, stage with time left, reason, gate."""
    if row is None:
        return Text("no queues yet: press Ctrl+N to start a canary", style="grey62")
    dep = row.get("deployment")
    cfg = row["config"]
    t = Text()
    t.append(row["queue"], style="bold")
    if dep is None:
        t.append(f"  stable {cfg.get('stable_version') or '-'}  no deployment\n",
                 style="grey62")
        t.append(f"routing weight {cfg.get('weight_percent', 0):g}%  (Ctrl+N: new canary)")
        return t
    kind = health(row)
    t.append(f"  {dep.get('stable_version') or '-'}", style=STABLE_STYLE)
    t.append(" → ")
    t.append(dep.get("canary_version") or "-", style=CANARY_STYLE)
    t.append(f"  {str(dep.get('state', '?')).upper()}", style=f"bold {COLOURS[kind]}")
    t.append(f"  {dep.get('kind', '')}\n", style="grey62")
    t.append(f"{dep.get('id', '')}\n", style="grey62")
    t.append(stage_line(dep) + "\n")
    gate = gate_line(row["queue"], dep)
    if gate:
        t.append(gate + "\n", style="yellow")
    if dep.get("manual_only"):
        t.append(f"MANUAL-ONLY: {dep['manual_only']}\n", style="yellow")
    if dep.get("reason"):
        t.append(f"reason: {dep['reason']}\n", style="red" if kind == "failing" else "")
    err = dep.get("last_error") or row.get("controller_error")
    if err:
        t.append(f"controller: {err.get('message', err)}\n", style="red")
    if row.get("leader") is None and dep.get("state") in ("active", "awaiting_promotion"):
        t.append("no controller is running: stages do not advance\n", style="yellow")
    t.rstrip()
    return t


def weight_control(row: dict[str, Any] | None, width: int = 40) -> Text:
    """The weight as a bar with the queue's max_weight marked, and the keys that set it."""
    if row is None:
        return Text("")
    pct = weight_of(row)
    max_pct = float(row["config"].get("max_weight_percent", 100))
    width = max(10, width)
    t = Text("weight ")
    filled = round(width * pct / 100)
    cap = round(width * max_pct / 100)
    for i in range(width):
        if i < filled:
            t.append("█", style=CANARY_STYLE)
        elif i >= cap:
            t.append("╳", style="grey35")
        else:
            t.append("░", style="grey50")
    t.append(f" {pct:g}%", style=f"bold {CANARY_STYLE}")
    t.append(f"\n1-9 sets 10%..90%, max_weight {max_pct:g}%", style="grey62")
    return t


def _delta_pct(c: float | None, s: float | None) -> str:
    return "" if c is None or s is None else f"{100 * (c - s):+.2f}pp"


def _delta_rel(c: float | None, s: float | None) -> str:
    return "" if c is None or s is None or s == 0 else f"{100 * (c - s) / s:+.0f}%"


def compare_rows(row: dict[str, Any] | None) -> list[tuple[str, str, str, str]]:
    """(metric, stable, canary, delta) over the status window (last 5 min)."""
    lanes = (row or {}).get("lanes") or {}
    s, c = lanes.get("stable") or {}, lanes.get("canary") or {}
    if not s and not c:
        return []

    def workers(lane: str) -> int:
        return sum(1 for w in (row or {}).get("workers", [])
                   if w.get("state") not in ("dead",)
                   and (w.get("lanes") or {}).get(row["queue"]) == lane)

    def per_worker(x: dict[str, Any], lane: str) -> str:
        n = workers(lane)
        tp = x.get("throughput_per_s", 0.0)
        return f"{tp:.1f}/s" + (f" ({tp / n:.1f}/w)" if n else "")

    def q(x: dict[str, Any], key: str, p: str) -> float | None:
        return (x.get(key) or {}).get(p)

    return [
        ("error rate", _pct(s.get("error_rate")), _pct(c.get("error_rate")),
         _delta_pct(c.get("error_rate"), s.get("error_rate"))),
        ("run p50", _ms(q(s, "run_ms", "p50")), _ms(q(c, "run_ms", "p50")),
         _delta_rel(q(c, "run_ms", "p50"), q(s, "run_ms", "p50"))),
        ("run p95", _ms(q(s, "run_ms", "p95")), _ms(q(c, "run_ms", "p95")),
         _delta_rel(q(c, "run_ms", "p95"), q(s, "run_ms", "p95"))),
        ("throughput", per_worker(s, "stable"), per_worker(c, "canary"), ""),
        ("done", f"{s.get('finished', 0):,}", f"{c.get('finished', 0):,}", ""),
        ("DLQ", f"{s.get('dead', 0):,}", f"{c.get('dead', 0):,}", ""),
        ("CPU/job p50", _ms(q(s, "cpu_ms", "p50")), _ms(q(c, "cpu_ms", "p50")),
         _delta_rel(q(c, "cpu_ms", "p50"), q(s, "cpu_ms", "p50"))),
    ]


def compare_table(row: dict[str, Any] | None) -> RenderableType:
    """Stable vs canary side by side (error rate, p50/p95, throughput, DLQ, CPU per job)."""
    rows = compare_rows(row)
    if not rows:
        return Text("no lane metrics (no deployment)", style="grey62")
    lanes = row["lanes"]
    table = Table(box=None, pad_edge=False, expand=True, title_justify="left",
                  title=window_label(lanes), title_style="grey62")
    table.add_column("")
    table.add_column(f"stable {shorten(lanes['stable']['version'], 10)}", justify="right",
                     style=STABLE_STYLE)
    table.add_column(f"canary {shorten(lanes['canary']['version'], 10)}", justify="right",
                     style=CANARY_STYLE)
    table.add_column("Δ", justify="right")
    for metric, s, c, d in rows:
        table.add_row(metric, s, c, d)
    return table


def rules(row: dict[str, Any] | None) -> Text:
    """Each rule's verdict at the last check with its evidence (the analysis' reason)."""
    dep = (row or {}).get("deployment") or {}
    la = dep.get("last_analysis") or {}
    if not la:
        return Text("rules: no check yet" + ("" if (row or {}).get("leader") else
                                              " (no controller running)"), style="grey62")
    verdict = la.get("verdict", "?")
    t = Text("check: ")
    t.append(f"{verdict}", style=VERDICT_STYLE.get(verdict, ""))
    t.append(f"  stage {la.get('stage', 0) + 1}, fail streak {la.get('fail_streak', 0)}/"
             f"{la.get('failure_threshold', '?')}", style="grey62")
    for r in la.get("rules") or []:
        v = r.get("verdict", "?")
        t.append(f"\n{VERDICT_MARK.get(v, '?')} ", style=VERDICT_STYLE.get(v, ""))
        t.append(f"{r.get('rule', '?')}", style="bold")
        t.append(f" {v}", style=VERDICT_STYLE.get(v, ""))
        if r.get("reason"):
            t.append(f": {r['reason']}")
    return t


def spark(values: list[float | None], top: float) -> str:
    """A sparkline of ``values`` scaled to ``top`` (shared by both lanes, so their gap
    shows); a slot with no data is a dot."""
    out = []
    for v in values:
        if v is None:
            out.append("·")
        elif top <= 0:
            out.append(BLOCKS[0])
        else:
            out.append(BLOCKS[max(0, min(7, round(v / top * 7)))])
    return "".join(out)


def _last(values: list[float | None]) -> float | None:
    return next((v for v in reversed(values) if v is not None), None)


def sparklines(series: dict[str, LaneSeries], width: int = 30) -> RenderableType:
    """Job rate and error rate of both lanes, each pair on one scale, with the latest
    values and the canary's difference from stable."""
    if not series:
        return Text("no series (no deployment selected)", style="grey62")
    t = Text()
    minutes = max(1, round(next(iter(series.values())).slot_s * len(
        next(iter(series.values())).slots) / 60))
    for title, key, fmt in (("jobs/s", "jobs_per_s", lambda v: f"{v:.1f}/s"),
                            ("error rate", "error_rate", lambda v: f"{100 * v:.2f}%")):
        t.append(f"{title} (last {minutes} min)\n", style="bold")
        cols = {lane: list(getattr(s, key))[-width:] for lane, s in series.items()}
        top = max((v for vals in cols.values() for v in vals if v is not None), default=0.0)
        lasts = {}
        for lane in ("stable", "canary"):
            if lane not in cols:
                continue
            style = STABLE_STYLE if lane == "stable" else CANARY_STYLE
            t.append(f"{lane:<7}", style=style)
            t.append(spark(cols[lane], top), style=style)
            lasts[lane] = _last(cols[lane])
            t.append(f" {'-' if lasts[lane] is None else fmt(lasts[lane])}\n")
        s, c = lasts.get("stable"), lasts.get("canary")
        if key == "error_rate" and s is not None and c is not None:
            d = 100 * (c - s)
            t.append(f"canary vs stable {d:+.2f}pp\n",
                     style="red" if d > 0.5 else "green" if d <= 0 else "yellow")
    t.rstrip()
    return t


def workers(row: dict[str, Any] | None) -> Text:
    """Worker health: live workers by version, lane and state, with jobs and RSS."""
    if row is None:
        return Text("")
    ws = row.get("workers") or []
    t = Text("workers\n", style="bold")
    if not ws:
        t.append("no worker registered on this queue", style="yellow")
        return t
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for w in ws:
        lane = (w.get("lanes") or {}).get(row["queue"], "-")
        groups.setdefault((w["version"], lane, w["state"]), []).append(w)
    for (version, lane, state), members in sorted(groups.items()):
        style = {"dead": "red", "retiring": "yellow", "standby": "grey62",
                 "outdated": "yellow"}.get(state, "green")
        rss = [m.get("rss_bytes") for m in members if m.get("rss_bytes")]
        busy = sum(m.get("current") or 0 for m in members)
        t.append(f"{shorten(version, 8):<8} {lane:<6} ", style=STABLE_STYLE
                 if lane == "stable" else CANARY_STYLE if lane == "canary" else "")
        t.append(f"{state:<8}", style=style)
        t.append(f" x{len(members):<2} {busy:>3} busy"
                 + (f" {sum(rss) / 2**20:>5,.0f}M" if rss else "") + "\n")
    t.rstrip()
    return t


def depths(row: dict[str, Any] | None) -> Text:
    """Queue depths of both lanes (and, after a rollback, the stable lane's growth)."""
    if row is None:
        return Text("")
    d = row.get("depth") or {}
    t = Text("queue depth  ", style="bold")
    t.append(f"stable {d.get('stable', 0):,}", style=STABLE_STYLE)
    t.append("  ")
    t.append(f"canary {d.get('canary', 0):,}", style=CANARY_STYLE)
    g = row.get("stable_growth")
    if g:
        t.append(f"\nstable since rollback: {g['net_per_s']:+g}/s net")
    return t


def events(row: dict[str, Any] | None, limit: int = 20, width: int = 200) -> Text:
    """The deployment's latest events, newest last (a long message wraps, up to three
    lines)."""
    evs = (row or {}).get("events") or []
    t = Text("events\n", style="bold")
    if not evs:
        t.append("no events", style="grey62")
        return t
    for e in evs[-limit:]:
        ts = time.strftime("%H:%M:%S", time.localtime(e["ts"] / 1000))
        style = "red" if e["type"] in ("rollback", "rolled_back", "controller_error") else \
            "green" if e["type"] in ("promoted", "completed") else ""
        t.append(f"{ts} ", style="grey62")
        t.append(f"{e['type']:<12} ", style=style or "bold")
        t.append(shorten(e.get("message", ""), max(40, width * 3 - 22)) + "\n")
    t.rstrip()
    return t


def metric_cards(row: dict[str, Any] | None) -> RenderableType:
    """The narrow layout's stacked cards: one per metric, stable and canary side by side."""
    rows = compare_rows(row)
    if not rows:
        return Text("no lane metrics (no deployment)", style="grey62")
    cards = []
    for metric, s, c, d in rows:
        body = Text()
        body.append(f"stable {s}", style=STABLE_STYLE)
        body.append("   ")
        body.append(f"canary {c}", style=CANARY_STYLE)
        if d:
            body.append(f"   Δ {d}")
        cards.append(Panel(body, title=metric, title_align="left", padding=(0, 1)))
    return Group(*cards)


def title(view: PanelView | None, where: str) -> Text:
    """The top line: where the panel reads from and how many deployments run."""
    t = Text("pycanary", style="bold")
    t.append(f"  {where}", style="grey62")
    if view is not None:
        running = sum(1 for r in view.rows if (r.get("deployment") or {}).get("state")
                      not in (None, *FINISHED))
        t.append(f"  {len(view.rows)} queue(s), {running} deployment(s) running")
    return t


HELP = """\
Keys
  Tab        next panel (wide) / next tab (narrow)
  Up, Down   choose a deployment in the list
  1-9        canary weight 10%..90% (refused above the max_weight);
             like `pycanary set-weight`, it pauses a running deployment
  p          promote: the next stage, or 100% (asks to confirm)
  r          roll back now: weight 0, canary lane drains (asks to confirm)
  Space      toggle automatic progression: pause / resume the deployment
             (there is no separate auto-promote switch; while paused the
             stage and weight stay, and the safety checks still run)
  Pause, s   pause the deployment (Space resumes)
  c          configure the queue's max_weight
  Ctrl+N     new canary: queue, version, plan file or weight
  m          metrics view (wide: monitoring panel maximised; narrow: tab)
  e, Ctrl+E  event log view
  ?          this help             q, Ctrl+Q  quit
In a confirmation, Enter confirms and Esc cancels (nothing changes)."""
