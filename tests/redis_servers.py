"""Start and stop throwaway redis-server processes on free loopback ports (tests only).

Only what these helpers started is stopped; the shared server on 6379 is never touched.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A free loopback port whose cluster bus port (+10000) is free too, as cluster mode needs."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20_000, 45_000)
        if _is_free(port) and _is_free(port + 10_000):
            return port
    raise RuntimeError("no free port pair found")


def _server_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:  # pragma: no cover - the machine has it; fail loudly if not
        raise RuntimeError("redis-server is not on PATH")
    return binary


class RedisProcess:
    """A plain redis-server on a free loopback port, no persistence, its own directory."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        self.port = free_port()
        self._launch(workdir / f"redis-{self.port}",
                     ["--port", str(self.port), *extra],
                     redis.Redis(port=self.port, decode_responses=True), "redis-server")

    def _launch(self, dir_: Path, args: list[str], client: redis.Redis, what: str) -> None:
        """Start redis-server with ``args`` (plus the throwaway defaults) and wait until
        ``client`` gets a PONG; a server that exits or stays silent for 10 s is stopped."""
        self.dir = dir_
        self.dir.mkdir(parents=True)
        self.proc = subprocess.Popen(
            [_server_binary(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--logfile", str(self.dir / "log"), *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.client = client
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"{what} on {self.port} did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class _Cluster:
    """A Redis Cluster of throwaway nodes made with ``redis-cli --cluster create``."""

    nodes: list[RedisProcess]

    def _create(self, workdir: Path, count: int, replicas: int, *extra: str) -> None:
        self.nodes = []
        try:
            for _ in range(count):
                self.nodes.append(RedisProcess(workdir, "--cluster-enabled", "yes",
                                               "--cluster-config-file", "nodes.conf", *extra))
            subprocess.run(
                ["redis-cli", "--cluster", "create",
                 *[f"127.0.0.1:{n.port}" for n in self.nodes], "--cluster-replicas",
                 str(replicas), "--cluster-yes"],
                check=True, capture_output=True, timeout=60,
            )
            self.wait_ok(self.nodes, 30)
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def wait_ok(nodes: list[RedisProcess], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if all(n.client.cluster("info").get("cluster_state") == "ok" for n in nodes):
                    return
            except redis.exceptions.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("cluster did not reach state ok")
            time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


class RedisCluster3(_Cluster):
    """Three primaries, no replicas: enough to spread slots across nodes."""

    def __init__(self, workdir: Path) -> None:
        self._create(workdir, 3, 0)


class RedisCluster6(_Cluster):
    """Three primaries with one replica each (``--cluster-replicas 1``) and a short
    ``cluster-node-timeout``, so a SIGKILLed primary's replica takes over within seconds.

    Replication is asynchronous: a write a primary acknowledged but had not yet sent to its
    replica is gone after the failover (what tests/test_cluster_failover.py measures).
    """

    def __init__(self, workdir: Path, node_timeout_ms: int = 1000) -> None:
        self._create(workdir, 6, 1, "--cluster-node-timeout", str(node_timeout_ms))
        try:
            deadline = time.monotonic() + 30
            while len(self.primaries()) != 3 or any(
                    n.client.info("replication").get("master_link_status") != "up"
                    for n in self.nodes if n not in self.primaries()):
                if time.monotonic() > deadline:
                    raise RuntimeError("replicas did not link up")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise

    def alive(self) -> list[RedisProcess]:
        return [n for n in self.nodes if n.proc.poll() is None]

    def primaries(self) -> list[RedisProcess]:
        """Live nodes whose INFO replication says role:master."""
        out = []
        for n in self.alive():
            try:
                if n.client.info("replication").get("role") == "master":
                    out.append(n)
            except redis.exceptions.ConnectionError:
                pass
        return out

    def wait_failover(self, timeout_s: float = 20) -> None:
        """Until three live primaries again (a replica was promoted) and every live node says
        cluster_state:ok. A state still "ok" right after the kill proves nothing: the other
        nodes notice the failure only after cluster-node-timeout."""
        deadline = time.monotonic() + timeout_s
        while len(self.primaries()) != 3:
            if time.monotonic() > deadline:
                raise RuntimeError("no replica took over")
            time.sleep(0.05)
        self.wait_ok(self.alive(), max(1.0, deadline - time.monotonic()))

    def node_for_port(self, port: int) -> RedisProcess:
        return next(n for n in self.nodes if n.port == port)

    def kill(self, node: RedisProcess) -> None:
        """SIGKILL one node: no shutdown, no last replication."""
        node.proc.kill()
        node.proc.wait()


def make_tls_certs(workdir: Path) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate (openssl)."""
    workdir.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60,
                       cwd=workdir)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        "/CN=pycanary test CA", "-keyout", "ca.key", "-out", "ca.pem")
    (workdir / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, cn in (("server", "127.0.0.1"), ("client", "pycanary test client")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout",
            f"{name}.key", "-out", f"{name}.csr")
        ext = ["-extfile", "server.ext"] if name == "server" else []
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", *ext)
    return {n: workdir / n for n in ("ca.pem", "server.pem", "server.key", "client.pem",
                                     "client.key")}


class RedisTLSProcess(RedisProcess):
    """A redis-server on a TLS-only loopback port that requires client certificates."""

    def __init__(self, workdir: Path, certs: dict[str, Path], *extra: str,
                 password: str | None = None) -> None:
        self.port = free_port()
        client = redis.Redis(port=self.port, password=password, ssl=True,
                             ssl_ca_certs=str(certs["ca.pem"]),
                             ssl_certfile=str(certs["client.pem"]),
                             ssl_keyfile=str(certs["client.key"]), decode_responses=True)
        self._launch(
            workdir / f"redis-tls-{self.port}",
            ["--port", "0", "--tls-port", str(self.port),
             "--tls-cert-file", str(certs["server.pem"]),
             "--tls-key-file", str(certs["server.key"]),
             "--tls-ca-cert-file", str(certs["ca.pem"]), "--tls-auth-clients", "yes",
             *(["--requirepass", password] if password else []), *extra],
            client, "TLS redis-server")
