"""Clients for the reward service: ``RewardClient`` (sync) and ``AsyncRewardClient``.

Both keep one channel for their lifetime, put a deadline on every call (``timeout_s``,
default 120 s, overridable per call), retry with exponential backoff and jitter on
UNAVAILABLE only (loading, shutting down, connection refused) and never past the
call's deadline, and return typed records: ``ScoreReply`` holds a ``grm.types.ScoreResult``
whose unscored responses have reward ``None``. Any other error is raised as the
``grpc.RpcError`` it is; branch on ``e.code()``. ``RetryPolicy`` is the only retry layer
of the project: a trainer that must wait out a service that is starting or restarting
sets ``RetryPolicy(max_wait_s=...)`` (time spent waiting is then not charged to the
deadline, up to that long) instead of wrapping the client in a loop of its own.

``score_rows`` is the one path from a trainer's flat (prompt, response) rows to rewards,
shared by the TRL and verl adapters, ``policy.rewards.ServiceReward`` and the OpenRLHF
HTTP endpoint: rows sharing a prompt are judged together (``grm.grouping.group_rows``),
a group larger than the server's ``max_responses`` is judged in overlapping parts that
share anchor responses (``grm.grouping.split_groups``; how the parts' rewards are made
comparable is said there), everything goes in one ScoreBatch (split past
``max_batch_items``), and each row gets a ``RowScore`` back, ``reward`` None when unscored.

    with RewardClient("127.0.0.1:50051") as client:
        reply = client.score("Name a prime.", ["7", "9"], k=4, return_judgments=True)
        reply.result.rewards, reply.from_cache, reply.result.judgments[0].critique
        outs = client.score_batch([ScoreInput("2+2?", ["4", "5"]), ...], k=4)   # ScoreReply | ItemError
        scores = client.score_rows([Row("2+2?", "4"), Row("2+2?", "5")], k=4)   # RowScore per row

    async with AsyncRewardClient("127.0.0.1:50051") as client:
        reply = await client.score("Name a prime.", ["7", "9"])
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grm.grouping import Row, RowScore, group_rows, split_groups, spread_back
from grm.types import Message, SamplingOptions, ScoreInput, ScoreResult
from services.convert import (CACHE_POLICY_TO_PROTO, CachePolicy, aggregation_to_proto, input_to_proto,
                              result_from_proto, sampling_from_proto, sampling_to_proto)
from services.proto.grm.v1 import reward_pb2 as pb
from services.proto.grm.v1 import reward_pb2_grpc as pb_grpc
from services.targets import balanced_target

SERVICE_NAME = "grm.v1.RewardService"
DEFAULT_MAX_MESSAGE_BYTES = 256 * 2**20
# Metadata sent with every synchronous call made in this context: a front end that scores
# for someone else (the HTTP endpoint, the inspector's form) names them here, and the
# server's request recorder shows who (services/inspector/recorder.py).
CALL_METADATA: contextvars.ContextVar[tuple] = contextvars.ContextVar("grm_call_metadata", default=())


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
             adaptive: str | None = None, adaptive_z: float | None = None, shared_principles: bool | None = None,
             sampling: SamplingOptions | None = None, aggregation: str | None = None,
             k_meta: int | None = None, cache_policy: str = "use", return_judgments: bool = False) -> dict:
    return dict(sampling=sampling_to_proto(sampling, k=k, temperature=temperature, top_p=top_p,
                                           max_new_tokens=max_new_tokens, seed=seed, shuffle=shuffle,
                                           adaptive=adaptive, adaptive_z=adaptive_z,
                                           shared_principles=shared_principles),
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


@dataclass(frozen=True)
class ClientTLS:
    """PEM files for a TLS channel: the CA that signed the server's certificate (None: the
    system's roots), and for mutual TLS the client's own certificate and key."""

    root_ca: str | None = None
    cert: str | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("ClientTLS needs both cert and key for a client certificate, or neither")

    @classmethod
    def from_env(cls) -> "ClientTLS | None":
        """From ``GRM_TLS_CA``, ``GRM_TLS_CERT`` and ``GRM_TLS_KEY`` (None when none is set), so
        that reward functions configured by a framework's YAML reach a TLS service too."""
        ca, cert, key = (os.environ.get(f"GRM_TLS_{name}") or None for name in ("CA", "CERT", "KEY"))
        return cls(ca, cert, key) if ca or cert else None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: str | None) -> bytes | None:
            return Path(path).read_bytes() if path else None
        return grpc.ssl_channel_credentials(read(self.root_ca), read(self.key), read(self.cert))


def open_channel(target: str, max_message_bytes: int, tls: ClientTLS | None, asynchronous: bool = False):
    """A plaintext or TLS channel, sync or ``grpc.aio``, with the message size limits raised.
    ``target`` may list several replicas, ``host:port,host:port`` (services/targets.py);
    ``tls`` None reads ``ClientTLS.from_env()``."""
    module = grpc.aio if asynchronous else grpc
    target, spread = balanced_target(target)
    options = channel_options(max_message_bytes) + spread
    tls = tls or ClientTLS.from_env()
    if tls is None:
        return module.insecure_channel(target, options=options)
    return module.secure_channel(target, tls.credentials(), options=options)


def auth_metadata(token: str | None) -> tuple:
    """The ``authorization`` metadata for ``token``, else for ``$GRM_TOKEN``; () without either."""
    token = token or os.environ.get("GRM_TOKEN")
    return (("authorization", f"Bearer {token}"),) if token else ()


def pushback_s(error: grpc.RpcError) -> float | None:
    """The server's retry hint (``grpc-retry-pushback-ms`` in the trailing metadata), in seconds."""
    try:
        value = dict(error.trailing_metadata() or ()).get("grpc-retry-pushback-ms")
        return int(value) / 1000 if value is not None and int(value) >= 0 else None
    except (TypeError, ValueError):
        return None


class Deadline:
    """One call's deadline, shared by its attempts (and by the RPCs of a split batch).

    Waiting between attempts moves the end back by the time waited, while the retry
    policy's ``max_wait_s`` lasts: the call keeps its full ``timeout_s`` of work.
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


def _chunks(items: Sequence, size: int | None) -> list[Sequence]:
    if not size or len(items) <= size:
        return [items]
    return [items[i:i + size] for i in range(0, len(items), size)]


def _needs_limits(items: Sequence[ScoreInput]) -> bool:
    """One input with one response fits any server; more may pass max_batch_items or max_responses."""
    return len(items) > 1 or any(len(it.responses) > 1 for it in items)


class RewardClient:
    """Synchronous client; thread-safe (one channel, shared)."""

    def __init__(self, target: str, *, timeout_s: float = 120.0, retry: RetryPolicy = RetryPolicy(),
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, tls: ClientTLS | None = None,
                 token: str | None = None):
        self.target, self.timeout_s, self.retry = target, timeout_s, retry
        self._limits: dict[str, int] | None = None  # the server's Limits, read once with GetInfo when needed
        self.waits = 0  # backoff waits between attempts so far (a trainer logs them)
        self._auth = auth_metadata(token)  # the token, or $GRM_TOKEN, sent with every call
        self._channel = open_channel(target, max_message_bytes, tls)
        self._stub = pb_grpc.RewardServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def score(self, conversation: str | Sequence[Message | dict], responses: Sequence[str], *,
              timeout_s: float | None = None, **options) -> ScoreReply:
        """Options: k, temperature, top_p, max_new_tokens, seed, shuffle, adaptive ("off" | "decided" |
        "confident"), adaptive_z, shared_principles (or sampling=SamplingOptions),
        aggregation ("voting" | "meta_voting"), k_meta, principles, reference,
        cache_policy ("use" | "refresh" | "bypass"), return_judgments."""
        msg = self._call(self._stub.Score, score_request(conversation, responses, **options),
                         self._deadline(timeout_s))
        return reply_from_proto(msg.result)

    def score_batch(self, items: Sequence[ScoreInput], *, timeout_s: float | None = None,
                    **options) -> list[ScoreReply | ItemError]:
        """One result or ItemError per item, in order; options as for ``score``, shared by all items.

        More items than the server's ``max_batch_items`` go in consecutive calls of at most
        that many (the limit is read once, with GetInfo); ``timeout_s`` bounds them all.
        """
        return self._score_batch(items, self._deadline(timeout_s), options)

    def score_rows(self, rows: Sequence[Row], *, per_response: bool = False, timeout_s: float | None = None,
                   **options) -> list[RowScore]:
        """One ``RowScore`` per row, in order: the rows sharing a prompt (and reference) are
        judged together, or each alone with ``per_response``; a group past the server's
        ``max_responses`` is judged in parts sharing anchor responses (``grm.grouping.split_groups``).
        Options as for ``score``; one deadline (``timeout_s``) for the whole call.
        """
        groups = group_rows(rows, per_response=per_response)
        if not groups:
            return []
        deadline = self._deadline(timeout_s)
        limits = self._server_limits(deadline) if _needs_limits([g.item for g in groups]) else None
        parts = split_groups(groups, limits["max_responses"]) if limits else groups
        outs = self._score_batch([p.item for p in parts], deadline, options)
        return spread_back(parts, [outcome(o) for o in outs], len(rows))

    def info(self, *, timeout_s: float | None = None) -> ServiceInfo:
        return info_from_proto(self._call(self._stub.GetInfo, pb.GetInfoRequest(), self._deadline(timeout_s)))

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

    def _deadline(self, timeout_s: float | None) -> Deadline:
        return Deadline(self.timeout_s if timeout_s is None else timeout_s, self.retry)

    def _server_limits(self, deadline: Deadline) -> dict[str, int]:
        if self._limits is None:
            self._limits = info_from_proto(self._call(self._stub.GetInfo, pb.GetInfoRequest(), deadline)).limits
        return self._limits

    def _score_batch(self, items: Sequence[ScoreInput], deadline: Deadline,
                     options: dict) -> list[ScoreReply | ItemError]:
        size = self._server_limits(deadline)["max_batch_items"] if len(items) > 1 else None
        out: list[ScoreReply | ItemError] = []
        for chunk in _chunks(items, size):
            out += batch_from_proto(self._call(self._stub.ScoreBatch, batch_request(chunk, **options), deadline))
        return out

    def _call(self, method, request, deadline: Deadline):
        attempt = 0
        while True:
            attempt += 1
            try:
                return method(request, timeout=deadline.left(), metadata=(self._auth + CALL_METADATA.get()) or None)
            except grpc.RpcError as e:
                delay = deadline.next_wait(e, attempt)
                if delay is None:
                    raise
                self.waits += 1
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
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, tls: ClientTLS | None = None,
                 token: str | None = None):
        self.target, self.timeout_s, self.retry = target, timeout_s, retry
        self._max_message_bytes, self._tls, self._auth = max_message_bytes, tls, auth_metadata(token)
        self._limits: dict[str, int] | None = None
        self.waits = 0  # backoff waits between attempts so far
        self._channel: grpc.aio.Channel | None = None
        self._stub = None

    def _ensure(self) -> pb_grpc.RewardServiceStub:
        if self._channel is None:  # grpc.aio channels belong to the loop they were made on
            self._channel = open_channel(self.target, self._max_message_bytes, self._tls, asynchronous=True)
            self._stub = pb_grpc.RewardServiceStub(self._channel)
        return self._stub

    async def score(self, conversation: str | Sequence[Message | dict], responses: Sequence[str], *,
                    timeout_s: float | None = None, **options) -> ScoreReply:
        request = score_request(conversation, responses, **options)
        return reply_from_proto((await self._call("Score", request, self._deadline(timeout_s))).result)

    async def score_batch(self, items: Sequence[ScoreInput], *, timeout_s: float | None = None,
                          **options) -> list[ScoreReply | ItemError]:
        """As ``RewardClient.score_batch`` (chunked past the server's ``max_batch_items``)."""
        return await self._score_batch(items, self._deadline(timeout_s), options)

    async def score_rows(self, rows: Sequence[Row], *, per_response: bool = False,
                         timeout_s: float | None = None, **options) -> list[RowScore]:
        """As ``RewardClient.score_rows``."""
        groups = group_rows(rows, per_response=per_response)
        if not groups:
            return []
        deadline = self._deadline(timeout_s)
        limits = await self._server_limits(deadline) if _needs_limits([g.item for g in groups]) else None
        parts = split_groups(groups, limits["max_responses"]) if limits else groups
        outs = await self._score_batch([p.item for p in parts], deadline, options)
        return spread_back(parts, [outcome(o) for o in outs], len(rows))

    async def info(self, *, timeout_s: float | None = None) -> ServiceInfo:
        return info_from_proto(await self._call("GetInfo", pb.GetInfoRequest(), self._deadline(timeout_s)))

    def _deadline(self, timeout_s: float | None) -> Deadline:
        return Deadline(self.timeout_s if timeout_s is None else timeout_s, self.retry)

    async def _server_limits(self, deadline: Deadline) -> dict[str, int]:
        if self._limits is None:
            self._limits = info_from_proto(await self._call("GetInfo", pb.GetInfoRequest(), deadline)).limits
        return self._limits

    async def _score_batch(self, items: Sequence[ScoreInput], deadline: Deadline,
                           options: dict) -> list[ScoreReply | ItemError]:
        size = (await self._server_limits(deadline))["max_batch_items"] if len(items) > 1 else None
        out: list[ScoreReply | ItemError] = []
        for chunk in _chunks(items, size):
            out += batch_from_proto(await self._call("ScoreBatch", batch_request(chunk, **options), deadline))
        return out

    async def _call(self, name: str, request, deadline: Deadline):
        method = getattr(self._ensure(), name)
        attempt = 0
        while True:
            attempt += 1
            try:
                return await method(request, timeout=deadline.left(), metadata=self._auth or None)
            except grpc.RpcError as e:
                delay = deadline.next_wait(e, attempt)
                if delay is None:
                    raise
                self.waits += 1
                await asyncio.sleep(delay)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def __aenter__(self) -> "AsyncRewardClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
