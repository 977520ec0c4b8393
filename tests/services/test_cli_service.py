"""The command line through the service: ``grm score --target``, ``grm info --target``, ``grm demo``."""

from __future__ import annotations

import subprocess
import sys

import pytest

from services.client import RewardClient
from services.testing.serve_process import ServeProcess

pytestmark = pytest.mark.slow


def grm(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "grm_cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def served(tiny_model_path):
    proc = ServeProcess(tiny_model_path, "--metrics-port", "-1")
    with RewardClient(proc.address) as c:
        c.wait_ready(timeout_s=120)
    yield proc
    assert proc.stop() == 0, proc.output()


def test_score_through_the_service_shows_principles_and_critiques(served):
    out = grm("score", "--target", served.address, "--query", "Name a prime.", "--response", "7",
              "--response", "9", "-k", "2", "--max-new-tokens", "8", "--show")
    assert out.returncode == 0, out.stderr
    assert "response 1: reward" in out.stdout and "response 2: reward" in out.stdout
    assert "--- sample 2 (responses shown in order" in out.stdout and "critique:" in out.stdout
    assert f"scoring through {served.address}" in out.stderr


def test_score_through_the_service_reports_bad_input(served):
    out = grm("score", "--target", served.address, "--query", "q", "--response", "a", "-k", "0")
    assert out.returncode == 2 and "INVALID_ARGUMENT: sampling.k must be in 1..32, got 0" in out.stderr


def test_info_through_the_service(served, judge):
    out = grm("info", "--target", served.address)
    assert out.returncode == 0, out.stderr
    assert f"revision:  {judge.revision}" in out.stdout and "cache:     memory (ok)" in out.stdout


def test_demo_serves_scores_and_shuts_down(tiny_model_path):
    out = grm("demo", "--model", str(tiny_model_path), "-k", "2", "--max-new-tokens", "8")
    assert out.returncode == 0, out.stderr
    assert "query: Write one sentence in uppercase" in out.stdout and "--- sample 1" in out.stdout
    assert "second call: from_cache=True" in out.stdout
    assert "step 4/4: shutting down" in out.stderr and out.stderr.rstrip().endswith("done")
