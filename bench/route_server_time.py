#!/usr/bin/env python
"""Server time of route_enqueue per call, on a private redis-server (no other clients).

INFO commandstats (usec_per_call of EVALSHA) around N calls of route_enqueue with what
Producer.enqueue sends (weight 10% sticky, bucket precomputed, no idempotency record), next to
the same N plain LPUSHes of the same envelope and an empty script with the same KEYS/ARGV (the
cost of any EVALSHA). Rounds interleave the three; the figure is each one's best round, so
noise from other processes on the machine (which only ever adds time) is cut.

    .venv/bin/python bench/route_server_time.py [--calls N] [--rounds R] [--lua-dir DIR]

``--lua-dir`` measures the scripts of another tree, e.g. before a change:
``git archive <rev> lua | tar -x -C /tmp/old && ... --lua-dir /tmp/old/lua``.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from pycanary.keys import Keys  # noqa: E402
from pycanary.routing import StickyHasher  # noqa: E402
from pycanary.scripts import _expand, lua_dir  # noqa: E402
from tests.redis_servers import RedisProcess  # noqa: E402

ENVELOPE = ('{"id":"0190aaaa-bbbb-7ccc-8ddd-eeeeeeeeeeee","queue":"bench","payload":{"order_id":'
            '"ord-000123456","amount_cents":1999,"currency":"EUR","customer":"cus-7f3a9c",'
            '"items":3},"sticky_key":null,"tenant":null,"attempts":0,'
            '"enqueued_at":1700000000000,"schema":1,"v":1}')


def usec_per_call(r: redis.Redis, cmd: str) -> float:
    s = r.info("commandstats").get(f"cmdstat_{cmd}", {})
    return s.get("usec", 0) / max(s.get("calls", 0), 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=10_000, help="calls per variant per round")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (best is kept)")
    ap.add_argument("--lua-dir", type=Path, default=None,
                    help="the lua/ folder to measure (default: this tree's)")
    ns = ap.parse_args()
    folder = ns.lua_dir or lua_dir()
    source = _expand((folder / "route_enqueue.lua").read_text(), folder / "includes")
    with tempfile.TemporaryDirectory(prefix="pycanary-bench-st-") as tmp:
        server = RedisProcess(Path(tmp))
        try:
            r = redis.Redis(port=server.port, decode_responses=True)
            qk = Keys("bench").queue("bench")
            r.hset(qk.config, mapping={"enabled": "1", "weight_bp": "1000", "sticky": "1",
                                       "salt": ""})
            keys = qk.routing()
            sha = r.script_load(source)
            empty = r.script_load("return 1")
            hasher, rng = StickyHasher(), random.Random(1)
            args = [(ENVELOPE, f"j{i}", "", rng.randrange(10_000), hasher.bucket(f"j{i}", ""), "")
                    for i in range(ns.calls)]
            variants = {
                "LPUSH": ("lpush", lambda: [r.execute_command("LPUSH", qk.lane_stable, ENVELOPE)
                                            for _ in range(ns.calls)]),
                "EVALSHA of an empty script": ("evalsha", lambda: [
                    r.execute_command("EVALSHA", empty, 5, *keys, *a) for a in args]),
                "EVALSHA route_enqueue": ("evalsha", lambda: [
                    r.execute_command("EVALSHA", sha, 5, *keys, *a) for a in args]),
            }
            best: dict[str, float] = {}
            for _ in range(ns.rounds):
                for name, (cmd, run) in variants.items():
                    r.delete(qk.lane_stable, qk.lane_canary, qk.routed)
                    r.config_resetstat()
                    run()
                    best[name] = min(best.get(name, float("inf")), usec_per_call(r, cmd))
            info = r.info("server")
        finally:
            server.stop()
    print(f"## route_enqueue server time ({folder})\n")
    print(f"- private redis-server {info['redis_version']}, {ns.calls} calls per variant, "
          f"best of {ns.rounds} interleaved rounds; weight 10% sticky, bucket precomputed\n")
    print("| command | usec per call (INFO commandstats) |")
    print("|:--|--:|")
    for name, v in best.items():
        print(f"| {name} | {v:.2f} |")
    lp, ev = best["LPUSH"], best["EVALSHA route_enqueue"]
    print(f"\nroute_enqueue / LPUSH: {ev / lp:.1f}x; route_enqueue - empty script: "
          f"{ev - best['EVALSHA of an empty script']:.2f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
