"""The OpenRLHF-compatible HTTP endpoint, served beside the gRPC port, over real HTTP.

OpenRLHF's remote reward model client POSTs ``{"query", "prompts", "labels"}`` as JSON and
reads ``rewards``/``scores``/``extra_logs``; these tests send exactly that with urllib and
compare the rewards with the same inputs scored over gRPC; one test goes through
OpenRLHF's own HTTP reward client (``openrlhf.utils.agent``, installed without its
training dependencies).
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import pytest
from adapter_helpers import BAD, BAD2, GOOD, GOOD2, QUERY, QUERY2, SCORED, TOO_LONG, batch_calls
from openrlhf.utils.agent import SingleTurnAgentExecutor

from services.client import RetryPolicy, RewardClient
from services.server import ServerConfig
from services.testing.serve_process import ServeProcess


def post(url: str, body: bytes | dict, method: str = "POST") -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, json.loads(raw) if raw.startswith(b"{") else {"error": raw.decode()}


def openrlhf_request(prompts: list[str], responses: list[str], labels: list | None = None) -> dict:
    return {"query": [p + r for p, r in zip(prompts, responses)], "prompts": prompts,
            "labels": labels if labels is not None else [""] * len(prompts)}


@pytest.fixture(scope="module")
def url(grm_server) -> str:
    return f"http://127.0.0.1:{grm_server.server.http.port}/get_reward"


@pytest.fixture(scope="module")
def client(grm_server):
    with RewardClient(grm_server.address, timeout_s=120, retry=RetryPolicy(max_attempts=1)) as c:
        yield c


def test_rewards_match_grpc_and_a_request_is_one_batch(grm_server, url, client):
    calls = batch_calls(grm_server)
    status, body = post(url, openrlhf_request([QUERY, QUERY, QUERY2, QUERY2], [GOOD, BAD, GOOD2, BAD2]))
    assert status == 200 and batch_calls(grm_server) - calls == 1
    assert tuple(body["rewards"][:2]) == client.score(QUERY, [GOOD, BAD], **SCORED).result.rewards
    assert tuple(body["rewards"][2:]) == client.score(QUERY2, [GOOD2, BAD2], **SCORED).result.rewards
    assert body["scores"] == body["rewards"]
    logs = body["extra_logs"]
    assert logs["grm_scored"] == [True] * 4 and logs["grm_num_valid"] == [SCORED["k"]] * 4 and logs["grm_error"] == [None] * 4


def test_openrlhf_own_client_reads_our_rewards(url, client):
    executor = SingleTurnAgentExecutor(url)  # what --remote_rm_url builds in OpenRLHF's rollouts
    replies = asyncio.run(executor._fetch_rewards_via_http([QUERY + GOOD, QUERY + BAD], [QUERY, QUERY], ["", ""]))
    assert len(replies) == 1 and tuple(replies[0]["rewards"]) == client.score(QUERY, [GOOD, BAD],
                                                                              **SCORED).result.rewards


def test_end_markers_around_an_openrlhf_query_are_not_judged(url, client):
    """OpenRLHF decodes ``query`` with the policy's special tokens kept: left padding before
    the prompt and the end-of-sequence marker (plus padding) after the response. The judge
    must see the response without them, exactly as if it had been sent clean."""
    query = "<|endoftext|><|endoftext|>" + QUERY + GOOD + "<|im_end|>\n<|endoftext|><|endoftext|>"
    status, body = post(url, {"query": [query], "prompts": ["<|endoftext|><|endoftext|>" + QUERY], "labels": [""]})
    assert status == 200
    assert tuple(body["rewards"]) == client.score(QUERY, [GOOD], **SCORED).result.rewards


def test_labels_are_the_reference_answer(url, client):
    _, body = post(url, openrlhf_request([QUERY], [BAD], [GOOD]))
    assert tuple(body["rewards"]) == client.score(QUERY, [BAD], reference=GOOD, **SCORED).result.rewards


def test_unscorable_response_is_null_not_zero(url):
    status, body = post(url, openrlhf_request([QUERY, QUERY2], [GOOD, TOO_LONG]))
    assert status == 200
    assert isinstance(body["rewards"][0], float) and body["rewards"][1] is None and body["scores"][1] is None
    assert body["extra_logs"]["grm_scored"] == [True, False]
    assert body["extra_logs"]["grm_error"][1].startswith("INVALID_ARGUMENT")


@pytest.mark.parametrize("body, status, field", [
    (b"{not json", 400, "body"),
    (b"[1, 2]", 400, "body"),
    pytest.param(b"[" * 10_000 + b"]" * 10_000, 400, "body: JSON nested too deeply", id="deeply-nested"),
    ({"query": [1, 2], "prompts": ["a", "b"]}, 400, "query[0]: must be a string, got int"),
    ({"query": ["ab", "cd"], "prompts": ["a", None]}, 400, "prompts[1]: must be a string, got NoneType"),
    ({"prompts": ["a"]}, 400, "query"),
    ({"query": "ab", "prompts": ["a"]}, 400, "query"),
    ({"query": [], "prompts": []}, 400, "query"),
    ({"query": ["ab"]}, 400, "prompts: is required"),
    ({"query": ["ab", "ac"], "prompts": ["a"]}, 400, "prompts"),
    ({"query": ["ab"], "prompts": ["x"]}, 400, "query[0]"),
    ({"query": ["ab"], "prompts": ["a"], "labels": ["1", "2"]}, 400, "labels"),
])
def test_bad_requests_get_400_naming_the_field_and_the_server_goes_on(url, body, status, field):
    code, reply = post(url, body)
    assert code == status and reply["error"].startswith(field), reply
    code, reply = post(url, openrlhf_request([QUERY], [GOOD]))
    assert code == 200 and isinstance(reply["rewards"][0], float)


def test_unknown_path_and_method(grm_server, url):
    code, reply = post(url.replace("/get_reward", "/nope"), openrlhf_request([QUERY], [GOOD]))
    assert code == 404 and "get_reward" in reply["error"]
    code, _ = post(url, b"", method="GET")
    assert code == 501  # only POST is served


def test_grm_serve_http_port_flag(tiny_model_path):
    """``grm serve --http-port 0`` prints the endpoint; a random-weight judge gives null rewards."""
    proc = ServeProcess(tiny_model_path, "--http-port", "0")
    try:
        line = proc.wait_for_line("OpenRLHF reward endpoint on ", 60)
        proc.wait_for_line("ready: ", 120)
        endpoint = line.split(" on ", 1)[1]
        status, body = post(endpoint, openrlhf_request([QUERY], [GOOD]))
        assert status == 200 and body["rewards"] == [None] and body["extra_logs"]["grm_scored"] == [False]
    finally:
        assert proc.stop() == 0, proc.output()


def test_http_port_is_checked():
    with pytest.raises(ValueError, match="http_port"):
        ServerConfig(http_port=70_000)
