"""``grm serve`` as a subprocess on a free port, for tests and benchmarks that need a server
in its own process (signals, exit codes, the command line's output).

    server = ServeProcess(model_path, "--metrics-port", "-1")
    server.address                       # 127.0.0.1:PORT, read from its "serving on" line
    server.wait_for_line("ready:", 120)  # the first stdout line starting so
    server.stop()                        # SIGTERM, then its exit code
"""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
import time


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
