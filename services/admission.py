"""Admission control per caller: caps on work and calls in progress, and a token bucket of calls per second.

A caller is a token's name when the server checks tokens, else the peer's address (without
its port: a client's connections share one budget). One trainer that floods the server is
refused while the others are served. Calls differ a thousandfold in work (a Score of one
input at k=1 against a ScoreBatch of 512 inputs at k=32), so the cap that matters counts
**sequences** (inputs x k) in progress; a call larger than the whole budget is admitted
only when its caller has nothing else in progress. The scheduler then serves callers in
turn (services/scheduler.py), so what one caller has admitted delays another by a pass.

A refusal carries how long to wait: the time until the bucket holds a call again, or a
short pause for the caps on work in progress; the servicer sends it as
``grpc-retry-pushback-ms`` (HTTP: ``Retry-After``) and the project's clients wait that long.

All calls run on the server's one event loop, so the state needs no lock.

Example::

    admission = Admission(AdmissionConfig(max_sequences_per_caller=256, calls_per_s=20, burst=40))
    admission.enter("trainer-a", sequences=64)   # raises Refused (with retry_after_s) when over budget
    admission.leave("trainer-a", sequences=64)
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class AdmissionConfig:
    max_calls_per_caller: int = 0  # calls in progress per caller; 0 = no cap
    max_sequences_per_caller: int = 0  # sequences (inputs x k) in progress per caller; 0 = no cap
    calls_per_s: float = 0.0  # the bucket's refill rate per caller; 0 = no rate limit
    burst: int = 0  # the bucket's size (calls at once after a quiet spell); 0 = max(1, calls_per_s)
    busy_pause_s: float = 0.25  # the wait suggested to a caller at its concurrency cap

    def __post_init__(self) -> None:
        for name in ("max_calls_per_caller", "max_sequences_per_caller", "burst"):
            if getattr(self, name) < 0:
                raise ValueError(f"AdmissionConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.calls_per_s < float("inf"):
            raise ValueError(f"AdmissionConfig.calls_per_s must be a finite number >= 0, got {self.calls_per_s}")
        if self.busy_pause_s <= 0:
            raise ValueError(f"AdmissionConfig.busy_pause_s must be > 0, got {self.busy_pause_s}")

    @property
    def enabled(self) -> bool:
        return self.max_calls_per_caller > 0 or self.max_sequences_per_caller > 0 or self.calls_per_s > 0


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
        self._sequences: dict[str, int] = {}
        self._buckets: dict[str, tuple[float, float]] = {}  # caller -> (tokens, last refill time)

    def enter(self, caller: str, sequences: int = 1) -> None:
        """Admit one call of ``caller`` holding ``sequences`` sequences (pair with ``leave``), or
        raise Refused."""
        cfg = self.config
        if cfg.max_calls_per_caller and self._calls.get(caller, 0) >= cfg.max_calls_per_caller:
            raise Refused(f"caller {caller!r} has {cfg.max_calls_per_caller} calls in progress already "
                          "(max_calls_per_caller); retry later", cfg.busy_pause_s)
        held = self._sequences.get(caller, 0)
        if cfg.max_sequences_per_caller and held and held + sequences > cfg.max_sequences_per_caller:
            raise Refused(f"caller {caller!r} has {held} sequences in progress; this call's {sequences} would "
                          f"pass max_sequences_per_caller ({cfg.max_sequences_per_caller}); retry later",
                          cfg.busy_pause_s)
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
        self._sequences[caller] = held + sequences

    def leave(self, caller: str, sequences: int = 1) -> None:
        _take(self._calls, caller, 1)
        _take(self._sequences, caller, sequences)


def requested_sequences(request, default_k: int) -> int:
    """Sequences a Score or ScoreBatch request asks for (inputs x k, its k or the server's
    default), read before validation; 0 for other calls and for bytes that did not parse."""
    fields = getattr(getattr(request, "DESCRIPTOR", None), "fields_by_name", {})
    inputs = len(request.items) if "items" in fields else 1 if "input" in fields else 0
    k = request.sampling.k if "sampling" in fields else 0
    return inputs * (k or default_k)


def _take(counts: dict[str, int], caller: str, n: int) -> None:
    """Subtract ``n`` from ``counts[caller]``, forgetting callers that reach 0."""
    left = counts.get(caller, 0) - n
    if left > 0:
        counts[caller] = left
    else:
        counts.pop(caller, None)
