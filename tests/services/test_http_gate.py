"""The HTTP port's door (services/http_gate.py) against what the outside probe did to it:
bare TCP connections on the TLS port, one client holding every slot, a process out of file
descriptors, an oversized Authorization header, a grace that ends before an answer, and
HTTP clients sharing one admission budget."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from grm.judge import GenerativeRewardModel
from grm.testing import NoisyRuleEngine
from pki_helpers import make_pki
from service_helpers import CONFIG, QUERY, RESPONSES
from services.admission import AdmissionConfig
from services.http_reward import HTTPLimits, RewardHTTPServer
from services.inspector import Inspector
from services.security import TLSFiles
from services.server import BackgroundServer

BODY = json.dumps({"query": [QUERY + RESPONSES[0]], "prompts": [QUERY], "labels": [""]}).encode()


@pytest.fixture(scope="module")
def tls_context(tmp_path_factory) -> ssl.SSLContext:
    d = make_pki(tmp_path_factory.mktemp("pki"))
    return TLSFiles(str(d / "server.pem"), str(d / "server.key")).ssl_context()


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


def closed(sock: socket.socket, timeout_s: float) -> bool:
    sock.settimeout(timeout_s)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def get(port: int, path: str, source: str = "127.0.0.1") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def test_bare_tcp_on_the_tls_port_meets_the_cap_and_the_header_deadline(tls_context):
    limits = HTTPLimits(max_connections=8, header_timeout_s=1.0)
    http_server = RewardHTTPServer(None, inspector=Inspector(), ssl_context=tls_context, limits=limits).start()
    bare = [connect(http_server.port) for _ in range(30)]  # no TLS handshake, nothing sent
    try:
        time.sleep(0.5)
        assert http_server.open_connections == 8
        assert sum(closed(s, 0.05) for s in bare) >= 30 - 8 - 2  # past the cap (and its 503 allowance): reset
        start = time.monotonic()
        assert all(closed(s, 10) for s in bare)  # no handshake within the header deadline: closed
        assert time.monotonic() - start < 5  # the header deadline (1 s), not the TLS default of 60 s
        assert http_server.open_connections == 0 and http_server.expired >= 8
    finally:
        for s in bare:
            s.close()
        http_server.stop()


def test_one_client_cannot_hold_every_slot():
    limits = HTTPLimits(max_connections=16, max_connections_per_peer=4, header_timeout_s=30.0)
    http_server = RewardHTTPServer(None, inspector=Inspector(), limits=limits).start()
    flood = [connect(http_server.port, "127.0.0.1") for _ in range(24)]  # partial requests, held open
    try:
        for s in flood:
            s.sendall(b"GET /inspect HTTP/1.1\r\n")
        time.sleep(0.5)
        assert http_server.open_connections <= 4
        assert [get(http_server.port, "/inspect", "127.0.0.2") for _ in range(5)] == [200] * 5
    finally:
        for s in flood:
            s.close()
        http_server.stop()


FILL_FDS = """
import os, resource, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
from services.http_reward import RewardHTTPServer
from services.inspector import Inspector
server = RewardHTTPServer(None, inspector=Inspector()).start()
held = []
try:
    while True:
        held.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
print(server.port, flush=True)
time.sleep(float(sys.argv[1]))
"""


def test_running_out_of_file_descriptors_is_logged_once_not_per_retry():
    proc = subprocess.Popen([sys.executable, "-c", FILL_FDS, "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        port = int(proc.stdout.readline())
        waiting = [connect(port) for _ in range(40)]  # each waits in the listen queue; accept() fails
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    for s in waiting:
        s.close()
    assert 1 <= err.count("out of system resource") <= 2, err[-3000:]
    assert len(err.splitlines()) < 20, err[-3000:]


def test_an_oversized_authorization_header_is_not_logged(caplog):
    http_server = RewardHTTPServer(None, inspector=Inspector()).start()
    secret = "Bearer sk-very-secret-token-prefix-"
    try:
        with caplog.at_level(logging.DEBUG), connect(http_server.port) as sock:
            sock.sendall(f"GET /inspect HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {secret}{'x' * 20000}"
                         "\r\n\r\n".encode())
            assert sock.recv(100).startswith(b"HTTP/1.0 400")
            time.sleep(0.3)
    finally:
        http_server.stop()
    assert "very-secret" not in caplog.text
    assert caplog.records and not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


class StallingEngine(NoisyRuleEngine):
    """Takes ``stall_s`` per engine pass: an answer that outlasts a short grace."""

    def __init__(self, stall_s: float):
        super().__init__()
        self.stall_s = stall_s

    def generate(self, requests):
        time.sleep(self.stall_s)
        return super().generate(requests)


def post(port: int, source: str = "127.0.0.1") -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60, source_address=(source, 0))
    try:
        conn.request("POST", "/get_reward", BODY, {"Content-Type": "application/json"})
        reply = conn.getresponse()
        return reply.status, json.loads(reply.read())
    finally:
        conn.close()


def test_a_request_cut_by_the_end_of_the_grace_gets_503():
    bg = BackgroundServer(GenerativeRewardModel(StallingEngine(10.0)), "127.0.0.1:0",
                          replace(CONFIG, metrics_port=None)).start()
    http_server = RewardHTTPServer(bg.address, limits=HTTPLimits(grace_s=1.0)).start()
    outcome: list = []
    caller = threading.Thread(target=lambda: outcome.append(post(http_server.port)))
    try:
        caller.start()
        deadline = time.monotonic() + 10
        while not http_server._answering and time.monotonic() < deadline:
            time.sleep(0.02)
        started = time.monotonic()
        http_server.stop()
        caller.join(10)
        assert time.monotonic() - started < 6  # the grace (1 s), not the engine's 10 s
    finally:
        bg.stop(grace=0)
    [(status, body)] = outcome
    assert status == 503 and "grace" in body["error"], body


def test_http_clients_without_tokens_have_a_budget_each(judge):
    config = replace(CONFIG, metrics_port=None, http_port=0, admission=AdmissionConfig(calls_per_s=0.01, burst=1))
    bg = BackgroundServer(judge, "127.0.0.1:0", config).start()
    try:
        port = bg.server.http.port
        assert post(port, "127.0.0.1")[0] == 200
        status, body = post(port, "127.0.0.1")
        assert status == 429 and "http:127.0.0.1" in body["error"], body  # this client's budget is spent
        assert post(port, "127.0.0.2")[0] == 200  # another client's is not
    finally:
        bg.stop()
