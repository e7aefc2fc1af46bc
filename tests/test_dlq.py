"""Dead letters on a real Redis: list, show, requeue (by id and --all) and purge, through the
service layer and the CLI; the dead_letters script moves each record exactly once."""

from __future__ import annotations

import json

import pytest

from pycanary import dlq, service
from pycanary.errors import ValidationError
from pycanary.job import Envelope, Job
from pycanary.producer import Producer
from pycanary.worker import Worker
from tests.test_cli import assert_user_error, run
from tests.test_worker import run_until


def _dead_letters(conn, n: int, queue: str = "payments") -> list[str]:
    """n jobs that a v1 worker dead-letters (one attempt each), ids job-0 .. job-(n-1)."""
    p = Producer(conn)
    for i in range(n):
        p.enqueue(queue, {"i": i}, job_id=f"job-{i}", tenant="acme" if i == 0 else None)

    def boom(job: Job) -> None:
        raise RuntimeError(f"boom {job.payload['i']}")

    w = Worker(conn, [queue], "v1", boom, max_attempts=1, heartbeat_s=0.2)
    qk = conn.keys.queue(queue)
    run_until(w, lambda: conn.client.llen(qk.dlq) == n)
    return [f"job-{i}" for i in range(n)]


def test_list_and_show(real_conn) -> None:
    conn, prefix = real_conn, real_conn.keys.prefix
    _dead_letters(conn, 3)
    total, letters = dlq.list_dead(conn, "payments", limit=2)
    assert total == 3 and len(letters) == 2
    assert {d.job_id for d in letters} <= {"job-0", "job-1", "job-2"}
    assert all(d.version == "v1" and d.attempts == 1 and d.envelope is not None
               for d in letters)
    res = run("dlq", "list", "payments", "--json", prefix=prefix)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["total"] == 3 and sorted(d["job_id"] for d in data["dead_letters"]) == [
        "job-0", "job-1", "job-2"]
    assert all("RuntimeError: boom" in d["error"] for d in data["dead_letters"])
    res = run("dlq", "list", "payments", prefix=prefix)
    lines = res.stdout.splitlines()
    assert lines[0] == "payments: 3 dead letters" and len(lines) == 7
    assert lines[1].startswith("job-2  v1 (stable)  1 attempt  failed ")
    assert lines[2].startswith("   RuntimeError: boom 2 at ")
    res = run("dlq", "show", "payments", "job-0", "--json", prefix=prefix)
    shown = json.loads(res.stdout)
    assert len(shown) == 1 and shown[0]["payload"] == {"i": 0} and shown[0]["tenant"] == "acme"
    res = run("dlq", "show", "payments", "job-0", prefix=prefix)
    assert "   payload    {\"i\": 0}" in res.stdout and "RuntimeError: boom 0" in res.stdout
    assert "after 1 attempt\n" in res.stdout
    assert_user_error(run("dlq", "show", "payments", "job-9", prefix=prefix), "job_id")
    assert_user_error(run("dlq", "list", "paymnts", prefix=prefix), "queue")


def test_requeue_by_id_to_the_stable_tail_with_attempts_reset(real_conn) -> None:
    conn, prefix = real_conn, real_conn.keys.prefix
    _dead_letters(conn, 3)
    qk = conn.keys.queue("payments")
    conn.client.lpush(qk.lane_stable, Envelope("waiting", "payments", {}, None, None, 0,
                                               1).encode())
    res = run("dlq", "requeue", "payments", "job-2", "job-0", "--json", prefix=prefix)
    assert res.returncode == 0, res.stderr
    rep = json.loads(res.stdout)
    assert (rep["done"], rep["missing"], rep["skipped"], rep["calls"]) == (2, 0, [], 1)
    lane = [Envelope.decode(r) for r in conn.client.lrange(qk.lane_stable, 0, -1)]
    # the tail is the left end: the waiting job runs first, then job-0 (older), then job-2
    assert [e.id for e in lane] == ["job-2", "job-0", "waiting"]
    assert all(e.attempts == 0 and e.ready_at is not None for e in lane[:2])
    assert lane[1].tenant == "acme" and lane[1].payload == {"i": 0}
    assert [d.job_id for d in dlq.list_dead(conn, "payments")[1]] == ["job-1"]
    # the same ids again: nothing left to move, refused naming the id, nothing changed
    before = conn.client.lrange(qk.lane_stable, 0, -1)
    assert_user_error(run("dlq", "requeue", "payments", "job-0", prefix=prefix), "job_id")
    assert conn.client.lrange(qk.lane_stable, 0, -1) == before
    assert_user_error(run("dlq", "requeue", "payments", prefix=prefix), "job_id")


def test_requeued_jobs_run_again(real_conn) -> None:
    conn = real_conn
    _dead_letters(conn, 5)
    rep = dlq.requeue(conn, "payments", all_=True, batch=2)
    assert (rep.done, rep.calls) == (5, 3)
    seen: list[tuple[str, int]] = []
    w = Worker(conn, ["payments"], "v1", lambda job: seen.append((job.id, job.attempt)),
               heartbeat_s=0.2)
    run_until(w, lambda: len(seen) == 5)
    # oldest dead letter first, each on its first attempt again
    assert seen == [(f"job-{i}", 1) for i in range(5)]
    assert conn.client.llen(conn.keys.queue("payments").dlq) == 0


def test_requeue_all_leaves_undecodable_records_and_reports_them(real_conn) -> None:
    conn = real_conn
    _dead_letters(conn, 3)
    qk = conn.keys.queue("payments")
    conn.client.rpush(qk.dlq, json.dumps({"raw_hex": "ff00", "error": "undecodable"}))
    conn.client.lpush(qk.dlq, "not json")
    rep = dlq.requeue(conn, "payments", all_=True, batch=2)
    assert rep.done == 3 and [p for _, p in rep.skipped] == [
        "the envelope was not valid UTF-8 (raw_hex): not requeueable", "not a JSON object"]
    assert conn.client.llen(qk.dlq) == 2 and conn.client.llen(qk.lane_stable) == 3
    # a second run moves nothing and skips the same two
    again = dlq.requeue(conn, "payments", all_=True)
    assert (again.done, len(again.skipped)) == (0, 2)


def test_purge_confirms_and_deletes(real_conn) -> None:
    conn, prefix = real_conn, real_conn.keys.prefix
    _dead_letters(conn, 4)
    qk = conn.keys.queue("payments")
    assert_user_error(run("dlq", "purge", "payments", "--all", prefix=prefix), "yes")
    assert conn.client.llen(qk.dlq) == 4
    res = run("dlq", "purge", "payments", "job-1", "--yes", prefix=prefix)
    assert res.stdout.strip() == "payments: purged 1 dead letter"
    res = run("dlq", "purge", "payments", "--all", "--yes", "--json", prefix=prefix)
    assert json.loads(res.stdout)["done"] == 3 and conn.client.llen(qk.dlq) == 0
    assert conn.client.llen(qk.lane_stable) == 0
    assert_user_error(run("dlq", "purge", "payments", "job-1", "--all", "--yes",
                          prefix=prefix), "job_id")


def test_a_record_moved_by_someone_else_is_missing_not_pushed_twice(real_conn) -> None:
    conn = real_conn
    _dead_letters(conn, 1)
    qk = conn.keys.queue("payments")
    (letter,) = dlq.find(conn, "payments", ["job-0"])
    assert dlq.requeue(conn, "payments", ["job-0"]).done == 1
    rep = dlq.Report("requeue", "payments")
    dlq._apply(conn, "payments", "requeue", [letter], rep, 1)  # a stale reader's second call
    assert (rep.done, rep.missing) == (0, 1) and conn.client.llen(qk.lane_stable) == 1


def test_service_refuses_bad_arguments(real_conn) -> None:
    service.configure_queue(real_conn, "payments", stable_version="v1")
    with pytest.raises(ValidationError, match="batch"):
        dlq.requeue(real_conn, "payments", all_=True, batch=0)
    with pytest.raises(ValidationError, match="limit"):
        dlq.list_dead(real_conn, "payments", limit=0)
