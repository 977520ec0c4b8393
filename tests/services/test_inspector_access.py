"""Who may reach the inspector and what it shows them: only this server's own host names
(against DNS rebinding), no state-changing request from another site's page, with tokens
each caller's own records (all of them for an admin), form numbers past the message's
integer range refused with 400, bidirectional controls shown as their code."""

from __future__ import annotations

import http.client
import json
import re
import urllib.parse
from dataclasses import replace

import pytest

from grm.aggregation import aggregate
from grm.types import Judgment, ScoreInput
from service_helpers import CONFIG, FAST, QUERY, RESPONSES
from services.cache import MemoryCache
from services.client import RetryPolicy, RewardClient
from services.http_reward import RewardHTTPServer
from services.inspector import Inspector
from services.inspector.input_view import InputView, render_input
from services.server import BackgroundServer

TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789ab", "boss": "boss-token-0123456789a"}
GOOD_BODY = json.dumps({"query": [QUERY + RESPONSES[0]], "prompts": [QUERY], "labels": [""]})


@pytest.fixture(scope="module")
def front(server):
    """The HTTP port with the inspector, over the session's gRPC server."""
    http_server = RewardHTTPServer(server.address, inspector=Inspector(), allowed_hosts=["rm.internal"], **FAST).start()
    yield http_server
    http_server.stop()


def request(port: int, method: str, path: str, headers: dict | None = None, body: str = "") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body.encode() if body else None, headers or {})
        reply = conn.getresponse()
        return reply.status, reply.read().decode()
    finally:
        conn.close()


@pytest.mark.parametrize("host, status", [("attacker.example:{port}", 403), ("attacker.example", 403),
                                          ("127.0.0.1:{port}", 200), ("localhost:{port}", 200),
                                          ("[::1]:{port}", 200), ("RM.internal:{port}", 200)])
def test_inspector_pages_answer_only_to_names_of_this_server(front, host, status):
    got, body = request(front.port, "GET", "/inspect/recent", {"Host": host.format(port=front.port)})
    assert got == status, body
    if status == 403:
        assert "Host:" in body and "--allowed-host" in body


def test_a_rebound_page_cannot_post_the_form(front):
    evil = f"attacker.example:{front.port}"  # its own origin, after its name now points here
    status, body = request(front.port, "POST", "/inspect/try", {
        "Host": evil, "Origin": f"http://{evil}", "Content-Type": "application/x-www-form-urlencoded"},
        "query=q&response=7")
    assert status == 403, body


@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example", "Content-Type": "text/plain"},
    {"Origin": "null", "Content-Type": "text/plain"},
    {"Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"},
], ids=["another origin", "a sandboxed page", "a cross-site fetch"])
def test_another_sites_page_cannot_post_for_rewards(front, headers):
    status, body = request(front.port, "POST", "/get_reward", {"Host": f"127.0.0.1:{front.port}", **headers},
                           GOOD_BODY)
    assert status == 403 and "Origin" in json.loads(body)["error"], body
    ok, body = request(front.port, "POST", "/get_reward", {"Content-Type": "application/json"}, GOOD_BODY)
    assert ok == 200, body  # a client that is not a browser names no origin


@pytest.mark.parametrize("field", ["k", "max_new_tokens", "seed"])
def test_try_it_refuses_numbers_past_the_message_range_with_400(front, field):
    form = urllib.parse.urlencode({"query": QUERY, "response": "7", field: str(2**64)})
    status, body = request(front.port, "POST", "/inspect/try", {"Content-Type": "application/x-www-form-urlencoded",
                                                               "Origin": f"http://127.0.0.1:{front.port}"}, form)
    assert status == 400 and f"{field}: must be in" in body, body


def test_bidirectional_controls_are_shown_as_their_code():
    item = ScoreInput("which is right?", ["\u202eevil\u202c", "\u2066ok\u2069"])
    html = render_input(InputView("t", item, aggregate([], 2)))
    assert not re.search("[\u202a-\u202e\u2066-\u2069]", html)
    assert "[U+202E]evil[U+202C]" in html and "[U+2066]ok[U+2069]" in html


@pytest.fixture(scope="module")
def recorded(judge, tmp_path_factory):
    tokens = tmp_path_factory.mktemp("tokens") / "tokens.txt"
    tokens.write_text("".join(f"{name} {token}\n" for name, token in TOKENS.items()))
    config = replace(CONFIG, token_file=str(tokens), record=20, http_port=0, admins=("boss",), metrics_port=None)
    bg = BackgroundServer(judge, "127.0.0.1:0", config, cache_factory=MemoryCache).start()
    for name in ("alice", "bob"):
        with RewardClient(bg.address, token=TOKENS[name], retry=RetryPolicy(max_attempts=1)) as client:
            client.score(f"{name}'s question", RESPONSES, **FAST)
    yield bg
    bg.stop()


def records_seen(port: int, name: str) -> list[int]:
    status, body = request(port, "GET", "/inspect/recent", {"Authorization": f"Bearer {TOKENS[name]}"})
    assert status == 200, body
    return [int(n) for n in re.findall(r'href="/inspect/recent/(\d+)"', body)]


def test_with_tokens_a_caller_sees_only_its_own_records(recorded):
    port = recorded.server.http.port
    alice, bob, boss = (records_seen(port, name) for name in ("alice", "bob", "boss"))
    assert len(alice) == len(bob) == 1 and sorted(boss) == sorted(alice + bob)
    auth = {"Authorization": f"Bearer {TOKENS['alice']}"}
    status, body = request(port, "GET", f"/inspect/recent/{alice[0]}", auth)
    assert status == 200 and "alice&#x27;s question" in body
    status, body = request(port, "GET", f"/inspect/recent/{bob[0]}", auth)
    assert status == 404 and "bob" not in body
