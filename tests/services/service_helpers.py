"""Shared settings for the service tests: small limits, fast sampling, a good request.

Kept small so the whole suite runs in a few minutes on two CPU cores: k=2 and 16 new
tokens on a random-weight tiny model (whose judgments are invalid, which exercises the
"unscored" paths for real).
"""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
import time

from grm.types import SamplingOptions
from services.scheduler import SchedulerConfig
from services.server import ServerConfig
from services.validation import Limits

LIMITS = Limits(max_responses=4, max_k=8, max_new_tokens=64, max_batch_items=8, max_text_chars=50_000,
                max_messages=8, max_message_bytes=1 << 20)
DEFAULTS = SamplingOptions(k=2, max_new_tokens=16)
CONFIG = ServerConfig(limits=LIMITS, defaults=DEFAULTS, scheduler=SchedulerConfig(max_wait_ms=5),
                      max_concurrent_rpcs=256, grace_s=10, metrics_port=0)
FAST = dict(k=2, max_new_tokens=16, seed=0)  # client options for a cheap real scoring
QUERY = "Name a prime number."
RESPONSES = ["7", "9"]


class ServeProcess:
    """``grm serve --port 0`` as a subprocess; reads its stdout for the bound address."""

    def __init__(self, model_path, *extra: str, timeout_s: float = 120.0):
        cmd = [sys.executable, "-m", "grm_cli", "serve", "--model", str(model_path), "--port", "0",
               "--threads", "2", "--default-k", "2", "--default-max-new-tokens", "16", *extra]
        # stdout carries the parseable lines; stderr (progress, logs) is kept apart so the
        # two streams can never interleave inside one line.
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.errors: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        self._pumps = [threading.Thread(target=self._pump, daemon=True),  # keep the pipes drained
                       threading.Thread(target=self._pump_stderr, daemon=True)]
        for t in self._pumps:
            t.start()
        self.address = self.wait_for_line("serving on ", timeout_s).split("serving on ", 1)[1].split()[0]

    def _pump_stderr(self) -> None:
        for line in self.proc.stderr:
            self.errors.append(line.rstrip("\n"))

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self._queue.put(line)
        self._queue.put(None)

    def wait_for_line(self, prefix: str, timeout_s: float) -> str:
        """The first output line starting with ``prefix`` (ignoring any log noise)."""
        deadline = time.monotonic() + timeout_s
        for line in list(self.lines):
            if line.startswith(prefix):
                return line
        while True:
            try:
                line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"no line {prefix!r} within {timeout_s} s; output so far:\n"
                                   + self.output()) from None
            if line is None:
                raise RuntimeError(f"grm serve exited ({self.proc.wait()}) before {prefix!r}:\n"
                                   + self.output())
            if line.startswith(prefix):
                return line.rstrip("\n")

    def output(self) -> str:
        return "\n".join(self.lines) + "\n--- stderr ---\n" + "\n".join(self.errors[-50:])

    def wait(self, timeout_s: float = 60.0) -> int:
        """The exit code, once the process has ended and all its output has been read."""
        code = self.proc.wait(timeout_s)
        for t in self._pumps:
            t.join(10)
        return code

    def stop(self, timeout_s: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout_s)
