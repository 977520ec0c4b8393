"""Graceful shutdown of ``grm serve``: SIGTERM while calls are in flight.

The calls in flight complete with results, new calls are refused with UNAVAILABLE
(on the existing channel and on a new one), health stops reporting SERVING, and the
process exits 0.
"""

from __future__ import annotations

import signal
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.client import RetryPolicy, RewardClient
from services.testing.serve_process import ServeProcess

pytestmark = pytest.mark.slow
NO_RETRY = RetryPolicy(max_attempts=1)
HEAVY = dict(k=4, max_new_tokens=160, cache_policy="bypass")  # 1-2 s of engine work after the refusals on 2 CPU cores


def _serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="grm.v1.RewardService"), timeout=2).status
        except grpc.RpcError:
            return False
    return status == health_pb2.HealthCheckResponse.SERVING


def test_sigterm_drains_in_flight_calls_refuses_new_ones_and_exits_zero(tiny_model_path):
    proc = ServeProcess(tiny_model_path, "--metrics-port", "-1", "--grace", "60")
    finished: dict[int, float] = {}
    errors: list[BaseException] = []
    with RewardClient(proc.address, timeout_s=120, retry=NO_RETRY) as client:
        client.wait_ready(timeout_s=120)
        client.score("warm up", ["a"], k=1, max_new_tokens=4)

        def call(i: int) -> None:
            try:
                reply = client.score(f"Question {i}?", ["yes", "no"], **HEAVY)
                assert len(reply.result.rewards) == 2
                finished[i] = time.monotonic()
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        time.sleep(0.5)  # the calls reach the server and their engine pass starts
        sigterm_at = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _serving(proc.address):
            assert time.monotonic() < deadline, "still SERVING 10 s after SIGTERM"
            time.sleep(0.02)

        with pytest.raises(grpc.RpcError) as same_channel:
            client.score("new call", ["a"], k=1, max_new_tokens=4)
        with RewardClient(proc.address, timeout_s=10, retry=NO_RETRY) as fresh:
            with pytest.raises(grpc.RpcError) as new_channel:
                fresh.score("new call", ["a"], k=1, max_new_tokens=4)
        refused_at = time.monotonic()
        for t in threads:
            t.join(120)

    assert same_channel.value.code() == grpc.StatusCode.UNAVAILABLE, same_channel.value.details()
    assert new_channel.value.code() == grpc.StatusCode.UNAVAILABLE, new_channel.value.details()
    assert not errors, errors
    assert len(finished) == 16
    assert max(finished.values()) > refused_at > sigterm_at  # in flight across the shutdown, and completed
    assert proc.wait(60) == 0, proc.output()
    assert "shutting down" in proc.output() and proc.lines[-1] == "stopped"
