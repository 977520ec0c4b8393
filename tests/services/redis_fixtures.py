"""A real ``redis-server`` for tests: a free port, no persistence, stopped at the end.

Use the ``redis_server`` fixture (import it into a test module) or the class directly::

    from redis_fixtures import RedisServer, free_port, redis_server  # noqa: F401

    def test_something(redis_server):
        url = redis_server.url          # redis://127.0.0.1:PORT/0
        redis_server.kill()             # SIGKILL, as a crash would
        redis_server.start()            # back on the same port, empty

Never assumes port 6379. Fails (does not skip) when ``redis-server`` is missing: CI
installs it (see .ci/run).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time

import pytest
import redis


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
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


@pytest.fixture
def redis_server():
    """A fresh, empty ``redis-server`` for one test."""
    with RedisServer() as server:
        yield server
