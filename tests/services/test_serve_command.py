"""``grm serve`` and ``grm inspect`` as an operator runs them: SIGHUP without a token file,
the bind rule on every served port, IPv6 hosts, and a bad token file named at start."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys

import pytest

from service_helpers import FAST, QUERY, RESPONSES
from services.client import RetryPolicy, RewardClient
from services.testing.serve_process import ServeProcess

ONCE = RetryPolicy(max_attempts=1)


def grm(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "grm_cli", *args], capture_output=True, text=True, timeout=timeout_s)


def test_sighup_without_a_token_file_leaves_the_server_serving(tiny_model_path):
    proc = ServeProcess(tiny_model_path, "--metrics-port", "-1")
    try:
        proc.wait_for_line("ready:", 120)
        proc.proc.send_signal(signal.SIGHUP)
        proc.wait_for_line("SIGHUP: nothing to reload", 30)
        with RewardClient(proc.address, retry=ONCE, timeout_s=60) as client:
            assert len(client.score(QUERY, RESPONSES, **FAST).result.rewards) == 2
    finally:
        assert proc.stop() == 0, proc.output()


@pytest.mark.parametrize("args, flag", [
    (("inspect", "--host", "0.0.0.0", "--port", "0"), "--host 0.0.0.0"),
    (("serve", "--port", "0", "--metrics-host", "0.0.0.0"), "--metrics-host 0.0.0.0"),
], ids=["grm inspect --host", "grm serve --metrics-host"])
def test_every_served_port_meets_the_bind_rule(tiny_model_path, args, flag):
    run = grm(*args, "--model", str(tiny_model_path)) if args[0] == "serve" else grm(*args)
    assert run.returncode != 0
    assert f"{flag} serves other machines" in run.stderr and "--insecure" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("content, message", [
    ("trainer short\n", "tokens.txt:1: the token of 'trainer' is 5 characters"),
    (None, "cannot read"),
], ids=["a bad line", "no such file"])
def test_a_bad_token_file_is_named_at_start(tiny_model_path, tmp_path, content, message):
    tokens = tmp_path / "tokens.txt"
    if content is not None:
        tokens.write_text(content)
    run = grm("serve", "--model", str(tiny_model_path), "--port", "0", "--token-file", str(tokens))
    assert run.returncode != 0
    assert run.stderr.startswith("grm serve: ") and message in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_an_ipv6_loopback_host_serves_grpc_and_http(tiny_model_path, host):
    proc = ServeProcess(tiny_model_path, "--host", host, "--http-port", "0", "--metrics-port", "-1")
    try:
        assert proc.address.startswith("[::1]:"), proc.output()
        url = proc.wait_for_line("OpenRLHF reward endpoint on ", 60).split(" on ", 1)[1]
        assert url.startswith("http://[::1]:"), url
        proc.wait_for_line("ready:", 120)
        with RewardClient(proc.address, retry=ONCE, timeout_s=60) as client:
            assert len(client.score(QUERY, RESPONSES, **FAST).result.rewards) == 2
        conn = http.client.HTTPConnection("::1", int(url.rsplit(":", 1)[1].split("/")[0]), timeout=60)
        body = json.dumps({"query": [QUERY + RESPONSES[0]], "prompts": [QUERY], "labels": [""]})
        conn.request("POST", "/get_reward", body, {"Content-Type": "application/json"})
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        assert proc.stop() == 0, proc.output()
    assert "Traceback" not in proc.output()
