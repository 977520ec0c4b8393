"""The ``grm.v1.RewardService`` handlers: one pipeline of short steps from request to reply.

One pipeline serves Score (a batch of one that fails as a whole) and ScoreBatch (per-item
errors)::

    validate -> cache lookup (ResultStore.lookup: one get_many per call)
    -> plan (render + tokenize on the prep thread)
    -> schedule, per input through Singleflight(key) [ cache recheck -> Scheduler.submit
       (micro-batched engine pass on its worker thread) -> ResultStore.store ]
    -> reply (latency stamped, judgments stripped unless asked for)

A flight ends only once its result is stored, and a leader re-reads the cache first, so
identical requests never reach the engine twice however their arrivals interleave. A
flight's deadline is the latest of its callers' (services/singleflight.py). How a result
is laid out in the cache lives in services/result_store.py.

Every failure becomes an ``RpcFailure`` with a status code from the table in
``proto/grm/v1/reward.proto``; bad input is always INVALID_ARGUMENT, never INTERNAL.
Requests arrive through hand-made method handlers whose deserializer tolerates garbage
bytes, so even an unparseable request is answered INVALID_ARGUMENT. The handlers enforce
the concurrent-call limit themselves (not grpc), so every refusal is answered and counted
in ``grm_requests_total`` like any other call.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Awaitable, Callable

import grpc
from google.protobuf.message import DecodeError

from grm.engine import EngineFailure, EngineOverloaded, EngineTimeout
from grm.judge import GenerativeRewardModel, InputTooLong, Plan
from grm.types import SamplingOptions
from services.cache import DEFAULT_PREFIX, cache_key
from services.convert import SERVICE_NAME, CachePolicy, result_to_proto, sampling_to_proto
from services.metrics import ServiceMetrics
from services.proto.grm.v1 import reward_pb2 as pb
from services.admission import Admission, AdmissionConfig, Refused, requested_sequences
from services.result_store import ResultStore
from services.scheduler import Deadline, DeadlineExpired, QueueFull, Scheduler, SchedulerClosed, Ticket, current_caller
from services.security import TokenFile, token_refusal, vouched_caller
from services.singleflight import Singleflight
from services.validation import Limits, Request, ValidationError, parse_batch, parse_score

log = logging.getLogger(__name__)
Code = grpc.StatusCode
BUSY_RETRY_S = 0.5  # the retry hint of a refusal that knows no better one (the server is full)
# A client's deadline and ours are the same timeout started a network hop apart, so its
# cancellation can arrive a little before our own timer fires; within this much of the
# deadline a cancelled call counts as DEADLINE_EXCEEDED.
DEADLINE_SLACK_S = 0.1
REPLICA_HEADER = "grm-replica"  # trailing metadata naming the server that answered (replicas)
_ENGINE_CODES = {EngineOverloaded: Code.RESOURCE_EXHAUSTED, EngineTimeout: Code.DEADLINE_EXCEEDED}


class RpcFailure(Exception):
    """An RPC (or one batch item) ends with this status code and message."""

    def __init__(self, code: grpc.StatusCode, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.code, self.message = code, message
        self.retry_after_s = retry_after_s  # sent as grpc-retry-pushback-ms with RESOURCE_EXHAUSTED

    def trailing_metadata(self) -> tuple:
        if self.code is not Code.RESOURCE_EXHAUSTED:
            return ()
        return (("grpc-retry-pushback-ms", str(max(1, round(1000 * (self.retry_after_s or BUSY_RETRY_S))))),)


@dataclass
class Backend:
    """What the handlers need once the model is loaded."""

    judge: GenerativeRewardModel
    scheduler: Scheduler


class _Malformed:
    """Stands in for a request whose bytes did not parse."""

    def __init__(self, type_name: str, error: Exception):
        self.message = f"request is not a valid {type_name}: {error}"


def _tolerant(message_type) -> Callable[[bytes], object]:
    def parse(data: bytes):
        try:
            return message_type.FromString(data)
        except (DecodeError, ValueError) as e:
            return _Malformed(message_type.DESCRIPTOR.full_name, e)
    return parse


class RewardServicer:
    """Holds the serving state; ``handler()`` exposes it to a grpc.aio server."""

    def __init__(self, limits: Limits, defaults: SamplingOptions, metrics: ServiceMetrics, cache=None,
                 cache_prefix: str = DEFAULT_PREFIX, server_version: str = "", max_concurrent_rpcs: int = 256):
        self.limits, self.defaults, self.metrics = limits, defaults, metrics
        self.cache, self.cache_prefix, self.server_version = cache, cache_prefix, server_version
        self.store = ResultStore(cache) if cache is not None else None
        self.singleflight = Singleflight()
        self.lease = None  # services.lease.ReplicaLease when replicas share a Redis cache
        self.replica_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"  # this server, by name
        self.recorder = None  # services.inspector.recorder.RecentRequests when grm serve --record N
        self.tokens: TokenFile | None = None  # when set, every RewardService call needs a bearer token
        self.admission = Admission(AdmissionConfig())  # per-caller limits (off by default)
        self.max_concurrent_rpcs = max_concurrent_rpcs
        self._in_flight = 0  # calls being handled; all of them run on the server's one event loop
        self.backend: Backend | None = None
        self.load_error: str | None = None
        self.shutting_down = False
        # Tokenizing prompts is CPU work too: it stays off the event loop and off the engine
        # thread. ONE thread: a fast tokenizer's split_special_tokens is state shared by every
        # caller, so two threads encoding at once can flip it for each other, and a response's
        # "<|im_end|>" could become a real special token (found by test_concurrency).
        self._prep = ThreadPoolExecutor(1, thread_name_prefix="grm-prep")

    def handler(self) -> grpc.GenericRpcHandler:
        methods = {"Score": (self.score, pb.ScoreRequest, pb.ScoreResponse),
                   "ScoreBatch": (self.score_batch, pb.ScoreBatchRequest, pb.ScoreBatchResponse),
                   "GetInfo": (self.get_info, pb.GetInfoRequest, pb.GetInfoResponse)}
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {
            name: grpc.unary_unary_rpc_method_handler(self._wrap(name, fn), request_deserializer=_tolerant(req),
                                                      response_serializer=resp.SerializeToString)
            for name, (fn, req, resp) in methods.items()})

    def close(self) -> None:
        self._prep.shutdown(wait=False, cancel_futures=True)

    def _wrap(self, name: str, fn: Callable[..., Awaitable]) -> Callable[..., Awaitable]:
        async def handle(request, context: grpc.aio.ServicerContext):
            start, code, caller, name_of_caller = time.perf_counter(), Code.OK, None, None
            self._in_flight += 1
            try:
                name_of_caller = self._caller(context)
                caller = self._admit(request, name_of_caller)
                current_caller.set(caller)  # the scheduler serves callers in turn
                context.set_trailing_metadata(((REPLICA_HEADER, self.replica_id),))  # which replica answered
                return await fn(request, context)
            except RpcFailure as e:
                code = e.code
                await context.abort(e.code, e.message, trailing_metadata=e.trailing_metadata())
            except asyncio.CancelledError:  # the caller went away or its deadline passed
                code = _cancelled_code(context)
                raise
            except Exception as e:  # a fault of ours; bad input never gets here
                log.exception("%s failed", name)
                code = Code.INTERNAL
                await context.abort(Code.INTERNAL, f"internal error: {type(e).__name__}: {e}")
            finally:
                self._in_flight -= 1
                if caller is not None:  # admitted: its place in the caller's budget is free again
                    self.admission.leave(caller, requested_sequences(request, self.defaults.k))
                self.metrics.requests.labels(name, code.name).inc()
                if self.tokens is not None:  # callers by token name; peers without tokens are too many to label
                    label = name_of_caller or "(no valid token)"  # refused callers keep their name
                    self.metrics.caller_requests.labels(label, code.name).inc()
                    if code is not Code.OK:
                        log.info("%s by %s: %s", name, label, code.name)
                self.metrics.latency.labels(name).observe(time.perf_counter() - start)
        return handle

    @property
    def calls_in_flight(self) -> int:
        """Calls being handled now, refusals included (they end at once)."""
        return self._in_flight

    def _caller(self, context: grpc.aio.ServicerContext) -> str:
        """The token's name (UNAUTHENTICATED without a known one), or with no tokens the peer's host
        (an HTTP client's host for the calls the HTTP front end makes for it)."""
        if self.tokens is not None:
            authorization = dict(context.invocation_metadata() or ()).get("authorization")
            name = self.tokens.identify(authorization)
            if name is None:
                raise RpcFailure(Code.UNAUTHENTICATED, token_refusal(authorization))
            return name
        return vouched_caller(context.invocation_metadata()) or peer_host(context.peer() or "")

    def _admit(self, request, caller: str) -> str:
        """Refuse a call past the concurrent-call limit or the caller's own limits, or one whose
        bytes did not parse. An admitted call is the caller's until ``admission.leave``."""
        if self._in_flight > self.max_concurrent_rpcs:
            raise RpcFailure(Code.RESOURCE_EXHAUSTED, f"the server is busy: {self.max_concurrent_rpcs} calls "
                             "in flight already (max_concurrent_rpcs); retry later")
        try:
            self.admission.enter(caller, requested_sequences(request, self.defaults.k))
        except Refused as e:
            raise RpcFailure(Code.RESOURCE_EXHAUSTED, str(e), e.retry_after_s) from None
        if isinstance(request, _Malformed):
            self.admission.leave(caller, requested_sequences(request, self.defaults.k))
            raise RpcFailure(Code.INVALID_ARGUMENT, request.message)
        return caller

    def _serving(self) -> Backend:
        if self.shutting_down:
            raise RpcFailure(Code.UNAVAILABLE, "the server is shutting down")
        if self.backend is None:
            if self.load_error:
                raise RpcFailure(Code.UNAVAILABLE, f"the model failed to load: {self.load_error}")
            raise RpcFailure(Code.UNAVAILABLE, "the model is still loading; retry shortly")
        return self.backend

    def _validate(self, parse, request, backend: Backend) -> Request:
        try:
            return parse(request, self.limits, self.defaults, meta_available=backend.judge.meta_rm is not None)
        except ValidationError as e:
            raise RpcFailure(Code.INVALID_ARGUMENT, str(e)) from None

    # ------------------------------------------------------------------ RPCs

    async def score(self, request: pb.ScoreRequest, context) -> pb.ScoreResponse:
        backend = self._serving()
        req = self._validate(parse_score, request, backend)
        [out] = await self._score(req, backend, context, where=["input"])
        if isinstance(out, RpcFailure):
            raise out
        return pb.ScoreResponse(result=out)

    async def score_batch(self, request: pb.ScoreBatchRequest, context) -> pb.ScoreBatchResponse:
        backend = self._serving()
        req = self._validate(parse_batch, request, backend)
        outs = await self._score(req, backend, context, where=[f"items[{i}]" for i in range(len(req.items))])
        return pb.ScoreBatchResponse(results=[
            pb.ItemResult(error=pb.Status(code=o.code.value[0], message=o.message))
            if isinstance(o, RpcFailure) else pb.ItemResult(result=o) for o in outs])

    async def get_info(self, request: pb.GetInfoRequest, context) -> pb.GetInfoResponse:
        judge = self._serving().judge
        limits = pb.Limits(**{f: getattr(self.limits, f) for f in pb.Limits.DESCRIPTOR.fields_by_name})
        # A real probe (bounded by the cache's timeout, skipped while its breaker is open):
        # state() alone would say "ok" about a Redis that died since the last request.
        cache = pb.CacheInfo(backend=self.cache.name if self.cache is not None else "none",
                             state=await self.cache.check() if self.cache is not None else "off")
        return pb.GetInfoResponse(
            model_id=judge.model_id, revision=judge.revision, template_version=judge.template.version,
            max_context=judge.max_context, limits=limits, cache=cache,
            meta_rm_id=judge.meta_rm.model_id if judge.meta_rm is not None else "",
            default_sampling=sampling_to_proto(self.defaults), server_version=self.server_version)

    # ------------------------------------------------------------------ the pipeline

    async def _score(self, req: Request, backend: Backend, context, where: list[str]) -> list:
        """One ``pb.ScoreResult`` or ``RpcFailure`` per item, in order."""
        start = time.perf_counter()
        deadline = Deadline.within(context.time_remaining())
        identity = backend.judge.cache_identity(req.aggregation)
        keys = [self._key(identity, req, item) for item in req.items]
        outs = await self._lookup(req, keys)
        todo = [i for i, out in enumerate(outs) if out is None]
        if todo:
            computed = await self._compute_all(backend, req, [(i, where[i], keys[i]) for i in todo], deadline)
            for i, out in zip(todo, computed):
                outs[i] = out
        latency_ms = (time.perf_counter() - start) * 1000
        if self.recorder is not None:  # with the judgments, before those nobody asked for are stripped
            self.recorder.add(req.items, outs, context, where, latency_ms)
        return _reply(outs, req.return_judgments, latency_ms)

    def _key(self, identity: dict[str, str], req: Request, item) -> str | None:
        """The cache and flight key of one input; None when it is neither cached nor shared."""
        if isinstance(item, ValidationError) or req.cache_policy is CachePolicy.BYPASS:
            return None
        return cache_key(self.cache_prefix, identity, item, req.sampling, req.aggregation)

    async def _lookup(self, req: Request, keys: list[str | None]) -> list:
        """Bad items as their INVALID_ARGUMENT, cache hits as results, None for what to compute."""
        outs: list = [RpcFailure(Code.INVALID_ARGUMENT, str(item)) if isinstance(item, ValidationError) else None
                      for item in req.items]
        wanted = [i for i, key in enumerate(keys) if key is not None]
        if self.store is None or req.cache_policy is not CachePolicy.USE or not wanted:
            return outs
        found = await self.store.lookup([keys[i] for i in wanted], req.return_judgments or self.recorder is not None)
        for i, hit in zip(wanted, found):
            outs[i] = hit
        hits = sum(hit is not None for hit in found)
        self.metrics.cache_lookups.labels("hit").inc(hits)
        self.metrics.cache_lookups.labels("miss").inc(len(wanted) - hits)
        self.metrics.items.labels("cache").inc(hits)
        return outs

    async def _compute_all(self, backend: Backend, req: Request, todo: list[tuple[int, str, str | None]],
                           deadline: Deadline) -> list:
        """Plan the inputs ``todo`` (index, field name, key) and schedule them; a result or RpcFailure each."""
        scheduler = backend.scheduler
        if scheduler.free_slots() < len(todo):
            raise RpcFailure(Code.RESOURCE_EXHAUSTED, f"the server is busy: {len(todo)} inputs do not fit "
                             f"the queue ({scheduler.free_slots()} free slots); retry later")
        with scheduler.expect(len(todo)) as ticket:
            plans = await asyncio.get_running_loop().run_in_executor(
                self._prep, _plan_all, backend.judge, req, [(i, where) for i, where, _ in todo])
            ticket.consume(sum(isinstance(p, RpcFailure) for p in plans))
            return await asyncio.gather(*(
                self._compute(scheduler, plan, key, deadline, ticket, req.cache_policy)
                for (_, _, key), plan in zip(todo, plans)))

    async def _compute(self, scheduler: Scheduler, plan: Plan | RpcFailure, key: str | None,
                       deadline: Deadline, ticket: Ticket, policy: CachePolicy) -> pb.ScoreResult | RpcFailure:
        """One input through its flight (shared with identical inputs in flight) to a result of its own."""
        if isinstance(plan, RpcFailure):
            return plan

        def run(shared: Deadline) -> Awaitable[pb.ScoreResult]:
            return self._run(scheduler, plan, key, shared, ticket, policy)

        try:
            shared = await (run(deadline) if key is None else self.singleflight.run(key, run, deadline))
        except QueueFull as e:
            return RpcFailure(Code.RESOURCE_EXHAUSTED, f"the server is busy: {e}; retry later")
        except DeadlineExpired as e:
            return RpcFailure(Code.DEADLINE_EXCEEDED, str(e))
        except SchedulerClosed as e:
            return RpcFailure(Code.UNAVAILABLE, str(e))
        except EngineFailure as e:  # a remote engine down, overloaded or too slow: never a score
            return RpcFailure(_ENGINE_CODES.get(type(e), Code.UNAVAILABLE), str(e))
        except Exception as e:  # the engine failed on this input alone (the scheduler isolates it)
            log.exception("scoring an input failed")
            return RpcFailure(Code.INTERNAL, f"scoring failed: {type(e).__name__}: {e}")
        out = pb.ScoreResult()
        out.CopyFrom(shared)  # every caller edits its own copy (latency, judgments stripped)
        return out

    async def _run(self, scheduler: Scheduler, plan: Plan, key: str | None, deadline: Deadline,
                   ticket: Ticket, policy: CachePolicy) -> pb.ScoreResult:
        """The work of one flight: recheck the cache, run the engine, store the result."""
        if key is not None and policy is CachePolicy.USE and self.store is not None:
            # A request that missed the cache just before another flight for this key stored
            # its result and ended finds the entry here instead of recomputing. With
            # judgments: the flight's result is shared by callers that may want them.
            cached = await self._cached(key)
            if cached is not None:
                return cached
            if self.lease is not None:  # replicas sharing Redis: another one may be computing it
                return await self.lease.run(key, lambda: self._engine(scheduler, plan, key, deadline, ticket),
                                            lambda: self.lease.read_result(key), deadline, on_wait=ticket.consume,
                                            keep=lambda msg: self.lease.keep_result(key, msg))
        return await self._engine(scheduler, plan, key, deadline, ticket)

    async def _cached(self, key: str) -> pb.ScoreResult | None:
        [cached] = await self.store.lookup([key], with_judgments=True)
        return cached

    async def _engine(self, scheduler: Scheduler, plan: Plan, key: str | None, deadline: Deadline,
                      ticket: Ticket) -> pb.ScoreResult:
        """Run the engine on one plan and store its result."""
        msg = result_to_proto(await scheduler.submit(plan, deadline, ticket))
        if key is not None and self.store is not None:
            # Stored before the flight ends: a request that just missed the cache either
            # joins this flight or finds the entry on its recheck, never computes it again.
            await self.store.store(key, msg)
        return msg


def _reply(outs: list, with_judgments: bool, latency_ms: float) -> list:
    """Stamp every result with the call's latency; drop judgments nobody asked for."""
    for out in outs:
        if isinstance(out, pb.ScoreResult):
            out.latency_ms = latency_ms
            if not with_judgments:
                del out.judgments[:]
    return outs


def _cancelled_code(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """Why a call was cancelled: its deadline (DEADLINE_EXCEEDED) or its client (CANCELLED)."""
    remaining = context.time_remaining()
    return Code.DEADLINE_EXCEEDED if remaining is not None and remaining <= DEADLINE_SLACK_S else Code.CANCELLED


def _plan_all(judge: GenerativeRewardModel, req: Request, todo: list[tuple[int, str]]) -> list:
    """Plan each input (render + tokenize); a prompt that cannot fit becomes INVALID_ARGUMENT."""
    plans = []
    for i, where in todo:
        try:
            plans.append(judge.plan(req.items[i], req.sampling, req.aggregation))
        except InputTooLong as e:
            plans.append(RpcFailure(Code.INVALID_ARGUMENT, f"{where} is too long for the model: {e}"))
        except ValueError as e:
            plans.append(RpcFailure(Code.INVALID_ARGUMENT, f"{where}: {e}"))
    return plans


def peer_host(peer: str) -> str:
    """A gRPC peer string (``ipv4:10.0.0.5:51234``, ``ipv6:[::1]:5``) without its port: one
    client's connections share a budget."""
    kind, _, address = peer.partition(":")
    if not address:
        return peer or "unknown"
    host = address.rsplit(":", 1)[0] if kind in ("ipv4", "ipv6") else address
    return f"{kind}:{host}"
