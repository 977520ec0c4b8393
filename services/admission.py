"""Admission control per caller: a cap on calls in progress and a token bucket of calls per second.

A caller is a token's name when the server checks tokens, else the peer's address (without
its port: a client's connections share one budget). One trainer that floods the server is
refused while the others are served. A refusal carries how long to wait: the time until the
bucket holds a call again, or a short pause for the concurrency cap; the servicer sends it
as ``grpc-retry-pushback-ms`` (HTTP: ``Retry-After``) and the project's clients wait that long.

All calls run on the server's one event loop, so the state needs no lock.

Example::

    admission = Admission(AdmissionConfig(max_calls_per_caller=8, calls_per_s=20, burst=40))
    wait = admission.enter("trainer-a")   # None: admitted (call admission.leave later); else seconds
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class AdmissionConfig:
    max_calls_per_caller: int = 0  # calls in progress per caller; 0 = no cap
    calls_per_s: float = 0.0  # the bucket's refill rate per caller; 0 = no rate limit
    burst: int = 0  # the bucket's size (calls at once after a quiet spell); 0 = max(1, calls_per_s)
    busy_pause_s: float = 0.25  # the wait suggested to a caller at its concurrency cap

    def __post_init__(self) -> None:
        if self.max_calls_per_caller < 0 or self.burst < 0:
            raise ValueError(f"AdmissionConfig.max_calls_per_caller and burst must be >= 0, got "
                             f"{self.max_calls_per_caller}, {self.burst}")
        if not 0 <= self.calls_per_s < float("inf"):
            raise ValueError(f"AdmissionConfig.calls_per_s must be a finite number >= 0, got {self.calls_per_s}")
        if self.busy_pause_s <= 0:
            raise ValueError(f"AdmissionConfig.busy_pause_s must be > 0, got {self.busy_pause_s}")

    @property
    def enabled(self) -> bool:
        return self.max_calls_per_caller > 0 or self.calls_per_s > 0


MAX_BUCKETS = 10_000  # past this many callers, buckets that have refilled are dropped (they start full anyway)


class Refused(Exception):
    """A caller over its budget; ``retry_after_s`` says when to come back."""

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Admission:
    def __init__(self, config: AdmissionConfig, clock=time.monotonic):
        self.config, self.clock = config, clock
        self._calls: dict[str, int] = {}
        self._buckets: dict[str, tuple[float, float]] = {}  # caller -> (tokens, last refill time)

    def enter(self, caller: str) -> None:
        """Admit one call of ``caller`` (pair with ``leave``) or raise Refused."""
        cfg = self.config
        if cfg.max_calls_per_caller and self._calls.get(caller, 0) >= cfg.max_calls_per_caller:
            raise Refused(f"caller {caller!r} has {cfg.max_calls_per_caller} calls in progress already "
                          "(max_calls_per_caller); retry later", cfg.busy_pause_s)
        if cfg.calls_per_s:
            size = cfg.burst or max(1.0, cfg.calls_per_s)
            now = self.clock()
            tokens, last = self._buckets.get(caller, (size, now))
            tokens = min(size, tokens + (now - last) * cfg.calls_per_s)
            if tokens < 1:
                self._buckets[caller] = (tokens, now)
                raise Refused(f"caller {caller!r} is over its rate of {cfg.calls_per_s:g} calls/s; retry later",
                              (1 - tokens) / cfg.calls_per_s)
            self._buckets[caller] = (tokens - 1, now)
            if len(self._buckets) > MAX_BUCKETS:  # callers by peer address come and go: forget full buckets
                self._buckets = {c: (t, last) for c, (t, last) in self._buckets.items()
                                 if t + (now - last) * cfg.calls_per_s < size}
        self._calls[caller] = self._calls.get(caller, 0) + 1

    def leave(self, caller: str) -> None:
        left = self._calls.get(caller, 0) - 1
        if left > 0:
            self._calls[caller] = left
        else:
            self._calls.pop(caller, None)
