"""The engine servers behind a remote engine: who gets the next call, who is out, who is back.

``EnginePool`` holds one ``Endpoint`` per URL. A call goes to the live endpoint with the
least outstanding work (tokens it may still generate for calls in flight), so a slow or
busy server gets less. An endpoint that fails (connection refused, closed mid-call, an
overload answer, a health probe that times out) is ejected for a back-off that doubles
per consecutive failure, and a probe task re-admits it once its ``/health`` answers 200.
All of it runs on the remote engine's own event loop, so no lock is needed.

Example (inside a coroutine on that loop)::

    pool = EnginePool(["http://10.0.0.1:8000", "http://10.0.0.2:8000"], PoolConfig())
    endpoint = pool.pick()            # None when every URL is ejected
    with pool.busy(endpoint, work=4 * 256):
        ...                           # the HTTP call
    pool.eject(endpoint, "connection refused")
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterator, Sequence

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolConfig:
    eject_min_s: float = 0.5  # first ejection; doubles per consecutive failure
    eject_max_s: float = 30.0
    probe_interval_s: float = 0.25  # how often ejected endpoints whose back-off ended are probed
    probe_timeout_s: float = 2.0  # a /health that takes longer counts as down

    def __post_init__(self) -> None:
        if not 0 < self.eject_min_s <= self.eject_max_s:
            raise ValueError(f"PoolConfig needs 0 < eject_min_s <= eject_max_s, got "
                             f"{self.eject_min_s}, {self.eject_max_s}")
        for name in ("probe_interval_s", "probe_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"PoolConfig.{name} must be > 0, got {getattr(self, name)}")


@dataclass
class Endpoint:
    url: str  # base URL, no trailing slash
    outstanding: int = 0  # work in flight (tokens the calls may still generate)
    in_flight: int = 0  # calls in flight
    ejected_until: float | None = None  # time.monotonic(); None while live
    failures: int = 0  # consecutive failures (reset by a success)
    last_error: str = ""
    counts: dict[str, int] = field(default_factory=lambda: {"calls": 0, "ok": 0, "failed": 0, "ejected": 0})

    @property
    def live(self) -> bool:
        return self.ejected_until is None


class EnginePool:
    """See the module docstring."""

    def __init__(self, urls: Sequence[str], config: PoolConfig = PoolConfig()):
        if not urls:
            raise ValueError("EnginePool needs at least one URL")
        self.config = config
        self.endpoints = [Endpoint(url.rstrip("/")) for url in urls]
        self._prober: asyncio.Task | None = None

    def pick(self, avoid: set[str] = frozenset()) -> Endpoint | None:
        """The live endpoint with the least outstanding work, outside ``avoid`` when possible."""
        live = [e for e in self.endpoints if e.live]
        preferred = [e for e in live if e.url not in avoid] or live
        return min(preferred, key=lambda e: (e.outstanding, e.in_flight), default=None)

    @contextmanager
    def busy(self, endpoint: Endpoint, work: int) -> Iterator[None]:
        endpoint.outstanding += work
        endpoint.in_flight += 1
        endpoint.counts["calls"] += 1
        try:
            yield
        finally:
            endpoint.outstanding -= work
            endpoint.in_flight -= 1

    def succeeded(self, endpoint: Endpoint) -> None:
        endpoint.counts["ok"] += 1
        endpoint.failures = 0

    def eject(self, endpoint: Endpoint, why: str) -> None:
        """Take ``endpoint`` out of rotation; the prober brings it back once it answers. The
        other calls that were in flight on it fail too: they do not lengthen the back-off."""
        endpoint.counts["failed"] += 1
        endpoint.last_error = why
        if endpoint.live:
            endpoint.counts["ejected"] += 1
            log.warning("engine %s ejected: %s", endpoint.url, why)
            self._back_off(endpoint)

    def _back_off(self, endpoint: Endpoint) -> None:
        endpoint.failures += 1
        backoff = min(self.config.eject_max_s, self.config.eject_min_s * 2 ** (endpoint.failures - 1))
        endpoint.ejected_until = time.monotonic() + backoff

    def describe_down(self) -> str:
        return "; ".join(f"{e.url}: {e.last_error or 'ejected'}" for e in self.endpoints if not e.live)

    def start_probing(self, healthy: Callable[[Endpoint], Awaitable[bool]]) -> None:
        """Run the re-admission loop on the current event loop (``healthy`` asks one endpoint)."""
        if self._prober is None:
            self._prober = asyncio.get_running_loop().create_task(self._probe_forever(healthy))

    def stop_probing(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            self._prober = None

    async def _probe_forever(self, healthy: Callable[[Endpoint], Awaitable[bool]]) -> None:
        while True:
            await asyncio.sleep(self.config.probe_interval_s)
            now = time.monotonic()
            due = [e for e in self.endpoints if not e.live and e.ejected_until <= now]
            for endpoint, ok in zip(due, await asyncio.gather(*(self._probe(healthy, e) for e in due))):
                if ok:
                    log.warning("engine %s answers again; back in rotation", endpoint.url)
                    endpoint.ejected_until = None
                else:  # still down: wait longer before the next probe
                    self._back_off(endpoint)

    async def _probe(self, healthy: Callable[[Endpoint], Awaitable[bool]], endpoint: Endpoint) -> bool:
        try:
            return await asyncio.wait_for(healthy(endpoint), self.config.probe_timeout_s)
        except Exception as e:  # down, hung or garbage: stays out
            endpoint.last_error = f"health probe failed: {type(e).__name__}: {e}"
            return False
