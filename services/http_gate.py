"""The HTTP port's door: what a client may hold, for how long, from the moment of accept.

``GatedServer`` is aiohttp's low-level server behind a gate of its own. The listening
socket hands every accepted TCP connection to ``GatedServer.door`` first, which applies
``HTTPLimits`` before aiohttp (or TLS) sees a byte:

- at most ``max_connections`` open (never more than a quarter of the open-file limit, so
  gRPC keeps file descriptors), at most ``max_connections_per_peer`` from one client
  address, so one client cannot hold every slot; a few connections past a cap are kept
  briefly to be answered 503 naming the limit, the rest are reset at once;
- the header deadline runs from accept: a TLS handshake happens inside it (the door
  starts TLS itself, with ``loop.start_tls``), so bare TCP connections that never
  handshake are closed like ones that never send headers.

``REQUEST_LOG`` is the logger aiohttp reports bad requests to: it logs the kind of fault
and the client, never the request's bytes (an oversized ``Authorization`` header would
put a token's first hundred characters in the log). ``quiet_accept_errors`` is the
endpoint loop's exception handler: asyncio reports a failed
``accept()`` (out of file descriptors) once per pending connection and retry, which under
a flood is thousands of log records a second; it logs the condition once per interval,
with how many reports it held back.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import ssl
import time
from dataclasses import dataclass

from aiohttp import http_exceptions, web

log = logging.getLogger(__name__)
FD_SHARE = 4  # the HTTP side may hold at most 1/FD_SHARE of the process's open-file limit
REFUSE_WAIT_S = 1.0  # how long a connection past a cap may take to send the headers of its 503
ACCEPT_LOG_INTERVAL_S = 10.0  # "out of system resource" is logged at most once per interval


@dataclass(frozen=True)
class HTTPLimits:
    """Connection-level limits of the endpoint: what a client may hold, and for how long."""

    max_connections: int = 256  # open HTTP connections; also capped by the open-file limit
    max_connections_per_peer: int = 64  # open connections from one client address
    header_timeout_s: float = 5.0  # from accept to complete request headers (a TLS handshake included)
    body_timeout_s: float = 30.0  # from complete headers to complete body
    max_body_bytes: int = 256 * 2**20
    workers: int = 16  # threads parsing bodies and waiting on gRPC
    backlog: int = 128  # the listen queue
    grace_s: float = 30.0  # how long stop() lets requests being answered finish (then: 503)

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_connections_per_peer", "max_body_bytes", "workers", "backlog"):
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


class _WithoutContent(logging.Filter):
    """Rewrites aiohttp's report of a bad request into one line without the request's bytes;
    a fault of the server's own (any other exception) keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, http_exceptions.HttpProcessingError):
            status = getattr(exc, "code", "")
            record.msg, record.args = "%s (%s %s; the request's content is not logged)", (
                record.getMessage(), type(exc).__name__, status)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"  # the client's fault, not the server's
        return True


REQUEST_LOG = logging.getLogger(__name__ + ".requests")
REQUEST_LOG.addFilter(_WithoutContent())


class _Door(asyncio.Protocol):
    """One accepted TCP connection until it is handed to aiohttp (after TLS, when on)."""

    def __init__(self, server: "GatedServer"):
        self.server = server
        self.transport: asyncio.Transport | None = None  # the TCP connection, until aiohttp has it
        self.handler: web.RequestHandler | None = None  # aiohttp's protocol, once it has the connection
        self.peer = "unknown"

    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        self.server.admit(self)

    def data_received(self, data: bytes) -> None:  # reading is paused until TLS or aiohttp takes over
        pass

    def connection_lost(self, exc) -> None:
        if self.transport is not None:  # lost before aiohttp had it (during the TLS handshake)
            self.server.release(self)


class GatedServer(web.Server):
    """aiohttp's low-level server; ``door`` is the protocol factory for the listening socket."""

    def __init__(self, handler, limits: HTTPLimits, ssl_context: ssl.SSLContext | None = None, **kwargs):
        super().__init__(handler, **kwargs)
        self.cap, self.per_peer = limits.connection_cap(), limits.max_connections_per_peer
        self.header_timeout_s, self.ssl_context = limits.header_timeout_s, ssl_context
        self.open: dict[_Door, asyncio.TimerHandle | None] = {}  # counted against the caps; timer until headers
        self.turned_away: dict[_Door, asyncio.TimerHandle | None] = {}  # to be answered 503
        self.by_peer: dict[str, int] = {}  # open connections per client address
        self._doors: dict[web.RequestHandler, _Door] = {}
        self._handshakes: set[asyncio.Task] = set()  # TLS handshakes under way
        self.refused = self.expired = 0

    def door(self) -> _Door:
        return _Door(self)

    def admit(self, door: _Door) -> None:
        """Count a new connection, start its header deadline, and start TLS or hand it to aiohttp."""
        loop = asyncio.get_running_loop()
        door.transport.pause_reading()
        if len(self.open) < self.cap and self.by_peer.get(door.peer, 0) < self.per_peer:
            self.by_peer[door.peer] = self.by_peer.get(door.peer, 0) + 1
            room, wait = self.open, self.header_timeout_s
        elif len(self.turned_away) < max(1, self.cap // 4):
            room, wait = self.turned_away, min(REFUSE_WAIT_S, self.header_timeout_s)
        else:
            self.refused += 1
            door.transport, transport = None, door.transport
            transport.abort()
            return
        room[door] = loop.call_later(wait, self._expire, door)
        if self.ssl_context is not None:
            # The loop keeps only a weak reference to a task: hold it, or a pending handshake
            # can be collected mid-way ("Task was destroyed but it is pending!") and its slot leak.
            task = loop.create_task(self._handshake(door, wait))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)
        else:
            self._hand_over(door, door.transport)

    async def _handshake(self, door: _Door, within_s: float) -> None:
        handler = self()
        try:
            transport = await asyncio.get_running_loop().start_tls(
                door.transport, handler, self.ssl_context, server_side=True, ssl_handshake_timeout=within_s)
        except (OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError, RuntimeError):
            self.release(door)  # a failed or timed-out handshake frees its slot at once
            return
        if transport is None:  # the connection went away meanwhile
            self.release(door)
            return
        self._doors[handler], door.handler = door, handler
        door.transport = None  # from here aiohttp's connection_lost releases it
        handler.connection_made(transport)

    def _hand_over(self, door: _Door, transport: asyncio.Transport) -> None:
        handler = self()
        self._doors[handler], door.handler = door, handler
        door.transport = None
        transport.set_protocol(handler)
        handler.connection_made(transport)
        transport.resume_reading()

    def turned_away_handler(self, handler) -> bool:
        """Whether ``handler``'s connection came past a cap and is to be answered 503."""
        return self._doors.get(handler) in self.turned_away

    def headers_done(self, handler) -> None:
        door = self._doors.get(handler)
        for room in (self.open, self.turned_away):
            timer = room.get(door)
            if timer is not None:
                timer.cancel()
                room[door] = None

    def connection_lost(self, handler, exc=None) -> None:
        door = self._doors.pop(handler, None)
        if door is not None:
            self.release(door)
        super().connection_lost(handler, exc)

    def release(self, door: _Door) -> None:
        door.transport = None
        if door in self.open:
            self._forget(self.open.pop(door))
            left = self.by_peer.get(door.peer, 1) - 1
            if left > 0:
                self.by_peer[door.peer] = left
            else:
                self.by_peer.pop(door.peer, None)
        elif door in self.turned_away:
            self._forget(self.turned_away.pop(door))

    @staticmethod
    def _forget(timer: asyncio.TimerHandle | None) -> None:
        if timer is not None:
            timer.cancel()

    def _expire(self, door: _Door) -> None:
        """No request headers (or no TLS handshake) in time: free the slot."""
        for room in (self.open, self.turned_away):
            if door in room:
                room[door] = None
                self.expired += 1
                transport = door.transport or (door.handler.transport if door.handler else None)
                if transport is not None and not transport.is_closing():
                    transport.abort()
                if door.handler is None:  # still before aiohttp (in the TLS handshake): nobody else frees it
                    self.release(door)


def quiet_accept_errors(interval_s: float = ACCEPT_LOG_INTERVAL_S):
    """An event-loop exception handler that logs failed accepts once per ``interval_s``."""
    state = {"last": -float("inf"), "held": 0}

    def handle(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        if "accept()" not in str(context.get("message", "")):
            loop.default_exception_handler(context)
            return
        now = time.monotonic()
        if now - state["last"] < interval_s:
            state["held"] += 1
            return
        held, state["last"], state["held"] = state["held"], now, 0
        log.error("the HTTP port cannot accept connections: %s (%s); %d such reports held back; "
                  "raise the open-file limit or lower --max-connections", context.get("message"),
                  context.get("exception"), held)

    return handle
