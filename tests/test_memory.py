"""Redis memory per deployment (issue 15 item 1), measured with MEMORY USAGE on real Redis.

A deployment of the design card's plan runs with a real worker per version for ten minutes of
metric slots: the slot clock of the workers is simulated (each simulated slot gets its jobs,
then the next slot begins), everything else is real (producer, ack/fail scripts, controller
ticks on a driven policy clock, one tick per plan interval). Then every key of the queue is
measured, in total and by part, so a change of the layout shows where it went.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

from pycanary import defaults, deployments, metrics, rollouts, service
from pycanary.controller import Controller
from pycanary.job import Job
from pycanary.plan import load_plan
from pycanary.producer import Producer
from pycanary.worker import Worker

Q = "payments"
PLAN = Path(__file__).resolve().parents[1] / "examples" / "plans" / "design-card.yaml"
#: The deployment's own keys, measured 12,120-13,224 bytes here (issue 15; 24-26 KB before
#: its second round, ~123 KB before it); the budget leaves room for run-time buckets that vary
#: with the load and for the jemalloc size class of `ctl` (3 or 3.5 KB). The queue's
#: notification outbox (a stream: 4 KB at its first entry, shared by every deployment of the
#: queue, see docs/notifications.md) is measured apart.
BUDGET_B = 14 * 1024
OUTBOX_BUDGET_B = 5 * 1024
HISTORY_S = 600
JOBS_PER_SLOT = 400
#: handler run times (seconds): a few distinct ones, so the run histograms hold several buckets
SLEEPS = (0.0, 0.0, 0.0002, 0.0006, 0.0015, 0.003)


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _memory_by_key(conn) -> dict[str, int]:
    """MEMORY USAGE of every key of the queue but the producer's idempotency records (one per
    enqueue_many batch, kept 10 minutes whatever deployment runs: the producer's, not the
    deployment's)."""
    c = conn.client
    base = conn.keys.queue(Q).base
    # admin path (tests only): every key of the queue, by its hash tag
    return {k[len(base) + 1:]: int(c.memory_usage(k, samples=0) or 0)
            for k in c.scan_iter(match=f"{base}:*", count=1000)
            if not k.startswith(f"{base}:idem:")}


def test_ten_minutes_of_a_deployment_fit_in_its_budget(real_conn, monkeypatch) -> None:
    conn = real_conn
    plan = load_plan(PLAN)
    n_slots = HISTORY_S // defaults.SLOT_S
    real_slot_of = metrics.slot_of
    first = real_slot_of(defaults.now_ms()) - n_slots * defaults.SLOT_S
    current = [first]
    # the workers' (and reaper's) slot clock: the simulated slot, whatever the wall clock says
    monkeypatch.setattr(metrics, "slot_of", lambda ms, slot_s=defaults.SLOT_S: current[0])

    service.configure_queue(conn, Q, stable_version="v1")
    clock = Clock(time.time())
    rollouts.ramp(conn, Q, "v2", plan, actor="test", now_ms=int(clock() * 1000), force=True)
    ctl = Controller(conn, clock=clock)
    rng = random.Random(15)
    rng_lock = threading.Lock()

    def handler(job: Job) -> None:
        with rng_lock:
            pause = rng.choice(SLEEPS)
        if pause:
            time.sleep(pause)
        if job.payload["i"] % 100 == 7 and job.attempt == 1:
            raise ValueError("first attempt fails")  # retried: failed and retried counts

    workers = [Worker(conn, [Q], v, handler, heartbeat_s=0.2, backoff_s=0.001,
                      worker_id=f"mem-{v}", rng=random.Random(i))
               for i, v in enumerate(("v1", "v2"))]
    threads = [threading.Thread(target=w.run, daemon=True) for w in workers]
    for t in threads:
        t.start()
    producer = Producer(conn, rng=random.Random(1))
    qk = conn.keys.queue(Q)
    sent = 0
    try:
        for k in range(n_slots):
            current[0] = first + k * defaults.SLOT_S
            producer.enqueue_many(Q, [{"i": i} for i in range(JOBS_PER_SLOT)])
            sent += JOBS_PER_SLOT
            deadline = time.monotonic() + 60
            while sum(w.stats.done for w in workers) < sent or any(
                    conn.client.llen(qk.processing(w.id)) for w in workers) or \
                    conn.client.zcard(qk.delayed_stable) or conn.client.zcard(qk.delayed_canary):
                assert time.monotonic() < deadline, "the workers did not keep up"
                time.sleep(0.01)
            for _ in range(max(1, defaults.SLOT_S // int(plan.interval))):
                clock.t += plan.interval
                ctl.tick()
    finally:
        for w in workers:
            w.stop()
        for t in threads:
            t.join(15)
    dep = deployments.get(conn, Q)
    assert dep is not None and dep.active and dep.last_analysis is not None
    assert sum(w.stats.done for w in workers) == sent
    assert {w.stats.failed for w in workers} != {0}  # the failed and retried fields exist too

    sizes = _memory_by_key(conn)
    outbox = sizes.pop("outbox", 0)  # the queue's, not the deployment's: measured apart
    total = sum(sizes.values())
    detail = ", ".join(f"{k} {v}" for k, v in sorted(sizes.items(), key=lambda kv: -kv[1]))
    print(f"\n{total} bytes per deployment (+ the queue's outbox {outbox}): {detail}")
    assert 0 < outbox <= OUTBOX_BUDGET_B, outbox
    slots = {k: v for k, v in sizes.items() if k.startswith("m:")}
    assert len(slots) == 2 * n_slots == 10, sorted(slots)  # 120 s slots: 5 per lane
    assert sum(slots.values()) <= 4_000, detail
    c = conn.client
    for key in slots:  # a coarse wait histogram: at most one field per 8 fine buckets
        waits = [f for f in c.hkeys(f"{qk.base}:{key}") if f[0] == "w"]
        assert len(waits) <= 12, (key, waits)
    assert c.llen(qk.analyses(dep.id)) == deployments.ANALYSES_KEPT == 3
    assert sizes[f"analyses:{dep.id}"] <= 2_000, detail  # compact records, 3 kept
    raw = deployments.merged(c.hgetall(qk.deployment), c.hgetall(qk.deployment_large))
    assert raw["ctl"].startswith("z2:") and not {"totals", "analysis_state",
                                                 "last_analysis"} & set(raw), sorted(raw)
    assert c.object("encoding", qk.deployment) == "listpack"  # long values: deployment:large
    assert sizes["deployment"] + sizes["deployment:large"] <= 5_500, detail
    # a list, not a stream (4 KB at its first entry): compact events
    assert c.type(qk.events(dep.id)) == "list" and sizes[f"events:{dep.id}"] <= 1_500, detail
    assert total <= BUDGET_B, f"{total} bytes > {BUDGET_B}: {detail}"


@pytest.mark.parametrize("bucket", [0, 1, 5, 8, 9, 16, 17, 40, 211])
def test_slot_wait_bucket_is_the_middle_of_its_group(real_conn, bucket: int) -> None:
    """The slot keeps one wait bucket per 8 fine ones (named by the middle one), the totals
    the fine one; the run bucket is one per pair in the slot, fine in the totals."""
    conn = real_conn
    qk = conn.keys.queue(Q)
    conn.client.lpush(qk.processing("w"), "e1")
    assert conn.scripts.call("ack_jobs", qk.ack_keys("w", "v1", "stable", 60),
                             [60, "e1", 30, bucket, "", "0", ""]) == [1, 0]
    slot = conn.client.hgetall(qk.metrics_slot("v1", "stable", 60))
    total = conn.client.hgetall(qk.metrics_total("v1", "stable"))
    coarse = 0 if bucket == 0 else (bucket - 1) // 8 * 8 + 5
    assert {f: v for f, v in slot.items() if f[0] == "w"} == {f"w{coarse}": "1"}
    assert {f: v for f, v in total.items() if f[0] == "w"} == {f"w{bucket}": "1"}
    assert slot["r29"] == total["r30"] == "1"  # run (and CPU): one slot bucket per pair


@pytest.mark.parametrize("bucket", [0, 1, 2, 3, 30, 31, 164, 165])
def test_slot_run_and_cpu_buckets_are_pairs_named_by_the_lower(real_conn, bucket: int) -> None:
    """ack_jobs keeps one run and one CPU bucket per pair of fine ones in a slot (what
    metrics.slot_pair_bucket says), the fine ones in the totals the analysis reads."""
    conn = real_conn
    qk = conn.keys.queue(Q)
    conn.client.lpush(qk.processing("w"), "e1")
    assert conn.scripts.call("ack_jobs", qk.ack_keys("w", "v1", "stable", 60),
                             [60, "e1", bucket, 0, str(bucket), "0", ""]) == [1, 0]
    slot = conn.client.hgetall(qk.metrics_slot("v1", "stable", 60))
    total = conn.client.hgetall(qk.metrics_total("v1", "stable"))
    pair = metrics.slot_pair_bucket(bucket)
    assert pair == (0 if bucket == 0 else bucket - (bucket + 1) % 2)
    assert {f: v for f, v in slot.items() if f[0] in "rc"} == {f"r{pair}": "1", f"c{pair}": "1"}
    assert {f: v for f, v in total.items() if f[0] in "rc"} == {f"r{bucket}": "1",
                                                                f"c{bucket}": "1"}
