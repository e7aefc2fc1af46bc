"""A controller SIGKILLed mid-rollback: the next leader finishes the drain (issue 8).

Two real `pycanary controller` processes (lease 1 s). The first leads and carries the test
hook ``PYCANARY_TEST_CRASH_AT=mid_drain``: when it rolls a deployment back it writes
deployment_rollback (weight 0, canary closed), moves exactly one drain slice (500 jobs) and
SIGKILLs itself, so the deployment is left `rolling_back` with most of its canary lane still
waiting. The second takes the lease once it lapses and must finish: canary lane empty, every
job id in the stable lane exactly once (no worker runs, so none is processed), deployment
`rolled_back` by the new leader, the rollback counted under its rule.

The rollback is the plan's deadline (3 s, no data needed), so the test needs no workers.
"""

from __future__ import annotations

import json
import signal
import subprocess

import pytest

from pycanary import defaults, deployments, queue_config, rollouts, service
from pycanary.producer import Producer
from tests.processes import STARTUP, holder, start_controller, wait_until
from tests.test_worker_processes import stop_all

QUEUE = "payments"
LEASE = 1.0
POLL = 0.1
JOBS = 6000
SLICE = defaults.DRAIN_BATCH  # the controller's drain batch
PLAN = {"canary_config": {"interval": "1s", "deadline": "3s", "stages": [
    {"percentage": 50, "duration": "3s"}]}}


@pytest.mark.slow
def test_leader_sigkilled_mid_rollback_drain_is_finished_by_the_next(real_conn, tmp_path
                                                                     ) -> None:
    conn = real_conn
    qk = conn.keys.queue(QUEUE)
    service.configure_queue(conn, QUEUE, stable_version="v1")
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs: list[subprocess.Popen] = []

    def diag() -> str:
        out = [f"leader {conn.client.get(conn.keys.leader)!r}"]
        dep = deployments.get(conn, QUEUE)
        if dep is not None:
            out.append(f"deployment {dep.id} {dep.state}; lanes stable "
                       f"{conn.client.llen(qk.lane_stable)} canary "
                       f"{conn.client.llen(qk.lane_canary)}")
            out += [f"  {e['actor']} {e['type']}: {e['message'][:150]}"
                    for e in deployments.events(conn, QUEUE, dep.id, count=50)]
        for p, log in zip(procs, logs, strict=False):
            out.append(f"--- pid {p.pid} rc={p.poll()}\n{log.read_text()[-2000:]}")
        return "\n".join(out)

    try:
        crasher = start_controller(conn, logs[0], lease=LEASE, poll=POLL, crash="mid_drain")
        procs.append(crasher)
        wait_until(lambda: (h := holder(conn)) is not None and h.pid == crasher.pid, STARTUP,
                   "the crashing controller to lead", diag)
        heir = start_controller(conn, logs[1], lease=LEASE, poll=POLL)
        procs.append(heir)
        wait_until(lambda: "started" in logs[1].read_text(), STARTUP, "the second controller",
                   diag)

        dep = rollouts.ramp(conn, QUEUE, "v2", PLAN, actor="test", force=True)
        ids = {r.job_id for r in Producer(conn).enqueue_many(QUEUE, [{"n": i}
                                                                    for i in range(JOBS)])}
        assert len(ids) == JOBS
        in_canary = conn.client.llen(qk.lane_canary)
        assert in_canary > 4 * SLICE, in_canary  # a drain of several slices

        # the deadline passes, the leader rolls back, drains one slice and dies
        assert crasher.wait(20) == -signal.SIGKILL, diag()
        mid = deployments.get(conn, QUEUE)
        assert mid.state == "rolling_back", diag()
        assert queue_config.read_config(conn, QUEUE).weight_bp == 0
        assert conn.client.llen(qk.lane_canary) == in_canary - SLICE, diag()
        assert "test hook: SIGKILL at mid_drain" in logs[0].read_text()

        final = wait_until(lambda: (d := deployments.get(conn, QUEUE)) and not d.active and d,
                           2 * LEASE + 15, "the second controller to finish the rollback", diag)
        assert (final.id, final.state) == (dep.id, "rolled_back"), diag()
        assert conn.client.llen(qk.lane_canary) == 0
        stable = conn.client.lrange(qk.lane_stable, 0, -1)
        got = [json.loads(raw)["id"] for raw in stable]
        assert len(got) == JOBS and set(got) == ids, "every job once, in the stable lane"
        assert final.drain["moved"] == in_canary - SLICE  # what the heir moved
        evs = deployments.events(conn, QUEUE, dep.id, count=100)
        by_type = {e["type"]: e["actor"] for e in evs}
        crasher_id = by_type["rollback"]
        assert crasher_id.endswith(f":{crasher.pid}"), diag()
        assert by_type["rolled_back"].endswith(f":{heir.pid}"), diag()
        assert [e["type"] for e in evs].count("rolled_back") == 1
        # the rule was written with the rollback itself: the crash did not lose it
        assert conn.client.hgetall(qk.counters) == {"rollbacks:deadline": "1"}
        assert not conn.client.sismember(conn.keys.active_deployments, QUEUE)
        assert heir.poll() is None, diag()
        print(f"\nSIGKILL mid-drain: {SLICE} of {in_canary} canary jobs moved by the dead "
              f"leader, {final.drain['moved']} by the next")
    finally:
        stop_all(procs)
