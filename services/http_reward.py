"""An OpenRLHF-compatible remote reward model: HTTP ``POST`` JSON in, rewards out.

OpenRLHF's ``--remote_rm_url http://HOST:PORT/get_reward`` posts

    {"query": [prompt + response, ...], "prompts": [prompt, ...], "labels": [label, ...]}

and reads ``{"rewards": [...], "scores": [...], "extra_logs": {...}}``. Here the response is
``query[i][len(prompts[i]):]`` (the query must start with its prompt), a non-empty string
label is shown to the judge as the reference answer, and the queries sharing a prompt are
judged together as one GRM input. ``rewards`` and ``scores`` are the GRM's mean scores
(1..10); an unscorable response gets ``null`` in both, never 0, and ``extra_logs`` says why
(``grm_scored``, ``grm_error``) next to ``grm_spread`` and ``grm_num_valid``.

A bad request (invalid JSON, a missing or mistyped field, lists of different lengths, a
query that does not start with its prompt) gets 400 with ``{"error": "<field>: ..."}``;
an unknown path 404; a service failure 503 (unavailable), 504 (deadline) or 502.

The endpoint is a small threaded ``http.server`` that calls the gRPC service through a
``RewardClient``, so validation, caching, batching, metrics and limits are the service's
own. ``grm serve --http-port 8000`` starts it beside the gRPC port; in Python::

    http = RewardHTTPServer("127.0.0.1:50051", port=0).start()
    ...  # POST to http://127.0.0.1:{http.port}/get_reward
    http.stop()
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc

from grm.grouping import Row, RowScore, group_rows, spread_back
from services.client import RewardClient, batch_request, outcome

log = logging.getLogger(__name__)
PATHS = ("/get_reward", "/")
MAX_BODY_BYTES = 256 * 2**20
HTTP_FOR_GRPC = {grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
                 grpc.StatusCode.RESOURCE_EXHAUSTED: 503, grpc.StatusCode.INVALID_ARGUMENT: 400}


class BadRequest(ValueError):
    """A request error whose message names the field."""


def _strings(body: dict, field: str, n: int | None) -> list[str]:
    value = body.get(field)
    if value is None:
        raise BadRequest(f"{field}: is required (a list of strings)")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"{field}: must be a list of strings, got {type(value).__name__}")
    if n is not None and len(value) != n:
        raise BadRequest(f"{field}: must hold one entry per query ({n}), got {len(value)}")
    return value


def parse_rows(raw: bytes) -> list[Row]:
    """The rows of an OpenRLHF request body; BadRequest names the offending field."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"body: not valid JSON ({e})") from None
    if not isinstance(body, dict):
        raise BadRequest(f"body: must be a JSON object, got {type(body).__name__}")
    queries = _strings(body, "query", None)
    if not queries:
        raise BadRequest("query: must hold at least one query")
    prompts = _strings(body, "prompts", len(queries))
    labels = body.get("labels") or [None] * len(queries)
    if not isinstance(labels, list) or len(labels) != len(queries):
        raise BadRequest(f"labels: must be a list with one entry per query ({len(queries)})")
    for i, (q, p) in enumerate(zip(queries, prompts)):
        if not q.startswith(p):
            raise BadRequest(f"query[{i}]: must start with prompts[{i}] (the response is the rest of the query)")
    return [Row(p, q[len(p):], label if isinstance(label, str) and label else None)
            for q, p, label in zip(queries, prompts, labels)]


def reply_body(scores: list[RowScore]) -> dict:
    rewards = [s.reward for s in scores]
    return {"rewards": rewards, "scores": rewards,
            "extra_logs": {"grm_scored": [s.scored for s in scores], "grm_spread": [s.spread for s in scores],
                           "grm_num_valid": [s.num_valid for s in scores], "grm_error": [s.error for s in scores]}}


class RewardHTTPServer:
    """The endpoint on ``host:port`` (0 = a free port), scoring through ``grpc_target``.

    ``options`` go to every ScoreBatch call (k, temperature, max_new_tokens, ...);
    ``timeout_s`` is each call's deadline.
    """

    def __init__(self, grpc_target: str, host: str = "127.0.0.1", port: int = 0, *, timeout_s: float = 300.0,
                 per_response: bool = False, **options):
        batch_request((), **options)  # unknown or invalid options fail at start-up
        self.client = RewardClient(grpc_target, timeout_s=timeout_s)
        self.per_response, self.options = per_response, options
        self.httpd = ThreadingHTTPServer((host, port), _handler_for(self))
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="grm-http", daemon=True)

    def score(self, rows: list[Row]) -> dict:
        groups = group_rows(rows, per_response=self.per_response)
        outs = self.client.score_batch([g.item for g in groups], **self.options)
        return reply_body(spread_back(groups, [outcome(o) for o in outs], len(rows)))

    def start(self) -> "RewardHTTPServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting requests; the ones being answered finish on their own threads."""
        if self._thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()
        self.client.close()


def _handler_for(endpoint: RewardHTTPServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path.split("?", 1)[0] not in PATHS:
                return self._send(404, {"error": f"path: unknown {self.path!r}; POST to /get_reward"})
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                return self._send(411, {"error": "Content-Length: required"})
            if not 0 <= length <= MAX_BODY_BYTES:
                return self._send(413, {"error": f"body: at most {MAX_BODY_BYTES} bytes, got {length}"})
            try:
                rows = parse_rows(self.rfile.read(length))
                return self._send(200, endpoint.score(rows))
            except BadRequest as e:
                return self._send(400, {"error": str(e)})
            except grpc.RpcError as e:
                return self._send(HTTP_FOR_GRPC.get(e.code(), 502), {"error": f"{e.code().name}: {e.details()}"})

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")  # an unread body must not leak into a next request
            self.end_headers()
            self.close_connection = True
            self.wfile.write(data)

        def log_message(self, fmt: str, *args) -> None:  # http.server prints to stderr by default
            log.debug("%s - " + fmt, self.address_string(), *args)

    return Handler
