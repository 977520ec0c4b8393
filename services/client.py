"""Clients for the reward service: ``RewardClient`` (sync) and ``AsyncRewardClient``.

Both keep one channel for their lifetime, put a deadline on every call (``timeout_s``,
default 120 s, overridable per call), retry with exponential backoff and jitter on
UNAVAILABLE only (loading, shutting down, connection refused) and never past the
call's deadline, and return typed records: ``ScoreReply`` holds a ``grm.types.ScoreResult``
whose unscored responses have reward ``None``. Any other error is raised as the
``grpc.RpcError`` it is; branch on ``e.code()``. ``RetryPolicy`` (services/retry.py) is the
only retry layer of the project: a trainer that must wait out a service that is starting
or restarting sets ``RetryPolicy(max_wait_s=...)`` (time spent waiting is then not charged
to the deadline, up to that long) instead of wrapping the client in a loop of its own.

``score_rows`` is the one path from a trainer's flat (prompt, response) rows to rewards,
shared by the TRL and verl adapters, ``policy.rewards.ServiceReward`` and the OpenRLHF
HTTP endpoint: rows sharing a prompt are judged together (``grm.grouping.group_rows``),
a group larger than the server's ``max_responses`` is judged in overlapping parts that
share anchor responses (``grm.grouping.split_groups``; how the parts' rewards are made
comparable is said there), everything goes in one ScoreBatch (split past
``max_batch_items``), and each row gets a ``RowScore`` back, ``reward`` None when unscored.

Each call is written once, in ``ClientCore``, as a plan: a generator that yields the steps
it needs (an ``Attempt`` at an RPC, or a wait in seconds) and is sent each step's outcome
(the reply, or the ``grpc.RpcError``). The two clients are transports that only run
plans, one blocking and one with ``await``; building requests, retrying, splitting
batches and decoding replies happen in the plan, the same for both.

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
import itertools
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grm.grouping import Row, RowScore, group_rows, split_groups, spread_back
from grm.types import Message, SamplingOptions, ScoreInput, ScoreResult
from services.channel import (DEFAULT_MAX_MESSAGE_BYTES, ClientTLS, auth_metadata,  # noqa: F401 (re-exported)
                              channel_options, open_channel)
from services.convert import (CACHE_POLICY_TO_PROTO, SERVICE_NAME, CachePolicy, aggregation_to_proto,
                              input_to_proto, result_from_proto, sampling_from_proto, sampling_to_proto)
from services.proto.grm.v1 import reward_pb2 as pb
from services.proto.grm.v1 import reward_pb2_grpc as pb_grpc
from services.retry import CallBudget, RetryPolicy, pushback_s  # noqa: F401 (re-exported)

# Metadata sent with every call made in this context: a front end that scores for someone
# else (the HTTP endpoint, the inspector's form) names them here, and the server's request
# recorder shows who (services/inspector/recorder.py).
CALL_METADATA: contextvars.ContextVar[tuple] = contextvars.ContextVar("grm_call_metadata", default=())


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


def _chunks(items: Sequence, size: int | None) -> list[Sequence]:
    if not size or len(items) <= size:
        return [items]
    return [items[i:i + size] for i in range(0, len(items), size)]


def _needs_limits(items: Sequence[ScoreInput]) -> bool:
    """One input with one response fits any server; more may pass max_batch_items or max_responses."""
    return len(items) > 1 or any(len(it.responses) > 1 for it in items)


@dataclass(frozen=True)
class Attempt:
    """One try at an RPC: the stub method's name, its request and the seconds it may take."""

    method: str  # "Score" | "ScoreBatch" | "GetInfo"
    request: Any
    timeout_s: float


# A plan yields Attempts and waits (seconds); it is sent each Attempt's reply or RpcError
# (None after a wait) and returns the call's result.
Plan = Generator["Attempt | float", Any, Any]


class ClientCore:
    """What both clients share: their settings, the server's limits once read, and every
    call as a plan (see the module docstring). A transport runs plans with ``_run``."""

    def __init__(self, target: Any, timeout_s: float, retry: RetryPolicy, token: str | None):
        self.target, self.timeout_s, self.retry = target, timeout_s, retry
        self._limits: dict[str, int] | None = None  # the server's Limits, read once with GetInfo when needed
        self.waits = 0  # backoff waits between attempts so far (a trainer logs them)
        self._auth = auth_metadata(token)  # the token, or $GRM_TOKEN, sent with every call

    def _metadata(self) -> tuple | None:
        return (self._auth + CALL_METADATA.get()) or None

    def _budget(self, timeout_s: float | None) -> CallBudget:
        return CallBudget(self.timeout_s if timeout_s is None else timeout_s, self.retry)

    def _rpc(self, method: str, request, budget: CallBudget) -> Plan:
        """One RPC, retried as ``budget``'s policy says; returns the reply or raises the error."""
        for attempt in itertools.count(1):
            answer = yield Attempt(method, request, budget.left())
            if not isinstance(answer, grpc.RpcError):
                return answer
            delay = budget.next_wait(answer, attempt)
            if delay is None:
                raise answer
            self.waits += 1
            yield delay

    def _score_plan(self, conversation, responses: Sequence[str], timeout_s: float | None, options: dict) -> Plan:
        request = score_request(conversation, responses, **options)
        return reply_from_proto((yield from self._rpc("Score", request, self._budget(timeout_s))).result)

    def _info_plan(self, timeout_s: float | None) -> Plan:
        return info_from_proto((yield from self._rpc("GetInfo", pb.GetInfoRequest(), self._budget(timeout_s))))

    def _limits_plan(self, budget: CallBudget) -> Plan:
        if self._limits is None:
            self._limits = info_from_proto((yield from self._rpc("GetInfo", pb.GetInfoRequest(), budget))).limits
        return self._limits

    def _batch_plan(self, items: Sequence[ScoreInput], budget: CallBudget, options: dict) -> Plan:
        size = (yield from self._limits_plan(budget))["max_batch_items"] if len(items) > 1 else None
        out: list[ScoreReply | ItemError] = []
        for chunk in _chunks(items, size):
            out += batch_from_proto((yield from self._rpc("ScoreBatch", batch_request(chunk, **options), budget)))
        return out

    def _rows_plan(self, rows: Sequence[Row], per_response: bool, timeout_s: float | None, options: dict) -> Plan:
        groups = group_rows(rows, per_response=per_response)
        if not groups:
            return []
        budget = self._budget(timeout_s)
        limits = (yield from self._limits_plan(budget)) if _needs_limits([g.item for g in groups]) else None
        parts = split_groups(groups, limits["max_responses"]) if limits else groups
        outs = yield from self._batch_plan([p.item for p in parts], budget, options)
        return spread_back(parts, [outcome(o) for o in outs], len(rows))


class RewardClient(ClientCore):
    """Synchronous client; thread-safe (one channel, shared)."""

    def __init__(self, target: str, *, timeout_s: float = 120.0, retry: RetryPolicy = RetryPolicy(),
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, tls: ClientTLS | None = None,
                 token: str | None = None):
        super().__init__(target, timeout_s, retry, token)
        self._channel = open_channel(target, max_message_bytes, tls)
        self._stub = pb_grpc.RewardServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def score(self, conversation: str | Sequence[Message | dict], responses: Sequence[str], *,
              timeout_s: float | None = None, **options) -> ScoreReply:
        """Options: k, temperature, top_p, max_new_tokens, seed, shuffle, adaptive ("off" | "decided" |
        "confident"), adaptive_z, shared_principles (or sampling=SamplingOptions),
        aggregation ("voting" | "meta_voting"), k_meta, principles, reference,
        cache_policy ("use" | "refresh" | "bypass"), return_judgments."""
        return self._run(self._score_plan(conversation, responses, timeout_s, options))

    def score_batch(self, items: Sequence[ScoreInput], *, timeout_s: float | None = None,
                    **options) -> list[ScoreReply | ItemError]:
        """One result or ItemError per item, in order; options as for ``score``, shared by all items.

        More items than the server's ``max_batch_items`` go in consecutive calls of at most
        that many (the limit is read once, with GetInfo); ``timeout_s`` bounds them all.
        """
        return self._run(self._batch_plan(items, self._budget(timeout_s), options))

    def score_rows(self, rows: Sequence[Row], *, per_response: bool = False, timeout_s: float | None = None,
                   **options) -> list[RowScore]:
        """One ``RowScore`` per row, in order: the rows sharing a prompt (and reference) are
        judged together, or each alone with ``per_response``; a group past the server's
        ``max_responses`` is judged in parts sharing anchor responses (``grm.grouping.split_groups``).
        Options as for ``score``; one deadline (``timeout_s``) for the whole call.
        """
        return self._run(self._rows_plan(rows, per_response, timeout_s, options))

    def info(self, *, timeout_s: float | None = None) -> ServiceInfo:
        return self._run(self._info_plan(timeout_s))

    def wait_ready(self, timeout_s: float = 300.0, poll_s: float = 0.2) -> None:
        """Block until the service is ready (``_ready``); TimeoutError otherwise. UNAVAILABLE
        and DEADLINE_EXCEEDED mean not yet; any other error is raised."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self._ready(max(0.05, deadline - time.monotonic())):
                    return
            except grpc.RpcError as e:
                if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
            if time.monotonic() + poll_s >= deadline:
                raise TimeoutError(f"{self.target} did not become ready within {timeout_s:g} s")
            time.sleep(poll_s)

    def _ready(self, left_s: float) -> bool:
        """The service reports SERVING (the model is loaded); the Serve client asks GetInfo instead."""
        status = self._health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=min(5.0, left_s))
        return status.status == health_pb2.HealthCheckResponse.SERVING

    def _run(self, plan: Plan):
        answer = None
        while True:
            try:
                step = plan.send(answer)
            except StopIteration as done:
                return done.value
            if isinstance(step, Attempt):
                try:
                    answer = getattr(self._stub, step.method)(step.request, timeout=step.timeout_s,
                                                              metadata=self._metadata())
                except grpc.RpcError as e:
                    answer = e
            else:
                time.sleep(step)
                answer = None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "RewardClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncRewardClient(ClientCore):
    """The asyncio twin of ``RewardClient``; the channel opens on the first call's event loop."""

    def __init__(self, target: str, *, timeout_s: float = 120.0, retry: RetryPolicy = RetryPolicy(),
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, tls: ClientTLS | None = None,
                 token: str | None = None):
        super().__init__(target, timeout_s, retry, token)
        self._max_message_bytes, self._tls = max_message_bytes, tls
        self._channel: grpc.aio.Channel | None = None
        self._stub = None

    def _ensure(self) -> pb_grpc.RewardServiceStub:
        if self._channel is None:  # grpc.aio channels belong to the loop they were made on
            self._channel = open_channel(self.target, self._max_message_bytes, self._tls, asynchronous=True)
            self._stub = pb_grpc.RewardServiceStub(self._channel)
        return self._stub

    async def score(self, conversation: str | Sequence[Message | dict], responses: Sequence[str], *,
                    timeout_s: float | None = None, **options) -> ScoreReply:
        """As ``RewardClient.score``."""
        return await self._run(self._score_plan(conversation, responses, timeout_s, options))

    async def score_batch(self, items: Sequence[ScoreInput], *, timeout_s: float | None = None,
                          **options) -> list[ScoreReply | ItemError]:
        """As ``RewardClient.score_batch`` (chunked past the server's ``max_batch_items``)."""
        return await self._run(self._batch_plan(items, self._budget(timeout_s), options))

    async def score_rows(self, rows: Sequence[Row], *, per_response: bool = False,
                         timeout_s: float | None = None, **options) -> list[RowScore]:
        """As ``RewardClient.score_rows``."""
        return await self._run(self._rows_plan(rows, per_response, timeout_s, options))

    async def info(self, *, timeout_s: float | None = None) -> ServiceInfo:
        return await self._run(self._info_plan(timeout_s))

    async def _run(self, plan: Plan):
        answer = None
        while True:
            try:
                step = plan.send(answer)
            except StopIteration as done:
                return done.value
            if isinstance(step, Attempt):
                try:
                    answer = await getattr(self._ensure(), step.method)(step.request, timeout=step.timeout_s,
                                                                        metadata=self._metadata())
                except grpc.RpcError as e:
                    answer = e
            else:
                await asyncio.sleep(step)
                answer = None

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def __aenter__(self) -> "AsyncRewardClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
