"""Real Redis servers for tests and benchmarks: one ``redis-server`` (``RedisServer``) or a
6-process Redis Cluster (``RedisClusterServers``), on free loopback ports, no persistence,
stopped at the end. Never assumes port 6379. Fails (does not skip) when ``redis-server``
or ``redis-cli`` is missing: CI installs them (see .ci/run). The pytest fixtures over
these are in tests/services/redis_fixtures.py and redis_cluster_fixtures.py.

    with RedisServer() as server:
        url = server.url                # redis://127.0.0.1:PORT/0
        server.kill()                   # SIGKILL, as a crash would
        server.start()                  # back on the same port, empty

    with RedisClusterServers() as cluster:
        url = cluster.url                             # redis+cluster://127.0.0.1:P1,...
        port = cluster.kill_master_of(key)            # SIGKILL the master holding key's slot
        cluster.wait_promoted(port)                   # until its replica serves that slot

The cluster's ``cluster-node-timeout`` is short (1 s) so a failover takes a couple of seconds.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis
from redis.cluster import key_slot

def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def end_process(proc: subprocess.Popen, wait_s: float) -> None:
    """SIGTERM, then SIGKILL if ``proc`` has not exited within ``wait_s``."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(wait_s)


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1; restartable on the same port."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="grm-redis-")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A plain synchronous client, for arranging and inspecting state from a test."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self, timeout_s: float = 10.0) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self._dir.name, "--enable-debug-command", "local", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with self.client() as c:
                    c.ping()
                return
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}")
                time.sleep(0.01)

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, open connections break."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            end_process(self.proc, 5)
        self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._dir.cleanup()


NODE_TIMEOUT_MS = 1000
BUS_OFFSET = 10_000  # a cluster node also listens on its port + 10000 (the cluster bus)


def free_cluster_port() -> int:
    """A port below 55536 that is free together with its cluster-bus port."""
    for _ in range(200):
        port = random.randint(20_000, 45_000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + BUS_OFFSET))
            return port
        except OSError:
            continue
    raise RuntimeError("found no free port pair for a cluster node")


class RedisClusterServers:
    """Six ``redis-server --cluster-enabled yes`` processes joined into one cluster."""

    def __init__(self, masters: int = 3, replicas_each: int = 1):
        self.ports = [free_cluster_port() for _ in range(masters * (1 + replicas_each))]
        self.replicas_each = replicas_each
        self.procs: dict[int, subprocess.Popen] = {}
        self._dir = tempfile.TemporaryDirectory(prefix="grm-redis-cluster-")

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)

    def start(self, timeout_s: float = 30.0) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        for port in self.ports:
            folder = Path(self._dir.name) / str(port)
            folder.mkdir()
            self.procs[port] = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                 "--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0", "--dir", str(folder),
                 "--loglevel", "warning"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for port in self.ports:
            self._wait(lambda p=port: self.node(p).ping(), timeout_s, f"redis-server on {port} did not start")
        cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                        "--cluster-replicas", str(self.replicas_each), "--cluster-yes"],
                       check=True, capture_output=True, timeout=timeout_s)
        self._wait(self._healthy, timeout_s, "the cluster did not reach cluster_state:ok")
        # A replica that never finished its first sync is not promoted: wait for every link.
        self._wait(self._synced, timeout_s, "the replicas did not finish their first sync")

    def _synced(self) -> bool:
        roles = [self.node(p).info("replication") for p in self.ports]
        return all(r["role"] == "master" or r.get("master_link_status") == "up" for r in roles)

    def _healthy(self) -> bool:
        live = [p for p, proc in self.procs.items() if proc.poll() is None]
        infos = [self.node(p).cluster("info") for p in live]
        return all(i["cluster_state"] == "ok" and int(i["cluster_slots_ok"]) == 16384 for i in infos)

    @staticmethod
    def _wait(check, timeout_s: float, message: str) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if check():
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(message)
            time.sleep(0.05)

    def master_of(self, key: str) -> int:
        """The port of the master that serves ``key``'s slot now."""
        slot = key_slot(key.encode())
        for start, end, master, *_ in self._slots():
            if start <= slot <= end:
                return int(master[1])
        raise RuntimeError(f"no master serves slot {slot}")

    def _slots(self) -> list:
        for port, proc in self.procs.items():
            if proc.poll() is None:
                return self.node(port).execute_command("CLUSTER SLOTS")
        raise RuntimeError("no node is running")

    def kill_master_of(self, key: str) -> int:
        """SIGKILL the master serving ``key``; its port."""
        port = self.master_of(key)
        self.procs[port].kill()
        self.procs[port].wait(5)
        return port

    def wait_promoted(self, dead_port: int, timeout_s: float = 30.0) -> None:
        """Until a replica of the dead master serves its slots and the cluster is ok again."""
        def promoted() -> bool:
            masters = {int(m[1]) for _, _, m, *_ in self._slots()}
            return dead_port not in masters and self._healthy()
        self._wait(promoted, timeout_s, f"no replica took over from the master on {dead_port}")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            end_process(proc, 5)
        self._dir.cleanup()

    def __enter__(self) -> RedisClusterServers:
        try:
            self.start()
        except BaseException:  # no process left behind by a cluster that did not come up
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
