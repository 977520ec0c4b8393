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
low-level server lets this module own the connection-level limits (``HTTPLimits``):

- at most ``max_connections`` open connections (never more than a quarter of the
  process's open-file limit, so gRPC always has file descriptors left); a few
  connections past the cap are answered 503 naming the limit, the rest are reset;
- a connection whose request headers are not complete within ``header_timeout_s`` is
  closed, and one whose body is not complete within ``body_timeout_s`` gets 408;
- one request per connection (``Connection: close``), so no idle keep-alive lingers.

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
import json
import logging
import math
import resource
import socket
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from aiohttp import web

from grm.grouping import END_MARKERS, Row, RowScore, strip_end_markers
from services.client import CALL_METADATA, RetryPolicy, RewardClient, batch_request
from services.inspector.app import MAX_FORM_BYTES, Inspector, Reply
from services.inspector.recorder import CALLER_METADATA
from services.security import TokenFile

log = logging.getLogger(__name__)
PATHS = ("/get_reward", "/")
HTTP_FOR_GRPC = {grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
                 grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.INVALID_ARGUMENT: 400,
                 grpc.StatusCode.UNAUTHENTICATED: 401}
FD_SHARE = 4  # the HTTP side may hold at most 1/FD_SHARE of the process's open-file limit
# After an early answer (413, 408) the unread rest of a body is drained this long before
# closing, so that a client still sending sees the answer rather than a reset.
LINGER_S = 1.0
REFUSE_WAIT_S = 1.0  # how long a connection past the cap may take to send the headers of its 503


@dataclass(frozen=True)
class HTTPLimits:
    """Connection-level limits of the endpoint: what a client may hold, and for how long."""

    max_connections: int = 256  # open HTTP connections; also capped by the open-file limit
    header_timeout_s: float = 5.0  # from accept to complete request headers
    body_timeout_s: float = 30.0  # from complete headers to complete body
    max_body_bytes: int = 256 * 2**20
    workers: int = 16  # threads parsing bodies and waiting on gRPC
    backlog: int = 128  # the listen queue
    grace_s: float = 30.0  # how long stop() lets requests being answered finish

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_body_bytes", "workers", "backlog"):
            if getattr(self, name) < 1:
                raise ValueError(f"HTTPLimits.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("header_timeout_s", "body_timeout_s", "grace_s"):
            if not 0 < getattr(self, name) < float("inf"):
                raise ValueError(f"HTTPLimits.{name} must be a positive number of seconds, got {getattr(self, name)}")

    def connection_cap(self) -> int:
        """``max_connections``, lowered so the HTTP side leaves most file descriptors to gRPC."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return self.max_connections if soft == resource.RLIM_INFINITY else max(1, min(self.max_connections,
                                                                                       soft // FD_SHARE))


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


class _GuardedServer(web.Server):
    """aiohttp's low-level server plus the connection cap and the header deadline.

    Past the cap, up to a quarter of it more connections are kept briefly to be answered
    503 naming the limit (their headers must come within ``REFUSE_WAIT_S``); past that,
    a connection is reset at once, so a flood never holds more file descriptors.
    """

    def __init__(self, handler, limits: HTTPLimits, **kwargs):
        super().__init__(handler, **kwargs)
        self.cap, self.header_timeout_s = limits.connection_cap(), limits.header_timeout_s
        self.open: dict[web.RequestHandler, asyncio.BaseTransport] = {}  # counted against the cap
        self.turned_away: dict[web.RequestHandler, asyncio.BaseTransport] = {}  # to be answered 503
        self._timers: dict[web.RequestHandler, asyncio.TimerHandle] = {}  # until the headers are in
        self.refused = self.expired = 0

    def connection_made(self, handler, transport) -> None:
        super().connection_made(handler, transport)
        loop = asyncio.get_running_loop()
        if len(self.open) < self.cap:
            self.open[handler] = transport
            wait = self.header_timeout_s
        elif len(self.turned_away) < max(1, self.cap // 4):
            self.turned_away[handler] = transport
            wait = min(REFUSE_WAIT_S, self.header_timeout_s)
        else:
            self.refused += 1
            # on the next loop turn: aiohttp starts the handler's task after this hook,
            # and that task must see the connection open before it sees it lost
            loop.call_soon(transport.abort)
            return
        self._timers[handler] = loop.call_later(wait, self._expire, handler)

    def connection_lost(self, handler, exc=None) -> None:
        self.open.pop(handler, None)
        self.turned_away.pop(handler, None)
        self.headers_done(handler)
        super().connection_lost(handler, exc)

    def headers_done(self, handler) -> None:
        timer = self._timers.pop(handler, None)
        if timer is not None:
            timer.cancel()

    def _expire(self, handler) -> None:
        self._timers.pop(handler, None)
        transport = self.open.get(handler) or self.turned_away.get(handler)
        if transport is not None and not transport.is_closing():  # no request in time: free the slot
            self.expired += 1
            transport.abort()


class RewardHTTPServer:
    """The endpoint on ``host:port`` (0 = a free port), scoring through ``grpc_target``.

    ``options`` go to every ScoreBatch call (k, temperature, max_new_tokens, ...);
    ``timeout_s`` is each call's deadline; ``limits`` bound connections and timeouts.
    ``inspector`` (services/inspector) serves its pages under ``/inspect`` behind the same
    limits; it is closed with the server. ``grpc_target`` None serves the inspector alone.
    The port is bound at construction; ``start`` begins serving.
    """

    def __init__(self, grpc_target: str | None, host: str = "127.0.0.1", port: int = 0, *, timeout_s: float = 300.0,
                 per_response: bool = False, limits: HTTPLimits = HTTPLimits(),
                 end_markers: Sequence[str] = END_MARKERS, inspector: Inspector | None = None,
                 ssl_context: ssl.SSLContext | None = None, tokens: TokenFile | None = None, **options):
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
        self.hangups = 0  # clients that left before their answer
        self._sock = socket.create_server((host, port), backlog=limits.backlog)
        self.port = self._sock.getsockname()[1]
        self._pool = ThreadPoolExecutor(limits.workers, thread_name_prefix="grm-http-score")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="grm-http", daemon=True)
        self._runner: web.ServerRunner | None = None
        self._server: _GuardedServer | None = None

    @property
    def open_connections(self) -> int:
        return len(self._server.open) if self._server else 0

    @property
    def refused(self) -> int:
        """Connections answered 503 or reset because ``max_connections`` were open."""
        return self._server.refused if self._server else 0

    @property
    def turned_away(self) -> int:
        """Connections past the cap, held briefly to be answered 503."""
        return len(self._server.turned_away) if self._server else 0

    @property
    def expired(self) -> int:
        """Connections closed because their request headers did not arrive in time."""
        return self._server.expired if self._server else 0

    def start(self) -> "RewardHTTPServer":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._open(), self._loop).result(30)
        return self

    def stop(self) -> None:
        """Stop accepting; requests being answered get up to ``limits.grace_s`` to finish."""
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
        self._server = _GuardedServer(self._handle, self.limits, access_log=None, lingering_time=LINGER_S)
        self._runner = web.ServerRunner(self._server, shutdown_timeout=self.limits.grace_s)
        await self._runner.setup()
        await web.SockSite(self._runner, self._sock, backlog=self.limits.backlog, ssl_context=self.ssl_context).start()

    async def _close(self) -> None:
        await self._runner.cleanup()

    def score(self, rows: list[Row]) -> dict:
        return reply_body(self.client.score_rows(rows, per_response=self.per_response, **self.options))

    def answer(self, raw: bytes, caller: str = "", authorization: str | None = None) -> tuple[int, dict]:
        """The status and JSON reply for one request body (runs on a pool thread)."""
        if self.client is None:
            return 503, {"error": "service: no reward service behind this port (inspector only)"}
        metadata = ((CALLER_METADATA, f"http {caller}"),)  # for the request recorder
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
        if request.protocol in self._server.turned_away:
            self._server.refused += 1
            return _reply(503, {"error": f"connections: at most {self._server.cap} open at once; retry"})
        authorization = request.headers.get("Authorization")
        if self.tokens is not None and self.tokens.identify(authorization) is None:
            response = _reply(401, {"error": "Authorization: a valid bearer token is required"})
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        if self.inspector is not None and self.inspector.owns(request.path):
            return await self._inspect(request)
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        raw = await self._body(request)
        if isinstance(raw, web.Response):
            return raw
        status, body = await asyncio.get_running_loop().run_in_executor(self._pool, self.answer, raw,
                                                                        _peer(request), authorization)
        if request.transport is None or request.transport.is_closing():
            return self._hung_up(request)
        response = _reply(status, body)
        if "retry_after_s" in body:
            response.headers["Retry-After"] = str(body["retry_after_s"])
        return response

    async def _inspect(self, request: web.BaseRequest) -> web.StreamResponse:
        """An inspector page: the form body (bounded, on the same deadline) goes with it to a pool thread."""
        form = b""
        if request.method == "POST":
            if not _same_origin(request):
                return _reply(403, {"error": "Origin: a form may only be posted from the inspector's own pages"})
            if request.content_length is None:
                return _reply(411, {"error": "Content-Length: required"})
            if request.content_length > MAX_FORM_BYTES:
                return _reply(413, {"error": f"body: at most {MAX_FORM_BYTES} bytes, got {request.content_length}"})
            form = await self._body(request)
            if isinstance(form, web.Response):
                return form
        reply: Reply = await asyncio.get_running_loop().run_in_executor(
            self._pool, self.inspector.respond, request.method, request.path, form, _peer(request),
            request.headers.get("Authorization"))
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


def _same_origin(request: web.BaseRequest) -> bool:
    """A browser names the page a form was posted from; another site's page may not post here."""
    origin = request.headers.get("Origin")
    return origin is None or origin.split("://", 1)[-1] == request.host
