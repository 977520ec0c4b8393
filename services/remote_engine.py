"""A generation engine on OpenAI-compatible completion servers: vLLM, SGLang, llama.cpp's
server, TGI. The service keeps everything the judge adds (templates, shuffles, parsing,
voting, meta RM, cache, limits); the server only samples tokens, with its own batching and
prefix cache.

- Prompts go as **token ids** rendered and tokenized here (``grm.prompts.encode_prompt``),
  so a special-token string inside a response stays plain text. A server that refuses
  token ids is found at start; the engine then refuses to run unless ``text_prompts`` is
  set (the rendered text is sent, and the server tokenizes it as it likes).
- The samples of one prompt go in one call with ``n`` where the server returns ``n``
  choices (it prefills the prompt once); otherwise as ``n`` concurrent calls, sample ``i``
  seeded with ``mix_seed(seed, i)``. ``seed``, ``temperature``, ``top_p``, ``max_tokens``
  and the stop token ids are passed on; ``finish_reason == "length"`` is a cut sample.
- Every call is bounded by the deadline of the engine pass (``grm.engine.current_deadline``,
  set by the scheduler) or ``request_timeout_s``. A reply that has begun (headers sent)
  and then goes silent for ``read_timeout_s`` is a stalled URL. A request nobody waits for
  any more (its ``wanted`` says so: the caller cancelled, or its deadline passed) has its
  HTTP calls cancelled within ``WANTED_EVERY_S`` and gets empty, unfinished samples. A call
  whose reply never came (connection refused or closed, stalled, HTTP 429/503) moves to
  another URL; a call still running at the deadline is not repeated. Failures raise
  ``EngineUnavailable``, ``EngineOverloaded`` or ``EngineTimeout`` naming the URL; the
  service answers UNAVAILABLE, RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED, never a score. So
  does a malformed reply (``services.engine_reply``).
- Several URLs are one ``services.engine_pool.EnginePool``: least outstanding work first,
  failing URLs ejected and re-probed on ``/health``.
- At start ``services.engine_check.inspect`` reads ``/v1/models``, compares the server's
  tokenizer with ours on a probe string and finds out what the server accepts. A URL that
  was ejected is checked again before it comes back (``engine_check.recheck``): a server
  restarted with other weights or another tokenizer stays out, its error naming what differs.

Example::

    tokenizer = AutoTokenizer.from_pretrained("path/to/checkpoint")
    engine = RemoteEngine.connect(RemoteConfig(("http://127.0.0.1:8080",)), tokenizer)
    judge = GenerativeRewardModel(engine, template)
    engine.close()
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Sequence

import aiohttp

from grm.engine import (EngineFailure, EngineOverloaded, EngineTimeout, EngineUnavailable, GenerationRequest,
                        current_deadline)
from grm.seeds import mix_seed
from grm.types import Completion
from services.engine_check import EngineMismatch, Served, inspect, recheck
from services.engine_pool import Endpoint, EnginePool, PoolConfig
from services.engine_reply import MalformedReply, read_completions

log = logging.getLogger(__name__)
_RETRY_STATUS = {429: "overloaded", 503: "unavailable"}  # the server refused before doing the work
WANTED_EVERY_S = 0.1  # how often a request's ``wanted`` is asked while its HTTP calls run


@dataclass(frozen=True)
class RemoteConfig:
    urls: tuple[str, ...]  # base URLs, e.g. http://10.0.0.1:8000 or http://10.0.0.1:8000/v1 (the /v1/... paths are added)
    model: str | None = None  # the served model's name; None: the only one the server lists
    revision: str = ""  # your name for the weights behind the served name; part of the cache identity
    text_prompts: bool = False  # send rendered text where the server refuses token ids
    request_timeout_s: float = 600.0  # bound of a call that has no deadline
    connect_timeout_s: float = 5.0
    # Longest silence inside a reply that has begun (its headers came): a server streams a
    # finished reply in milliseconds, so one that stops halfway is stalled. The wait for
    # the headers is the generation itself and is bounded by the deadline instead.
    read_timeout_s: float = 30.0
    pool: PoolConfig = PoolConfig()

    def __post_init__(self) -> None:
        object.__setattr__(self, "urls", tuple(base_url(u) for u in self.urls if u.strip()))
        if not self.urls:
            raise ValueError("RemoteConfig.urls must name at least one engine URL")
        bad = [u for u in self.urls if not u.startswith(("http://", "https://"))]
        if bad:
            raise ValueError(f"RemoteConfig.urls must start with http:// or https://, got {bad}")
        if len(set(self.urls)) != len(self.urls):
            raise ValueError(f"RemoteConfig.urls names a URL twice: {list(self.urls)}")
        for name in ("request_timeout_s", "connect_timeout_s", "read_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"RemoteConfig.{name} must be > 0, got {getattr(self, name)}")
        if not self.read_timeout_s <= self.request_timeout_s:
            raise ValueError(f"RemoteConfig.read_timeout_s ({self.read_timeout_s}) must not exceed "
                             f"request_timeout_s ({self.request_timeout_s})")


def base_url(url: str) -> str:
    """``url`` without a trailing ``/`` or ``/v1``: OpenAI clients are given the ``/v1`` base,
    and the paths used here (``/v1/completions``, ``/health``, ``/tokenize``) start above it."""
    url = url.strip().rstrip("/")
    return url[:-3].rstrip("/") if url.endswith("/v1") else url


class _LoopThread:
    """An event loop on a daemon thread: the engine's HTTP calls run there, off the caller's loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="grm-remote-engine", daemon=True)
        self._thread.start()

    def run(self, coro: Awaitable, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


class RemoteEngine:
    """The ``GenerationEngine`` on remote servers; build it with ``connect``."""

    def __init__(self, config: RemoteConfig, tokenizer: Any, eos_token_ids: Sequence[int]):
        self.config, self.tokenizer = config, tokenizer
        self.eos_token_ids = sorted(set(eos_token_ids))
        self.pool = EnginePool(config.urls, config.pool)
        self.served: Served | None = None
        self.model_id = self.revision = ""
        self.max_context = 0
        # calls: generate() calls; requests: HTTP completion calls; prompt_tokens: prompt tokens
        # sent; generated_tokens: tokens received; moved: calls moved to another URL after a
        # failure; abandoned: requests whose calls were cancelled because nobody wanted them.
        self.stats = {"calls": 0, "requests": 0, "prompt_tokens": 0, "generated_tokens": 0, "moved": 0,
                      "abandoned": 0}
        self._thread = _LoopThread()
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def connect(cls, config: RemoteConfig, tokenizer: Any, *, max_context: int | None = None,
                eos_token_ids: Sequence[int] | None = None) -> "RemoteEngine":
        """Check the servers against ``tokenizer`` and return a ready engine (see ``inspect``)."""
        eos = list(eos_token_ids or [])
        if not eos and tokenizer.eos_token_id is not None:
            eos = [tokenizer.eos_token_id]
        engine = cls(config, tokenizer, eos)
        try:
            engine._thread.run(engine._open())
            served = engine._thread.run(inspect(engine._session, engine.pool, config.model, config.text_prompts,
                                                tokenizer, min(30.0, config.request_timeout_s)))
        except BaseException:
            engine.close()
            raise
        engine._adopt(served, max_context)
        return engine

    def _adopt(self, served: Served, local_context: int | None) -> None:
        self.served = served
        self.model_id = served.name
        doc = {"served": served.identity, "tokenizer": tokenizer_fingerprint(self.tokenizer),
               "revision": self.config.revision}
        self.revision = "remote:" + hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
        limits = [c for c in (local_context, served.max_context) if c]
        self.max_context = min(limits) if limits else 4096
        self._thread.run(self._start_probing())

    async def _open(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.config.connect_timeout_s)
        self._session = aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0))

    async def _start_probing(self) -> None:
        self.pool.start_probing(self._readmit)

    def close(self) -> None:
        async def shut() -> None:
            self.pool.stop_probing()
            if self._session is not None:
                await self._session.close()
        try:
            self._thread.run(shut(), 10)
        finally:
            self._thread.stop()

    # ------------------------------------------------------------------ generation

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        """Return ``[len(requests)][request.n]`` completions, in request order."""
        self.stats["calls"] += 1
        if not requests:
            return []
        at = current_deadline()
        if at is None:
            at = time.monotonic() + self.config.request_timeout_s
        return self._thread.run(_all([self._watched(r, at) for r in requests]))

    async def _watched(self, request: GenerationRequest, at: float) -> list[Completion]:
        """``_sample``, cancelled as soon as ``request.wanted`` says nobody waits for it any
        more: a stalled or slow server must not keep a call that its caller gave up on."""
        task = asyncio.ensure_future(self._sample(request, at))
        try:
            while request.wanted is not None and not task.done():
                await asyncio.wait([task], timeout=WANTED_EVERY_S)
                if not task.done() and not request.wanted():
                    self.stats["abandoned"] += 1
                    return [Completion((), "", False) for _ in range(request.n)]
            return await task
        finally:
            task.cancel()  # a no-op once done; else its HTTP calls close their connections

    async def _sample(self, request: GenerationRequest, at: float) -> list[Completion]:
        """The n samples in calls of at most ``max_n`` (1 where the server has no working ``n``).
        A call for all n uses the request's seed; a part starting at sample i uses (seed, i)."""
        size = (self.served.max_n or request.n) if self.served.supports_n else 1
        starts = range(0, request.n, size)
        parts = await _all([
            self._complete(request, min(size, request.n - i),
                           request.seed if size >= request.n > 1 else mix_seed(request.seed, i), at)
            for i in starts])
        return [c for part in parts for c in part]

    def payload(self, request: GenerationRequest, n: int, seed: int) -> dict[str, Any]:
        """The /v1/completions body. Fields a server does not know are ignored by vLLM, SGLang and
        llama.cpp (docs/deploy.md lists which honours what)."""
        budget = min(request.max_new_tokens, self.max_context - len(request.prompt_ids))
        if budget < 1:
            raise ValueError(f"the prompt has {len(request.prompt_ids)} tokens; the served model's "
                             f"context of {self.max_context} leaves no room to generate")
        return {"model": self.served.name, "prompt": self._prompt(request.prompt_ids), "n": n,
                "max_tokens": budget, "temperature": request.temperature, "top_p": request.top_p,
                "seed": seed, "stop_token_ids": self.eos_token_ids, "stream": False,
                "return_token_ids": True,  # vLLM: choices[i].token_ids
                "return_tokens": True}  # llama.cpp: choices[i].tokens

    def _prompt(self, ids: Sequence[int]) -> list[int] | str:
        if self.served.token_prompts:
            return list(ids)
        bos = self.tokenizer.bos_token_id  # the server adds its own BOS to a text prompt
        ids = list(ids[1:]) if bos is not None and ids[:1] == (bos,) else list(ids)
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    async def _complete(self, request: GenerationRequest, n: int, seed: int, at: float) -> list[Completion]:
        body = self.payload(request, n, seed)
        work = len(request.prompt_ids) + n * body["max_tokens"]
        tried: set[str] = set()
        overloaded = False
        for _ in range(2 * len(self.pool.endpoints) + 1):
            endpoint = self.pool.pick(avoid=tried)
            if endpoint is None:
                break
            if tried:
                self.stats["moved"] += 1
            left = at - time.monotonic()
            if left <= 0:
                raise EngineTimeout(f"the deadline passed before the call to {endpoint.url} could start",
                                    endpoint.url)
            tried.add(endpoint.url)
            try:
                with self.pool.busy(endpoint, work):
                    self.stats["requests"] += 1
                    status, reply = await self._post(endpoint, "/v1/completions", body, left)
            except _Stalled as e:
                self.pool.eject(endpoint, str(e))
                continue
            except aiohttp.ConnectionTimeoutError as e:  # never reached the engine
                self.pool.eject(endpoint, f"cannot connect ({type(e).__name__})")
                continue
            except asyncio.TimeoutError:
                asyncio.get_running_loop().create_task(self._check_alive(endpoint))
                raise EngineTimeout(f"the engine at {endpoint.url} did not finish within the deadline "
                                    f"({left:.1f} s); the call was abandoned, not repeated", endpoint.url) from None
            except aiohttp.ClientConnectorError as e:
                self.pool.eject(endpoint, f"cannot connect ({e.os_error or e})")
                continue
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError) as e:
                self.pool.eject(endpoint, f"the connection closed mid-call ({type(e).__name__}: {e})")
                continue
            if status == 200:
                self.pool.succeeded(endpoint)
                self.stats["prompt_tokens"] += len(request.prompt_ids)
                return self._completions(endpoint, reply, n)
            if status in _RETRY_STATUS:
                overloaded |= status == 429
                self.pool.eject(endpoint, f"HTTP {status} ({_RETRY_STATUS[status]}): {_error_text(reply)}")
                continue
            raise EngineUnavailable(f"the engine at {endpoint.url} refused the call: HTTP {status}: "
                                    f"{_error_text(reply)}", endpoint.url)
        urls = ", ".join(sorted(tried)) or ", ".join(e.url for e in self.pool.endpoints)
        kind = EngineOverloaded if overloaded else EngineUnavailable
        raise kind(f"no engine could take the call ({self.pool.describe_down() or 'all busy'})", urls)

    async def _post(self, endpoint: Endpoint, path: str, body: dict, timeout: float) -> tuple[int, Any]:
        """(status, JSON body or text) within ``timeout`` s in all; ``_Stalled`` when the reply
        goes silent for ``read_timeout_s`` once its headers came."""
        async with asyncio.timeout(timeout), self._session.post(endpoint.url + path, json=body) as r:
            data = bytearray()
            while True:
                try:
                    async with asyncio.timeout(self.config.read_timeout_s):
                        chunk = await r.content.readany()
                except TimeoutError:
                    raise _Stalled(f"stalled mid-reply: HTTP {r.status} headers and {len(data)} bytes, then "
                                   f"nothing for {self.config.read_timeout_s:g} s (read_timeout_s)") from None
                if not chunk:
                    break
                data += chunk
        text = data.decode("utf-8", errors="replace")
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text

    def _completions(self, endpoint: Endpoint, reply: Any, n: int) -> list[Completion]:
        try:
            completions = read_completions(reply, n, self.tokenizer, self.eos_token_ids)
        except MalformedReply as e:
            raise EngineUnavailable(f"the engine at {endpoint.url} sent a malformed reply: {e}", endpoint.url) from None
        self.stats["generated_tokens"] += sum(len(c.token_ids) for c in completions)
        return completions

    async def _healthy(self, endpoint: Endpoint) -> bool:
        async with self._session.get(endpoint.url + "/health") as r:
            return r.status == 200

    async def _readmit(self, endpoint: Endpoint) -> bool:
        """The prober's check of an ejected URL: healthy, and still serving what was checked at
        start (a server restarted meanwhile may hold other weights or another tokenizer)."""
        if not await self._healthy(endpoint):
            return False
        try:
            await recheck(self._session, endpoint, self.served, self.tokenizer, self.config.pool.probe_timeout_s)
        except EngineMismatch as e:
            log.error("engine %s answers again but stays out: %s", endpoint.url, e)
            raise
        return True

    async def _check_alive(self, endpoint: Endpoint) -> None:
        """After a timeout: an engine that does not even answer /health is ejected (hung)."""
        try:
            if await asyncio.wait_for(self._healthy(endpoint), self.config.pool.probe_timeout_s):
                return
            why = "its /health does not answer 200"
        except Exception as e:
            why = f"it stopped answering ({type(e).__name__} on /health after a timed-out call)"
        if endpoint.live:
            self.pool.eject(endpoint, why)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of what decides token ids: the vocabulary, the special tokens, the chat template."""
    doc = {"vocab": sorted(tokenizer.get_vocab().items()), "special": sorted(map(str, tokenizer.all_special_tokens)),
           "chat_template": getattr(tokenizer, "chat_template", None) or ""}
    return hashlib.sha256(json.dumps(doc, ensure_ascii=True).encode()).hexdigest()


def _error_text(reply: Any) -> str:
    if isinstance(reply, dict):
        err = reply.get("error", reply)
        return str(err.get("message", err) if isinstance(err, dict) else err)[:300]
    return str(reply)[:300]


class _Stalled(Exception):
    """A reply began and then went silent for ``read_timeout_s`` (the message says how far it got)."""


async def _all(coros: list[Awaitable]) -> list:
    """``gather``, but the first failure cancels the rest (their results are useless then)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        raise


__all__ = ["EngineFailure", "EngineMismatch", "RemoteConfig", "RemoteEngine", "Served", "tokenizer_fingerprint"]
