"""The HTTP reward endpoint under hostile connections: idle floods, short bodies, hang-ups.

Everything is real: ``grm serve`` in a subprocess whose open-file limit is lowered to
1,024 (the common default) for the flood, and in-process endpoints with small timeouts
over real loopback sockets for the rest. The request/response format itself is covered
by tests/policy/test_openrlhf_endpoint.py.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import socket
import struct
import time

import pytest
from service_helpers import FAST, QUERY, RESPONSES

from services.client import RetryPolicy, RewardClient
from services.http_gate import REFUSE_WAIT_S, HTTPLimits
from services.http_reward import LINGER_S, RewardHTTPServer
from services.testing.serve_process import ServeProcess

FILE_LIMIT = 1024
IDLE_CONNECTIONS = 1024  # as many as the server may open files, well past the probe's 1,012
GOOD_BODY = json.dumps({"query": [QUERY + RESPONSES[0]], "prompts": [QUERY], "labels": [""]}).encode()


def http_post(port: int, body: bytes, content_length: int | None = None) -> bytes:
    length = len(body) if content_length is None else content_length
    return (f"POST /get_reward HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode() + body


def read_reply(sock: socket.socket, timeout_s: float) -> tuple[int, bytes]:
    """The status and the whole reply, read until the server closes the connection."""
    sock.settimeout(timeout_s)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    if not data:  # a server at its connection cap may close a new connection without a word
        raise ConnectionAbortedError("the server closed the connection without a reply")
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def post_status(port: int) -> int | None:
    """The status of one good request; None when the connection was reset (a full server)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(http_post(port, GOOD_BODY))
            return read_reply(sock, 30)[0]
        except ConnectionError:  # reset (or the send cut short) by a server at its cap
            return None


def wait_until(check, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.05)


@pytest.fixture
def endpoint(server):
    """An endpoint with short timeouts and a cap of 4 connections, on the shared gRPC server."""
    limits = HTTPLimits(header_timeout_s=1.0, body_timeout_s=1.0, max_connections=4)
    http = RewardHTTPServer(server.address, limits=limits, k=2, max_new_tokens=16, seed=0).start()
    yield http
    http.stop()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def accept_queue(port: int) -> int:
    """Connections the kernel has completed but the server on ``port`` has not accepted yet."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if len(fields) < 5:  # the table changes while it is read: a torn line
                continue
            if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port:  # 0A: LISTEN
                return int(fields[4].split(":")[1], 16)
    raise AssertionError(f"nothing listens on port {port}")


def flood(port: int, n: int, batch: int = 4) -> list[socket.socket]:
    """Up to ``n`` connections that send nothing, each one accepted by the server.

    Opened a few at a time, each batch once the server has accepted the last: connections
    beyond a full listen queue would hang half-open and never reach the server. Stops
    early when the server stops accepting (what running out of file descriptors does).
    """
    socks: list[socket.socket] = []
    while len(socks) < n:
        socks += [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(min(batch, n - len(socks)))]
        deadline = time.monotonic() + 5
        while accept_queue(port) and time.monotonic() < deadline:
            time.sleep(0.002)
        if accept_queue(port):
            break
    return socks


@pytest.mark.slow
def test_grpc_serves_while_a_thousand_idle_http_connections_are_open(tiny_model_path):
    """The outside probe's reproduction: a file limit of 1,024 and more idle HTTP clients than that."""
    proc = ServeProcess(tiny_model_path, "--http-port", "0")
    idle: list[socket.socket] = []
    try:
        http_url = proc.wait_for_line("OpenRLHF reward endpoint on ", 60).split(" on ", 1)[1]
        proc.wait_for_line("ready: ", 120)
        resource.prlimit(proc.proc.pid, resource.RLIMIT_NOFILE, (FILE_LIMIT, FILE_LIMIT))
        http_port = int(http_url.rsplit(":", 1)[1].split("/", 1)[0])
        idle = flood(http_port, IDLE_CONNECTIONS)
        held = open_fds(proc.proc.pid)
        with RewardClient(proc.address, timeout_s=20, retry=RetryPolicy(max_attempts=1)) as client:
            reply = client.score(QUERY, RESPONSES, **FAST)  # a new channel, the idle clients still connected
        assert len(reply.result.rewards) == len(RESPONSES)
        assert len(idle) == IDLE_CONNECTIONS, f"the server stopped accepting after {len(idle)} connections"
        assert held < FILE_LIMIT // 2, f"the HTTP side holds {held} of {FILE_LIMIT} file descriptors"
        wait_until(lambda: post_status(http_port) == 200, 30, "HTTP answers again once the idle ones time out")
    finally:
        for sock in idle:
            sock.close()
        assert proc.stop() == 0, proc.output()
    assert "Traceback" not in proc.output(), proc.output()


def test_body_shorter_than_its_content_length_gets_408_and_the_connection_is_freed(endpoint):
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as sock:
        sock.sendall(http_post(endpoint.port, GOOD_BODY[:10], content_length=len(GOOD_BODY)))
        started = time.monotonic()
        status, body = read_reply(sock, 10)
        waited = time.monotonic() - started
    assert status == 408 and json.loads(body)["error"].startswith("body: "), body
    assert waited < endpoint.limits.body_timeout_s + LINGER_S + 1
    wait_until(lambda: endpoint.open_connections == 0, 5, "the connection is released")


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(endpoint):
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as sock:
        wait_until(lambda: endpoint.open_connections == 1, 5, "the connection is accepted")
        started = time.monotonic()
        assert closed_by_server(sock, endpoint.limits.header_timeout_s + 5)
        assert time.monotonic() - started < endpoint.limits.header_timeout_s + 2
    assert endpoint.expired == 1
    wait_until(lambda: endpoint.open_connections == 0, 5, "the connection is released")


def closed_by_server(sock: socket.socket, timeout_s: float) -> bool:
    sock.settimeout(timeout_s)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:  # aborted: closed too, seen as a reset
        return True


def test_connections_past_the_cap_get_503_then_resets_and_requests_go_on_after(endpoint):
    cap = endpoint.limits.max_connections  # a quarter of it more may wait for a 503: here 1
    idle = [socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) for _ in range(cap)]
    try:
        wait_until(lambda: endpoint.open_connections == cap, 5, f"{cap} connections are accepted")
        with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as sock:
            sock.sendall(http_post(endpoint.port, GOOD_BODY))
            status, body = read_reply(sock, 5)
        assert status == 503 and f"at most {cap} open" in json.loads(body)["error"], body
        waiting = socket.create_connection(("127.0.0.1", endpoint.port), timeout=10)
        wait_until(lambda: endpoint.turned_away == 1, 5, "one connection waits for its 503")
        with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as flood:
            assert closed_by_server(flood, 2)  # past the cap and its 503 allowance: reset at once
        assert closed_by_server(waiting, REFUSE_WAIT_S + 2)  # no headers in time
        waiting.close()
        assert endpoint.refused == 2
    finally:
        for sock in idle:
            sock.close()
    wait_until(lambda: endpoint.open_connections == 0, 5, "the idle connections are released")
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as sock:
        sock.sendall(http_post(endpoint.port, GOOD_BODY))
        status, body = read_reply(sock, 60)
    assert status == 200 and len(json.loads(body)["rewards"]) == 1, body


def test_a_client_leaving_early_is_counted_quietly(endpoint, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    leaving = 3
    for _ in range(leaving):
        sock = socket.create_connection(("127.0.0.1", endpoint.port), timeout=10)
        sock.sendall(http_post(endpoint.port, GOOD_BODY))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset, before the answer is written
    wait_until(lambda: endpoint.hangups == leaving, 60, f"{leaving} early hang-ups are counted")
    ours = [r for r in caplog.records if r.name == "services.http_reward"]
    assert len(ours) == leaving and all(r.levelno == logging.DEBUG and "left" in r.getMessage() for r in ours)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info], caplog.text
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("field, value", [("max_connections", 0), ("header_timeout_s", 0.0),
                                          ("body_timeout_s", float("inf")), ("workers", 0)])
def test_limits_are_checked(field, value):
    with pytest.raises(ValueError, match=f"HTTPLimits.{field} .*{value}"):
        HTTPLimits(**{field: value})


def test_expect_100_continue_is_answered_before_the_body(endpoint):
    """What curl sends before a large body; the body follows the interim answer."""
    head, _, body = http_post(endpoint.port, GOOD_BODY).partition(b"\r\n\r\n")
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as sock:
        sock.sendall(head + b"\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(body)
        status, reply = read_reply(sock, 60)
    assert status == 200 and len(json.loads(reply)["rewards"]) == 1, reply
