"""Clients for the reward service: ``RewardClient`` (sync) and ``AsyncRewardClient``.

Both keep one channel for their lifetime, put a deadline on every call (``timeout_s``,
default 120 s, overridable per call), retry with exponential backoff and jitter on
UNAVAILABLE only (loading, shutting down, connection refused) and never past the
call's deadline, and return typed records: ``ScoreReply`` holds a ``grm.types.ScoreResult``
whose unscored responses have reward ``None``. Any other error is raised as the
``grpc.RpcError`` it is; branch on ``e.code()``.

    with RewardClient("127.0.0.1:50051") as client:
        reply = client.score("Name a prime.", ["7", "9"], k=4, return_judgments=True)
        reply.result.rewards, reply.from_cache, reply.result.judgments[0].critique
        outs = client.score_batch([ScoreInput("2+2?", ["4", "5"]), ...], k=4)   # ScoreReply | ItemError

    async with AsyncRewardClient("127.0.0.1:50051") as client:
        reply = await client.score("Name a prime.", ["7", "9"])
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grm.types import Message, SamplingOptions, ScoreInput, ScoreResult
from services.convert import (CACHE_POLICY_TO_PROTO, CachePolicy, aggregation_to_proto, input_to_proto,
                              result_from_proto, sampling_from_proto, sampling_to_proto)
from services.proto.grm.v1 import reward_pb2 as pb
from services.proto.grm.v1 import reward_pb2_grpc as pb_grpc

SERVICE_NAME = "grm.v1.RewardService"
DEFAULT_MAX_MESSAGE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for UNAVAILABLE: attempt i waits ``initial * multiplier**(i-1)`` (capped), +-jitter."""

    max_attempts: int = 5  # calls in total, the first included
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2  # each wait is scaled by a uniform factor in [1 - jitter, 1 + jitter]

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"RetryPolicy.max_attempts must be >= 1, got {self.max_attempts}")
        if not 0 < self.initial_backoff_s <= self.max_backoff_s:
            raise ValueError("RetryPolicy needs 0 < initial_backoff_s <= max_backoff_s, got "
                             f"{self.initial_backoff_s}, {self.max_backoff_s}")
        if self.multiplier < 1 or not 0 <= self.jitter < 1:
            raise ValueError(f"RetryPolicy needs multiplier >= 1 and jitter in [0, 1), got "
                             f"{self.multiplier}, {self.jitter}")

    def backoff(self, attempt: int) -> float:
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)


@dataclass(frozen=True)
class ScoreReply:
    result: ScoreResult  # judgments are empty unless return_judgments=True
    from_cache: bool  # read from the server's score cache
    latency_ms: float  # server-side time for this input


@dataclass(frozen=True)
class ItemError:
    """One ScoreBatch item failed (the others did not)."""

    code: grpc.StatusCode
    message: str  # names the field and the limit for INVALID_ARGUMENT


@dataclass(frozen=True)
class ServiceInfo:
    model_id: str
    revision: str
    template_version: str
    max_context: int  # prompt + generated tokens
    limits: dict[str, int]  # Limits field -> value
    cache_backend: str  # "memory" | "redis" | "none"
    cache_state: str  # "ok" | "degraded" | "off"
    meta_rm_id: str  # "" when meta voting is unavailable
    default_sampling: SamplingOptions
    server_version: str


_CODES = {c.value[0]: c for c in grpc.StatusCode}


def score_request(conversation: str | Sequence[Message | dict], responses: Sequence[str], *,
                  principles: str | None = None, reference: str | None = None, **options) -> pb.ScoreRequest:
    """A ScoreRequest; see ``_options`` for the keyword options (None = server default)."""
    item = ScoreInput(conversation, responses, principles=principles, reference=reference)
    return pb.ScoreRequest(input=input_to_proto(item), **_options(**options))


def batch_request(items: Sequence[ScoreInput], **options) -> pb.ScoreBatchRequest:
    return pb.ScoreBatchRequest(items=[input_to_proto(it) for it in items], **_options(**options))


def _options(k: int | None = None, temperature: float | None = None, top_p: float | None = None,
             max_new_tokens: int | None = None, seed: int | None = None, shuffle: bool | None = None,
             sampling: SamplingOptions | None = None, aggregation: str | None = None,
             k_meta: int | None = None, cache_policy: str = "use", return_judgments: bool = False) -> dict:
    return dict(sampling=sampling_to_proto(sampling, k=k, temperature=temperature, top_p=top_p,
                                           max_new_tokens=max_new_tokens, seed=seed, shuffle=shuffle),
                aggregation=aggregation_to_proto(aggregation, k_meta),
                cache_policy=CACHE_POLICY_TO_PROTO[CachePolicy(cache_policy)],
                return_judgments=return_judgments)


def reply_from_proto(msg: pb.ScoreResult) -> ScoreReply:
    return ScoreReply(result_from_proto(msg), msg.from_cache, msg.latency_ms)


def batch_from_proto(msg: pb.ScoreBatchResponse) -> list[ScoreReply | ItemError]:
    return [reply_from_proto(r.result) if r.WhichOneof("outcome") == "result"
            else ItemError(_CODES.get(r.error.code, grpc.StatusCode.UNKNOWN), r.error.message)
            for r in msg.results]


def outcome(out: ScoreReply | ItemError) -> ScoreResult | str:
    """The result of one batch item, or its error as ``"CODE: message"`` (see grm.grouping)."""
    return out.result if isinstance(out, ScoreReply) else f"{out.code.name}: {out.message}"


def info_from_proto(msg: pb.GetInfoResponse) -> ServiceInfo:
    return ServiceInfo(
        model_id=msg.model_id, revision=msg.revision, template_version=msg.template_version,
        max_context=msg.max_context, limits={f.name: getattr(msg.limits, f.name) for f in msg.limits.DESCRIPTOR.fields},
        cache_backend=msg.cache.backend, cache_state=msg.cache.state, meta_rm_id=msg.meta_rm_id,
        default_sampling=sampling_from_proto(msg.default_sampling), server_version=msg.server_version)


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes)]


def _left(deadline: float) -> float:
    return max(0.001, deadline - time.monotonic())


def _chunks(items: Sequence, size: int | None) -> list[Sequence]:
    if not size or len(items) <= size:
        return [items]
    return [items[i:i + size] for i in range(0, len(items), size)]


def _retryable(error: grpc.RpcError, attempt: int, retry: RetryPolicy, deadline: float) -> float | None:
    """The wait before the next attempt, or None when the error must be raised."""
    if error.code() != grpc.StatusCode.UNAVAILABLE or attempt >= retry.max_attempts:
        return None
    delay = retry.backoff(attempt)
    return delay if time.monotonic() + delay < deadline else None


class RewardClient:
    """Synchronous client; thread-safe (one channel, shared)."""

    def __init__(self, target: str, *, timeout_s: float = 120.0, retry: RetryPolicy = RetryPolicy(),
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        self.target, self.timeout_s, self.retry = target, timeout_s, retry
        self._max_items: int | None = None  # the server's max_batch_items, read on the first batch
        self._channel = grpc.insecure_channel(target, options=channel_options(max_message_bytes))
        self._stub = pb_grpc.RewardServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def score(self, conversation: str | Sequence[Message | dict], responses: Sequence[str], *,
              timeout_s: float | None = None, **options) -> ScoreReply:
        """Options: k, temperature, top_p, max_new_tokens, seed, shuffle (or sampling=SamplingOptions),
        aggregation ("voting" | "meta_voting"), k_meta, principles, reference,
        cache_policy ("use" | "refresh" | "bypass"), return_judgments."""
        msg = self._call(self._stub.Score, score_request(conversation, responses, **options), timeout_s)
        return reply_from_proto(msg.result)

    def score_batch(self, items: Sequence[ScoreInput], *, timeout_s: float | None = None,
                    **options) -> list[ScoreReply | ItemError]:
        """One result or ItemError per item, in order; options as for ``score``, shared by all items.

        More items than the server's ``max_batch_items`` go in consecutive calls of at most
        that many (the limit is read once, with GetInfo); ``timeout_s`` bounds them all.
        """
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        if self._max_items is None and len(items) > 1:
            self._max_items = self.info(timeout_s=_left(deadline)).limits["max_batch_items"]
        out: list[ScoreReply | ItemError] = []
        for chunk in _chunks(items, self._max_items):
            out += batch_from_proto(self._call(self._stub.ScoreBatch, batch_request(chunk, **options),
                                               _left(deadline)))
        return out

    def info(self, *, timeout_s: float | None = None) -> ServiceInfo:
        return info_from_proto(self._call(self._stub.GetInfo, pb.GetInfoRequest(), timeout_s))

    def wait_ready(self, timeout_s: float = 300.0, poll_s: float = 0.2) -> None:
        """Block until the service reports SERVING (the model is loaded); TimeoutError otherwise."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                status = self._health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME),
                                            timeout=max(0.05, min(5.0, deadline - time.monotonic()))).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as e:
                if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
            if time.monotonic() + poll_s >= deadline:
                raise TimeoutError(f"{self.target} did not become ready within {timeout_s:g} s")
            time.sleep(poll_s)

    def _call(self, method, request, timeout_s: float | None):
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        attempt = 0
        while True:
            attempt += 1
            try:
                return method(request, timeout=max(0.001, deadline - time.monotonic()))
            except grpc.RpcError as e:
                delay = _retryable(e, attempt, self.retry, deadline)
                if delay is None:
                    raise
                time.sleep(delay)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "RewardClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncRewardClient:
    """The asyncio twin of ``RewardClient``; the channel opens on the first call's event loop."""

    def __init__(self, target: str, *, timeout_s: float = 120.0, retry: RetryPolicy = RetryPolicy(),
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        self.target, self.timeout_s, self.retry = target, timeout_s, retry
        self._max_message_bytes = max_message_bytes
        self._max_items: int | None = None
        self._channel: grpc.aio.Channel | None = None
        self._stub = None

    def _ensure(self) -> pb_grpc.RewardServiceStub:
        if self._channel is None:  # grpc.aio channels belong to the loop they were made on
            self._channel = grpc.aio.insecure_channel(self.target,
                                                      options=channel_options(self._max_message_bytes))
            self._stub = pb_grpc.RewardServiceStub(self._channel)
        return self._stub

    async def score(self, conversation: str | Sequence[Message | dict], responses: Sequence[str], *,
                    timeout_s: float | None = None, **options) -> ScoreReply:
        request = score_request(conversation, responses, **options)
        return reply_from_proto((await self._call("Score", request, timeout_s)).result)

    async def score_batch(self, items: Sequence[ScoreInput], *, timeout_s: float | None = None,
                          **options) -> list[ScoreReply | ItemError]:
        """As ``RewardClient.score_batch`` (chunked past the server's ``max_batch_items``)."""
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        if self._max_items is None and len(items) > 1:
            self._max_items = (await self.info(timeout_s=_left(deadline))).limits["max_batch_items"]
        out: list[ScoreReply | ItemError] = []
        for chunk in _chunks(items, self._max_items):
            out += batch_from_proto(await self._call("ScoreBatch", batch_request(chunk, **options), _left(deadline)))
        return out

    async def info(self, *, timeout_s: float | None = None) -> ServiceInfo:
        return info_from_proto(await self._call("GetInfo", pb.GetInfoRequest(), timeout_s))

    async def _call(self, name: str, request, timeout_s: float | None):
        method = getattr(self._ensure(), name)
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        attempt = 0
        while True:
            attempt += 1
            try:
                return await method(request, timeout=max(0.001, deadline - time.monotonic()))
            except grpc.RpcError as e:
                delay = _retryable(e, attempt, self.retry, deadline)
                if delay is None:
                    raise
                await asyncio.sleep(delay)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def __aenter__(self) -> "AsyncRewardClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
