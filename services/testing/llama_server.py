"""Real llama.cpp servers (``llama-server``) on the bundled GRM, for the remote engine tests
and the engine benchmark.

``llama_cpp_dir()`` runs ``scripts/build_llama_server.sh`` (cached by source hash under
``$GRM_HOME/llama-cpp``; CI builds it in ``.ci/run`` before the tests). ``gguf_of(folder)``
converts a checkpoint with ``grm export-gguf`` once (cached by the checkpoint's revision).
``LlamaServer`` is one server process on a free port; it can be killed (SIGKILL), frozen
(SIGSTOP, so it hangs with its socket open) and thawed, and restarted on the same port::

    server = LlamaServer(gguf_of(PACKAGED), parallel=4).start()
    server.url                 # http://127.0.0.1:PORT
    server.freeze(); server.thaw(); server.kill(); server.start()
    server.stop()

Fails (never skips) when the build or the conversion fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from grm.default_model import grm_home
from grm.revision import checkpoint_revision
from services.testing.redis_servers import end_process, free_port

ROOT = Path(__file__).resolve().parents[2]


def llama_cpp_dir() -> Path:
    """The cached build folder (``bin/llama-server``, ``src/convert_hf_to_gguf.py``), built when missing."""
    done = subprocess.run(["bash", str(ROOT / "scripts" / "build_llama_server.sh")], stdout=subprocess.PIPE,
                          text=True, check=True)
    return Path(done.stdout.strip().splitlines()[-1])


def gguf_of(checkpoint: Path, converter: Path | None = None) -> Path:
    """``checkpoint`` as an f32 GGUF made by ``grm export-gguf``, cached by its revision."""
    out = grm_home() / "gguf" / f"{checkpoint_revision(checkpoint)[:16]}-f32.gguf"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".tmp{os.getpid()}")
        cmd = [sys.executable, "-m", "grm_cli", "export-gguf", "--model", str(checkpoint), "--output", str(tmp)]
        if converter is not None:
            cmd += ["--converter", str(converter)]
        subprocess.run(cmd, check=True, cwd=ROOT, stderr=subprocess.DEVNULL)
        tmp.replace(out)
    return out


class LlamaServer:
    """One ``llama-server`` on 127.0.0.1; ``parallel`` slots of ``slot_context`` tokens each."""

    def __init__(self, gguf: Path, *, parallel: int = 4, slot_context: int = 2048, threads: int = 1,
                 alias: str = "grm", port: int | None = None, binary: Path | None = None):
        self.gguf, self.parallel, self.slot_context = gguf, parallel, slot_context
        self.threads, self.alias = threads, alias
        self.port = port or free_port()
        self.binary = binary or llama_cpp_dir() / "bin" / "llama-server"
        self.proc: subprocess.Popen | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [str(self.binary), "-m", str(self.gguf), "--host", "127.0.0.1", "--port", str(self.port),
                "-np", str(self.parallel), "-c", str(self.parallel * self.slot_context), "-t", str(self.threads),
                "--alias", self.alias, "--no-webui"]

    def start(self, timeout_s: float = 60.0) -> "LlamaServer":
        env = {**os.environ, "LD_LIBRARY_PATH": str(self.binary.parent)}  # its shared libraries sit beside it
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.proc.returncode}; log: {self.log()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"llama-server on {self.url} not healthy within {timeout_s} s; log: {self.log()[-2000:]}")

    def log(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL, as a crash would; the port is free again at once."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen process dies as well
            self.proc.kill()
            self.proc.wait(10)

    def freeze(self) -> None:
        """SIGSTOP: the socket stays open and nothing answers (a hung engine)."""
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen process must run to handle SIGTERM
            end_process(self.proc, 10)
        self.proc = None
