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
  set by the scheduler) or ``request_timeout_s``. A call whose reply never came (connection
  refused or closed, HTTP 429/503) moves to another URL; a call still running at the
  deadline is not repeated. Failures raise ``EngineUnavailable``, ``EngineOverloaded`` or
  ``EngineTimeout`` naming the URL; the service answers UNAVAILABLE, RESOURCE_EXHAUSTED or
  DEADLINE_EXCEEDED, never a score.
- Several URLs are one ``services.engine_pool.EnginePool``: least outstanding work first,
  failing URLs ejected and re-probed on ``/health``.
- At start ``services.engine_check.inspect`` reads ``/v1/models``, compares the server's
  tokenizer with ours on a probe string and finds out what the server accepts.

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
from services.engine_check import EngineMismatch, Served, inspect
from services.engine_pool import Endpoint, EnginePool, PoolConfig

log = logging.getLogger(__name__)
_RETRY_STATUS = {429: "overloaded", 503: "unavailable"}  # the server refused before doing the work


@dataclass(frozen=True)
class RemoteConfig:
    urls: tuple[str, ...]  # base URLs, e.g. http://10.0.0.1:8000 (the /v1/... paths are added)
    model: str | None = None  # the served model's name; None: the only one the server lists
    revision: str = ""  # your name for the weights behind the served name; part of the cache identity
    text_prompts: bool = False  # send rendered text where the server refuses token ids
    request_timeout_s: float = 600.0  # bound of a call that has no deadline
    connect_timeout_s: float = 5.0
    pool: PoolConfig = PoolConfig()

    def __post_init__(self) -> None:
        object.__setattr__(self, "urls", tuple(u.strip().rstrip("/") for u in self.urls if u.strip()))
        if not self.urls:
            raise ValueError("RemoteConfig.urls must name at least one engine URL")
        bad = [u for u in self.urls if not u.startswith(("http://", "https://"))]
        if bad:
            raise ValueError(f"RemoteConfig.urls must start with http:// or https://, got {bad}")
        if len(set(self.urls)) != len(self.urls):
            raise ValueError(f"RemoteConfig.urls names a URL twice: {list(self.urls)}")
        for name in ("request_timeout_s", "connect_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"RemoteConfig.{name} must be > 0, got {getattr(self, name)}")


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
        # sent; generated_tokens: tokens received; moved: calls moved to another URL after a failure.
        self.stats = {"calls": 0, "requests": 0, "prompt_tokens": 0, "generated_tokens": 0, "moved": 0}
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
        self.pool.start_probing(self._healthy)

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
        return self._thread.run(_all([self._sample(r, at) for r in requests]))

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
        async with self._session.post(endpoint.url + path, json=body,
                                      timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            text = await r.text()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text

    async def _healthy(self, endpoint: Endpoint) -> bool:
        async with self._session.get(endpoint.url + "/health") as r:
            return r.status == 200

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

    def _completions(self, endpoint: Endpoint, reply: Any, n: int) -> list[Completion]:
        choices = reply.get("choices") if isinstance(reply, dict) else None
        if not isinstance(choices, list) or len(choices) != n:
            got = len(choices) if isinstance(choices, list) else "no"
            raise EngineUnavailable(f"the engine at {endpoint.url} answered {got} choices where {n} were "
                                    "asked for", endpoint.url)
        choices = sorted(choices, key=lambda c: c.get("index", 0))
        return [self._completion(c) for c in choices]

    def _completion(self, choice: dict) -> Completion:
        ids = generated_ids(choice)
        if ids is None:  # the server did not return ids: ours are the text, tokenized
            text = choice.get("text") or ""
            ids = self.tokenizer(text, add_special_tokens=False).input_ids
        else:
            text = None
        while ids and ids[-1] in self.eos_token_ids:  # ids exclude EOS, as the in-process engine's do
            ids = ids[:-1]
        if text is None:  # decode as the in-process engine does, so both give the same text
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
        self.stats["generated_tokens"] += len(ids)
        finished = choice.get("finish_reason") != "length"
        stop = choice.get("stop_reason")
        eos = (stop if isinstance(stop, int) else self.eos_token_ids[0] if self.eos_token_ids else None)
        return Completion(tuple(ids), text, finished, eos if finished else None)


def generated_ids(choice: dict) -> list[int] | None:
    """The generated token ids of one choice, where the server sends them (vLLM ``token_ids``,
    llama.cpp ``tokens``); None when it sends only text."""
    for name in ("token_ids", "tokens"):
        ids = choice.get(name)
        if isinstance(ids, list) and all(isinstance(i, int) for i in ids):
            return list(ids)
    return None


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


async def _all(coros: list[Awaitable]) -> list:
    """``gather``, but the first failure cancels the rest (their results are useless then)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        raise


__all__ = ["EngineFailure", "EngineMismatch", "RemoteConfig", "RemoteEngine", "Served", "generated_ids",
           "tokenizer_fingerprint"]
