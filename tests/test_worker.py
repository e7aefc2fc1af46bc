"""Workers in-process, on fakeredis and real Redis: acks, retries, dead letters, metrics, lane
rules, schemas, the reaper, timeouts and async handlers."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable

import pytest

from pycanary import metrics, queue_config, registry, service
from pycanary.job import Envelope, Job
from pycanary.producer import Producer
from pycanary.worker import Worker, assign_lane, load_handler


def run_until(worker: Worker, done: Callable[[], bool], timeout: float = 30.0) -> None:
    """Run a worker in a thread until done() holds, then stop it and wait for it."""
    t = threading.Thread(target=worker.run, daemon=True)
    t.start()
    deadline = time.monotonic() + timeout
    try:
        while not done():
            assert time.monotonic() < deadline, "worker did not finish in time"
            time.sleep(0.01)
    finally:
        worker.stop()
        t.join(15)
    assert not t.is_alive()


def drained(conn, queue: str, worker: Worker) -> Callable[[], bool]:
    qk = conn.keys.queue(queue)

    def check() -> bool:
        # one MULTI (all keys share the queue's slot): a retry moving from the delayed set to
        # the lane between separate reads would look like an empty queue
        pipe = conn.client.pipeline(transaction=True)
        pipe.llen(qk.lane_stable)
        pipe.llen(qk.lane_canary)
        pipe.zcard(qk.delayed_stable)
        pipe.zcard(qk.delayed_canary)
        pipe.llen(qk.processing(worker.id))
        return not any(pipe.execute()) and worker._inflight == 0

    return check


def window(conn, queue: str, version: str, lane: str) -> metrics.WindowStats:
    now = registry.now_ms()
    return metrics.read_window(conn, queue, version, lane, now - 120_000, now + 1_000)


def test_ack_retry_dead_letter_and_metrics(conn) -> None:
    Producer(conn).enqueue_many("payments", [{"i": i} for i in range(200)])
    seen: list[tuple[int, int]] = []

    def handler(job: Job) -> None:
        seen.append((job.payload["i"], job.attempt))
        assert job.lane == "stable" and job.version == "v1" and job.queue == "payments"
        if job.payload["i"] % 10 == 0:
            raise ValueError(f"bad item {job.payload['i']}")

    w = Worker(conn, ["payments"], "v1", handler, backoff_s=0.001, heartbeat_s=0.2)
    run_until(w, drained(conn, "payments", w))
    assert w.stats.done == 180 and w.stats.failed == 60
    assert (w.stats.retried, w.stats.dead) == (40, 20)
    assert sorted(a for i, a in seen if i == 10) == [1, 2, 3]
    qk = conn.keys.queue("payments")
    dlq = [json.loads(x) for x in conn.client.lrange(qk.dlq, 0, -1)]
    assert sorted(d["job"]["payload"]["i"] for d in dlq) == list(range(0, 200, 10))
    d = dlq[0]
    assert d["error"].startswith("ValueError: bad item") and d["version"] == "v1"
    assert d["lane"] == "stable" and d["attempts"] == 3
    st = window(conn, "payments", "v1", "stable")
    assert (st.ok, st.failed, st.retried, st.dead, st.late) == (180, 60, 40, 20, 0)
    assert st.error_rate == pytest.approx(60 / 240)
    assert sum(st.run_hist.values()) == 240 and sum(st.wait_hist.values()) == 240
    assert st.run_quantile(0.5) is not None
    # the first worker of a queue with no stable version adopted its version
    assert queue_config.read_config(conn, "payments").stable_version == "v1"


def test_canary_worker_takes_only_canary_jobs(conn) -> None:
    queue_config.configure(conn, "payments", stable_version="v1", canary_version="v2")
    queue_config.set_weight(conn, "payments", 5000)
    res = Producer(conn).enqueue_many("payments", [{}] * 300)
    canary_ids = {r.job_id for r in res if r.lane == "canary"}
    got: list[str] = []
    w = Worker(conn, ["payments"], "v2", lambda job: got.append(job.id), heartbeat_s=0.2)
    qk = conn.keys.queue("payments")
    run_until(w, lambda: conn.client.llen(qk.lane_canary) == 0 and len(got) == len(canary_ids))
    assert set(got) == canary_ids
    assert conn.client.llen(qk.lane_stable) == 300 - len(canary_ids)
    st = window(conn, "payments", "v2", "canary")
    assert st.ok == len(canary_ids)


def test_lane_rules() -> None:
    a = assign_lane("v1", stable_version="v1", canary_version="v2", rolled_back=False,
                    former_stable=False)
    assert (a.lane, a.state) == ("stable", "active")
    a = assign_lane("v2", stable_version="v1", canary_version="v2", rolled_back=False,
                    former_stable=False)
    assert (a.lane, a.state) == ("canary", "active")
    a = assign_lane("v2", stable_version="v1", canary_version=None, rolled_back=True,
                    former_stable=False)
    assert (a.lane, a.state) == (None, "retiring")
    a = assign_lane("v1", stable_version="v2", canary_version=None, rolled_back=False,
                    former_stable=True)
    assert (a.lane, a.state) == ("stable", "outdated")
    a = assign_lane("v3", stable_version="v1", canary_version="v2", rolled_back=False,
                    former_stable=False)
    assert (a.lane, a.state) == (None, "standby")
    a = assign_lane("v3", stable_version="v1", canary_version=None, rolled_back=False,
                    former_stable=False, pinned_lane="canary")
    assert (a.lane, a.state) == ("canary", "active")
    a = assign_lane("v3", stable_version="v1", canary_version=None, rolled_back=True,
                    former_stable=False, pinned_lane="canary")
    assert a.state == "retiring"


def test_promotion_keeps_old_workers_serving_stable_as_outdated(conn) -> None:
    queue_config.configure(conn, "payments", stable_version="v1", canary_version="v2")
    keys = conn.keys.queue("payments")
    old, new = conn.scripts.call("promote_canary", [keys.config, keys.tenant_weights,
                                                    keys.former_stable, keys.rolled_back], [1])
    assert (old, new) == ("v1", "v2")
    Producer(conn).enqueue_many("payments", [{}] * 50)
    w = Worker(conn, ["payments"], "v1", lambda job: None, heartbeat_s=0.2)
    run_until(w, drained(conn, "payments", w))
    assert w.stats.done == 50
    assert w._assignments["payments"].state == "outdated"
    cfg = queue_config.read_config(conn, "payments")
    assert (cfg.stable_version, cfg.canary_version, cfg.weight_bp) == ("v2", None, 0)


def test_schema_not_accepted_is_put_back_never_failed(conn) -> None:
    p = Producer(conn)
    p.enqueue_many("payments", [{"s": 1}] * 5)
    p.enqueue_many("payments", [{"s": 2}] * 3, schema=2)
    seen: list[int] = []
    w1 = Worker(conn, ["payments"], "v1", lambda job: seen.append(job.schema), schemas=[1],
                heartbeat_s=0.2)
    qk = conn.keys.queue("payments")
    run_until(w1, lambda: len(seen) == 5 and w1.stats.bounced >= 3)
    assert seen == [1] * 5 and w1.stats.failed == 0
    assert conn.client.llen(qk.lane_stable) == 3
    assert conn.client.llen(qk.dlq) == 0
    w2 = Worker(conn, ["payments"], "v1", lambda job: seen.append(job.schema), schemas=[1, 2],
                heartbeat_s=0.2)
    run_until(w2, drained(conn, "payments", w2))
    assert sorted(seen) == [1] * 5 + [2] * 3


def _fake_dead_worker(conn, queue: str, lane: str, n: int, version: str) -> tuple[str, list[str]]:
    """Register a worker that fetched n jobs and then 'died' (its heartbeat is old)."""
    wid = f"dead-{lane}-{time.monotonic_ns()}"
    qk = conn.keys.queue(queue)
    fetched, bad = conn.scripts.call("fetch_jobs", qk.fetch_keys(wid, lane),
                                     [n, version, wid, lane])
    assert bad == []
    registry.heartbeat(conn, wid, version=version, queues={queue: lane}, info={"state": "active"},
                       ttl_ms=1_000, now=registry.now_ms() - 10_000)
    return wid, [Envelope.decode(x).id for x in fetched]


def test_reaper_returns_jobs_to_their_lane_then_to_stable_after_rollback(conn) -> None:
    queue_config.configure(conn, "payments", stable_version="v1", canary_version="v2")
    queue_config.set_weight(conn, "payments", 10_000)
    Producer(conn).enqueue_many("payments", [{"i": i} for i in range(10)])
    qk = conn.keys.queue("payments")
    wid, held = _fake_dead_worker(conn, "payments", "canary", 4, "v2")
    assert conn.client.llen(qk.lane_canary) == 6
    report = registry.reap(conn, ttl_ms=1_000)
    assert (report.workers, report.jobs, report.by_lane["canary"]) == (1, 4, 4)
    # back at the head, oldest first, so they run next in their order
    head = [Envelope.decode(x).id for x in conn.client.lrange(qk.lane_canary, -4, -1)]
    assert list(reversed(head)) == held
    assert conn.client.zscore(conn.keys.registry, wid) is None
    # after a rollback, a dead canary worker's jobs go to stable
    wid2, held2 = _fake_dead_worker(conn, "payments", "canary", 3, "v2")
    conn.scripts.call("rollback_canary", [qk.config, qk.tenant_weights, qk.rolled_back],
                      ["", 1])
    report = registry.reap(conn, ttl_ms=1_000)
    assert report.by_lane == {"stable": 3, "canary": 0}
    head = [Envelope.decode(x).id for x in conn.client.lrange(qk.lane_stable, -3, -1)]
    assert list(reversed(head)) == held2
    assert conn.client.llen(qk.processing(wid2)) == 0


def test_reaper_leaves_live_workers_alone(conn) -> None:
    Producer(conn).enqueue_many("payments", [{}] * 5)
    qk = conn.keys.queue("payments")
    conn.scripts.call("fetch_jobs", qk.fetch_keys("alive", "stable"), [5, "v1", "alive", "stable"])
    registry.heartbeat(conn, "alive", version="v1", queues={"payments": "stable"},
                       info={"state": "active"}, ttl_ms=60_000)
    assert registry.reap(conn, ttl_ms=60_000).jobs == 0
    assert conn.client.llen(qk.processing("alive")) == 5
    rows = service.list_workers(conn, queue="payments")
    assert [(r["id"], r["state"]) for r in rows] == [("alive", "active")]


def test_rolled_back_worker_retires(conn) -> None:
    """A running canary worker that served jobs learns of the rollback at its next heartbeat
    and takes nothing more from the canary lane."""
    queue_config.configure(conn, "payments", stable_version="v1", canary_version="v2")
    queue_config.set_weight(conn, "payments", 10_000)
    producer = Producer(conn)
    producer.enqueue_many("payments", [{}] * 20)
    qk = conn.keys.queue("payments")
    ran: list[str] = []
    w = Worker(conn, ["payments"], "v2", lambda job: ran.append(job.id), heartbeat_s=0.2)
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 10
        while len(ran) < 20:
            assert time.monotonic() < deadline, f"only {len(ran)} of 20 canary jobs ran"
            time.sleep(0.01)
        assert w.state == "active"
        conn.scripts.call("rollback_canary", [qk.config, qk.tenant_weights, qk.rolled_back],
                          ["", 1])
        deadline = time.monotonic() + 2.0  # a few heartbeats of 0.2 s
        while w.state != "retiring":
            assert time.monotonic() < deadline, f"worker still {w.state} after the rollback"
            time.sleep(0.01)
        # jobs that reach the canary lane now (a producer with a stale view) are not taken
        late = [Envelope(id=f"late-{i}", queue="payments", payload={}, tenant=None,
                         sticky_key=None, attempts=0, enqueued_at=registry.now_ms()).encode()
                for i in range(5)]
        conn.client.lpush(qk.lane_canary, *late)
        time.sleep(0.6)  # three more heartbeats: long enough for a fetch to have happened
        assert len(ran) == 20, ran[20:]
        # a blocked idle fetch may still take one; it goes to the stable lane's head unstarted
        assert conn.client.llen(qk.lane_canary) + conn.client.llen(qk.lane_stable) == 5
        assert conn.client.llen(qk.processing(w.id)) == 0
    finally:
        w.stop()
        t.join(5)
    assert not t.is_alive()


def test_async_handler_and_concurrency(conn) -> None:
    Producer(conn).enqueue_many("payments", [{"i": i} for i in range(100)])
    active = 0
    peak = 0
    done: list[int] = []

    async def handler(job: Job) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.01)
        active -= 1
        if job.payload["i"] == 7 and job.attempt == 1:
            raise RuntimeError("first attempt of 7 fails")
        done.append(job.payload["i"])

    w = Worker(conn, ["payments"], "v1", handler, concurrency=8, backoff_s=0.001,
               heartbeat_s=0.2)
    run_until(w, drained(conn, "payments", w))
    assert sorted(done) == list(range(100))
    assert 2 <= peak <= 8
    assert (w.stats.done, w.stats.failed, w.stats.retried) == (100, 1, 1)


def test_sync_timeout_fails_the_attempt(conn) -> None:
    Producer(conn).enqueue("payments", {"slow": True})
    Producer(conn).enqueue("payments", {"slow": False})

    def handler(job: Job) -> None:
        if job.payload["slow"]:
            time.sleep(1.0)

    w = Worker(conn, ["payments"], "v1", handler, job_timeout_s=0.1, max_attempts=1,
               concurrency=2, heartbeat_s=0.2)
    run_until(w, drained(conn, "payments", w))
    dlq = [json.loads(x) for x in conn.client.lrange(conn.keys.queue("payments").dlq, 0, -1)]
    assert len(dlq) == 1 and dlq[0]["error"].startswith("TimeoutError")
    assert w.stats.done == 1


def test_worker_validation() -> None:
    import pycanary
    from pycanary.errors import ValidationError

    conn = pycanary.connect("memory://validation")
    for kwargs, field in [({"queues": []}, "queues"), ({"version": "v 1"}, "version"),
                          ({"lane": "blue"}, "lane"), ({"concurrency": 0}, "concurrency"),
                          ({"handler": 3}, "handler"), ({"queues": ["a b"]}, "queue"),
                          ({"prefetch": 0}, "prefetch"), ({"prefetch": 1001}, "prefetch"),
                          ({"prefetch": 2, "concurrency": 4}, "prefetch"),
                          ({"prefetch": True}, "prefetch")]:
        args = {"queues": ["payments"], "version": "v1", "handler": print} | kwargs
        with pytest.raises(ValidationError) as exc:
            Worker(conn, args.pop("queues"), args.pop("version"), args.pop("handler"), **args)
        assert exc.value.field == field
    with pytest.raises(ValidationError) as exc:
        load_handler("nosuchmodule_xyz:run")
    assert exc.value.field == "handler"
    with pytest.raises(ValidationError):
        load_handler("json")
    assert load_handler("json:dumps") is json.dumps


def test_idle_worker_takes_a_new_job_by_blocking_fetch_without_errors(conn, caplog) -> None:
    """The idle path (BLMOVE, read as bytes) works and logs no failed step."""
    got: list[str] = []
    w = Worker(conn, ["payments"], "v1", lambda job: got.append(job.id), heartbeat_s=0.2,
               block_s=0.2)
    t = threading.Thread(target=w.run, daemon=True)
    with caplog.at_level("WARNING", logger="pycanary"):
        t.start()
        assert w.ready.wait(5)
        time.sleep(0.5)  # idle: blocked in BLMOVE
        jid = Producer(conn).enqueue("payments", {}).job_id
        deadline = time.monotonic() + 5
        while not got:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        w.stop()
        t.join(10)
    assert got == [jid]
    assert [r.getMessage() for r in caplog.records if "failed" in r.getMessage()] == []
    assert conn.client.zcard(conn.keys.registry) == 0  # deregistered, lists empty
    assert conn.client.hlen(conn.keys.queue("payments").processing_index) == 0


def test_no_heartbeat_after_the_deregistration(conn, monkeypatch) -> None:
    """CI once found a rolled-back worker exited cleanly but still registered ("stopping"):
    its maintenance thread beat once more after the deregistration. Here every release is
    followed by a heartbeat window, so a beat that is not stopped first re-registers."""
    w = Worker(conn, ["payments"], "v1", lambda job: None, heartbeat_s=0.1, block_s=0.1)
    release = w._release
    beats_after: list[bool] = []

    def slow_release() -> bool:
        out = release()
        time.sleep(0.35)  # > 3 heartbeat periods: the maintenance thread would beat here
        return out

    def deregister(c, wid: str) -> None:
        beats_after.append(w._maint is not None and w._maint.is_alive())
        real_deregister(c, wid)

    real_deregister = registry.deregister
    monkeypatch.setattr(w, "_release", slow_release)
    monkeypatch.setattr(registry, "deregister", deregister)
    run_until(w, lambda: w.ready.is_set())
    assert beats_after == [False]  # heartbeats had stopped when it deregistered
    assert registry.list_workers(conn, ttl_ms=60_000) == []
    assert conn.client.zcard(conn.keys.registry) == 0


def test_jobs_left_in_its_own_processing_list_are_adopted(conn) -> None:
    """A worker restarted under the same id, or whose fetch reply was lost (the jobs moved but
    it never heard of them), reconciles its processing list and runs what nobody runs."""
    p = Producer(conn)
    p.enqueue_many("payments", [{"i": i} for i in range(3)])
    qk = conn.keys.queue("payments")
    left, _ = conn.scripts.call("fetch_jobs", qk.fetch_keys("w-again", "stable"),
                                [3, "v1", "w-again", "stable"])
    assert conn.client.llen(qk.lane_stable) == 0 and len(left) == 3
    got: list[int] = []
    w = Worker(conn, ["payments"], "v1", lambda job: got.append(job.payload["i"]),
               heartbeat_s=0.2, block_s=0.2, worker_id="w-again")
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while len(got) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    # a lost reply: a job lands in its list behind its back
    lost = Envelope(id="j3", queue="payments", payload={"i": 3}, tenant=None, sticky_key=None,
                    attempts=0, enqueued_at=registry.now_ms()).encode()
    conn.client.lpush(qk.processing(w.id), lost)
    w._needs_reconcile = True
    while len(got) < 4:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    w.stop()
    t.join(10)
    assert sorted(got) == [0, 1, 2, 3]
    assert conn.client.llen(qk.processing(w.id)) == 0
    st = window(conn, "payments", "v1", "stable")
    assert (st.ok, st.late) == (4, 0)


def test_busy_worker_returns_unstarted_jobs_within_a_heartbeat_of_a_rollback(conn) -> None:
    """The only slot is busy in a long job: the maintenance thread still learns of the
    rollback and gives back every fetched job at once, in order, to the stable lane's head;
    none of them ever starts here, and the running job finishes and is recorded."""
    queue_config.configure(conn, "payments", stable_version="v1", canary_version="v2")
    queue_config.set_weight(conn, "payments", 10_000)
    ids = [r.job_id for r in Producer(conn).enqueue_many("payments", [{}] * 12)]
    qk = conn.keys.queue("payments")
    gate, started = threading.Event(), threading.Event()
    ran: list[str] = []

    def handler(job: Job) -> None:
        ran.append(job.id)
        started.set()
        gate.wait(10)

    w = Worker(conn, ["payments"], "v2", handler, prefetch=10, heartbeat_s=0.4)
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    try:
        assert started.wait(10)
        deadline = time.monotonic() + 5
        while conn.client.llen(qk.processing(w.id)) < 10:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        conn.scripts.call("rollback_canary", [qk.config, qk.tenant_weights, qk.rolled_back],
                          ["", registry.now_ms()])
        t0 = time.monotonic()
        while conn.client.llen(qk.processing(w.id)) > 1:
            assert time.monotonic() - t0 < 0.4, "unstarted jobs not returned within a heartbeat"
            time.sleep(0.01)
        assert ran == ids[:1]  # still busy with the first job
        # 9 returned jobs in order at the stable lane's head (the right end), then the 2
        # jobs left in the canary lane, which are the rollback's drain's business
        head = conn.client.lrange(qk.lane_stable, 0, -1)[::-1][:9]
        assert [Envelope.decode(x).id for x in head] == ids[1:10]
        assert conn.client.llen(qk.lane_canary) == 2
        gate.set()
        deadline = time.monotonic() + 5
        while w.stats.done < 1 or conn.client.llen(qk.processing(w.id)):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.3)
        assert ran == ids[:1] and w.state == "retiring"
    finally:
        gate.set()
        w.stop()
        t.join(5)
    assert not t.is_alive()
    assert window(conn, "payments", "v2", "canary").ok == 1


@pytest.mark.parametrize("concurrency,prefetch,most", [(1, None, 1), (1, 3, 3), (2, None, 2)])
def test_prefetch_bounds_the_jobs_a_worker_holds(conn, concurrency: int, prefetch: int | None,
                                                 most: int) -> None:
    """Default: the concurrency, so a busy worker holds nothing it could not start now."""
    Producer(conn).enqueue_many("payments", [{}] * 30)
    qk = conn.keys.queue("payments")
    held: list[int] = []
    lock = threading.Lock()

    def handler(job: Job) -> None:
        with lock:
            held.append(conn.client.llen(qk.processing(w.id)))
        time.sleep(0.002)

    w = Worker(conn, ["payments"], "v1", handler, concurrency=concurrency, prefetch=prefetch,
               heartbeat_s=0.2)
    assert w.prefetch == most
    run_until(w, drained(conn, "payments", w))
    assert w.stats.done == 30 and max(held) <= most
    assert max(held) == most or prefetch is None  # a bigger prefetch is really used


@pytest.mark.parametrize("how", ["rollback", "replaced"])
def test_exit_when_retired(conn, how: str) -> None:
    """A worker whose version was rolled back or replaced on every queue it served stops on
    its own; one on standby from the start (its canary not begun yet) waits."""
    queue_config.configure(conn, "payments", stable_version="v1", canary_version="v2")
    queue_config.set_weight(conn, "payments", 10_000)
    Producer(conn).enqueue_many("payments", [{}] * 3)
    qk = conn.keys.queue("payments")
    w = Worker(conn, ["payments"], "v2", lambda job: None, heartbeat_s=0.2,
               exit_when_retired=True)
    waiting = Worker(conn, ["payments"], "v3", lambda job: None, heartbeat_s=0.2,
                     exit_when_retired=True)
    threads = [threading.Thread(target=x.run, daemon=True) for x in (w, waiting)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 10
        while w.stats.done < 3:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert waiting.state == "standby" and threads[0].is_alive()
        if how == "rollback":
            conn.scripts.call("rollback_canary", [qk.config, qk.tenant_weights, qk.rolled_back],
                              ["", registry.now_ms()])
        else:
            queue_config.configure(conn, "payments", canary_version="v3")
        threads[0].join(2)
        assert not threads[0].is_alive(), "the retired worker did not exit"
        want = "was rolled back" if how == "rollback" else "no longer serves the canary lane"
        assert want in w.exit_reason
        assert registry.list_workers(conn, ttl_ms=60_000)[0].id == waiting.id  # deregistered
        if how == "rollback":
            time.sleep(0.5)
            assert threads[1].is_alive() and waiting.exit_reason == ""
    finally:
        for x in (w, waiting):
            x.stop()
        for t in threads:
            t.join(5)


def test_rollback_and_status_report_jobs_still_running_on_the_rolled_back_version(
        conn) -> None:
    from pycanary import rollouts

    queue_config.configure(conn, "payments", stable_version="v1", canary_version="v2")
    queue_config.set_weight(conn, "payments", 10_000)
    Producer(conn).enqueue_many("payments", [{}] * 2)
    gate, started = threading.Event(), threading.Event()

    def handler(job: Job) -> None:
        started.set()
        gate.wait(10)

    w = Worker(conn, ["payments"], "v2", handler, heartbeat_s=0.2)
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    try:
        assert started.wait(10)
        deadline = time.monotonic() + 5
        while service.list_workers(conn)[0]["running"] != {"payments": {"canary": 1}}:
            assert time.monotonic() < deadline, service.list_workers(conn)
            time.sleep(0.02)
        res = rollouts.rollback(conn, "payments", actor="t")
        assert res["still_running"] == {"version": "v2", "running_jobs": 1, "workers": 1,
                                        "last_finished_at": None}
        [row] = rollouts.status(conn, "payments")
        assert [r["running_jobs"] for r in row["rolled_back_running"]] == [1]
        t_done = registry.now_ms()
        gate.set()
        deadline = time.monotonic() + 5
        while True:
            [row] = rollouts.status(conn, "payments")
            [r] = row["rolled_back_running"]
            if r["running_jobs"] == 0:
                break
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert r["version"] == "v2" and r["workers"] == 1
        assert t_done <= r["last_finished_at"] <= registry.now_ms()
        assert w.stats.done == 1  # the running job was recorded; the other never started
    finally:
        gate.set()
        w.stop()
        t.join(5)
    qk = conn.keys.queue("payments")
    assert conn.client.llen(qk.lane_stable) == 1 and conn.client.llen(qk.lane_canary) == 0
