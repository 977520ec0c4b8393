"""The client's one retry layer: ``RetryPolicy`` (what is retried, how long each wait is)
and ``CallBudget`` (one call's deadline, shared by its attempts).

The policy retries UNAVAILABLE (loading, shutting down, connection refused) by default,
with exponential backoff and jitter, and a RESOURCE_EXHAUSTED refusal that carries the
server's retry hint (``grpc-retry-pushback-ms``) after that long. A call never retries
past its deadline, unless the policy grants waiting time (``max_wait_s``): a trainer that
must wait out a service that is starting or restarting sets it instead of wrapping the
client in a loop of its own. Both clients (services/client.py) drive their attempts with
``CallBudget.next_wait``.

    budget = CallBudget(timeout_s=30, retry=RetryPolicy(max_wait_s=600))
    budget.left()                      # seconds left for the next attempt
    budget.next_wait(error, attempt)   # seconds to wait before the next one, or None: raise
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import grpc


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for the ``codes`` (UNAVAILABLE by default): attempt i waits
    ``initial * multiplier**(i-1)`` (capped), +-jitter.

    Retries stay within the call's deadline unless ``max_wait_s`` > 0: then up to that many
    seconds spent waiting between attempts are added to the deadline, so a trainer can wait
    out a service that is loading or restarting without giving up its per-call timeout.
    """

    max_attempts: int | None = 5  # calls in total, the first included; None: until the time is up
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2  # each wait is scaled by a uniform factor in [1 - jitter, 1 + jitter]
    max_wait_s: float = 0.0  # waiting time allowed past the call's deadline (per call)
    codes: frozenset = frozenset({grpc.StatusCode.UNAVAILABLE})  # the status codes retried
    # A refusal with the server's retry hint (RESOURCE_EXHAUSTED + grpc-retry-pushback-ms) is
    # retried after that long. A proxy turns it off to pass the refusal on to its own caller.
    honour_pushback: bool = True

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"RetryPolicy.max_attempts must be >= 1 or None, got {self.max_attempts}")
        if not 0 <= self.max_wait_s < float("inf"):
            raise ValueError(f"RetryPolicy.max_wait_s must be a finite number >= 0, got {self.max_wait_s}")
        if not all(isinstance(c, grpc.StatusCode) for c in self.codes):
            raise ValueError(f"RetryPolicy.codes must hold grpc.StatusCode values, got {sorted(map(str, self.codes))}")
        if not 0 < self.initial_backoff_s <= self.max_backoff_s:
            raise ValueError("RetryPolicy needs 0 < initial_backoff_s <= max_backoff_s, got "
                             f"{self.initial_backoff_s}, {self.max_backoff_s}")
        if self.multiplier < 1 or not 0 <= self.jitter < 1:
            raise ValueError(f"RetryPolicy needs multiplier >= 1 and jitter in [0, 1), got "
                             f"{self.multiplier}, {self.jitter}")

    def backoff(self, attempt: int) -> float:
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)


def pushback_s(error: grpc.RpcError) -> float | None:
    """The server's retry hint (``grpc-retry-pushback-ms`` in the trailing metadata), in seconds."""
    try:
        value = dict(error.trailing_metadata() or ()).get("grpc-retry-pushback-ms")
        return int(value) / 1000 if value is not None and int(value) >= 0 else None
    except (TypeError, ValueError):
        return None


class CallBudget:
    """One client call's deadline, shared by its attempts (and by the RPCs of a split batch).

    Waiting between attempts moves the end back by the time waited, while the retry
    policy's ``max_wait_s`` lasts: the call keeps its full ``timeout_s`` of work. (Not the
    server's ``services.scheduler.Deadline``, which is the point in time an input is due.)
    """

    def __init__(self, timeout_s: float, retry: RetryPolicy):
        self.end, self.retry = time.monotonic() + timeout_s, retry
        self._wait_left = retry.max_wait_s

    def left(self) -> float:
        return max(0.001, self.end - time.monotonic())

    def next_wait(self, error: grpc.RpcError, attempt: int) -> float | None:
        """The wait after failed attempt number ``attempt`` (1, 2, ...) of one RPC, or None
        when ``error`` must be raised."""
        limit = self.retry.max_attempts
        hint = (pushback_s(error) if self.retry.honour_pushback and error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                else None)
        if (error.code() not in self.retry.codes and hint is None) or (limit is not None and attempt >= limit):
            return None
        delay = self.retry.backoff(attempt) if hint is None else hint  # the server knows when it has room
        granted = min(delay, self._wait_left)
        self._wait_left -= granted
        self.end += granted
        # The last wait is cut short rather than skipped, so the whole allowance is used.
        delay = min(delay, self.end - time.monotonic() - 0.01)
        return delay if delay > 0 else None
