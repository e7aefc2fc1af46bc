#!/usr/bin/env python
"""Routing latency: what does canary routing cost over a plain LPUSH, against a real Redis?

Variants (one queue, weight 10% sticky, so routing really happens):

  a      LPUSH of a pycanary envelope (made by pycanary's encoder)         1 job per call
  b      EVALSHA route_enqueue, same KEYS/ARGV as the producer, bucket
         precomputed client side                                          1 job per call
  c      Producer.enqueue end to end                                     1 job per call
  d      Producer.enqueue_many, batches of 100, 20 batches per round trip 2,000 jobs per call
  d100   Producer.enqueue_many of 100 payloads (one batch, one round trip) 100 jobs per call
  e100   pipelined LPUSH, 100 commands per round trip                     100 jobs per call
  e2000  pipelined LPUSH, 2,000 commands per round trip (what d sends)    2,000 jobs per call

Each with 1 and 8 concurrent clients (processes by default, each with its own connection and
Producer; ``--threads`` runs them as threads in one process, which measures the GIL too).
Slices of every (variant, clients) pair are interleaved round-robin over several rounds, the
order rotated each round, so machine noise hits all variants alike; results are aggregated.
Server time comes from INFO commandstats differences around each slice (the server may be
shared, so a slice whose call count does not match what we sent is left out of server time).

    .venv/bin/python bench/route_latency.py [--quick] [--json] [--rounds R] [--jobs N]

Keys live under a unique prefix (pycanary-bench-<pid>-<hex>) and are deleted at the end,
also on Ctrl-C and errors. Nothing is flushed.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import math
import multiprocessing as mp
import os
import platform
import pstats
import queue as queue_mod
import random
import signal
import sys
import threading
import time
import traceback
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # also puts the repo root on sys.path
from redis.exceptions import NoScriptError

import pycanary
from pycanary import defaults, queue_config
from pycanary.keys import Keys
from pycanary.producer import Producer

QUEUE = "bench"
WEIGHT_BP = 1000  # 10 %
#: A modest, realistic payload; every variant pushes envelopes of the same size.
PAYLOAD = {"order_id": "ord-000123456", "amount_cents": 1999, "currency": "EUR",
           "customer": "cus-7f3a9c", "items": 3}
SCRIPT_BATCH = 100  # jobs per route_enqueue_many call
ROUND_TRIP_JOBS = SCRIPT_BATCH * int(
    getattr(sys.modules["pycanary.producer"], "BATCHES_PER_ROUND_TRIP", 20))


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    jobs_per_call: int
    server_cmd: str  # the command whose commandstats we read for this variant
    batched: bool


VARIANTS: dict[str, Variant] = {v.key: v for v in (
    Variant("a", "a LPUSH", 1, "lpush", False),
    Variant("b", "b EVALSHA route_enqueue", 1, "evalsha", False),
    Variant("c", "c Producer.enqueue", 1, "evalsha", False),
    Variant("d", f"d enqueue_many ({SCRIPT_BATCH}/batch, {ROUND_TRIP_JOBS}/call)",
            ROUND_TRIP_JOBS, "evalsha", True),
    Variant("d100", f"d100 enqueue_many ({SCRIPT_BATCH}/call)", SCRIPT_BATCH, "evalsha", True),
    Variant("e100", f"e100 LPUSH pipeline {SCRIPT_BATCH}", SCRIPT_BATCH, "lpush", True),
    Variant("e2000", f"e2000 LPUSH pipeline {ROUND_TRIP_JOBS}", ROUND_TRIP_JOBS, "lpush", True),
)}
ROUTED = {"b", "c", "d", "d100"}


# ============================================================================================
# Client side: runs in a worker process or thread, one connection + Producer each.
# ============================================================================================
class _ConnProxy:
    """A Connection whose script registry is replaced; everything else is the real one."""

    def __init__(self, conn: Any, scripts: Any) -> None:
        self._conn = conn
        self.scripts = scripts

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class _RecordingScripts:
    """Records each script call a Producer makes and answers it with the reply Redis gave to
    the first one, so the bench can replay exactly what Producer.enqueue sends (KEYS, ARGV,
    precomputed bucket), whatever its current argument layout."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.calls: list[tuple[str, list[Any], list[Any]]] = []
        self.reply: Any = None

    def __getitem__(self, name: str) -> Any:
        return self.real[name]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def call(self, name: str, keys: Any, args: Any) -> Any:
        self.calls.append((name, list(keys), list(args)))
        if self.reply is None:
            self.reply = self.real.call(name, keys, args)
        return self.reply


def record_enqueues(conn: Any, n: int, seed: int
                    ) -> tuple[list[tuple], list[str], Any, list[tuple[str, list, list]]]:
    """n calls of Producer.enqueue(QUEUE, PAYLOAD), recorded, not sent (but the first).

    Returns (evalsha argument tuples, the envelopes, the first reply, the recorded
    (name, keys, args) calls). The envelope is the
    argument that is a JSON object; it has the producer's own size and layout.
    """
    rec = _RecordingScripts(conn.scripts)
    prod = Producer(_ConnProxy(conn, rec), rng=random.Random(seed))  # type: ignore[arg-type]
    for _ in range(n):
        prod.enqueue(QUEUE, PAYLOAD)
    out, envs = [], []
    for name, keys, args in rec.calls:
        sha = conn.scripts[name].sha
        out.append((sha, len(keys), *keys, *args))
        envs.append(next(a for a in args if isinstance(a, str) and a.startswith("{")))
    return out, envs, rec.reply, rec.calls


class Client:
    def __init__(self, cfg: dict[str, Any], stop: list[bool]) -> None:
        self.stop = stop
        self.conn = pycanary.connect(cfg["url"], prefix=cfg["prefix"])
        self.client = self.conn.client
        self.producer = Producer(self.conn, rng=random.Random(cfg["seed"]))
        self.lpush_key = cfg["lpush_key"]
        # (b) replays exactly what Producer.enqueue sends; (a)/(e) push the same envelopes.
        self.b_args, self.envelopes, _, _ = record_enqueues(self.conn, cfg["max_jobs"],
                                                         cfg["seed"] + 1)
        self.payloads = [PAYLOAD] * ROUND_TRIP_JOBS
        self.noscript = 0
        # warm: connection, script cache, the producer's queue registration
        self.client.ping()
        self.producer.enqueue(QUEUE, PAYLOAD)
        self.producer.enqueue_many(QUEUE, self.payloads[:10])

    def run(self, variant: str, jobs: int) -> tuple[int, int, int, int, bytes]:
        lat = array("q")
        rec = lat.append
        t = C.now_ns
        stop = self.stop
        calls = 0
        t0 = t()
        if variant == "a":
            lpush, key, envs = self.client.lpush, self.lpush_key, self.envelopes
            for i in range(jobs):
                s = t()
                lpush(key, envs[i])
                rec(t() - s)
                if stop[0]:
                    break
            calls = len(lat)
        elif variant == "b":
            evalsha, args = self.client.evalsha, self.b_args
            i = 0
            while i < jobs and not stop[0]:
                try:
                    for i in range(i, jobs):  # noqa: B020
                        s = t()
                        evalsha(*args[i])
                        rec(t() - s)
                        if stop[0]:
                            break
                    else:
                        i = jobs
                except NoScriptError:  # someone ran SCRIPT FLUSH on the shared server
                    self.conn.scripts.load()
                    self.noscript += 1
            calls = len(lat)
        elif variant == "c":
            enqueue = self.producer.enqueue
            for _ in range(jobs):
                s = t()
                enqueue(QUEUE, PAYLOAD)
                rec(t() - s)
                if stop[0]:
                    break
            calls = len(lat)
        elif variant in ("d", "d100"):
            per = VARIANTS[variant].jobs_per_call
            many, payloads = self.producer.enqueue_many, self.payloads[:per]
            for _ in range(jobs // per):
                s = t()
                many(QUEUE, payloads, batch_size=SCRIPT_BATCH)
                rec(t() - s)
                if stop[0]:
                    break
            calls = len(lat)
        elif variant in ("e100", "e2000"):
            per = VARIANTS[variant].jobs_per_call
            client, key, envs = self.client, self.lpush_key, self.envelopes
            for c in range(jobs // per):
                s = t()
                pipe = client.pipeline(transaction=False)
                for env in envs[c * per:(c + 1) * per]:
                    pipe.lpush(key, env)
                pipe.execute()
                rec(t() - s)
                if stop[0]:
                    break
            calls = len(lat)
        else:
            raise ValueError(variant)
        t1 = t()
        noscript, self.noscript = self.noscript, 0
        return (t0, t1, calls * VARIANTS[variant].jobs_per_call, calls, lat.tobytes(),
                noscript)


def client_loop(chan: Any, cfg: dict[str, Any], stop: list[bool]) -> None:
    """Serve ('prep', variant, jobs) / ('go',) / ('quit',) messages until told to quit."""
    try:
        cl = Client(cfg, stop)
        chan.send(("up",))
    except Exception:
        chan.send(("error", traceback.format_exc()))
        return
    job = None
    while True:
        try:
            msg = chan.recv()
        except (EOFError, OSError):
            return
        try:
            if msg[0] == "prep":
                job = msg[1:]
                chan.send(("ready",))
            elif msg[0] == "go":
                assert job is not None
                chan.send(("done", *cl.run(*job)))
            elif msg[0] == "quit":
                cl.conn.close()
                return
        except Exception:
            chan.send(("error", traceback.format_exc()))


def _process_entry(conn: Any, cfg: dict[str, Any]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and cleans up
    client_loop(conn, cfg, [False])


class _ThreadChan:
    def __init__(self, inbox: queue_mod.Queue, outbox: queue_mod.Queue) -> None:
        self.inbox, self.outbox = inbox, outbox

    def send(self, msg: Any) -> None:
        self.outbox.put(msg)

    def recv(self) -> Any:
        return self.inbox.get()

    def recv_timeout(self, timeout: float) -> Any:
        return self.inbox.get(timeout=timeout)


class Pool:
    """k clients (processes or threads), driven slice by slice."""

    def __init__(self, k: int, cfg: dict[str, Any], processes: bool) -> None:
        self.processes = processes
        self.stop = [False]
        self.chans: list[Any] = []
        self.handles: list[Any] = []
        for i in range(k):
            c = dict(cfg, seed=cfg["seed"] * 1000 + i)
            if processes:
                ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
                parent, child = ctx.Pipe()
                p = ctx.Process(target=_process_entry, args=(child, c), daemon=True,
                                name=f"bench-client-{i}")
                p.start()
                child.close()
                self.chans.append(parent)
                self.handles.append(p)
            else:
                to_client: queue_mod.Queue = queue_mod.Queue()
                to_main: queue_mod.Queue = queue_mod.Queue()
                th = threading.Thread(target=client_loop, daemon=True, name=f"bench-client-{i}",
                                      args=(_ThreadChan(to_client, to_main), c, self.stop))
                th.start()
                self.chans.append(_ThreadChan(to_main, to_client))
                self.handles.append(th)
        for i in range(k):
            self._expect(i, "up", timeout=120)

    def _expect(self, i: int, what: str, timeout: float = 600) -> tuple:
        ch = self.chans[i]
        if self.processes:
            if not ch.poll(timeout):
                raise RuntimeError(f"client {i} did not answer {what!r} in {timeout}s")
            msg = ch.recv()
        else:
            try:
                msg = ch.recv_timeout(timeout)
            except queue_mod.Empty:
                raise RuntimeError(f"client {i} did not answer {what!r} in {timeout}s") from None
        if msg[0] == "error":
            raise RuntimeError(f"client {i} failed:\n{msg[1]}")
        if msg[0] != what:
            raise RuntimeError(f"client {i}: expected {what!r}, got {msg[0]!r}")
        return msg

    def prepare(self, variant: str, jobs: int, k: int) -> None:
        for ch in self.chans[:k]:
            ch.send(("prep", variant, jobs))
        for i in range(k):
            self._expect(i, "ready")

    def go(self, k: int) -> list[tuple]:
        for ch in self.chans[:k]:
            ch.send(("go",))
        return [self._expect(i, "done")[1:] for i in range(k)]

    def close(self) -> None:
        """Stop every client before keys are cleaned up, so none writes after the cleanup."""
        self.stop[0] = True
        for ch in self.chans:
            with contextlib.suppress(OSError, ValueError):
                ch.send(("quit",))
        for h in self.handles:
            h.join(timeout=5)
            if self.processes and h.is_alive():
                h.terminate()
                h.join(timeout=5)
                if h.is_alive():
                    h.kill()
                    h.join()
        if not self.processes and any(h.is_alive() for h in self.handles):
            print("warning: a client thread is still running", file=sys.stderr)


# ============================================================================================
# Driver
# ============================================================================================
@dataclass
class Slice:
    variant: str
    clients: int
    round: int
    jobs: int
    calls: int
    wall_s: float
    lat_ns: array
    server_calls: int
    server_usec: int
    expected_server_calls: int
    canary: int = 0
    routed: int = 0

    @property
    def clean(self) -> bool:
        return self.server_calls == self.expected_server_calls

    @property
    def rate(self) -> float:
        return self.jobs / self.wall_s if self.wall_s > 0 else math.nan


@dataclass
class Agg:
    variant: str
    clients: int
    slices: list[Slice] = field(default_factory=list)

    @property
    def jobs(self) -> int:
        return sum(s.jobs for s in self.slices)

    @property
    def rate(self) -> float:
        wall = sum(s.wall_s for s in self.slices)
        return self.jobs / wall if wall else math.nan

    def round_rates(self) -> dict[int, float]:
        return {s.round: s.rate for s in self.slices}

    def pcts_us(self) -> list[float]:
        lat: list[int] = []
        for s in self.slices:
            lat.extend(s.lat_ns)
        return [x / 1000 for x in C.percentiles(lat)] if lat else [math.nan] * 3

    def n_calls(self) -> int:
        return sum(s.calls for s in self.slices)

    def server(self) -> dict[str, Any]:
        clean = [s for s in self.slices if s.clean]
        use = clean or self.slices
        calls = sum(s.server_calls for s in use)
        usec = sum(s.server_usec for s in use)
        jobs = sum(s.jobs for s in use)
        return {
            "command": VARIANTS[self.variant].server_cmd,
            "usec_per_call": usec / calls if calls else math.nan,
            "usec_per_job": usec / jobs if jobs else math.nan,
            "clean_slices": len(clean),
            "slices": len(self.slices),
            "foreign_calls": sum(s.server_calls - s.expected_server_calls for s in self.slices),
        }

    def canary_share(self) -> float | None:
        routed = sum(s.routed for s in self.slices)
        return sum(s.canary for s in self.slices) / routed if routed else None


def expected_server_calls(variant: str, jobs: int, calls: int) -> int:
    if variant in ("a", "e100", "e2000"):
        return jobs  # one LPUSH per job
    if variant in ("b", "c"):
        return calls
    return jobs // SCRIPT_BATCH  # one route_enqueue_many per 100 jobs


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.prefix = C.unique_prefix()
        self.conn: Any = None
        self.pool: Pool | None = None
        self.qk = Keys(self.prefix).queue(QUEUE)
        self.lpush_key = f"{self.prefix}:{{{QUEUE}}}:bench:lpush"
        self.slices: list[Slice] = []
        self.notes: list[str] = []

    # -- setup / teardown -----------------------------------------------------------------------
    def start(self) -> None:
        a = self.args
        max_jobs = max(a.jobs, a.batched_jobs)
        cfg = {"url": a.redis_url, "prefix": self.prefix, "lpush_key": self.lpush_key,
               "max_jobs": max_jobs, "seed": a.seed}
        # Main connection first: set the queue up before any client warms up against it.
        self.conn = pycanary.connect(a.redis_url, prefix=self.prefix)
        self.conn.ping()
        self.conn.scripts.load()
        queue_config.configure(self.conn, QUEUE, sticky=True)
        queue_config.set_weight(self.conn, QUEUE, WEIGHT_BP)
        cfgq = queue_config.read_config(self.conn, QUEUE)
        assert cfgq.weight_bp == WEIGHT_BP and cfgq.sticky, cfgq
        # The producer's envelope, as stored, and the one the bench pushes must match in size.
        self.conn.client.delete(*self.lanes())
        Producer(self.conn).enqueue(QUEUE, PAYLOAD)
        raw = next(x for k in self.lanes() for x in self.conn.client.lrange(k, 0, 0))
        envs = record_enqueues(self.conn, 1, 0)[1]
        self.envelope_bytes = len(raw.encode())
        if len(envs[0].encode()) != self.envelope_bytes:
            self.notes.append(f"envelope sizes differ: stored {self.envelope_bytes} B, "
                              f"bench {len(envs[0].encode())} B")
        self.reset_lists()
        k = max(a.clients)
        self.pool = Pool(k, cfg, a.processes)
        self.reset_lists()

    def lanes(self) -> list[str]:
        return [self.qk.lane_stable, self.qk.lane_canary]

    def reset_lists(self) -> None:
        self.conn.client.delete(*self.lanes(), self.lpush_key)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        if self.conn is not None:
            n = C.delete_prefix(self.conn.client, self.prefix,
                                [*self.qk.all(), self.lpush_key, f"{self.prefix}:queues"])
            left = list(self.conn.client.scan_iter(match=f"{self.prefix}:*", count=1000))
            msg = f"cleanup: deleted {n} keys under {self.prefix}:"
            if left:
                msg += f" ({len(left)} LEFT: {left[:5]})"
            print(msg, file=sys.stderr)
            self.conn.close()
            self.conn = None

    # -- one slice ------------------------------------------------------------------------------
    def run_slice(self, variant: str, k: int, rnd: int, jobs: int) -> Slice:
        assert self.pool is not None
        v = VARIANTS[variant]
        self.pool.prepare(variant, jobs, k)
        cmd = v.server_cmd
        before = C.commandstats(self.conn.client)
        results = self.pool.go(k)
        after = C.commandstats(self.conn.client)
        s_calls, s_usec = C.stats_delta(before, after, cmd)
        t0 = min(r[0] for r in results)
        t1 = max(r[1] for r in results)
        lat = array("q")
        for r in results:
            lat.frombytes(r[4])
        jobs_done = sum(r[2] for r in results)
        if any(r[5] for r in results):
            self.notes.append(f"{variant}/{k} round {rnd}: NOSCRIPT (someone flushed the "
                              "script cache of the shared server); reloaded and retried")
        calls = sum(r[3] for r in results)
        sl = Slice(variant, k, rnd, jobs_done, calls, (t1 - t0) / 1e9, lat, s_calls, s_usec,
                   expected_server_calls(variant, jobs_done, calls))
        cl = self.conn.client
        pipe = cl.pipeline(transaction=False)
        pipe.llen(self.qk.lane_stable)
        pipe.llen(self.qk.lane_canary)
        pipe.llen(self.lpush_key)
        stable, canary, plain = pipe.execute()
        if variant in ROUTED:
            sl.canary, sl.routed = canary, stable + canary
            if stable + canary != jobs_done:
                self.notes.append(f"{variant}/{k}: {stable + canary} jobs in lanes, "
                                  f"{jobs_done} sent")
        elif plain != jobs_done:
            self.notes.append(f"{variant}/{k}: {plain} jobs in list, {jobs_done} sent")
        self.reset_lists()
        return sl

    def jobs_for(self, variant: str, scale: float = 1.0) -> int:
        v = VARIANTS[variant]
        n = self.args.batched_jobs if v.batched else self.args.jobs
        n = max(v.jobs_per_call, int(n * scale))
        return n - n % v.jobs_per_call

    def run(self) -> None:
        a = self.args
        plan = [(v, k) for k in a.clients for v in a.variants]
        # Warm-up round (not measured): every variant at every client count, small slices.
        for v, k in plan:
            self.run_slice(v, k, -1, self.jobs_for(v, 0.1))
        for rnd in range(a.rounds):
            shift = rnd % len(plan)
            order = plan[shift:] + plan[:shift]
            if rnd % 2:
                order.reverse()  # also vary neighbours, not only positions
            t = time.monotonic()
            for v, k in order:
                self.slices.append(self.run_slice(v, k, rnd, self.jobs_for(v)))
            if not a.json:
                print(f"round {rnd + 1}/{a.rounds}: {time.monotonic() - t:.1f}s",
                      file=sys.stderr)

    # -- results --------------------------------------------------------------------------------
    def aggregates(self) -> dict[tuple[str, int], Agg]:
        out: dict[tuple[str, int], Agg] = {}
        for s in self.slices:
            out.setdefault((s.variant, s.clients), Agg(s.variant, s.clients)).slices.append(s)
        return out


def ratio(aggs: dict, num: tuple[str, int], den: tuple[str, int]) -> dict[str, Any] | None:
    if num not in aggs or den not in aggs:
        return None
    rn, rd = aggs[num].round_rates(), aggs[den].round_rates()
    per_round = sorted(rn[r] / rd[r] for r in rn if rd.get(r))
    same_call = VARIANTS[num[0]].jobs_per_call == VARIANTS[den[0]].jobs_per_call
    return {"ratio": aggs[num].rate / aggs[den].rate,
            # per-call latency ratio (den p50 / num p50): immune to stalls; same-size calls only
            "p50_ratio": aggs[den].pcts_us()[0] / aggs[num].pcts_us()[0] if same_call
            else math.nan,
            "round_min": per_round[0] if per_round else math.nan,
            "round_median": C.median(per_round),
            "round_max": per_round[-1] if per_round else math.nan}


def evaluate(bench: Bench) -> dict[str, Any]:
    a = bench.args
    aggs = bench.aggregates()
    rows = []
    for (v, k), g in sorted(aggs.items(), key=lambda kv: (list(VARIANTS).index(kv[0][0]),
                                                          kv[0][1])):
        p50, p95, p99 = g.pcts_us()
        rows.append({"variant": v, "label": VARIANTS[v].label, "clients": k,
                     "jobs_per_s": g.rate, "calls": g.n_calls(), "jobs": g.jobs,
                     "p50_us": p50, "p95_us": p95, "p99_us": p99,
                     "server": g.server(), "canary_share": g.canary_share()})
    ratios: dict[str, Any] = {}
    for k in a.clients:
        ratios[f"b/a@{k}"] = ratio(aggs, ("b", k), ("a", k))
        ratios[f"c/a@{k}"] = ratio(aggs, ("c", k), ("a", k))
        ratios[f"d/e2000@{k}"] = ratio(aggs, ("d", k), ("e2000", k))
        ratios[f"d/e100@{k}"] = ratio(aggs, ("d", k), ("e100", k))
        ratios[f"d100/e100@{k}"] = ratio(aggs, ("d100", k), ("e100", k))
    ratios = {n: r for n, r in ratios.items() if r is not None}

    targets = []

    def target(name: str, value: float | None, op: str, limit: float, unit: str = "",
               info: bool = False) -> None:
        ok = None
        if value is not None and not math.isnan(value):
            ok = value >= limit if op == ">=" else value < limit
        targets.append({"target": name, "value": value, "op": op, "limit": limit,
                        "unit": unit, "ok": None if info else ok})

    many = max(a.clients)
    for k in a.clients:
        r = ratios.get(f"c/a@{k}")
        target(f"Producer.enqueue rate / LPUSH rate, {k} client(s)",
               r and r["ratio"], ">=", 0.8, "x")
    if ("d", 1) in aggs:
        target("enqueue_many jobs/s, 1 process", aggs[("d", 1)].rate, ">=", 60_000, "jobs/s")
    for k in a.clients:
        r = ratios.get(f"d/e2000@{k}")
        target(f"enqueue_many / LPUSH pipeline {ROUND_TRIP_JOBS}, {k} client(s)",
               r and r["ratio"], ">=", 0.35, "x")
        r = ratios.get(f"d/e100@{k}")
        target(f"enqueue_many / LPUSH pipeline {SCRIPT_BATCH}, {k} client(s)",
               r and r["ratio"], ">=", 0.35, "x")
    if many > 1:
        for v in ("b", "c"):
            if (v, many) in aggs:
                target(f"routing p99, {VARIANTS[v].label[2:]}, {many} clients",
                       aggs[(v, many)].pcts_us()[2], "<", 1000, "us")
    for v in ("b", "c"):
        gs = [g for (vv, _k), g in aggs.items() if vv == v]
        if gs:
            calls = sum(s.server_calls for g in gs for s in g.slices if s.clean)
            usec = sum(s.server_usec for g in gs for s in g.slices if s.clean)
            target(f"server usec per job, route_enqueue (from {v})",
                   usec / calls if calls else math.nan, "<", 20, "us")
    for v in ("d", "d100"):
        gs = [g for (vv, _k), g in aggs.items() if vv == v]
        if gs:
            jobs = sum(s.jobs for g in gs for s in g.slices if s.clean)
            usec = sum(s.server_usec for g in gs for s in g.slices if s.clean)
            target(f"server usec per job, route_enqueue_many (from {v})",
                   usec / jobs if jobs else math.nan, "<", 20, "us")
    gs = [g for (vv, _k), g in aggs.items() if vv in ("a", "e100", "e2000")]
    if gs:
        calls = sum(s.server_calls for g in gs for s in g.slices if s.clean)
        usec = sum(s.server_usec for g in gs for s in g.slices if s.clean)
        target("server usec per LPUSH (comparison)", usec / calls if calls else math.nan,
               "<", 20, "us", info=True)
    return {"rows": rows, "ratios": ratios, "targets": targets}


# ============================================================================================
# Breakdown: where Producer.enqueue's time goes (single client, in this process)
# ============================================================================================
class _StubScripts:
    """Answers route_enqueue(_many) without Redis, to time the producer's own Python."""

    def __init__(self, reply: Any) -> None:
        self.reply = reply

    def call(self, name: str, keys: Any, args: Any) -> Any:
        return self.reply

    def pipeline(self) -> _StubPipeline:
        return _StubPipeline()


class _StubPipeline:
    def __init__(self) -> None:
        self._calls: list[int] = []

    def call(self, name: str, keys: Any, args: Any) -> None:
        self._calls.append((len(args) - 2) // 5)

    def __len__(self) -> int:
        return len(self._calls)

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        calls, self._calls = self._calls, []
        return [["s" * k, str(WEIGHT_BP), ""] for k in calls]


def python_components(reps: int = 20_000) -> dict[str, float]:
    """µs per call of the pieces of Producer.enqueue's Python, each alone in a tight loop
    (internals: pieces that no longer exist are skipped)."""
    import pycanary.ids as ids_mod
    import pycanary.producer as prod_mod
    from pycanary import routing

    out: dict[str, float] = {}
    enc = getattr(prod_mod, "_encode_json", None) or getattr(prod_mod, "encode_json", None)
    render = getattr(prod_mod, "render_envelope", None)
    result = getattr(prod_mod, "EnqueueResult", None)
    uuid7 = getattr(ids_mod, "uuid7", None)
    hasher = routing.StickyHasher() if hasattr(routing, "StickyHasher") else None
    rng = random.Random(1)
    jid = "0190f5a4-7c2e-7d3a-8b1c-2f4e6a8b0c1d"
    pieces: list[tuple[str, Any]] = [
        ("clock", defaults.now_ms),
        ("uuid7()", uuid7),
        ("payload JSON", (lambda: enc(PAYLOAD)) if enc else None),
        ("render_envelope", (lambda: render(f'"{jid}"', QUEUE, "{}", "null", None, 0,
                                            1_700_000_000_000, 1)) if render else None),
        ("sticky bucket", (lambda: hasher.bucket(jid, "")) if hasher else None),
        ("randrange(10000)", lambda: rng.randrange(10_000)),
        ("EnqueueResult()", (lambda: result(jid, "stable", QUEUE, int("1000")))
         if result else None),
    ]
    for name, fn in pieces:
        if fn is None:
            continue
        try:
            fn()
        except Exception:  # an internal changed shape: skip that piece
            continue
        t0 = C.now_ns()
        for _ in range(reps):
            fn()
        out[name] = (C.now_ns() - t0) / reps / 1000
    return out


def breakdown(bench: Bench, n: int, profile: bool) -> dict[str, Any]:
    """Where a Producer.enqueue call's time goes, against a plain LPUSH (one client, this
    process). Every part runs n calls per rep, parts interleaved, reps rotated; per part:
    median wall µs per call, client CPU µs per call (this process), server CPU µs per call
    (redis-server's used_cpu, all its work incl. syscalls; includes other clients if the
    server is shared) and server command µs (INFO commandstats, clean reps only)."""
    conn = bench.conn
    cl = conn.client
    key = bench.lpush_key
    bargs, envs, reply, raw_calls = record_enqueues(conn, n, 7)
    prod = Producer(conn)
    prod.enqueue(QUEUE, PAYLOAD)
    stub = Producer(_ConnProxy(conn, _StubScripts(reply)))  # type: ignore[arg-type]
    stub.enqueue(QUEUE, PAYLOAD)
    pool = cl.connection_pool
    c0 = pool.get_connection()  # for client-side command encoding (pack_command), no I/O
    noop: Any = lambda *a: None  # noqa: E731
    enq_args = [(QUEUE, PAYLOAD)] * n
    n_many = 3
    payloads = [PAYLOAD] * ROUND_TRIP_JOBS
    envs_many = (envs * (ROUND_TRIP_JOBS // len(envs) + 1))[:ROUND_TRIP_JOBS]

    def lpush_pipeline(envelopes: list[str]) -> None:
        pipe = cl.pipeline(transaction=False)
        for e in envelopes:
            pipe.lpush(key, e)
        pipe.execute()
    # name, function, per-call args, command whose commandstats apply, does I/O
    parts: list[tuple[str, Any, list[tuple], str | None, bool]] = [
        ("timer", noop, [()] * n, None, False),
        ("ping", cl.ping, [()] * n, None, True),
        ("a_lpush", cl.lpush, [(key, e) for e in envs], "lpush", True),
        ("b_evalsha", cl.evalsha, bargs, "evalsha", True),
        ("b_scripts_call", conn.scripts.call,
         raw_calls, "evalsha", True),
        ("c_enqueue", prod.enqueue, enq_args, "evalsha", True),
        ("c_python_only", stub.enqueue, enq_args, None, False),
        ("pack_lpush", c0.pack_command, [("LPUSH", key, e) for e in envs], None, False),
        ("pack_evalsha", c0.pack_command, [("EVALSHA", *x) for x in bargs], None, False),
        # enqueue_many, per call of ROUND_TRIP_JOBS jobs (reported per job)
        ("d_enqueue_many", prod.enqueue_many, [(QUEUE, payloads)] * n_many, "evalsha", True),
        ("d_python_only", stub.enqueue_many, [(QUEUE, payloads)] * n_many, None, False),
        ("e2000_pipeline", lpush_pipeline, [(envs_many,)] * n_many, "lpush", True),
    ]
    per_job = {"d_enqueue_many", "d_python_only", "e2000_pipeline"}
    reps = 7
    lat: dict[str, array] = {p[0]: array("q") for p in parts}
    acc: dict[str, dict[str, float]] = {
        p[0]: {"calls": 0, "client_cpu": 0.0, "server_cpu": 0.0, "cmd_calls": 0,
               "cmd_usec": 0, "foreign": 0} for p in parts}
    t = C.now_ns
    try:
        for rep in range(reps):  # interleaved: every part once per rep, order rotated
            k = rep % len(parts)
            for name, fn, arglist, cmd, io_ in parts[k:] + parts[:k]:
                for _attempt in range(3):
                    part_lat = array("q")
                    rec = part_lat.append
                    before = C.commandstats(cl) if cmd else None
                    rcpu0 = _redis_cpu(cl) if io_ else 0.0
                    cpu0 = time.thread_time()
                    try:
                        for a in arglist:
                            s = t()
                            fn(*a)
                            rec(t() - s)
                    except NoScriptError:  # the shared server's script cache was flushed
                        conn.scripts.load()
                        bench.reset_lists()
                        continue
                    break
                cpu1 = time.thread_time()
                rcpu1 = _redis_cpu(cl) if io_ else 0.0
                lat[name].extend(part_lat)
                st = acc[name]
                st["calls"] += len(arglist)
                st["client_cpu"] += cpu1 - cpu0
                st["server_cpu"] += rcpu1 - rcpu0
                if cmd:
                    calls, usec = C.stats_delta(before, C.commandstats(cl), cmd)
                    expect = expected_server_calls(
                        {"a_lpush": "a", "e2000_pipeline": "e2000", "d_enqueue_many": "d"}.get(
                            name, "b"), len(arglist) * (ROUND_TRIP_JOBS if name in per_job
                                                        else 1), len(arglist))
                    if calls == expect:  # no foreign calls of that command meanwhile
                        st["cmd_calls"] += calls
                        st["cmd_usec"] += usec
                    else:
                        st["foreign"] += calls - expect
                    bench.reset_lists()
    finally:
        pool.release(c0)
    timer = C.median(lat["timer"]) / 1000
    out: dict[str, Any] = {"n": n, "reps": reps, "timer_us": timer}
    for name, *_ in parts[1:]:
        st = acc[name]
        div = ROUND_TRIP_JOBS if name in per_job else 1
        calls = st["calls"] * div
        cmd_div = st["cmd_calls"] if div == 1 else st["cmd_calls"] * (
            ROUND_TRIP_JOBS // expected_server_calls(
                "e2000" if name.startswith("e") else "d", ROUND_TRIP_JOBS, 1))
        out[name] = {
            "median_us": (C.median(lat[name]) / 1000 - timer) / div,
            "mean_us": (sum(lat[name]) / len(lat[name]) / 1000 - timer) / div,
            "client_cpu_us": st["client_cpu"] / calls * 1e6,
            "server_cpu_us": st["server_cpu"] / calls * 1e6,
            "cmd_us": st["cmd_usec"] / cmd_div if st["cmd_calls"] else math.nan,
            "cmd_foreign_calls": st["foreign"],
        }
    try:
        out["components"] = python_components()
    except ImportError:
        out["components"] = {}
    if profile:
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(n):
            prod.enqueue(QUEUE, PAYLOAD)
        pr.disable()
        bench.reset_lists()
        buf = io.StringIO()
        pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(16)
        out["cprofile"] = buf.getvalue()
    return out


def _redis_cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def print_breakdown(bd: dict[str, Any]) -> None:
    g = {k: v for k, v in bd.items() if isinstance(v, dict)}
    print(f"\n### Where Producer.enqueue's time goes (1 client, sequential, {bd['reps']} "
          f"interleaved reps x {bd['n']} calls; µs per call)\n")
    labels = [
        ("ping", "PING round trip (floor: syscalls, loopback, redis-py)"),
        ("a_lpush", "a LPUSH"),
        ("b_evalsha", "b EVALSHA route_enqueue"),
        ("b_scripts_call", "b via pycanary Scripts.call"),
        ("c_enqueue", "c Producer.enqueue"),
        ("c_python_only", "c Python only (script call stubbed, no I/O)"),
        ("pack_lpush", "redis-py pack_command LPUSH (no I/O)"),
        ("pack_evalsha", "redis-py pack_command of that EVALSHA (no I/O)"),
        ("e2000_pipeline", f"e2000 LPUSH pipeline of {ROUND_TRIP_JOBS}, per job"),
        ("d_enqueue_many", f"d enqueue_many of {ROUND_TRIP_JOBS}, per job"),
        ("d_python_only", "d Python only (pipeline stubbed), per job"),
    ]
    io_parts = ("ping", "a_lpush", "b_evalsha", "b_scripts_call", "c_enqueue",
                "e2000_pipeline", "d_enqueue_many")

    def f(x: float) -> str:
        return "" if x is None or math.isnan(x) else f"{x:.1f}"

    rows = []
    for key, label in labels:
        v = g[key]
        io_ = key in io_parts
        rows.append((label, f(v["median_us"]), f(v["mean_us"]), f(v["client_cpu_us"]),
                     f(v["server_cpu_us"]) if io_ else "", f(v["cmd_us"]),
                     f(v["mean_us"] - v["client_cpu_us"] - v["server_cpu_us"]) if io_ else ""))
    print(C.md_table(["part", "wall p50", "wall mean", "client CPU", "server CPU",
                      "server cmd (cmdstats)", "wall mean - CPUs (<0: overlap)"], rows))
    print("\nclient CPU: this thread (user+kernel); server CPU: redis-server's used_cpu "
          "(all its clients); server cmd: INFO commandstats usec (command execution only)")
    a, b, bs, c = (g[k]["median_us"] for k in ("a_lpush", "b_evalsha", "b_scripts_call",
                                               "c_enqueue"))
    py = g["c_python_only"]["median_us"]
    srv = g["b_evalsha"]["cmd_us"] - g["a_lpush"]["cmd_us"]
    pack = g["pack_evalsha"]["median_us"] - g["pack_lpush"]["median_us"]
    print(f"\nBy medians: c/a = {a / c:.2f}x (rate). Gap c - a = {c - a:.1f} µs:")
    print(f"- pycanary Python around the call: c - b = {c - b:.1f} µs (stubbed producer "
          f"{py:.1f} µs; Scripts.call wrapper {bs - b:+.1f} µs)")
    print(f"- EVALSHA vs LPUSH round trip: b - a = {b - a:.1f} µs, of which server command time "
          f"+{srv:.1f} µs, redis-py encoding +{pack:.1f} µs, rest {b - a - srv - pack:+.1f} µs")
    comp = bd.get("components") or {}
    if comp:
        print("\nPython pieces of Producer.enqueue, each alone in a tight loop (µs/call): "
              + ", ".join(f"{k} {v:.2f}" for k, v in comp.items()))
    d, dpy, e = (g[k]["median_us"] for k in ("d_enqueue_many", "d_python_only",
                                             "e2000_pipeline"))
    print(f"\nenqueue_many per job: {d:.2f} µs ({1e6 / d:,.0f} jobs/s) = Python "
          f"{dpy:.2f} µs + server Lua {g['d_enqueue_many']['cmd_us']:.2f} µs + rest "
          f"{d - dpy - g['d_enqueue_many']['cmd_us']:.2f} µs; LPUSH pipeline per job "
          f"{e:.2f} µs ({1e6 / e:,.0f} jobs/s)")
    if "cprofile" in bd:
        print("\ncProfile of Producer.enqueue (tottime; the profiler inflates Python):\n")
        print("```\n" + bd["cprofile"].strip() + "\n```")


# ============================================================================================
def print_report(bench: Bench, res: dict[str, Any], elapsed: float) -> None:
    a = bench.args
    mode = "processes" if a.processes else "threads (one process: includes the GIL)"
    print("## pycanary route latency\n")
    print(f"- Redis {bench.redis_version} at {a.redis_url}; Python {platform.python_version()}, "
          f"redis-py {bench.redispy}, hiredis {'yes' if bench.hiredis else 'no'}; "
          f"{os.cpu_count()} CPUs")
    print(f"- {a.rounds} interleaved rounds (+1 warm-up), per client per slice: {a.jobs} jobs "
          f"(single-call variants), {a.batched_jobs} jobs (batched); clients: "
          f"{', '.join(map(str, a.clients))}; multi-client mode: {mode}; "
          f"envelope {bench.envelope_bytes} B; weight {WEIGHT_BP / 100:g}% sticky; "
          f"run took {elapsed:.0f}s")
    print(f"- {C.CpuMeter.describe(bench.cpu)}")
    print()
    rows = []
    for r in res["rows"]:
        s = r["server"]
        srv = (f"{s['usec_per_call']:.2f}" if r["variant"] in ("a", "b", "c") else
               f"{s['usec_per_job']:.2f}/job")
        if s["clean_slices"] < s["slices"]:
            srv += f" ({s['clean_slices']}/{s['slices']} clean)"
        share = "" if r["canary_share"] is None else f"{100 * r['canary_share']:.1f}%"
        rows.append((r["label"], r["clients"], C.fmt_num(r["jobs_per_s"]),
                     C.fmt_num(r["p50_us"], 1), C.fmt_num(r["p95_us"], 1),
                     C.fmt_num(r["p99_us"], 1), r["calls"], srv, share))
    print(C.md_table(["variant", "clients", "jobs/s", "p50 µs", "p95 µs", "p99 µs", "calls",
                      "server µs (cmdstats)", "canary"], rows))
    print("\nLatency is per call (for d/e: per enqueue_many call / per pipeline execute). "
          "Server µs is usec/calls of the variant's command (LPUSH or EVALSHA) from "
          "INFO commandstats deltas; per job for batched variants.\n")
    rows = []
    for name, r in res["ratios"].items():
        rows.append((name, f"{r['ratio']:.3f}",
                     f"{r['round_min']:.3f} / {r['round_median']:.3f} / {r['round_max']:.3f}",
                     "" if math.isnan(r["p50_ratio"]) else f"{r['p50_ratio']:.3f}"))
    print(C.md_table(["ratio of jobs/s", "aggregate", "per round min / median / max",
                      "by p50 latency"], rows))
    print()
    rows = []
    for t in res["targets"]:
        v = t["value"]
        val = "n/a" if v is None or math.isnan(v) else (
            f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3f}" if t["unit"] == "x" else f"{v:.2f}")
        rows.append((t["target"], val if val == "n/a" else f"{val} {t['unit']}".strip(),
                     f"{t['op']} {t['limit']:,g} {t['unit']}".strip(),
                     "info" if t["ok"] is None and t["value"] is not None else C.pass_fail(
                         t["ok"])))
    print(C.md_table(["target", "value", "limit", "result"], rows, ["l", "r", "r", "l"]))
    if bench.notes:
        print("\nNotes:")
        for n in dict.fromkeys(bench.notes):
            print(f"- {n}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--redis-url", default=C.default_redis_url(),
                   help="default: $PYCANARY_BENCH_REDIS_URL or redis://127.0.0.1:6379/0")
    p.add_argument("--jobs", type=int, default=None,
                   help="jobs per client per slice, single-call variants (default 2000)")
    p.add_argument("--batched-jobs", type=int, default=None,
                   help="jobs per client per slice, batched variants (default 5 x --jobs, "
                        f"rounded up to a multiple of {ROUND_TRIP_JOBS})")
    p.add_argument("--rounds", type=int, default=None, help="measured rounds (default 5)")
    p.add_argument("--quick", action="store_true", help="small run: 1000 jobs, 2 rounds")
    p.add_argument("--clients", default="1,8", help="client counts (default 1,8)")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"subset of {','.join(VARIANTS)}")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--processes", dest="processes", action="store_true", default=True,
                      help="run concurrent clients as processes (default)")
    mode.add_argument("--threads", dest="processes", action="store_false",
                      help="run concurrent clients as threads of one process (GIL-bound)")
    p.add_argument("--profile", action="store_true",
                   help="always print the Producer.enqueue breakdown, with cProfile")
    p.add_argument("--no-breakdown", action="store_true",
                   help="skip the breakdown even if the enqueue target fails")
    p.add_argument("--strict", action="store_true", help="exit 1 if a target fails")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print one JSON document instead")
    a = p.parse_args(argv)
    a.jobs = a.jobs or (1000 if a.quick else 2000)
    a.rounds = a.rounds or (2 if a.quick else 5)
    if a.batched_jobs is None:
        a.batched_jobs = 5 * a.jobs
    a.batched_jobs = max(ROUND_TRIP_JOBS, -(-a.batched_jobs // ROUND_TRIP_JOBS) * ROUND_TRIP_JOBS)
    a.clients = sorted({int(x) for x in a.clients.split(",") if x.strip()})
    a.variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    bad = [v for v in a.variants if v not in VARIANTS]
    if bad or not a.variants:
        p.error(f"unknown variants {bad}; choose from {','.join(VARIANTS)}")
    if not a.clients or min(a.clients) < 1 or a.jobs < 1 or a.rounds < 1:
        p.error("--clients, --jobs and --rounds must be positive")
    return a


def _clean_json(x: Any) -> Any:
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if isinstance(x, dict):
        return {k: _clean_json(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean_json(v) for v in x]
    return x


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    C.raise_on_sigterm()
    bench = Bench(args)
    t_start = time.monotonic()
    try:
        bench.start()
        import redis as redis_mod
        info = bench.conn.client.info("server")
        bench.redis_version = info.get("redis_version", "?")
        bench.redispy = redis_mod.__version__
        try:
            import hiredis  # noqa: F401
            bench.hiredis = True
        except ImportError:
            bench.hiredis = False
        meter = C.CpuMeter(bench.conn.client)
        bench.run()
        bench.pool.close()
        bench.pool = None
        bench.cpu = meter.stop()
        res = evaluate(bench)
        enqueue_fail = any(t["ok"] is False and t["target"].startswith("Producer.enqueue")
                           for t in res["targets"])
        if args.profile or (enqueue_fail and not args.no_breakdown):
            res["breakdown"] = breakdown(bench, min(args.jobs, 1500), args.profile)
        elapsed = time.monotonic() - t_start
        if args.json:
            doc = {"meta": {"redis_url": args.redis_url, "redis_version": bench.redis_version,
                            "python": platform.python_version(), "redis_py": bench.redispy,
                            "hiredis": bench.hiredis, "cpus": os.cpu_count(),
                            "mode": "processes" if args.processes else "threads",
                            "clients": args.clients, "rounds": args.rounds, "jobs": args.jobs,
                            "batched_jobs": args.batched_jobs,
                            "envelope_bytes": bench.envelope_bytes, "weight_bp": WEIGHT_BP,
                            "elapsed_s": elapsed, "cpu": bench.cpu, "notes": bench.notes},
                   **res}
            print(json.dumps(_clean_json(doc), indent=2))
        else:
            print_report(bench, res, elapsed)
            if "breakdown" in res:
                print_breakdown(res["breakdown"])
        failed = any(t["ok"] is False for t in res["targets"])
        return 1 if failed and args.strict else 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        bench.close()


if __name__ == "__main__":
    sys.exit(main())
