"""The hostile parts ``benchmarks/soak.py`` can add around its server: a remote engine whose
URL stalls calls halfway, TLS with a connection flood on the HTTP port, a file limit, and
the server's own counts (file descriptors, log lines) to report.

    setup = Setup(log="/tmp/server.log")
    proxy = stalled_engine(setup, stack, every=10)    # setup.flags gains --engine-url A,B
    tls_files(setup, Path(tmp), fd_limit=1024)        # setup.flags gains TLS and --http-port 0
    flood = ConnectionFlood(setup.http_port, 2000).start(); ...; flood.stop()
"""

from __future__ import annotations

import contextlib
import os
import resource
import selectors
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.client import ClientTLS


@dataclass
class Setup:
    log: str  # the server's stderr
    flags: list[str] = field(default_factory=list)  # added to grm serve
    tls: ClientTLS | None = None
    fd_limit: int = 0  # RLIMIT_NOFILE of the server; 0: inherited
    http_port: int | None = None  # read from the server's stdout

    def limit_files(self) -> None:
        """Run in the child before exec: the file limit a small deployment has."""
        if self.fd_limit:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.fd_limit, self.fd_limit))

    def log_lines(self) -> int:
        with open(self.log, "rb") as f:
            return sum(1 for _ in f)

    def log_bytes(self) -> int:
        return os.path.getsize(self.log)


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:  # the process has ended
        return 0


def stalled_engine(setup: Setup, stack: contextlib.ExitStack, every: int):
    """A real llama-server on the bundled GRM behind two proxies; the first stalls one call in
    ``every`` halfway. Returns that proxy (its counts go in the report)."""
    from grm.default_model import PACKAGED
    from services.testing.engine_proxy import EngineProxy
    from services.testing.llama_server import LlamaServer, gguf_of, llama_cpp_dir

    llama = LlamaServer(gguf_of(PACKAGED, llama_cpp_dir() / "src" / "convert_hf_to_gguf.py"), parallel=4).start()
    stack.callback(llama.stop)
    proxies = [EngineProxy(llama.url).start() for _ in range(2)]
    for proxy in proxies:
        stack.callback(proxy.stop)
    proxies[0].stall(every=every)
    # Small passes: the server batches across them itself, and a pass answers its callers only
    # when its last call ends, so one stalled call would hold a large pass's every caller.
    setup.flags += ["--engine-url", ",".join(p.url for p in proxies), "--engine-read-timeout", "5",
                    "--max-batch-sequences", "4"]
    return proxies[0]


def tls_files(setup: Setup, folder: Path, fd_limit: int) -> None:
    """A self-signed certificate for 127.0.0.1; the server serves TLS on gRPC and HTTP."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    setup.flags += ["--tls-cert", str(cert), "--tls-key", str(key), "--http-port", "0"]
    setup.tls, setup.fd_limit = ClientTLS(root_ca=str(cert)), fd_limit


class ConnectionFlood:
    """``n`` TCP connections to 127.0.0.1:``port`` that send nothing, held open and reopened as
    the server closes them (what a crowd of stalled or hostile clients looks like)."""

    def __init__(self, port: int, n: int):
        self.port, self.n = port, n
        self.opened = self.closed_by_server = self.refused = 0
        self.held_max = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # this process holds them all
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, n + 1024)), hard))

    def start(self) -> "ConnectionFlood":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def describe(self) -> str:
        return (f"{self.opened} connections opened ({self.held_max} held at once at most), "
                f"{self.closed_by_server} closed by the server, {self.refused} connects failed")

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        held: set[socket.socket] = set()
        while not self._stop.is_set():
            while len(held) < self.n and not self._stop.is_set():
                s = socket.socket()
                s.settimeout(1.0)
                try:
                    s.connect(("127.0.0.1", self.port))
                except OSError:
                    s.close()
                    self.refused += 1
                    time.sleep(0.05)
                    break
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ)
                held.add(s)
                self.opened += 1
            self.held_max = max(self.held_max, len(held))
            for key, _ in sel.select(timeout=0.2):  # readable: the server sent an alert or closed
                s = key.fileobj
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(s)
                    s.close()
                    held.discard(s)
                    self.closed_by_server += 1
        for s in held:
            s.close()
        sel.close()
