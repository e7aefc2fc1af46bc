"""Secrets never printed, and the per-role ACLs of pycanary/security.py enforced by a real Redis.

ACL users are created only on a PRIVATE redis-server started here, never on the shared one.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import pycanary
from pycanary import deployments, rollouts, service
from pycanary.connection import Connection, redact_url
from pycanary.controller import Controller
from pycanary.errors import ConnectionFailedError, PermissionDeniedError
from pycanary.leader import Leadership
from pycanary.security import ROLES, acl_doc_table, acl_rules
from pycanary.worker import Worker
from tests.redis_servers import RedisProcess

PW = "s3cretpw"
ROOT = Path(__file__).resolve().parents[1]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- redaction -------------------------------------------------------------------------------
@pytest.mark.parametrize("url,shown", [
    ("redis://u:secret@127.0.0.1:1/0", "redis://u:***@127.0.0.1:1/0"),
    ("redis://:secret@h:1", "redis://:***@h:1"),
    ("redis://secret@h:1", "redis://:***@h:1"),
    ("rediss://h/0?password=secret&ssl_ca_certs=/ca.pem", "rediss://h/0?password=***&ssl_ca_certs=/ca.pem"),
    ("redis://h:6379/0", "redis://h:6379/0"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_closed_port_error_and_repr_hide_the_password(caplog: pytest.LogCaptureFixture) -> None:
    url = f"redis://u:secret@127.0.0.1:{closed_port()}/0"
    conn = pycanary.connect(url)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConnectionFailedError) as err:
        conn.ping()
    logging.getLogger("pycanary").error("failed: %s %r", err.value, conn)
    assert "cannot reach Redis at redis://u:***@127.0.0.1:" in str(err.value)
    for text in (str(err.value), repr(err.value), repr(conn), str(conn), caplog.text):
        assert "secret" not in text


def test_wrong_password_on_a_real_server_is_not_printed(server: RedisProcess,
                                                       real_conn: Connection) -> None:
    for port in (server.port, real_conn.client.connection_pool.connection_kwargs["port"]):
        conn = pycanary.connect(f"redis://producer:secret@127.0.0.1:{port}/0")
        with pytest.raises(ConnectionFailedError) as err:
            conn.ping()
        assert "secret" not in str(err.value) and "secret" not in repr(conn)
        assert str(err.value).startswith(f"Redis at redis://producer:***@127.0.0.1:{port}/0 "
                                         "refused"), str(err.value)


def test_cli_does_not_print_the_password() -> None:
    url = f"redis://u:secret@127.0.0.1:{closed_port()}/0"
    res = subprocess.run([sys.executable, "-m", "pycanary.cli", "--redis-url", url, "status", "q"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "secret" not in res.stdout + res.stderr
    assert res.stderr.startswith("error: cannot reach Redis at redis://u:***@127.0.0.1:")
    assert "Traceback" not in res.stderr


# -- ACL rules ---------------------------------------------------------------------------------
def test_docs_show_the_generated_rules() -> None:
    doc = (ROOT / "docs" / "security.md").read_text()
    assert acl_doc_table() in doc
    for role in ROLES:
        assert " ".join(acl_rules(role)[-1:]) in doc, role


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    proc = RedisProcess(tmp_path_factory.mktemp("acl"))
    try:
        for role in ROLES:
            proc.client.execute_command("ACL", "SETUSER", role, "reset", "on", f">{PW}",
                                        *acl_rules(role, "pc"))
        yield proc
    finally:
        proc.stop()


def as_role(server: RedisProcess, role: str) -> Connection:
    conn = pycanary.connect(f"redis://{role}:{PW}@127.0.0.1:{server.port}/0", prefix="pc")
    conn.ping()
    return conn


def test_producer_enqueues_but_cannot_change_routing(server: RedisProcess) -> None:
    op, prod = as_role(server, "operator"), as_role(server, "producer")
    service.set_weight(op, "sec-p", 25)
    before = server.client.hgetall("pc:{sec-p}:config")
    res = service.enqueue(prod, "sec-p", {"n": 1}, count=150)
    assert res.to_dict()["count"] == 150 if "count" in res.to_dict() else True
    lanes = sum(server.client.llen(f"pc:{{sec-p}}:lane:{lane}") for lane in ("stable", "canary"))
    assert lanes == 150
    with pytest.raises(PermissionDeniedError) as err:
        service.set_weight(prod, "sec-p", 90)
    assert err.value.field == "acl" and PW not in str(err.value)
    with pytest.raises(PermissionDeniedError):
        service.configure_queue(prod, "sec-p", max_weight=100)
    with pytest.raises(PermissionDeniedError):  # no hand-written script gets around it either
        prod.client.eval("return redis.call('HINCRBY', KEYS[1], 'weight_bp', 5000)", 1,
                         "pc:{sec-p}:config")
    with pytest.raises(PermissionDeniedError, match="'hset' command"):
        prod.client.hset("pc:{sec-p}:config", "weight_bp", 10000)
    assert server.client.hgetall("pc:{sec-p}:config") == before
    assert server.client.hgetall("pc:{sec-p}:tenant_weights") == {}


def test_worker_fetches_acks_fails_and_heartbeats(server: RedisProcess) -> None:
    op, prod, wconn = (as_role(server, r) for r in ("operator", "producer", "worker"))
    service.configure_queue(op, "sec-w", stable_version="v1")
    service.enqueue(prod, "sec-w", {"ok": True}, count=20)
    service.enqueue(prod, "sec-w", {"ok": False}, count=3)

    def handler(job):
        if not job.payload["ok"]:
            raise RuntimeError("boom")

    w = Worker(wconn, ["sec-w"], "v1", handler, max_attempts=1, heartbeat_s=0.5, block_s=0.2)
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while w.stats.done + w.stats.dead < 23 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.client.zscore("pc:{workers}:registry", w.id) is not None
    w.stop()
    t.join(15)
    assert (w.stats.done, w.stats.dead) == (20, 3)
    assert server.client.llen("pc:{sec-w}:dlq") == 3
    assert server.client.llen("pc:{sec-w}:lane:stable") == 0
    with pytest.raises(PermissionDeniedError):
        service.set_weight(wconn, "sec-w", 50)
    assert server.client.hget("pc:{sec-w}:config", "weight_bp") in (None, "0")


def test_controller_ramps_and_rolls_back_operator_cli(server: RedisProcess) -> None:
    op, ctl_conn = as_role(server, "operator"), as_role(server, "controller")
    service.configure_queue(op, "sec-c", stable_version="v1")
    rollouts.start_canary(op, "sec-c", "v2", weight="10", interval="1s", force=True)
    ctl = Controller(ctl_conn, leadership=Leadership(ctl_conn, lease_s=5))
    report = ctl.tick()
    assert report.leader is True and report.deployments == 1
    dep = deployments.get(ctl_conn, "sec-c")
    assert dep is not None
    out = ctl._rollback(dep, "test", "manual", int(time.time() * 1000), {})
    assert out.startswith("rolled back"), out
    assert server.client.sismember("pc:{sec-c}:rolled_back", "v2")
    with pytest.raises(PermissionDeniedError):  # the controller writes nothing of the workers'
        ctl_conn.scripts.call("heartbeat", ctl_conn.keys.heartbeat_keys("x"),
                              ["x", 1, 6000, "{}", "state", "active"])
    # its notification sender reads the outbox, settles, and forgets a gone sender's consumer
    from pycanary.notify import Sender

    gone = Sender(ctl_conn, consumer="gone", claim_idle_s=0)
    assert gone.run_once().errors == []
    rep = Sender(ctl_conn, consumer="ctl", claim_idle_s=0, forget_idle_s=0).run_once()
    assert rep.errors == [] and rep.forgotten == 1 and rep.acknowledged >= 0

    url = f"redis://operator:{PW}@127.0.0.1:{server.port}/0"
    verbs = [["set-weight", "sec-o", "5"],
             ["queue", "configure", "sec-o", "--stable-version", "v1"],
             ["enqueue", "sec-o", "{}"],
             ["canary", "start", "sec-o", "--version", "v2", "--weight", "5",
              "--allow-schema-change", "--force"],
             ["status", "sec-o"], ["workers"], ["rollback", "sec-o", "--yes"],
             ["queue", "show", "sec-o"], ["metrics"]]
    for args in verbs:
        res = subprocess.run([sys.executable, "-m", "pycanary.cli", "--redis-url", url,
                              "--prefix", "pc", *args], capture_output=True, text=True,
                             timeout=60)
        assert res.returncode == 0, (args, res.stderr)
        assert PW not in res.stdout + res.stderr


def test_streams_backend_runs_under_the_producer_worker_and_controller_acls(
        server: RedisProcess, caplog: pytest.LogCaptureFixture) -> None:
    """The generated ACLs cover the Streams scripts: the producer XADDs through route_xadd(_many),
    a StreamWorker fetches, acks, fails, touches and reclaims, the controller drains."""
    from pycanary.backends.stream_worker import StreamWorker
    from pycanary.drain import drain_lane

    op, prod, wconn, ctl = (as_role(server, r) for r in
                            ("operator", "producer", "worker", "controller"))
    service.configure_queue(op, "sec-s", stable_version="v1", backend="streams")
    service.set_weight(op, "sec-s", 50)
    service.enqueue(prod, "sec-s", {"ok": True}, count=20)
    service.enqueue(prod, "sec-s", {"ok": False})
    service.set_weight(op, "sec-s", 0)
    assert drain_lane(ctl, "sec-s").complete
    assert server.client.xlen("pc:{sec-s}:stream:canary") == 0

    def handler(job):
        if not job.payload["ok"]:
            raise RuntimeError("boom")

    w = StreamWorker(wconn, ["sec-s"], "v1", handler, max_attempts=1, heartbeat_s=0.5)
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while w.stats.done + w.stats.dead < 21 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.6)  # one heartbeat: touch and reclaim ran under the worker's ACL
    w.stop()
    t.join(15)
    assert (w.stats.done, w.stats.dead) == (20, 1)
    assert "failed" not in caplog.text and "NOPERM" not in caplog.text, caplog.text
    assert server.client.xlen("pc:{sec-s}:stream:stable") == 0
    assert server.client.llen("pc:{sec-s}:dlq") == 1
