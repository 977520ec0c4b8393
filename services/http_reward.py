"""An OpenRLHF-compatible remote reward model: HTTP ``POST`` JSON in, rewards out.

OpenRLHF's ``--remote_rm_url http://HOST:PORT/get_reward`` posts

    {"query": [prompt + response, ...], "prompts": [prompt, ...], "labels": [label, ...]}

and reads ``{"rewards": [...], "scores": [...], "extra_logs": {...}}``. Here the response is
``query[i][len(prompts[i]):]`` (the query must start with its prompt), a non-empty string
label is shown to the judge as the reference answer, and the queries sharing a prompt are
judged together as one GRM input. ``rewards`` and ``scores`` are the GRM's mean scores
(1..10); an unscorable response gets ``null`` in both, never 0, and ``extra_logs`` says why
(``grm_scored``, ``grm_error``) next to ``grm_spread`` and ``grm_num_valid``.

A bad request (invalid or too deeply nested JSON, a missing or mistyped field, lists of
different lengths, a query that does not start with its prompt) gets 400 with
``{"error": "<field>: ..."}``; an unknown path 404, a method other than POST 501, a body
over ``HTTPLimits.max_body_bytes`` 413, a body not received in full within
``body_timeout_s`` 408; a service failure 503 (unavailable), 504 (deadline) or 502.

The endpoint is an aiohttp server on its own event loop in a daemon thread, so nothing
a client does to the HTTP port (idle or slow connections, floods) runs on the gRPC
server's loop. aiohttp is used because it is maintained, already a dependency, and its
low-level server lets the project own the connection-level limits (``HTTPLimits``,
enforced from accept, before TLS, by services/http_gate.py): connection caps overall and
per client address, a header deadline, a body deadline (408), and one request per
connection (``Connection: close``), so no idle keep-alive lingers. On ``stop`` a request
still unanswered when the grace ends gets 503 rather than a closed connection.

The same port serves the judgment inspector's pages under ``/inspect`` when one is given
(services/inspector), behind the same connection limits and timeouts.

Scoring runs in a small thread pool through a ``RewardClient``, so validation, caching,
batching, metrics and limits are the gRPC service's own. A client that hangs up before
its answer is counted (``hangups``) and logged at debug level, never as a traceback.
``grm serve --http-port 8000`` starts the endpoint beside the gRPC port; in Python::

    http = RewardHTTPServer("127.0.0.1:50051", port=0).start()
    ...  # POST to http://127.0.0.1:{http.port}/get_reward
    http.stop()
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from aiohttp import web

from grm.grouping import END_MARKERS, Row, RowScore, strip_end_markers
from services.client import CALL_METADATA, RetryPolicy, RewardClient, batch_request
from services.inspector.app import MAX_FORM_BYTES, Inspector, Reply
from services.browser_guard import BrowserGuard
from services.http_gate import REQUEST_LOG, GatedServer, HTTPLimits, quiet_accept_errors
from services.inspector.recorder import CALLER_METADATA
from services.security import TokenFile, vouch_for

log = logging.getLogger(__name__)
PATHS = ("/get_reward", "/")
HTTP_FOR_GRPC = {grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
                 grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.INVALID_ARGUMENT: 400,
                 grpc.StatusCode.UNAUTHENTICATED: 401}
# After an early answer (413, 408) the unread rest of a body is drained this long before
# closing, so that a client still sending sees the answer rather than a reset.
LINGER_S = 1.0
CUT_MARGIN_S = 0.5  # at stop, requests still unanswered this long before the grace ends get 503


class BadRequest(ValueError):
    """A request error whose message names the field."""


def _strings(body: dict, field: str, n: int | None) -> list[str]:
    value = body.get(field)
    if value is None:
        raise BadRequest(f"{field}: is required (a list of strings)")
    if not isinstance(value, list):
        raise BadRequest(f"{field}: must be a list of strings, got {type(value).__name__}")
    for i, v in enumerate(value):
        if not isinstance(v, str):
            raise BadRequest(f"{field}[{i}]: must be a string, got {type(v).__name__}")
    if n is not None and len(value) != n:
        raise BadRequest(f"{field}: must hold one entry per query ({n}), got {len(value)}")
    return value


def _json(raw: bytes):
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"body: not valid JSON ({e})") from None
    except RecursionError:  # the decoder recurses once per nested array/object
        raise BadRequest("body: JSON nested too deeply (a request is an object of flat lists)") from None


def parse_rows(raw: bytes, end_markers: Sequence[str] = END_MARKERS) -> list[Row]:
    """The rows of an OpenRLHF request body; BadRequest names the offending field.

    OpenRLHF decodes ``query`` with the policy's special tokens kept, so its end-of-sequence
    marker and padding surround the text; they are cut off both ends of the query and the
    prompt (``grm.grouping.strip_end_markers``) before the response is split off, or the
    judge would read them as part of the response."""
    body = _json(raw)
    if not isinstance(body, dict):
        raise BadRequest(f"body: must be a JSON object, got {type(body).__name__}")
    queries = _strings(body, "query", None)
    if not queries:
        raise BadRequest("query: must hold at least one query")
    prompts = _strings(body, "prompts", len(queries))
    labels = body.get("labels") or [None] * len(queries)
    if not isinstance(labels, list) or len(labels) != len(queries):
        raise BadRequest(f"labels: must be a list with one entry per query ({len(queries)})")
    queries = [strip_end_markers(q, end_markers) for q in queries]
    prompts = [strip_end_markers(p, end_markers) for p in prompts]
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


def _reply(status: int, body: dict) -> web.Response:
    response = web.json_response(body, status=status)
    response.force_close()  # one request per connection: an unread body never leaks into a next one
    return response


class RewardHTTPServer:
    """The endpoint on ``host:port`` (0 = a free port), scoring through ``grpc_target``.

    ``options`` go to every ScoreBatch call (k, temperature, max_new_tokens, ...);
    ``timeout_s`` is each call's deadline; ``limits`` bound connections and timeouts.
    ``inspector`` (services/inspector) serves its pages under ``/inspect`` behind the same
    limits; it is closed with the server. ``grpc_target`` None serves the inspector alone.
    Browsers meet ``services.browser_guard`` (``allowed_hosts``: names of this server besides
    the bound one). The port is bound at construction; ``start`` begins serving.
    """

    def __init__(self, grpc_target: str | None, host: str = "127.0.0.1", port: int = 0, *, timeout_s: float = 300.0,
                 per_response: bool = False, limits: HTTPLimits = HTTPLimits(),
                 end_markers: Sequence[str] = END_MARKERS, inspector: Inspector | None = None,
                 ssl_context: ssl.SSLContext | None = None, tokens: TokenFile | None = None,
                 allowed_hosts: Sequence[str] = (), **options):
        batch_request((), **options)  # unknown or invalid options fail at start-up
        self.limits, self.per_response, self.options = limits, per_response, options
        self.end_markers = tuple(end_markers)  # the policy's end and padding markers, cut off queries
        # A refusal goes back to the HTTP caller as 429 + Retry-After, not waited out here.
        self.client = (RewardClient(grpc_target, timeout_s=timeout_s, retry=RetryPolicy(honour_pushback=False))
                       if grpc_target else None)
        self.inspector = inspector
        if inspector is not None and self.client is not None:
            inspector.score_through(self.client)  # "Try it" meets the same TLS and limits
        # TLS as on the gRPC port; with tokens every request needs "Authorization: Bearer ...",
        # which is passed on to the gRPC service, so HTTP callers meet their own token's limits.
        self.ssl_context, self.tokens = ssl_context, tokens
        self.browsers = BrowserGuard(host, allowed_hosts)  # DNS rebinding and cross-site requests
        self.hangups = 0  # clients that left before their answer
        self._sock = _listen(host.strip("[]"), port, limits.backlog)
        self.port = self._sock.getsockname()[1]
        self._pool = ThreadPoolExecutor(limits.workers, thread_name_prefix="grm-http-score")
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(quiet_accept_errors())
        self._thread = threading.Thread(target=self._loop.run_forever, name="grm-http", daemon=True)
        self._server: GatedServer | None = None
        self._listener: asyncio.Server | None = None
        self._answering = 0  # requests waiting for their answer on the pool
        self._cut: asyncio.Event | None = None  # set when stop's grace ends: the waits left answer 503

    @property
    def open_connections(self) -> int:
        return len(self._server.open) if self._server else 0

    @property
    def refused(self) -> int:
        """Connections answered 503 or reset because a connection cap was reached."""
        return self._server.refused if self._server else 0

    @property
    def turned_away(self) -> int:
        """Connections past a cap, held briefly to be answered 503."""
        return len(self._server.turned_away) if self._server else 0

    @property
    def expired(self) -> int:
        """Connections closed because their TLS handshake or request headers did not arrive in time."""
        return self._server.expired if self._server else 0

    def start(self) -> "RewardHTTPServer":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._open(), self._loop).result(30)
        return self

    def stop(self) -> None:
        """Stop accepting; requests being answered get up to ``limits.grace_s`` to finish, then 503."""
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(self.limits.grace_s + 10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._sock.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.client is not None:
            self.client.close()
        if self.inspector is not None:
            self.inspector.close()

    async def _open(self) -> None:
        self._cut = asyncio.Event()
        self._server = GatedServer(self._handle, self.limits, self.ssl_context, access_log=None,
                                   lingering_time=LINGER_S, logger=REQUEST_LOG)
        self._listener = await asyncio.get_running_loop().create_server(self._server.door, sock=self._sock,
                                                                        backlog=self.limits.backlog)

    async def _close(self) -> None:
        self._listener.close()
        cut_at = time.monotonic() + max(0.0, self.limits.grace_s - CUT_MARGIN_S)
        while self._answering and time.monotonic() < cut_at:
            await asyncio.sleep(0.02)
        self._cut.set()  # the requests still waiting are answered 503 now, not cut off mid-air
        await self._server.shutdown(CUT_MARGIN_S)

    async def _answer_on_pool(self, fn, *args):
        """``fn(*args)`` on the pool; None when stop's grace ended first."""
        work = asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        cut = asyncio.ensure_future(self._cut.wait())
        self._answering += 1
        try:
            done, _ = await asyncio.wait({work, cut}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._answering -= 1
            cut.cancel()
        return work.result() if work in done else None

    def score(self, rows: list[Row]) -> dict:
        return reply_body(self.client.score_rows(rows, per_response=self.per_response, **self.options))

    def answer(self, raw: bytes, caller: str = "", authorization: str | None = None) -> tuple[int, dict]:
        """The status and JSON reply for one request body (runs on a pool thread)."""
        if self.client is None:
            return 503, {"error": "service: no reward service behind this port (inspector only)"}
        # for the request recorder, and (without tokens) the client's own budget
        metadata = ((CALLER_METADATA, f"http {caller}"), vouch_for(caller.rsplit(":", 1)[0]))
        if authorization:
            metadata += (("authorization", authorization),)
        token = CALL_METADATA.set(metadata)
        try:
            return 200, self.score(parse_rows(raw, self.end_markers))
        except BadRequest as e:
            return 400, {"error": str(e)}
        except grpc.RpcError as e:
            body = {"error": f"{e.code().name}: {e.details()}"}
            pushback = dict(e.trailing_metadata() or ()).get("grpc-retry-pushback-ms")
            if pushback is not None:
                body["retry_after_s"] = max(1, math.ceil(int(pushback) / 1000))
            return HTTP_FOR_GRPC.get(e.code(), 502), body
        finally:
            CALL_METADATA.reset(token)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self._server.headers_done(request.protocol)
        if self._server.turned_away_handler(request.protocol):
            self._server.refused += 1
            return _reply(503, {"error": f"connections: at most {self._server.cap} open at once "
                                         f"({self._server.per_peer} from one address); retry"})
        page = self.inspector is not None and self.inspector.owns(request.path)
        refused = self.browsers.refusal(request.method, request.headers, request.host, page)
        if refused is not None:
            return _reply(403, {"error": refused})
        authorization = request.headers.get("Authorization")
        if self.tokens is not None and self.tokens.identify(authorization) is None:
            response = _reply(401, {"error": "Authorization: a valid bearer token is required"})
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        if page:
            return await self._inspect(request)
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        raw = await self._body(request)
        if isinstance(raw, web.Response):
            return raw
        answered = await self._answer_on_pool(self.answer, raw, _peer(request), authorization)
        if answered is None:
            return _stopped()
        if request.transport is None or request.transport.is_closing():
            return self._hung_up(request)
        status, body = answered
        response = _reply(status, body)
        if "retry_after_s" in body:
            response.headers["Retry-After"] = str(body["retry_after_s"])
        return response

    async def _inspect(self, request: web.BaseRequest) -> web.StreamResponse:
        """An inspector page: the form body (bounded, on the same deadline) goes with it to a pool thread."""
        form = b""
        if request.method == "POST":
            if request.content_length is None:
                return _reply(411, {"error": "Content-Length: required"})
            if request.content_length > MAX_FORM_BYTES:
                return _reply(413, {"error": f"body: at most {MAX_FORM_BYTES} bytes, got {request.content_length}"})
            form = await self._body(request)
            if isinstance(form, web.Response):
                return form
        reply: Reply | None = await self._answer_on_pool(
            self.inspector.respond, request.method, request.path, form, _peer(request),
            request.headers.get("Authorization"))
        if reply is None:
            return _stopped()
        if request.transport is None or request.transport.is_closing():
            return self._hung_up(request)
        response = web.Response(status=reply.status, body=b"" if request.method == "HEAD" else reply.body,
                                content_type=reply.content_type.split(";")[0], charset="utf-8",
                                headers=reply.headers)
        response.force_close()
        return response

    def _refusal(self, request: web.BaseRequest) -> web.Response | None:
        """The answer to a request refused on its headers alone, or None."""
        if request.method != "POST":
            return _reply(501, {"error": f"method: only POST is served, got {request.method}"})
        if request.path not in PATHS:
            return _reply(404, {"error": f"path: unknown {request.path!r}; POST to /get_reward"})
        if request.content_length is None:
            return _reply(411, {"error": "Content-Length: required"})
        if request.content_length > self.limits.max_body_bytes:
            return _reply(413, {"error": f"body: at most {self.limits.max_body_bytes} bytes, "
                                         f"got {request.content_length}"})
        return None

    async def _body(self, request: web.BaseRequest) -> bytes | web.Response:
        """The whole body, or the answer when it does not arrive in time or the client left."""
        length = request.content_length
        if request.headers.get("Expect", "").lower() == "100-continue":  # curl asks this for large bodies
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            return await asyncio.wait_for(request.content.readexactly(length), self.limits.body_timeout_s)
        except asyncio.TimeoutError:
            return _reply(408, {"error": f"body: {length} bytes (Content-Length) not received within "
                                         f"{self.limits.body_timeout_s:g} s"})
        except (ConnectionError, asyncio.IncompleteReadError):
            return self._hung_up(request)

    def _hung_up(self, request: web.BaseRequest) -> web.Response:
        self.hangups += 1
        log.debug("HTTP client %s left before its answer (%d so far)", request.remote, self.hangups)
        return _reply(499, {"error": "client closed the connection"})  # nobody reads it


def _peer(request: web.BaseRequest) -> str:
    """The client's address as ``host:port`` (what the request recorder shows as the caller)."""
    peer = request.transport.get_extra_info("peername") if request.transport is not None else None
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(request.remote or "unknown")


def _listen(host: str, port: int, backlog: int) -> socket.socket:
    """The listening socket: IPv6 for an IPv6 address (both families for ``::``), else IPv4."""
    try:
        v6 = isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
    except ValueError:
        v6 = False
    family = socket.AF_INET6 if v6 else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=backlog, dualstack_ipv6=v6 and host == "::")


def _stopped() -> web.Response:
    return _reply(503, {"error": "service: the server stopped before this answer was ready (its grace "
                                 "ended); retry"})
