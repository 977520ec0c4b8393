"""TLS, mutual TLS and bearer tokens on both ports, the bind rule, per-caller limits with a
retry hint the client honours. Certificates come from ``pki_helpers`` (the ``openssl`` command).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from prometheus_client import generate_latest

from grm.types import ScoreInput
from pki_helpers import make_pki
from service_helpers import CONFIG, FAST, QUERY, RESPONSES
from services.admission import Admission, AdmissionConfig, Refused
from services.cache import MemoryCache
from services.client import ClientTLS, RetryPolicy, RewardClient
from services.security import TLSFiles, check_bind, parse_tokens
from services.server import BackgroundServer
from services.testing.serve_process import ServeProcess

TOKEN_A, TOKEN_B = "a" * 8 + "-trainer-secret-1", "b" * 8 + "-trainer-secret-2"
ONCE = RetryPolicy(max_attempts=1)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, a server certificate for 127.0.0.1/localhost, a client certificate, two tokens."""
    d = make_pki(tmp_path_factory.mktemp("pki"))
    (d / "tokens.txt").write_text(f"# name token\ntrainer-a {TOKEN_A}\ntrainer-b {TOKEN_B}\n")
    return d


def serve(judge, **config):
    return BackgroundServer(judge, "127.0.0.1:0", replace(CONFIG, **config), cache_factory=MemoryCache).start()


def scored(client: RewardClient) -> bool:
    return len(client.score(QUERY, RESPONSES, cache_policy="bypass", **FAST).result.rewards) == 2


def test_tls_and_mutual_tls(judge, pki):
    server_tls = TLSFiles(str(pki / "server.pem"), str(pki / "server.key"))
    bg = serve(judge, tls=server_tls)
    try:
        with RewardClient(bg.address, retry=ONCE, tls=ClientTLS(str(pki / "ca.pem"))) as client:
            assert scored(client)
        with RewardClient(bg.address, retry=ONCE, timeout_s=5) as plain, pytest.raises(grpc.RpcError) as err:
            plain.info()
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        bg.stop()
    bg = serve(judge, tls=replace(server_tls, client_ca=str(pki / "ca.pem")))
    try:
        with RewardClient(bg.address, retry=ONCE, timeout_s=5, tls=ClientTLS(str(pki / "ca.pem"))) as anonymous:
            with pytest.raises(grpc.RpcError) as err:
                anonymous.info()
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        mutual = ClientTLS(str(pki / "ca.pem"), str(pki / "client.pem"), str(pki / "client.key"))
        with RewardClient(bg.address, retry=ONCE, tls=mutual) as client:
            assert scored(client)
    finally:
        bg.stop()


def test_tokens_on_grpc_health_stays_open(judge, pki):
    bg = serve(judge, token_file=str(pki / "tokens.txt"))
    try:
        for token, code in ((None, grpc.StatusCode.UNAUTHENTICATED), ("not-a-token-at-all-x", grpc.StatusCode.UNAUTHENTICATED)):
            with RewardClient(bg.address, retry=ONCE, token=token) as client, pytest.raises(grpc.RpcError) as err:
                client.info()
            assert err.value.code() is code and "bearer token" in err.value.details()
        with RewardClient(bg.address, retry=ONCE, token=TOKEN_A) as client:
            assert scored(client)
        with grpc.insecure_channel(bg.address) as channel:  # load balancers probe without a token
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert "grm.v1.RewardService" in set(ProtoReflectionDescriptorDatabase(channel).get_services())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        by_caller = bg.metrics.caller_requests  # the token's name, never the token, labels what it did
        assert by_caller.labels("trainer-a", "OK")._value.get() == 1  # the one Score call
        assert by_caller.labels("(no valid token)", "UNAUTHENTICATED")._value.get() == 2
        exported = generate_latest(bg.metrics.registry).decode()
        assert 'caller="trainer-a"' in exported and TOKEN_A not in exported
    finally:
        bg.stop()


def test_the_token_comes_from_the_environment_too(judge, pki, monkeypatch):
    bg = serve(judge, token_file=str(pki / "tokens.txt"))
    try:
        monkeypatch.setenv("GRM_TOKEN", TOKEN_B)
        with RewardClient(bg.address, retry=ONCE) as client:
            assert scored(client)
    finally:
        bg.stop()


def post(url: str, body: dict, token: str | None = None, context=None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60, context=context) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_the_http_port_speaks_tls_and_wants_the_token(judge, pki):
    import ssl

    bg = serve(judge, tls=TLSFiles(str(pki / "server.pem"), str(pki / "server.key")),
               token_file=str(pki / "tokens.txt"), http_port=0)
    try:
        url = f"https://127.0.0.1:{bg.server.http.port}/get_reward"
        context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        body = {"query": [QUERY + RESPONSES[0]], "prompts": [QUERY], "labels": [""]}
        assert post(url, body, context=context)[0] == 401
        assert post(url, body, token="wrong-token-wrong-token", context=context)[0] == 401
        status, reply = post(url, body, token=TOKEN_A, context=context)
        assert status == 200 and len(reply["rewards"]) == 1
    finally:
        bg.stop()


def test_a_revoked_token_stops_working_after_sighup(tiny_model_path, pki, tmp_path):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"trainer-a {TOKEN_A}\ntrainer-b {TOKEN_B}\n")
    proc = ServeProcess(tiny_model_path, "--token-file", str(tokens), "--metrics-port", "-1")
    try:
        proc.wait_for_line("ready:", 120)
        with RewardClient(proc.address, retry=ONCE, token=TOKEN_B) as b:
            assert scored(b)
            tokens.write_text(f"trainer-a {TOKEN_A}\n")
            proc.proc.send_signal(signal.SIGHUP)
            proc.wait_for_line("reloaded 1 tokens", 30)
            with pytest.raises(grpc.RpcError) as err:
                b.info()
            assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
        with RewardClient(proc.address, retry=ONCE, token=TOKEN_A) as a:
            assert scored(a)
    finally:
        assert proc.stop() == 0


def test_binding_beyond_loopback_needs_tls_and_tokens(tiny_model_path):
    run = subprocess.run([sys.executable, "-m", "grm_cli", "serve", "--model", str(tiny_model_path), "--host",
                          "0.0.0.0", "--port", "0"], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "--tls-cert/--tls-key and --token-file" in run.stderr and "--insecure" in run.stderr
    check_bind("127.0.0.1", None, None, False)  # loopback needs nothing
    check_bind("0.0.0.0", None, None, True)  # said out loud


def test_a_per_token_limit_holds_while_another_token_is_served(judge, pki):
    bg = serve(judge, token_file=str(pki / "tokens.txt"), admission=AdmissionConfig(max_calls_per_caller=1))
    slow = dict(k=8, max_new_tokens=64, cache_policy="bypass")
    outcomes: dict[str, object] = {}

    def call(name: str, token: str, seed: int, items: int = 1) -> None:
        with RewardClient(bg.address, retry=ONCE, token=token) as client:
            try:  # a batch of several inputs keeps the first call in progress long enough
                batch = [ScoreInput(f"{QUERY} ({seed}, {i})", RESPONSES) for i in range(items)]
                outcomes[name] = client.score_batch(batch, seed=seed, **slow)
            except grpc.RpcError as e:
                outcomes[name] = e
    try:
        first = threading.Thread(target=call, args=("a1", TOKEN_A, 1, 8))
        first.start()
        time.sleep(0.3)  # a1 is in progress
        call("a2", TOKEN_A, 2)
        call("b", TOKEN_B, 3)
        first.join(60)
    finally:
        bg.stop()
    refused = outcomes["a2"]
    assert isinstance(refused, grpc.RpcError) and refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "trainer-a" in refused.details()
    assert dict(refused.trailing_metadata())["grpc-retry-pushback-ms"] == "250"
    assert bg.metrics.caller_requests.labels("trainer-a", "RESOURCE_EXHAUSTED")._value.get() == 1  # counted by name
    assert not isinstance(outcomes["a1"], grpc.RpcError) and not isinstance(outcomes["b"], grpc.RpcError)


def test_the_client_waits_as_long_as_the_retry_hint_says(judge):
    bg = serve(judge, admission=AdmissionConfig(calls_per_s=1.0, burst=1))
    try:
        with RewardClient(bg.address, retry=RetryPolicy(max_attempts=3)) as client:
            assert scored(client)
            start = time.monotonic()
            assert scored(client)  # refused once (the bucket is empty), then admitted
            waited = time.monotonic() - start
        assert client.waits == 1 and 0.7 < waited < 5, (client.waits, waited)
    finally:
        bg.stop()


def test_token_bucket_and_concurrency_cap_by_hand():
    now = [0.0]
    admission = Admission(AdmissionConfig(max_calls_per_caller=2, calls_per_s=2.0, burst=2), clock=lambda: now[0])
    admission.enter("x")
    admission.enter("x")
    with pytest.raises(Refused, match="2 calls in progress"):
        admission.enter("x")
    admission.leave("x")
    with pytest.raises(Refused, match="rate of 2 calls/s") as err:
        admission.enter("x")  # the bucket is empty: the next token comes in 0.5 s
    assert err.value.retry_after_s == pytest.approx(0.5)
    admission.enter("y")  # another caller has its own budget
    now[0] = 0.5
    admission.enter("x")


def test_token_file_rules():
    assert [n for n, _ in parse_tokens("a 0123456789abcdef\n  # c\n\nb fedcba9876543210")] == ["a", "b"]
    # A '#' inside a token is part of it: the whole token works, its prefix does not.
    [(_, token)] = parse_tokens("a 01234567#89abcdef")
    assert token == b"01234567#89abcdef"
    for text, message in (("a short", "at least 16"), ("a 0123456789abcdef extra", "expected 'NAME TOKEN'"),
                          ("a 0123456789abcdef\nb fedcba9876543210 # x", r"tokens:2: .*comment must be a line"),
                          ("a 0123456789abcdef\na 1123456789abcdef", "repeats"), ("# none", "no token")):
        with pytest.raises(ValueError, match=message):
            parse_tokens(text)


def test_http_refusals_are_429_with_retry_after(judge):
    bg = serve(judge, admission=AdmissionConfig(calls_per_s=0.5, burst=1), http_port=0)
    try:
        url = f"http://127.0.0.1:{bg.server.http.port}/get_reward"
        body = json.dumps({"query": [QUERY + RESPONSES[0]], "prompts": [QUERY], "labels": [""]}).encode()
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as reply:
            assert reply.status == 200
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=60)
        assert err.value.code == 429 and err.value.headers["Retry-After"] == "2"
        assert "RESOURCE_EXHAUSTED" in json.loads(err.value.read())["error"]
    finally:
        bg.stop()


def test_the_adapters_reach_a_tls_service_with_a_token(judge, pki, monkeypatch):
    from policy.adapters import trl_reward, verl_compute_score_batch

    bg = serve(judge, tls=TLSFiles(str(pki / "server.pem"), str(pki / "server.key")),
               token_file=str(pki / "tokens.txt"))
    try:
        reward = trl_reward(bg.address, tls=ClientTLS(str(pki / "ca.pem")), token=TOKEN_A, **FAST)
        assert len(reward(prompts=[QUERY, QUERY], completions=RESPONSES)) == 2
        monkeypatch.setenv("GRM_TLS_CA", str(pki / "ca.pem"))  # verl configures reward functions by YAML
        monkeypatch.setenv("GRM_TOKEN", TOKEN_B)
        out = verl_compute_score_batch(["t", "t"], RESPONSES, ["", ""], [{"question": QUERY}] * 2,
                                       target=bg.address, on_unscored=0.0, **FAST)
        assert len(out) == 2
    finally:
        bg.stop()
