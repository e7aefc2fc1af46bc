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
    space = cut.rfind(" ")
    if space >= width // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:") + "..."


def wrap(text: str, width: int, indent: str = "", hang: int = 2) -> list[str]:
    """Lines of at most ``width`` characters, broken between words, continuation lines
    indented by ``indent`` plus ``hang`` spaces (a word longer than a line is cut with
    `shorten`)."""
    import textwrap

    lines = textwrap.wrap(str(text), width=max(20, width - len(indent)),
                          subsequent_indent=" " * hang, break_long_words=False,
                          break_on_hyphens=False) or [""]
    return [indent + shorten(line, max(20, width - len(indent))) for line in lines]


def term_width() -> int:
    import shutil

    return shutil.get_terminal_size((WIDTH, 24)).columns if sys.stdout.isatty() else WIDTH


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}ms"


def _dur(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def render_status(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no queues yet"
    out: list[str] = []
    for row in rows:
        cfg = row["config"]
        dep = row.get("deployment")
        out.append(f"== {row['queue']}  stable {cfg['stable_version'] or '-'}  canary "
                   f"{cfg['canary_version'] or '-'}  weight {cfg['weight_percent']:g}%  "
                   f"depth stable {row['depth']['stable']:,} / canary {row['depth']['canary']:,}")
        if dep is None:
            out.append("   no deployment")
            continue
        stages = " -> ".join(f"{p:g}%" for p in dep["stages"])
        left = dep["stage_duration_s"] - dep["stage_elapsed_s"]
        out.append(f"   deployment {dep['id']}  {dep['state'].upper()}  stage {dep['stage']} of "
                   f"[{stages}]  weight {dep['weight_percent']:g}%  time left in stage "
                   f"{_dur(left)}")
        if dep.get("manual_only"):
            out.append(f"   MANUAL-ONLY: {dep['manual_only']}")
        if dep.get("reason"):
            out.append(f"   reason: {dep['reason']}")
        lanes = row.get("lanes", {})
        out.append(f"   {'lane':<8} {'version':<12} {'done':>8} {'errors':>8} {'p50':>9} "
                   f"{'p95':>9} {'wait p95':>9}   (last 5 min)")
        for lane in ("stable", "canary"):
            s = lanes.get(lane)
            if not s:
                continue
            out.append(f"   {lane:<8} {s['version']:<12} {s['finished']:>8,} "
                       f"{_pct(s['error_rate']):>8} {_ms(s['run_ms']['p50']):>9} "
                       f"{_ms(s['run_ms']['p95']):>9} {_ms(s['wait_ms']['p95']):>9}")
        la = dep.get("last_analysis") or {}
        if la:
            out.append(f"   last check: {la.get('verdict')}: {la.get('reason', '')[:150]}")
        workers = row.get("workers", [])
        if workers:
            by: dict[str, int] = {}
            for w in workers:
                k = f"{w['version']}/{w['queues'].get(row['queue'], '-')}/{w['state']}"
                by[k] = by.get(k, 0) + 1
            out.append("   workers: " + ", ".join(f"{k} x{n}" for k, n in sorted(by.items())))
        for e in row.get("events", [])[-5:]:
            ts = time.strftime("%H:%M:%S", time.localtime(e["ts"] / 1000))
            out.append(f"   {ts} {e['type']:<18} {e['message'][:120]}")
    if rows and rows[0].get("leader") is None and any(r.get("deployment") and
                                                     r["deployment"]["state"] in (
            "active", "awaiting_promotion") for r in rows):
        out.append("note: no controller is running; start one with `pycanary controller`")
    return "\n".join(out)


def _clear() -> None:
    sys.stdout.write("\x1b[H\x1b[2J")


def watch_status(conn: Connection, queue: str | None, interval: float = 1.0) -> int:
    try:
        while True:
            text = render_status(rollouts.status(conn, queue))
            if sys.stdout.isatty():
                _clear()
            print(text, flush=True)
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0


def watch_deployment(conn: Connection, queue: str, dep_id: str, *, as_json: bool = False,
                     interval: float = 1.0, timeout: float | None = None) -> int:
    """Follow one deployment until it ends: 0 promoted, 1 rolled back."""
    seen: set[str] = set()
    started = time.monotonic()
    tty = sys.stdout.isatty() and not as_json
    try:
        while True:
            rows = rollouts.status(conn, queue)
            dep = rows[0].get("deployment") if rows else None
            if dep is None or dep["id"] != dep_id:
                print(f"deployment {dep_id} is gone (another one replaced it)", file=sys.stderr)
                return 1
            if tty:
                _clear()
                print(render_status(rows), flush=True)
            else:
                for e in rows[0].get("events", []):
                    if e["id"] not in seen:
                        seen.add(e["id"])
                        print(json.dumps(e) if as_json else
                              f"{e['type']:<18} {e['message']}", flush=True)
            if dep["state"] in FINAL:
                print(f"{queue}: {dep['state']}" + (f" ({dep['reason']})" if dep.get("reason")
                                                    else ""), file=sys.stderr)
                return FINAL[dep["state"]]
            if timeout is not None and time.monotonic() - started > timeout:
                return 2
            time.sleep(interval)
    except KeyboardInterrupt:
        print("stopped watching; the deployment goes on", file=sys.stderr)
        return 130
