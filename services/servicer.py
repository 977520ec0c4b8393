"""The ``grm.v1.RewardService`` handlers: validate, look up the cache, plan, schedule, reply.

One pipeline serves Score (a batch of one that fails as a whole) and ScoreBatch (per-item
errors). For each input::

    validate -> cache get_many (one MGET per call) -> judge.plan on the prep thread
    -> Singleflight(key) [ cache re-read -> scheduler (micro-batched engine pass on its
       worker thread) -> ScoreResult proto -> cache set_many (one pipeline per pass,
       full result with judgments) ] -> reply (judgments stripped unless asked for)

The flight ends only once its result is stored, and a leader re-reads the cache first,
so identical requests never reach the engine twice however their arrivals interleave.

A result is stored as two entries: the ScoreResult without its judgments under ``key``
(a few dozen bytes) and one holding only the judgments under ``judgments_key(key)``
(k critiques: kilobytes to megabytes). A hit that does not return judgments reads the
small entry alone; one that does reads both in the same MGET and merges them, which
gives back exactly the stored message. Either entry missing or corrupt is a miss, and
the recomputed result overwrites both.

Every failure becomes an ``RpcFailure`` with a status code from the table in
``proto/grm/v1/reward.proto``; bad input is always INVALID_ARGUMENT, never INTERNAL.
Requests arrive through hand-made method handlers whose deserializer tolerates garbage
bytes, so even an unparseable request is answered INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Awaitable, Callable

import grpc
from google.protobuf.message import DecodeError

from grm.judge import GenerativeRewardModel, InputTooLong, Plan
from grm.types import SamplingOptions
from services.cache import DEFAULT_PREFIX, Singleflight, cache_key
from services.convert import CachePolicy, result_to_proto, sampling_to_proto
from services.metrics import ServiceMetrics
from services.proto.grm.v1 import reward_pb2 as pb
from services.scheduler import DeadlineExpired, QueueFull, Scheduler, SchedulerClosed, Ticket
from services.validation import Limits, Request, ValidationError, parse_batch, parse_score

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RewardService"].full_name  # "grm.v1.RewardService"
Code = grpc.StatusCode


class RpcFailure(Exception):
    """An RPC (or one batch item) ends with this status code and message."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


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
                 cache_prefix: str = DEFAULT_PREFIX, server_version: str = ""):
        self.limits, self.defaults, self.metrics = limits, defaults, metrics
        self.cache, self.cache_prefix, self.server_version = cache, cache_prefix, server_version
        self.singleflight = Singleflight()
        self._writer = _WriteBatcher(cache) if cache is not None else None
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
            start, code = time.perf_counter(), Code.OK
            try:
                if isinstance(request, _Malformed):
                    raise RpcFailure(Code.INVALID_ARGUMENT, request.message)
                return await fn(request, context)
            except RpcFailure as e:
                code = e.code
                await context.abort(e.code, e.message)
            except asyncio.CancelledError:  # the caller went away or its deadline passed
                code = Code.CANCELLED
                raise
            except Exception as e:  # a fault of ours; bad input never gets here
                log.exception("%s failed", name)
                code = Code.INTERNAL
                await context.abort(Code.INTERNAL, f"internal error: {type(e).__name__}: {e}")
            finally:
                self.metrics.requests.labels(name, code.name).inc()
                self.metrics.latency.labels(name).observe(time.perf_counter() - start)
        return handle

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
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        keys = [self._key(backend.judge, req, item) for item in req.items]
        outs: list = list(await self._lookup(keys, req.cache_policy, req.return_judgments))
        todo = []
        for i, item in enumerate(req.items):
            if isinstance(item, ValidationError):
                outs[i] = RpcFailure(Code.INVALID_ARGUMENT, str(item))
            elif outs[i] is None:
                todo.append(i)
        if todo:
            if backend.scheduler.free_slots() < len(todo):
                raise RpcFailure(Code.RESOURCE_EXHAUSTED, f"the server is busy: {len(todo)} inputs do not fit "
                                 f"the queue ({backend.scheduler.free_slots()} free slots); retry later")
            ticket = backend.scheduler.expect(len(todo))
            try:
                plans = await asyncio.get_running_loop().run_in_executor(
                    self._prep, _plan_all, backend.judge, req, [(i, where[i]) for i in todo])
                ticket.consume(sum(isinstance(p, RpcFailure) for p in plans))
                computed = await asyncio.gather(*(
                    self._compute(backend.scheduler, plan, keys[i], deadline, ticket, req.cache_policy)
                    for i, plan in zip(todo, plans)))
            finally:
                ticket.release()
            for i, out in zip(todo, computed):
                outs[i] = out
        latency_ms = (time.perf_counter() - start) * 1000
        for out in outs:
            if isinstance(out, pb.ScoreResult):
                out.latency_ms = latency_ms
                if not req.return_judgments:
                    del out.judgments[:]
        return outs

    def _key(self, judge: GenerativeRewardModel, req: Request, item) -> str | None:
        if isinstance(item, ValidationError) or req.cache_policy is CachePolicy.BYPASS:
            return None
        revision = judge.revision
        if req.aggregation.aggregation == "meta_voting":  # the meta RM's weights decide the result too
            revision += "+meta:" + judge.meta_rm.revision
        return cache_key(self.cache_prefix, judge.model_id, revision, judge.template.version, item,
                         req.sampling, req.aggregation)

    async def _lookup(self, keys: list[str | None], policy: CachePolicy,
                      with_judgments: bool) -> list[pb.ScoreResult | None]:
        wanted = [k for k in keys if k is not None]
        if self.cache is None or policy is not CachePolicy.USE or not wanted:
            return [None] * len(keys)
        blobs = await self._read(wanted, with_judgments)
        outs = [_cached_result(key, blobs, with_judgments) if key is not None else None for key in keys]
        hits = sum(m is not None for m in outs)
        self.metrics.cache_lookups.labels("hit").inc(hits)
        self.metrics.cache_lookups.labels("miss").inc(len(wanted) - hits)
        self.metrics.items.labels("cache").inc(hits)
        return outs

    async def _compute(self, scheduler: Scheduler, plan: Plan | RpcFailure, key: str | None,
                       deadline: float | None, ticket: Ticket, policy: CachePolicy) -> pb.ScoreResult | RpcFailure:
        if isinstance(plan, RpcFailure):
            return plan

        async def run() -> pb.ScoreResult:
            if key is not None and policy is CachePolicy.USE:
                # A request that missed the cache just before another flight for this key
                # stored its result and ended finds the entry here instead of recomputing.
                cached = await self._recheck(key)
                if cached is not None:
                    return cached
            result = await scheduler.submit(plan, deadline, ticket)
            self.metrics.items.labels("computed").inc()
            self.metrics.samples.inc(len(result.judgments))
            for reason, count in result.invalid_reasons.items():
                self.metrics.invalid_samples.labels(reason).inc(count)
            msg = result_to_proto(result)
            if key is not None and self._writer is not None:
                # Stored before the flight ends: a request that just missed the cache either
                # joins this flight or finds the entry on its recheck, never computes it again.
                await self._writer.write(_entries(key, msg))
            return msg

        try:
            if key is not None and policy is not CachePolicy.BYPASS:
                shared = await self.singleflight.run(key, run)
            else:
                shared = await run()
        except QueueFull as e:
            return RpcFailure(Code.RESOURCE_EXHAUSTED, f"the server is busy: {e}; retry later")
        except DeadlineExpired as e:
            return RpcFailure(Code.DEADLINE_EXCEEDED, str(e))
        except SchedulerClosed as e:
            return RpcFailure(Code.UNAVAILABLE, str(e))
        except Exception as e:  # the engine failed on this input alone (the scheduler isolates it)
            log.exception("scoring an input failed")
            return RpcFailure(Code.INTERNAL, f"scoring failed: {type(e).__name__}: {e}")
        out = pb.ScoreResult()
        out.CopyFrom(shared)  # every caller edits its own copy (latency, judgments stripped)
        return out

    async def _recheck(self, key: str) -> pb.ScoreResult | None:
        """One more cache read for a key about to be computed; no metrics (it is the same lookup).
        With judgments: the flight's result is shared by callers that may want them."""
        return _cached_result(key, await self._read([key], True), True)

    async def _read(self, keys: list[str], with_judgments: bool) -> dict[str, bytes | None]:
        """The stored entries of ``keys`` (and of their judgments) in one ``get_many``."""
        wanted = keys + [judgments_key(k) for k in keys] if with_judgments else keys
        try:
            return dict(zip(wanted, await self.cache.get_many(wanted)))
        except Exception:  # a cache must never fail a request: run uncached
            log.warning("cache lookup failed; scoring without it", exc_info=True)
            return {}


def judgments_key(key: str) -> str:
    """The cache entry that holds the judgments of the result stored under ``key``."""
    return key + ":judgments"


def _entries(key: str, msg: pb.ScoreResult) -> list[tuple[str, bytes]]:
    """A result's two cache entries: all but the judgments, then the judgments alone."""
    summary = pb.ScoreResult()
    summary.CopyFrom(msg)
    del summary.judgments[:]
    return [(key, summary.SerializeToString()),
            (judgments_key(key), pb.ScoreResult(judgments=msg.judgments).SerializeToString())]


def _cached_result(key: str, blobs: dict[str, bytes | None], with_judgments: bool) -> pb.ScoreResult | None:
    """A stored result marked as coming from the cache; None for a miss or an unparseable entry.

    Parsing the judgments entry into the summary merges them: serialized protobufs
    concatenate, so summary + judgments parse back to the message that was split.
    """
    summary = blobs.get(key)
    judgments = blobs.get(judgments_key(key)) if with_judgments else b""
    if summary is None or judgments is None:
        return None
    try:
        msg = pb.ScoreResult.FromString(summary)
        msg.MergeFromString(judgments)
    except DecodeError:
        log.warning("cache entry %s does not parse; recomputing", key)
        return None
    msg.from_cache = True
    return msg


class _WriteBatcher:
    """Cache writes from results that resolve together (one engine pass) go out as one
    ``set_many`` (one Redis pipeline). ``write`` returns once its entries are stored; the
    write itself runs in its own task, so a cancelled caller cannot lose it."""

    def __init__(self, cache):
        self.cache = cache
        self._buffer: list[tuple[list[tuple[str, bytes]], asyncio.Future]] = []
        self._flush: asyncio.Task | None = None

    async def write(self, entries: list[tuple[str, bytes]]) -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._buffer.append((entries, done))
        if self._flush is None:
            self._flush = loop.create_task(self._flush_soon())
        await asyncio.shield(done)

    async def _flush_soon(self) -> None:
        await asyncio.sleep(0)  # the other results of the same pass resolve in this loop turn
        batch, self._buffer, self._flush = self._buffer, [], None
        try:
            await self.cache.set_many([entry for entries, _ in batch for entry in entries])
        except Exception:  # set_many should never raise; a cache must not fail requests anyway
            log.warning("cache write failed", exc_info=True)
        finally:
            for _, done in batch:
                if not done.done():
                    done.set_result(None)


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
