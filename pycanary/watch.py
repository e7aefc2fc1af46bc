"""Text views of deployments: `status` once, `status --watch` and `ramp --watch` live.

Faces only: everything shown comes from `rollouts.status`.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from . import rollouts
from .connection import Connection

FINAL = {"completed": 0, "rolled_back": 1}
#: Exit code of a watch that gave up (--timeout) while the deployment goes on.
TIMEOUT_EXIT = 3
#: Width of text views when the terminal's is unknown (a pipe, a log file).
WIDTH = 100


def shorten(text: str, width: int) -> str:
    """One line of at most ``width`` characters, cut at a word boundary with an ellipsis: the
    one way every view (status, watch, events, demo) shortens text, never mid-word. Newlines
    become spaces; leading indentation is kept."""
    text = str(text).replace("\n", " ").replace("\r", " ").rstrip()
    if len(text) <= width:
        return text
    cut = text[: max(1, width - 3)]
    if text[len(cut)] != " ":  # mid-word: back to the last space (one long word: cut it)
        space = cut.rfind(" ")
        if space > len(cut) - len(cut.lstrip()):
            cut = cut[:space]
    return cut.rstrip(" ,;:") + "..."


def wrap(text: str, width: int, indent: str = "", hang: int = 2) -> list[str]:
    """Lines of at most ``width`` characters, broken between words, continuation lines
    indented by ``indent`` plus ``hang`` spaces (a word longer than a line is cut with
    `shorten`)."""
    import textwrap

    inner = max(hang + 8, width - len(indent))
    lines = textwrap.wrap(str(text), width=inner, subsequent_indent=" " * hang,
                          break_long_words=False, break_on_hyphens=False) or [""]
    return [indent + shorten(line, inner) for line in lines]


def term_width() -> int:
    import shutil

    return shutil.get_terminal_size((WIDTH, 24)).columns if sys.stdout.isatty() else WIDTH


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}ms"


def _dur(s: float) -> str:
    """45s, 4m05s, 1h02m."""
    s = int(max(0, s))
    if s < 60:
        return f"{s}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _hold(seconds: float) -> str:
    from .plan import format_duration

    return format_duration(max(1, int(seconds)))


def window_label(lanes: dict[str, Any]) -> str:
    """What the side-by-side figures cover: "last 5 min", or the deployment's age while it is
    younger than the status window."""
    spans = [(s["end_ms"] - s["start_ms"]) / 1000 for s in lanes.values()
             if s and "start_ms" in s and "end_ms" in s]
    if not spans or max(spans) >= 299:
        return "last 5 min"
    return f"since the start, {_dur(max(spans))}"


def stage_line(dep: dict[str, Any]) -> str:
    """``stage 2/4: 15% (hold 15m, 4m left) -> 50% -> gate -> 100%``: stages numbered from 1
    (100% is the last one, the promotion), the current one with its hold, the rest whole."""
    stages = dep.get("stages") or []
    n = len(stages) + 1
    i = min(dep.get("stage", 0), max(0, len(stages) - 1))
    gates = dep.get("gates") or [False] * len(stages)
    durations = dep.get("durations_s") or []
    state = dep.get("state", "")
    if state == "completed":
        return f"stage {n}/{n}: 100% (promoted)"
    if not stages:
        return f"stage ?/?: {state}"
    if state in ("rolled_back", "rolling_back"):
        return f"stage {i + 1}/{n} ({stages[i]:g}%): rolled back (weight 0)"
    if state == "promoting":
        return f"stage {n}/{n}: 100% (promoting: draining the canary lane)"
    hold = durations[i] if i < len(durations) else dep.get("stage_duration_s", 0)
    left = dep.get("stage_duration_s", hold) - dep.get("stage_elapsed_s", 0)
    if state == "awaiting_promotion":
        timer = f"hold {_hold(hold)} passed"
    elif left > 0:
        timer = f"hold {_hold(hold)}, {_dur(left)} left" + (", paused" if state == "paused"
                                                             else "")
    else:
        timer = f"hold {_hold(hold)} passed, next passing check moves on"
    # a weight set by hand (set-weight, the TUI) is what routes now: say so beside the plan's
    weight = dep.get("weight_percent")
    by_hand = (f", weight {weight:g}% set by hand" if weight is not None
               and abs(weight - stages[i]) > 1e-9 else "")
    parts = [f"stage {i + 1}/{n}: {stages[i]:g}% ({timer}{by_hand})"]
    if i < len(gates) and gates[i]:
        parts.append("gate")
    for j in range(i + 1, len(stages)):
        parts.append(f"{stages[j]:g}%")
        if gates[j]:
            parts.append("gate")
    parts.append("100%")
    return " -> ".join(parts)


def gate_line(queue: str, dep: dict[str, Any]) -> str | None:
    """At a manual gate: the exact command that passes it; at a webhook gate: what the
    webhook answered so far (docs/notifications.md)."""
    webhook = (dep.get("meta") or {}).get("gate")
    if dep.get("state") == "active" and isinstance(webhook, dict) and \
            webhook.get("stage") == dep.get("stage"):
        last = webhook.get("last") or "no answer yet"
        return (f"waiting at the webhook gate of stage {int(webhook.get('stage', 0)) + 1}: "
                f"last answer {last} (asked {webhook.get('asked', 0)} times); it advances at "
                f"the first check after a 2xx, or `pycanary promote {queue}` now")
    if dep.get("state") != "awaiting_promotion":
        return None
    return (f"waiting at a manual gate: run `pycanary promote {queue}` to go on "
            f"(or `pycanary rollback {queue}`)")


def _resources(s: dict[str, Any]) -> str:
    """CPU per job (the handler's own CPU time) and the lane's live workers' RSS."""
    cpu = s.get("cpu_ms") or {}
    rss = s.get("rss_bytes")
    mem = "n/a" if rss is None else f"{rss / 2**20:,.0f} MiB"
    return f"cpu/job p50 {_ms(cpu.get('p50'))} p95 {_ms(cpu.get('p95'))}, rss {mem}"


def render_status(rows: list[dict[str, Any]], width: int | None = None) -> str:
    if not rows:
        return "no queues yet"
    width = width or term_width()
    out: list[str] = []
    for row in rows:
        cfg = row["config"]
        dep = row.get("deployment")
        out += wrap(f"== {row['queue']}  stable {cfg['stable_version'] or '-'}  canary "
                    f"{cfg['canary_version'] or '-'}  weight {cfg['weight_percent']:g}%  "
                    f"depth stable {row['depth']['stable']:,} / canary "
                    f"{row['depth']['canary']:,}", width, hang=3)
        if dep is None:
            out.append("   no deployment")
            continue
        out.append(f"   deployment {dep['id']}  {dep['state'].upper()}  weight "
                   f"{dep['weight_percent']:g}%")
        out += wrap(stage_line(dep), width, "   ", hang=4)
        gate = gate_line(row["queue"], dep)
        if gate:
            out += wrap(gate, width, "   ", hang=4)
        if dep.get("manual_only"):
            out += wrap(f"MANUAL-ONLY: {dep['manual_only']}", width, "   ", hang=4)
        if dep.get("reason"):
            out += wrap(f"reason: {dep['reason']}", width, "   ", hang=4)
        lanes = row.get("lanes", {})
        out.append(f"   {'lane':<8} {'version':<12} {'done':>8} {'errors':>8} {'p50':>9} "
                   f"{'p95':>9} {'wait p95':>9}   ({window_label(lanes)})")
        for lane in ("stable", "canary"):
            s = lanes.get(lane)
            if not s:
                continue
            out.append(f"   {lane:<8} {shorten(s['version'], 12):<12} {s['finished']:>8,} "
                       f"{_pct(s['error_rate']):>8} {_ms(s['run_ms']['p50']):>9} "
                       f"{_ms(s['run_ms']['p95']):>9} {_ms(s['wait_ms']['p95']):>9}")
        res = [f"{lane} {_resources(s)}" for lane in ("stable", "canary")
               if (s := lanes.get(lane))]
        if res:
            out += wrap("resources: " + "; ".join(res), width, "   ", hang=4)
        growth = row.get("stable_growth")
        if growth:
            out += wrap(f"stable lane since the rollback: {growth['inflow_per_s']:g} jobs/s in, "
                        f"{growth['outflow_per_s']:g} out, net {growth['net_per_s']:+g}/s"
                        + (" (growing faster than it is processed)"
                           if growth["net_per_s"] > 0 else ""), width, "   ", hang=4)
        la = dep.get("last_analysis") or {}
        if la:
            out += wrap(f"last check: {la.get('verdict')}: {la.get('reason', '')}", width,
                        "   ", hang=4)
        workers = row.get("workers", [])
        if workers:
            by: dict[str, int] = {}
            for w in workers:
                k = f"{w['version']}/{w['queues'].get(row['queue'], '-')}/{w['state']}"
                by[k] = by.get(k, 0) + 1
            out += wrap("workers: " + ", ".join(f"{k} x{n}" for k, n in sorted(by.items())),
                        width, "   ", hang=4)
        for e in row.get("events", [])[-5:]:
            ts = time.strftime("%H:%M:%S", time.localtime(e["ts"] / 1000))
            out.append(shorten(f"   {ts} {e['type']:<18} {e['message']}", width))
    if rows and rows[0].get("leader") is None and any(r.get("deployment") and
                                                     r["deployment"]["state"] in (
            "active", "awaiting_promotion") for r in rows):
        out.append("note: no controller is running; start one with `pycanary controller`")
    return "\n".join(out)


def progress_line(queue: str, dep: dict[str, Any], row: dict[str, Any]) -> str:
    """One line of a watch outside a terminal (a pipe, CI logs): where the deployment is."""
    canary = (row.get("lanes") or {}).get("canary") or {}
    la = dep.get("last_analysis") or {}
    parts = [f"{time.strftime('%H:%M:%S')} {queue} {dep['state']}", stage_line(dep)]
    if canary:
        parts.append(f"canary done {canary.get('finished', 0):,} errors "
                     f"{_pct(canary.get('error_rate'))}")
    if la:
        parts.append(f"last check {la.get('verdict')}")
    gate = gate_line(queue, dep)
    if gate:
        parts.append(gate)
    if row.get("leader") is None and dep["state"] in ("active", "awaiting_promotion"):
        parts.append("no controller is running: start one with `pycanary controller`")
    return "; ".join(parts)


def _clear() -> None:
    sys.stdout.write("\x1b[H\x1b[2J")


#: Outside a terminal, a watch prints a line on every change and at least this often.
PROGRESS_EVERY_S = 30.0


def watch_status(conn: Connection, queue: str | None, interval: float = 1.0,
                 timeout: float | None = None, every_s: float = PROGRESS_EVERY_S) -> int:
    """The dashboard, refreshed every ``interval``; outside a terminal printed again only when
    it changed or every ``every_s``. Ends with TIMEOUT_EXIT after ``timeout`` seconds."""
    started = time.monotonic()
    last_text, last_at = None, 0.0
    tty = sys.stdout.isatty()
    try:
        while True:
            rows = rollouts.status(conn, queue)
            text = render_status(rows)
            now = time.monotonic()
            if tty:
                _clear()
                print(text, flush=True)
            else:
                # the clock-driven parts (time left) change every second: compare without them
                key = render_status(rows, width=10_000).split("\n")
                key_s = "\n".join(x for x in key if " left" not in x)
                if key_s != last_text or now - last_at >= every_s:
                    print(time.strftime("-- %H:%M:%S"), flush=True)
                    print(text, flush=True)
                    last_text, last_at = key_s, now
            if timeout is not None and now - started >= timeout:
                print(f"stopped watching after {_hold(timeout)}", file=sys.stderr)
                return TIMEOUT_EXIT
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0


def watch_deployment(conn: Connection, queue: str, dep_id: str, *, as_json: bool = False,
                     interval: float = 1.0, timeout: float | None = None,
                     every_s: float = PROGRESS_EVERY_S) -> int:
    """Follow one deployment until it ends: 0 promoted, 1 rolled back, TIMEOUT_EXIT (3) when
    ``timeout`` seconds pass first (the deployment goes on). In a terminal the status screen
    is redrawn; elsewhere each new event is printed, and a progress line on every change of
    state, stage or verdict and at least every ``every_s`` seconds, so a CI log never looks
    hung."""
    seen: set[str] = set()
    started = time.monotonic()
    tty = sys.stdout.isatty() and not as_json
    last_key: tuple[Any, ...] | None = None
    last_at = 0.0
    try:
        while True:
            rows = rollouts.status(conn, queue)
            dep = rows[0].get("deployment") if rows else None
            if dep is None or dep["id"] != dep_id:
                print(f"deployment {dep_id} is gone (another one replaced it)", file=sys.stderr)
                return 1
            now = time.monotonic()
            if tty:
                _clear()
                print(render_status(rows), flush=True)
            else:
                for e in rows[0].get("events", []):
                    if e["id"] not in seen:
                        seen.add(e["id"])
                        print(json.dumps(e) if as_json else
                              f"{e['type']:<18} {e['message']}", flush=True)
                key = (dep["state"], dep["stage"], dep["weight_percent"],
                       (dep.get("last_analysis") or {}).get("verdict"))
                if key != last_key or now - last_at >= every_s:
                    last_key, last_at = key, now
                    if as_json:
                        print(json.dumps({"type": "progress", "queue": queue, "id": dep_id,
                                          "state": dep["state"], "stage": dep["stage"] + 1,
                                          "stages": len(dep.get("stages") or []) + 1,
                                          "weight_percent": dep["weight_percent"],
                                          "line": stage_line(dep)}), flush=True)
                    else:
                        print(progress_line(queue, dep, rows[0]), flush=True)
            if dep["state"] in FINAL:
                print(f"{queue}: {dep['state']}" + (f" ({dep['reason']})" if dep.get("reason")
                                                    else ""), file=sys.stderr)
                return FINAL[dep["state"]]
            if timeout is not None and now - started >= timeout:
                print(f"stopped watching after {_hold(timeout)}; deployment {dep_id} goes on "
                      f"({dep['state']}): `pycanary status {queue} --watch` re-attaches",
                      file=sys.stderr)
                return TIMEOUT_EXIT
            time.sleep(interval)
    except KeyboardInterrupt:
        print("stopped watching; the deployment goes on", file=sys.stderr)
        return 130


def reattach(conn: Connection, queue: str, *, as_json: bool = False,
             timeout: float | None = None) -> int:
    """`status QUEUE --watch`: follow the queue's deployment to its end (exit 0 promoted, 1
    rolled back, 3 timeout); a finished one exits at once with its outcome."""
    rows = rollouts.status(conn, queue)
    dep = rows[0].get("deployment") if rows else None
    if dep is not None and dep["state"] in FINAL:
        print(render_status(rows) if not as_json else json.dumps(rows, default=str))
        print(f"{queue}: {dep['state']}" + (f" ({dep['reason']})" if dep.get("reason")
                                            else ""), file=sys.stderr)
        return FINAL[dep["state"]]
    if dep is None:
        return watch_status(conn, queue, timeout=timeout)
    return watch_deployment(conn, queue, dep["id"], as_json=as_json, timeout=timeout)
