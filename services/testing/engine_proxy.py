"""A real HTTP server in front of a real engine server (``llama-server``) that can be told to
misbehave as a buggy or stuck engine would, which a healthy llama.cpp cannot be made to do:

- ``stall(n, every)``: the next ``n`` completion calls (all of them when None; with ``every``,
  one call in ``every``) get their headers and half a body, then nothing: the connection
  stays open until the client closes it (counted in ``closed_by_client``) or ``release()``;
- ``answer(fn)``: completion calls get ``fn(request_body)`` as their JSON reply (malformed
  replies); ``answer(None)`` forwards again.

Everything else (``/health``, ``/v1/models``, ``/tokenize``, ``/props``) is forwarded, so
the remote engine's start-up check runs against the real server behind it::

    proxy = EngineProxy(llama.url).start()
    engine = RemoteEngine.connect(RemoteConfig((proxy.url,)), tokenizer)
    proxy.stall(1)
    ...
    proxy.stop()
"""

from __future__ import annotations

import http.client
import json
import select
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import urlsplit


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # a client that hung up is no news here
        pass


class EngineProxy:
    def __init__(self, target_url: str):
        self.target = urlsplit(target_url)
        self._stalls: int | None = 0  # completion calls still to stall; None: all of them
        self._every, self._calls = 1, 0  # stall one completion call in ``_every``
        self._answer: Callable[[dict], object] | None = None
        self._released = threading.Event()
        self._lock = threading.Lock()
        self.stalled = 0  # completion calls held so far
        self.closed_by_client = 0  # held calls whose client hung up
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "EngineProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()

    def stall(self, n: int | None = None, every: int = 1) -> None:
        self._released.clear()
        with self._lock:
            self._stalls, self._every = n, every

    def release(self) -> None:
        """Stop stalling; held calls end (their connection closes mid-body)."""
        with self._lock:
            self._stalls = 0
        self._released.set()

    def answer(self, fn: Callable[[dict], object] | None) -> None:
        self._answer = fn

    def _take_stall(self) -> bool:
        with self._lock:
            self._calls += 1
            if (self._stalls is None or self._stalls > 0) and self._calls % self._every == 0:
                if self._stalls:
                    self._stalls -= 1
                self.stalled += 1
                return True
            return False

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                self._forward(None)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/v1/completions":
                    if proxy._take_stall():
                        return self._hold()
                    if proxy._answer is not None:
                        return self._send(200, json.dumps(proxy._answer(json.loads(body))).encode())
                self._forward(body)

            def _forward(self, body: bytes | None) -> None:
                conn = http.client.HTTPConnection(proxy.target.hostname, proxy.target.port, timeout=300)
                try:
                    conn.request(self.command, self.path, body=body,
                                 headers={"Content-Type": self.headers.get("Content-Type", "application/json")})
                    reply = conn.getresponse()
                    self._send(reply.status, reply.read())
                except OSError:
                    self._send(502, b'{"error": "the engine behind the proxy did not answer"}')
                finally:
                    conn.close()

            def _send(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _hold(self) -> None:
                """Headers and half a body, then silence until the client leaves or the release."""
                half = b'{"choices": [{"index": 0, "text": "the answer is'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(2 * len(half)))
                self.end_headers()
                self.wfile.write(half)
                self.wfile.flush()
                end = time.monotonic() + 300
                while not proxy._released.is_set() and time.monotonic() < end:
                    readable, _, _ = select.select([self.connection], [], [], 0.05)
                    if readable and not self.connection.recv(1, 0):  # the client hung up
                        with proxy._lock:
                            proxy.closed_by_client += 1
                        break
                self.close_connection = True

        return Handler
