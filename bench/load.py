"""Sustained load: a fixed enqueue rate for a fixed time while a canary ramps and rolls back.

  .venv/bin/python bench/load.py [--rate 5000] [--seconds 60] [--workers-v1 2] [--workers-v2 1]
                                 [--concurrency 8] [--json]

On a private redis-server (free loopback port), this process enqueues at --rate jobs/s
(``enqueue_many`` every 10 ms) to one queue; `pycanary worker` subprocesses of v1 (stable) and
v2 (canary) consume it, and a `pycanary controller` subprocess ramps v2 along a quick inline
plan (10% -> 25% -> 50%, short holds). At 60% of the run the bench forces a rollback through
the service layer (`rollouts.rollback`: weight 0, canary lane drained into stable).

Printed: achieved enqueue rate, enqueue call p50/p99, end-to-end p50/p99 (enqueued_at to the
handler's finish, from the handler's own records), Redis CPU (INFO cpu user+sys delta over the
run) and the accounting of every job id: enqueued = processed + dead-lettered + still queued +
lost, with duplicates counted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _common import REPO, PrivateRedis, percentiles, raise_on_sigterm, unique_prefix

import pycanary
from pycanary import deployments, queue_config, rollouts

QUEUE = "load"
PLAN = {"interval": "2s", "min_samples": 50,
        "stages": [{"percentage": 10, "duration": "8s"}, {"percentage": 25, "duration": "8s"},
                   {"percentage": 50, "duration": "600s", "auto_promote": False}]}


def _redis_cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    exe = Path(sys.executable).parent / "pycanary"  # the console script next to this python
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c",
                                           "from pycanary.cli import main; main()"]
    return subprocess.Popen([*cmd, *args], env=env,
                            cwd=str(REPO / "bench"), stdout=subprocess.DEVNULL,
                            stderr=open(log, "w"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=int, default=5_000)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--workers-v1", type=int, default=2)
    ap.add_argument("--workers-v2", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    raise_on_sigterm()
    server = PrivateRedis()
    out_dir = Path(tempfile.mkdtemp(prefix="pycanary-load-"))
    prefix = unique_prefix("pycanary-load")
    env = {**os.environ, "PYCANARY_REDIS_URL": server.url, "PYCANARY_PREFIX": prefix,
           "LOAD_OUT_DIR": str(out_dir),
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "bench"),
                                          os.environ.get("PYTHONPATH", "")])}
    procs: list[subprocess.Popen] = []
    conn = pycanary.connect(server.url, prefix=prefix)
    try:
        queue_config.configure(conn, QUEUE, stable_version="v1", salt="load")
        for i, v in enumerate(["v1"] * args.workers_v1 + ["v2"] * args.workers_v2):
            procs.append(_spawn(["worker", QUEUE, "--version", v, "--handler",
                                 "_load_handler:record", "--concurrency",
                                 str(args.concurrency), "--heartbeat", "1", "--log-level",
                                 "warning"], env, out_dir / f"worker-{i}.log"))
        procs.append(_spawn(["controller", "--poll", "0.5", "--log-format", "text",
                             "--log-level", "warning"], env, out_dir / "controller.log"))
        time.sleep(2)  # workers registered
        rollouts.ramp(conn, QUEUE, "v2", PLAN, force=True)
        results = run_load(conn, args, out_dir)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if "results" in locals():
            finish_accounting(conn, results, out_dir)
        server.stop()
        shutil.rmtree(out_dir, ignore_errors=True)
    report(results, args)


def run_load(conn: pycanary.Connection, args: argparse.Namespace, out_dir: Path
             ) -> dict[str, Any]:
    producer = pycanary.Producer(conn)
    rate, seconds = args.rate, args.seconds
    cpu0 = _redis_cpu(conn.client)
    call_ms: list[float] = []
    ids: list[str] = []
    lanes: Counter[str] = Counter()
    errors = 0
    rolled_back_at: float | None = None
    stages_seen: list[int] = []
    t0 = time.perf_counter()
    next_tick = t0
    while (elapsed := time.perf_counter() - t0) < seconds:
        due = int(elapsed * rate) - len(ids) - errors
        if due > 0:
            t1 = time.perf_counter()
            try:
                res = producer.enqueue_many(QUEUE, [{"n": len(ids) + k} for k in range(due)])
            except Exception:  # counted, reported: an enqueue error is an outcome unknown
                errors += due
            else:
                call_ms.append((time.perf_counter() - t1) * 1000)
                ids.extend(r.job_id for r in res)
                lanes.update(r.lane for r in res)
        if rolled_back_at is None and elapsed >= 0.6 * seconds:
            rollouts.rollback(conn, QUEUE, reason="bench/load.py forced rollback")
            rolled_back_at = elapsed
        if int(elapsed) % 2 == 0 and (not stages_seen or len(stages_seen) < elapsed / 2):
            dep = deployments.get(conn, QUEUE)
            stages_seen.append(dep.weight_bp if dep else -1)
        next_tick += 0.01
        pause = next_tick - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        else:
            next_tick = time.perf_counter()
    wall = time.perf_counter() - t0
    (out_dir / "enqueued.txt").write_text("\n".join(ids))
    # Let the workers finish the backlog (bounded), then stop them.
    qk = conn.keys.queue(QUEUE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (conn.client.llen(qk.lane_stable)
                                           + conn.client.llen(qk.lane_canary)
                                           + conn.client.zcard(qk.delayed_stable)
                                           + conn.client.zcard(qk.delayed_canary)):
        time.sleep(0.2)
    time.sleep(1)
    cpu1 = _redis_cpu(conn.client)
    dep = deployments.get(conn, QUEUE)
    return {"rate_target": rate, "seconds": seconds, "wall_s": wall,
            "enqueued": len(ids), "enqueue_errors": errors, "achieved_rate": len(ids) / wall,
            "enqueue_call_ms": dict(zip(("p50", "p95", "p99"), percentiles(call_ms),
                                        strict=True)),
            "jobs_per_call": len(ids) / max(1, len(call_ms)),
            "routed": dict(lanes), "rolled_back_at_s": rolled_back_at,
            "weight_bp_every_2s": stages_seen,
            "deployment_state": dep.state if dep else None,
            "redis_cpu_s": cpu1 - cpu0}


def finish_accounting(conn: pycanary.Connection, results: dict[str, Any], out_dir: Path
                      ) -> None:
    """Every id: processed (handler records), dead-lettered, still queued, or lost."""
    processed: Counter[str] = Counter()
    e2e: list[float] = []
    for f in out_dir.glob("done-*.txt"):
        for line in f.read_text().splitlines():
            jid, enq, done = line.split()
            processed[jid] += 1
            e2e.append(float(done) - float(enq))
    qk = conn.keys.queue(QUEUE)
    dead = {json.loads(r).get("job", {}).get("id") for r in conn.client.lrange(qk.dlq, 0, -1)}
    raws = conn.client.lrange(qk.lane_stable, 0, -1) + conn.client.lrange(qk.lane_canary, 0, -1)
    raws += conn.client.zrange(qk.delayed_stable, 0, -1)
    raws += conn.client.zrange(qk.delayed_canary, 0, -1)
    for key in conn.client.scan_iter(match=f"{qk.base}:processing:*", count=1000):
        raws += conn.client.lrange(key, 0, -1)  # private server: SCAN is fine here
    queued = {json.loads(r)["id"] for r in raws}
    enqueued = set((out_dir / "enqueued.txt").read_text().split())
    results["accounting"] = {
        "enqueued": len(enqueued), "processed": len(set(processed) & enqueued),
        "dead": len(dead & enqueued), "queued": len(queued & enqueued),
        "lost": len(enqueued - set(processed) - dead - queued),
        "duplicates": sum(c - 1 for c in processed.values()),
        "ran_but_never_enqueued": len(set(processed) - enqueued)}
    results["e2e_ms"] = dict(zip(("p50", "p95", "p99"), percentiles(e2e), strict=True))


def report(r: dict[str, Any], args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(r, indent=2))
        return
    a = r.get("accounting", {})
    e = r.get("e2e_ms", {})
    c = r["enqueue_call_ms"]
    print(f"## Load: {r['rate_target']:,} jobs/s target for {r['seconds']:g}s, "
          f"{args.workers_v1} v1 + {args.workers_v2} v2 worker processes "
          f"(concurrency {args.concurrency}), private redis-server\n")
    print(f"achieved enqueue rate: {r['achieved_rate']:,.0f} jobs/s ({r['enqueued']:,} jobs in "
          f"{r['wall_s']:.1f}s, {r['enqueue_errors']} enqueue errors)")
    print(f"enqueue call (enqueue_many, {r['jobs_per_call']:.1f} jobs/call): "
          f"p50 {c['p50']:.2f} ms, p99 {c['p99']:.2f} ms")
    print(f"end-to-end (enqueued_at -> handler done): p50 {e.get('p50', float('nan')):.1f} ms, "
          f"p99 {e.get('p99', float('nan')):.1f} ms")
    print(f"redis-server CPU (INFO cpu user+sys delta): {r['redis_cpu_s']:.1f}s over "
          f"{r['wall_s']:.0f}s ({100 * r['redis_cpu_s'] / r['wall_s']:.0f}% of one core)")
    print(f"routed: {r['routed']}; canary weight (bp) every 2s: {r['weight_bp_every_2s']}")
    print(f"forced rollback at {r['rolled_back_at_s']:.1f}s; deployment state at the end: "
          f"{r['deployment_state']}")
    print(f"accounting: enqueued {a.get('enqueued')}, processed {a.get('processed')}, "
          f"dead {a.get('dead')}, queued {a.get('queued')}, lost {a.get('lost')}, "
          f"duplicates {a.get('duplicates')}, ran but never enqueued "
          f"{a.get('ran_but_never_enqueued')}")


if __name__ == "__main__":
    main()
