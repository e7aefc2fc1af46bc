#!/usr/bin/env python
"""Peers side by side: pycanary, rq, Celery, Dramatiq, arq and huey on one private Redis.

    .venv/bin/python bench/peers.py [--quick] [--json] [--single N] [--bulk N] [--drain N]
                                    [--peers pycanary,rq,...]

One redis-server of its own (bench/_common.py PrivateRedis, a free loopback port) serves every
peer in the same run, each in its own database (pycanary 0, rq 1, celery 2, dramatiq 3, arq 4,
huey 5), so one peer's keys never slow another's and the server is stopped at the end.

1. Single enqueue: one client, N calls of each peer's one-job API, in 3 interleaved rounds
   (the order rotated each round, so machine noise hits every peer alike). pycanary is
   `Producer.enqueue` on a queue with canary routing on: weight 10%, sticky (the producer
   computes the sticky bucket, the script picks the lane), as bench/route_latency.py.
2. Bulk enqueue: each peer's API for many jobs at once, 1,000 jobs per call (see BULK_API),
   interleaved the same way.
3. One worker process drains a backlog of N no-op jobs (filled before it starts), one job at
   a time, started as a real subprocess with the peer's own CLI. The no-op job is the same
   for every peer (bench/_peer_done.py): completions are counted in Redis (one INCRBY per 50
   jobs), and jobs/s runs from the first completion to the N-th (start-up excluded). A
   worker still running --drain-timeout s after its first completion is cut, and rated over
   the jobs counted so far.

Ratios are each peer's jobs/s over pycanary's (pycanary = 1.00x; below 1 pycanary is faster).
A peer that is not installed or fails prints "n/a (why)" and the others go on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import _common as C  # the script's folder is on sys.path; this puts the repo root there too
import _peer_done as D

BENCH = Path(__file__).resolve().parent

PEERS = ("pycanary", "rq", "celery", "dramatiq", "arq", "huey")
#: distribution whose version the report prints, per peer
DIST = {"pycanary": "pycanary", "rq": "rq", "celery": "celery", "dramatiq": "dramatiq",
        "arq": "arq", "huey": "huey"}
PAYLOAD = {"order_id": "ord-000123456", "amount_cents": 1999, "currency": "EUR",
           "customer": "cus-7f3a9c", "items": 3}  # the payload of bench/route_latency.py
BULK_CHUNK = 1000  # jobs per bulk call, for every peer
ROUNDS = 3
WEIGHT_BP = 1000  # pycanary's canary weight while enqueueing: 10%
BIN = Path(sys.executable).parent


class Unavailable(Exception):
    """The peer cannot be measured (not installed, refused to start, timed out)."""


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= 110 else text[:107] + "..."


# ============================================================================================
# Peers: each measures its own enqueue calls and names the worker command it drains with.
# ============================================================================================
class Peer:
    name = ""
    single_api = ""
    bulk_api = ""

    def __init__(self, url: str) -> None:
        self.url = url
        self.error: dict[str, str] = {}  # phase -> why it is n/a

    def module(self) -> Any:
        """Import bench/_peer_<name>.py with PEERS_URL set to this peer's database."""
        os.environ["PEERS_URL"] = self.url
        return importlib.import_module(f"_peer_{self.name}")

    def setup(self) -> None:
        """Import the peer's module and connect; raises if the peer is not installed."""

    def single(self, k: int) -> float:
        """Seconds for k calls of the one-job API."""
        raise NotImplementedError

    def bulk(self, k: int) -> float:
        """Seconds to enqueue k jobs with the bulk API, BULK_CHUNK per call."""
        raise NotImplementedError

    def fill(self, n: int) -> None:
        """Empty the drain queue, then put n jobs in it (not timed)."""
        raise NotImplementedError

    def workers(self) -> list[tuple[str, list[str]]]:
        """(label, argv) of each worker configuration to measure."""
        raise NotImplementedError

    def close(self) -> None: ...

    def _loop(self, k: int, fn: Callable[[], Any]) -> float:
        t0 = C.now_ns()
        for _ in range(k):
            fn()
        return (C.now_ns() - t0) / 1e9

    def _chunks(self, k: int, fn: Callable[[int], Any]) -> float:
        t0 = C.now_ns()
        left = k
        while left > 0:
            fn(min(BULK_CHUNK, left))
            left -= BULK_CHUNK
        return (C.now_ns() - t0) / 1e9


class PycanaryPeer(Peer):
    name = "pycanary"
    single_api = "Producer.enqueue (weight 10%, sticky)"
    bulk_api = "Producer.enqueue_many (weight 10%, sticky)"
    PREFETCH = (None, 200, 64)  # --quick runs the last only

    def setup(self) -> None:
        import pycanary
        from pycanary import queue_config

        self.module()
        self.prefix = C.unique_prefix("pycanary-bench-peers")
        self.conn = pycanary.connect(self.url, prefix=self.prefix)
        queue_config.configure(self.conn, "enq", sticky=True)
        queue_config.set_weight(self.conn, "enq", WEIGHT_BP)
        cfg = queue_config.read_config(self.conn, "enq")
        assert cfg.weight_bp == WEIGHT_BP and cfg.sticky, cfg
        self.producer = pycanary.Producer(self.conn, rng=random.Random(1))
        self.producer.enqueue("enq", PAYLOAD)  # warm: scripts, queue registration
        self.canary = 0
        self.routed = 0

    def single(self, k: int) -> float:
        enqueue, lanes = self.producer.enqueue, []
        t0 = C.now_ns()
        for _ in range(k):
            lanes.append(enqueue("enq", PAYLOAD).lane)
        t = (C.now_ns() - t0) / 1e9
        self.canary += lanes.count("canary")
        self.routed += len(lanes)
        return t

    def bulk(self, k: int) -> float:
        payloads = [PAYLOAD] * BULK_CHUNK
        out: list[Any] = []
        t = self._chunks(k, lambda m: out.extend(self.producer.enqueue_many("enq",
                                                                            payloads[:m])))
        self.canary += sum(r.lane == "canary" for r in out)
        self.routed += len(out)
        return t

    def fill(self, n: int) -> None:
        # weight 0 (the queue's default): every job to the stable lane, which the one v1
        # worker drains; routing still runs in route_enqueue_many. A queue of its own, emptied
        # first (a run that timed out may have left jobs), as bench/drain.py does.
        import pycanary

        self.conn.client.delete(*self.conn.keys.queue("drain").all())
        producer = pycanary.Producer(self.conn)
        for start in range(0, n, 10_000):
            producer.enqueue_many("drain", [PAYLOAD] * min(10_000, n - start))
        producer.close()

    def workers(self) -> list[tuple[str, list[str]]]:
        base = [str(BIN / "pycanary"), "--redis-url", self.url, "--prefix", self.prefix,
                "worker", "drain", "--version", "v1", "--handler", "_peer_pycanary:noop",
                "--concurrency", "1", "--log-level", "warning"]
        return [(f"pycanary worker --concurrency 1 --prefetch {pf or 'default (1)'}",
                 base + ([] if pf is None else ["--prefetch", str(pf)]))
                for pf in self.PREFETCH]

    def close(self) -> None:
        self.producer.close()
        self.conn.close()


class RqPeer(Peer):
    name = "rq"
    single_api = "Queue.enqueue"
    bulk_api = "Queue.enqueue_many (one pipeline per call)"

    def setup(self) -> None:
        import redis
        from rq import Queue

        self.mod = self.module()
        self.client = redis.Redis.from_url(self.url)
        self.q = Queue("enq", connection=self.client)
        self.dq = Queue("drain", connection=self.client)
        self.Queue = Queue
        self.q.enqueue(self.mod.noop, PAYLOAD)

    def single(self, k: int) -> float:
        enqueue, fn = self.q.enqueue, self.mod.noop
        return self._loop(k, lambda: enqueue(fn, PAYLOAD))

    def _many(self, q: Any, m: int) -> None:
        q.enqueue_many([self.Queue.prepare_data(self.mod.noop, (PAYLOAD,)) for _ in range(m)])

    def bulk(self, k: int) -> float:
        return self._chunks(k, lambda m: self._many(self.q, m))

    def fill(self, n: int) -> None:
        self.dq.empty()
        for start in range(0, n, BULK_CHUNK):
            self._many(self.dq, min(BULK_CHUNK, n - start))

    def workers(self) -> list[tuple[str, list[str]]]:
        base = [str(BIN / "rq"), "worker", "--burst", "-u", self.url, "-q", "drain"]
        return [("rq worker --burst (forks a work horse per job, rq's default)", base),
                ("rq worker --burst -w rq.worker.SimpleWorker (no fork)",
                 [*base[:-1], "-w", "rq.worker.SimpleWorker", "drain"])]

    def close(self) -> None:
        self.client.close()


class CeleryPeer(Peer):
    name = "celery"
    single_api = "task.apply_async"
    bulk_api = "group(...).apply_async()"

    # enqueue phases publish to queue "enq" (no worker reads it); the drain uses the default
    # queue "celery"
    def setup(self) -> None:
        self.mod = self.module()
        self.mod.noop.apply_async((PAYLOAD,), queue="enq")

    def single(self, k: int) -> float:
        apply = self.mod.noop.apply_async
        return self._loop(k, lambda: apply((PAYLOAD,), queue="enq"))

    def _group(self, m: int, queue: str) -> None:
        from celery import group

        group(self.mod.noop.s(PAYLOAD).set(queue=queue) for _ in range(m)).apply_async()

    def bulk(self, k: int) -> float:
        return self._chunks(k, lambda m: self._group(m, "enq"))

    def fill(self, n: int) -> None:
        with self.mod.app.connection_for_write() as conn:
            conn.default_channel.queue_purge("celery")
        for start in range(0, n, BULK_CHUNK):
            self._group(min(BULK_CHUNK, n - start), "celery")

    def workers(self) -> list[tuple[str, list[str]]]:
        base = [str(BIN / "celery"), "-A", "_peer_celery", "worker", "--without-gossip",
                "--without-mingle", "--without-heartbeat", "-l", "warning", "-c", "1"]
        return [("celery worker -P solo", [*base, "-P", "solo"]),
                ("celery worker -P threads -c 1", [*base, "-P", "threads"])]

    def close(self) -> None:
        self.mod.app.close()


class DramatiqPeer(Peer):
    name = "dramatiq"
    single_api = "actor.send"
    bulk_api = "group(messages).run()"

    def setup(self) -> None:
        self.mod = self.module()
        self.mod.noop_enq.send(PAYLOAD)

    # enqueue phases send to the actor on queue "enq" (no worker reads it); the drain's
    # actor is on queue "default"
    def single(self, k: int) -> float:
        send = self.mod.noop_enq.send
        return self._loop(k, lambda: send(PAYLOAD))

    def _group(self, m: int, actor: Any) -> None:
        import dramatiq

        dramatiq.group(actor.message(PAYLOAD) for _ in range(m)).run()

    def bulk(self, k: int) -> float:
        return self._chunks(k, lambda m: self._group(m, self.mod.noop_enq))

    def fill(self, n: int) -> None:
        self.mod.broker.flush("default")
        for start in range(0, n, BULK_CHUNK):
            self._group(min(BULK_CHUNK, n - start), self.mod.noop)

    def workers(self) -> list[tuple[str, list[str]]]:
        return [("dramatiq --processes 1 --threads 1",
                 [str(BIN / "dramatiq"), "_peer_dramatiq", "--processes", "1", "--threads",
                  "1", "--queues", "default"])]

    def close(self) -> None:
        self.mod.broker.close()


class ArqPeer(Peer):
    name = "arq"
    single_api = "await pool.enqueue_job (asyncio)"
    bulk_api = "none: a loop of await enqueue_job"

    def setup(self) -> None:
        from arq import create_pool

        self.mod = self.module()
        self.loop = asyncio.new_event_loop()
        self.pool = self.loop.run_until_complete(create_pool(self.mod.REDIS))
        self.loop.run_until_complete(self.pool.enqueue_job("noop", PAYLOAD))

    async def _timed(self, k: int) -> float:
        enqueue = self.pool.enqueue_job
        t0 = C.now_ns()
        for _ in range(k):
            await enqueue("noop", PAYLOAD)
        return (C.now_ns() - t0) / 1e9

    def single(self, k: int) -> float:
        return self.loop.run_until_complete(self._timed(k))

    bulk = single

    def fill(self, n: int) -> None:
        self.loop.run_until_complete(self.pool.delete("arq:queue"))  # the enqueue phases' jobs
        self.single(n)

    def workers(self) -> list[tuple[str, list[str]]]:
        return [("arq --burst (arq's defaults: max_jobs 10, poll_delay 0.5 s)",
                 [str(BIN / "arq"), "_peer_arq.WorkerSettings", "--burst"]),
                ("arq --burst (max_jobs 1, poll_delay 0.01 s)",
                 [str(BIN / "arq"), "_peer_arq.OneAtATime", "--burst"])]

    def close(self) -> None:
        self.loop.run_until_complete(self.pool.aclose())
        self.loop.close()


class HueyPeer(Peer):
    name = "huey"
    single_api = "task call (RedisHuey)"
    bulk_api = "none: a loop of task calls"

    def setup(self) -> None:
        self.mod = self.module()
        self.mod.noop(PAYLOAD)

    def single(self, k: int) -> float:
        task = self.mod.noop
        return self._loop(k, lambda: task(PAYLOAD))

    bulk = single

    def fill(self, n: int) -> None:
        self.mod.huey.storage.flush_queue()  # the enqueue phases' jobs
        self.single(n)

    def workers(self) -> list[tuple[str, list[str]]]:
        return [("huey_consumer -w 1 -k thread",
                 [str(BIN / "huey_consumer"), "_peer_huey.huey", "-w", "1", "-k", "thread",
                  "-q"])]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.mod.huey.storage.conn.close()


PEER_CLASSES: dict[str, type[Peer]] = {c.name: c for c in (
    PycanaryPeer, RqPeer, CeleryPeer, DramatiqPeer, ArqPeer, HueyPeer)}


# ============================================================================================
# Phases
# ============================================================================================
def interleaved(peers: list[Peer], totals: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Each phase ('single', 'bulk') with totals[phase] jobs per peer, in ROUNDS rounds: every
    round runs a slice of every (peer, phase) pair, the order rotated each round, so machine
    noise hits all alike. Returns {phase: {peer: figures or error}}."""
    pairs = [(p, ph) for ph in totals for p in peers]
    acc = {(p.name, ph): [0, 0.0] for p, ph in pairs}
    for r in range(ROUNDS):
        k = r * len(pairs) // ROUNDS
        for p, ph in pairs[k:] + pairs[:k]:
            if ph in p.error:
                continue
            per = max(1, totals[ph] // ROUNDS)
            try:
                t = getattr(p, ph)(per)
            except Exception as exc:
                p.error[ph] = _short(exc)
                continue
            acc[p.name, ph][0] += per
            acc[p.name, ph][1] += t
    out: dict[str, dict[str, Any]] = {ph: {} for ph in totals}
    for p, ph in pairs:
        jobs, secs = acc[p.name, ph]
        if ph in p.error or not secs:
            out[ph][p.name] = {"error": p.error.get(ph, "not run")}
        else:
            out[ph][p.name] = {"jobs": jobs, "seconds": secs, "jobs_per_s": jobs / secs,
                               "us_per_job": secs / jobs * 1e6}
    return out


def _reset_counter(url: str) -> Any:
    """A client on the peer's database, its completion counter (bench/_peer_done.py) reset."""
    import redis

    client = redis.Redis.from_url(url)
    client.delete(D.DONE, D.FIRST, D.LAST)
    return client


def drain_one(peer: Peer, label: str, argv: list[str], n: int, timeout_s: float,
              logdir: str) -> dict[str, Any]:
    client = _reset_counter(peer.url)
    try:
        peer.fill(n)
        env = dict(os.environ, PEERS_URL=peer.url, PEERS_N=str(n),
                   PYTHONPATH=os.pathsep.join([str(BENCH), str(C.REPO)]),
                   PYTHONUNBUFFERED="1")
        log = Path(logdir) / f"{peer.name}-{abs(hash(label))}.log"
        with open(log, "wb") as f:
            proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env,
                                    cwd=str(BENCH), start_new_session=True)
        try:
            deadline = None  # timeout_s from the first completion (start-up not counted)
            start_deadline = time.monotonic() + max(60.0, timeout_s)
            partial = False
            while client.get(D.LAST) is None:
                if proc.poll() is not None:
                    raise Unavailable(f"worker exited {proc.returncode} after "
                                      f"{int(client.get(D.DONE) or 0)}/{n} jobs: "
                                      + _tail(log))
                now = time.monotonic()
                if deadline is None and client.get(D.FIRST) is not None:
                    deadline = now + timeout_s
                if deadline is None and now > start_deadline:
                    raise Unavailable(f"no job done {start_deadline - now + 60:.0f}s after "
                                      "start: " + _tail(log))
                if deadline is not None and now > deadline:
                    partial = True  # rate over the jobs done so far, until now
                    break
                time.sleep(0.02)
            end_ns = time.monotonic_ns()  # CLOCK_MONOTONIC, as the worker's (bench/_peer_done)
            count = int(client.get(D.DONE) or 0)
        finally:
            _stop(proc)
        first = int(client.get(D.FIRST))
        last = end_ns if partial else int(client.get(D.LAST))
        secs = (last - first) / 1e9
        done_ = count if partial else n
        return {"label": label, "jobs": n, "completions": done_, "seconds": secs,
                "partial": partial,
                "jobs_per_s": (done_ - 1) / secs if secs > 0 and done_ > 1 else float("nan")}
    finally:
        client.close()


def _tail(log: Path) -> str:
    try:
        lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return "no log"
    return (lines[-1][:100] if lines else "no output")


def _stop(proc: subprocess.Popen) -> None:
    """Stop the worker we started (and its children: it leads its own session)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def drain_phase(peers: list[Peer], n: int, timeout_s: float,
                quick: bool) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="pycanary-bench-peers-") as logdir:
        for p in peers:
            if "setup" in p.error:
                out[p.name] = {"error": p.error["setup"]}
                continue
            runs = []
            configs = p.workers()
            if quick:  # one configuration per peer: the one most like the others' (see docs)
                configs = configs[-1:] if p.name in ("pycanary", "arq") else configs[:1]
            for label, argv in configs:
                if not Path(argv[0]).exists():
                    runs.append({"label": label, "error": f"{Path(argv[0]).name} not found"})
                    continue
                try:
                    runs.append(drain_one(p, label, argv, n, timeout_s, logdir))
                except Exception as exc:
                    runs.append({"label": label, "error": _short(exc)})
            good = [r for r in runs if "error" not in r]
            best = max(good, key=lambda r: r["jobs_per_s"]) if good else None
            out[p.name] = {"runs": runs, **({"best": best} if best else
                                            {"error": runs[0]["error"] if runs else "no run"})}
    return out


# ============================================================================================
# Report
# ============================================================================================
def _ratio(v: float | None, base: float | None) -> str:
    if v is None or not base:
        return "n/a"
    return f"{v / base:.2f}x"


def report(res: dict[str, Any]) -> str:
    m = res["meta"]
    lines = ["## Peers side by side (bench/peers.py)\n"]
    lines.append(f"- one private redis-server {m['redis_version']} (loopback, no persistence), "
                 f"each peer in its own database; Python {m['python']}, redis-py "
                 f"{m['redis_py']}; {m['cpus']} CPUs")
    lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()))
    lines.append(f"- N: single enqueue {m['single']:,} calls per peer, bulk {m['bulk']:,} jobs "
                 f"per peer ({BULK_CHUNK:,} per call), both in the same {ROUNDS} interleaved "
                 "rounds; drain "
                 f"{m['drain']:,} no-op jobs per worker run")
    lines.append(f"- load average (1/5/15 min) at start {m['load_start']}, at end "
                 f"{m['load_end']}; run took {m['elapsed_s']:.0f}s")
    lines.append(f"- {m['cpu']}")
    lines.append("- x = the peer's jobs/s / pycanary's (pycanary = 1.00x; below 1.00x "
                 "pycanary is faster)\n")

    def rows(phase: str, api: str) -> list[list[str]]:
        base = res[phase].get("pycanary", {}).get("jobs_per_s")
        out = []
        for name in m["peers"]:
            r = res[phase][name]
            a = m["apis"][name][api]
            if "error" in r:
                out.append([name, a, f"n/a ({r['error']})", "", ""])
            else:
                out.append([name, a, C.fmt_num(r["jobs_per_s"]), f"{r['us_per_job']:.1f}",
                            _ratio(r["jobs_per_s"], base)])
        return out

    lines.append("### Single enqueue (one client, one job per call)\n")
    lines.append(C.md_table(["peer", "API", "jobs/s", "µs/call", "x"], rows("single", "single"),
                            ["l", "l", "r", "r", "r"]))
    lines.append("\n### Bulk enqueue (one client)\n")
    lines.append(C.md_table(["peer", "API", "jobs/s", "µs/job", "x"], rows("bulk", "bulk"),
                            ["l", "l", "r", "r", "r"]))
    lines.append("\n### One worker process draining no-op jobs (one job at a time)\n")
    base = res["drain"].get("pycanary", {}).get("best", {}).get("jobs_per_s")
    out = []
    for name in m["peers"]:
        d = res["drain"][name]
        best = d.get("best")
        for r in d.get("runs", [{"label": "no worker run", "error": d.get("error", "not run")}]):
            if "error" in r:
                out.append([name, r["label"], f"n/a ({r['error']})", ""])
            else:
                mark = " (best)" if best is r and len(d["runs"]) > 1 else ""
                note = (f" (cut at {r['seconds']:.0f}s: {r['completions']:,}/{r['jobs']:,} done)"
                        if r.get("partial") else "")
                out.append([name, r["label"] + mark, C.fmt_num(r["jobs_per_s"]) + note,
                            _ratio(r["jobs_per_s"], base)])
    lines.append(C.md_table(["peer", "worker command", "jobs/s", "x (vs pycanary's best)"],
                            out, ["l", "l", "r", "r"]))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 300 single calls, 1,000 bulk jobs, 300 drained jobs, one "
                        "worker configuration per peer")
    p.add_argument("--single", type=int, help="single enqueue calls per peer (default 2,000)")
    p.add_argument("--bulk", type=int, help="bulk-enqueued jobs per peer (default 5,000)")
    p.add_argument("--drain", type=int, help="no-op jobs per worker run (default 1,000)")
    p.add_argument("--drain-timeout", type=float, default=None,
                   help="seconds a worker run may take from its first completion; a slower "
                        "one is cut and its rate counted over the jobs done (default 15, "
                        "quick 8)")
    p.add_argument("--peers", default=",".join(PEERS), help=f"subset of {','.join(PEERS)}")
    p.add_argument("--json", action="store_true", help="print one JSON document instead")
    a = p.parse_args(argv)
    a.single = a.single or (300 if a.quick else 2000)
    a.bulk = a.bulk or (1000 if a.quick else 5000)
    a.drain = a.drain or (300 if a.quick else 1000)
    a.drain_timeout = a.drain_timeout or (8.0 if a.quick else 15.0)
    a.peers = [x.strip() for x in a.peers.split(",") if x.strip()]
    bad = [x for x in a.peers if x not in PEER_CLASSES]
    if bad or not a.peers:
        p.error(f"unknown peers {bad}; choose from {','.join(PEERS)}")
    if "pycanary" not in a.peers:
        a.peers.insert(0, "pycanary")  # the ratios' base
    if min(a.single, a.bulk, a.drain) < 2:
        p.error("--single, --bulk and --drain must be at least 2")
    return a


def _load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    C.raise_on_sigterm()
    t_start = time.monotonic()
    load_start = _load()
    server = C.PrivateRedis()
    peers: list[Peer] = []
    try:
        import redis

        admin = redis.Redis(port=server.port)
        meter = C.CpuMeter(admin)
        versions = {}
        for i, name in enumerate(PEERS):
            if name not in args.peers:
                continue
            peer = PEER_CLASSES[name](f"redis://127.0.0.1:{server.port}/{i}")
            peers.append(peer)
            try:
                versions[name] = metadata.version(DIST[name])
            except metadata.PackageNotFoundError:
                versions[name] = "not installed"
            try:
                peer.setup()
            except Exception as exc:
                why = ("not installed: pip install -e '.[bench]'" if isinstance(
                    exc, ImportError) else _short(exc))
                peer.error = {"setup": why, "single": why, "bulk": why}
                if not isinstance(exc, ImportError):
                    traceback.print_exc(file=sys.stderr)
        res: dict[str, Any] = interleaved(peers, {"single": args.single, "bulk": args.bulk})
        res["drain"] = drain_phase(peers, args.drain, args.drain_timeout, args.quick)
        pyc = next(p for p in peers if p.name == "pycanary")
        canary_share = pyc.canary / pyc.routed if getattr(pyc, "routed", 0) else None
        for p in peers:
            with contextlib.suppress(Exception):
                p.close()
        cpu = meter.stop()
        res["meta"] = {
            "peers": [p.name for p in peers], "versions": versions,
            "apis": {p.name: {"single": p.single_api, "bulk": p.bulk_api} for p in peers},
            "redis_version": admin.info("server").get("redis_version"),
            "python": platform.python_version(), "redis_py": redis.__version__,
            "cpus": os.cpu_count(), "single": args.single, "bulk": args.bulk,
            "drain": args.drain, "load_start": load_start, "load_end": _load(),
            "elapsed_s": time.monotonic() - t_start, "cpu": C.CpuMeter.describe(cpu),
            "pycanary_canary_share": canary_share,
        }
        admin.close()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        server.stop()
    if args.json:
        print(json.dumps(res, indent=2, default=str))
    else:
        print(report(res))
        if canary_share is not None:
            print(f"\npycanary's enqueued jobs routed to canary: {100 * canary_share:.1f}% "
                  f"(weight {WEIGHT_BP / 100:g}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
