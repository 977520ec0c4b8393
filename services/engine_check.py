"""The remote engine's start-up check: is the served model the one our tokenizer belongs to,
and what does the server accept?

``inspect`` asks every URL, and fails with ``EngineMismatch`` (a message that says what
differs and what to do) rather than let a wrong model produce scores:

1. ``GET /v1/models``: the served names. ``model`` picks one; without it the server must
   list exactly one. Every URL that answers must serve the same name and description
   (the description, minus timestamps, becomes part of the cache identity). URLs that do
   not answer start ejected; at least one must answer.
2. ``POST /tokenize`` with a probe string (vLLM reads ``prompt``, llama.cpp ``content``;
   both are sent): the ids must equal our tokenizer's. A server without ``/tokenize`` is
   checked by vocabulary size where it reports one.
3. ``POST /v1/completions`` with a token-id prompt, ``n=3``, 8 tokens at temperature 1.5:
   does the server take token ids, return three different choices (not one seed copied),
   and send the generated ids back? A server that refuses token ids is used only with
   ``text_prompts``; one without a working ``n`` gets one call per sample.
4. The context per sequence: vLLM's ``max_model_len``, llama.cpp's ``/props`` ``n_ctx``
   (per parallel slot); and llama.cpp's ``total_slots``, the largest ``n`` it accepts.

``recheck`` repeats steps 1 and 2 for one URL that comes back after an outage: a server
restarted with other weights or another tokenizer behind the same URL is refused then.

Example (inside a coroutine on the engine's loop)::

    served = await inspect(session, pool, config, tokenizer)
    served.name, served.supports_n, served.max_context
    await recheck(session, endpoint, served, tokenizer)   # EngineMismatch when it changed
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from grm.engine import EngineFailure, EngineUnavailable
from services.engine_pool import Endpoint, EnginePool

# Letters, digits, punctuation, the judge's own markers, accents and CJK (byte fallback).
PROBE = "Judge: [The Begin of Response 1] 7 apples, \\boxed{3, 9}. Naïve café — 東京 ok?"
_VOLATILE = {"created", "permission", "object", "owned_by"}  # change on every start, or say nothing


class EngineMismatch(EngineFailure):
    """The served model does not fit the tokenizer and template we render prompts with."""


@dataclass(frozen=True)
class Served:
    name: str  # the model name to put in requests
    identity: dict[str, Any]  # the served model's stable description, for the revision
    max_context: int | None  # tokens per sequence the server allows; None: not said
    token_prompts: bool  # the server takes token-id prompts
    supports_n: bool  # one call with n returns n choices
    returns_ids: bool  # replies carry the generated token ids
    max_n: int | None = None  # the largest n one call may ask for (llama.cpp: its parallel slots)


async def inspect(session: aiohttp.ClientSession, pool: EnginePool, model: str | None, text_prompts: bool,
                  tokenizer: Any, timeout_s: float = 30.0) -> Served:
    """See the module docstring."""
    listed = await asyncio.gather(*(_models(session, e, timeout_s) for e in pool.endpoints),
                                  return_exceptions=True)
    up = [(e, m) for e, m in zip(pool.endpoints, listed) if not isinstance(m, Exception)]
    for e, m in zip(pool.endpoints, listed):
        if isinstance(m, Exception):
            pool.eject(e, f"no answer on /v1/models at start ({type(m).__name__}: {m})")
    if not up:
        raise EngineUnavailable("no engine answered /v1/models: " + pool.describe_down(),
                                ", ".join(e.url for e in pool.endpoints))
    name, entry = _choose(up[0][0], up[0][1], model)
    identity = _identity(entry)
    for endpoint, models in up[1:]:
        other = _identity(_choose(endpoint, models, name)[1])
        if other != identity:
            raise EngineMismatch(f"{endpoint.url} serves {name!r} as {other}, but {up[0][0].url} serves it as "
                                 f"{identity}: every URL must serve the same weights", endpoint.url)
    for endpoint, _ in up:
        await _check_tokenizer(session, endpoint, name, entry, tokenizer, timeout_s)
    props = await _props(session, up[0][0], timeout_s)
    max_n = props.get("total_slots") if isinstance(props.get("total_slots"), int) else None
    token_prompts, supports_n, returns_ids = await _probe_completions(session, up[0][0], name, tokenizer,
                                                                      text_prompts, min(3, max_n or 3), timeout_s)
    return Served(name, identity, _context(entry, props), token_prompts, supports_n, returns_ids, max_n)


async def recheck(session: aiohttp.ClientSession, endpoint: Endpoint, served: Served, tokenizer: Any,
                  timeout_s: float = 30.0) -> None:
    """Raise ``EngineMismatch`` unless ``endpoint`` still serves what ``inspect`` found."""
    entry = _choose(endpoint, await _models(session, endpoint, timeout_s), served.name)[1]
    if _identity(entry) != served.identity:
        raise EngineMismatch(f"{endpoint.url} now serves {served.name!r} as {_identity(entry)}; at start it "
                             f"was {served.identity}: the weights behind the URL changed", endpoint.url)
    await _check_tokenizer(session, endpoint, served.name, entry, tokenizer, timeout_s)


async def _get(session: aiohttp.ClientSession, url: str, timeout_s: float) -> tuple[int, Any]:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
        return r.status, await _body(r)


async def _post(session: aiohttp.ClientSession, url: str, body: dict, timeout_s: float) -> tuple[int, Any]:
    async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
        return r.status, await _body(r)


async def _body(r: aiohttp.ClientResponse) -> Any:
    text = await r.text()
    try:
        return json.loads(text)
    except ValueError:
        return text


async def _models(session: aiohttp.ClientSession, endpoint: Endpoint, timeout_s: float) -> list[dict]:
    status, body = await _get(session, endpoint.url + "/v1/models", timeout_s)
    data = body.get("data") if isinstance(body, dict) else None
    if status != 200 or not isinstance(data, list) or not all(isinstance(m, dict) and "id" in m for m in data):
        raise EngineUnavailable(f"{endpoint.url}/v1/models answered HTTP {status} without a model list: "
                                f"{str(body)[:200]}", endpoint.url)
    return data


def _choose(endpoint: Endpoint, models: list[dict], wanted: str | None) -> tuple[str, dict]:
    names = [m["id"] for m in models]
    if wanted is None:
        if len(models) != 1:
            raise EngineMismatch(f"{endpoint.url} serves {len(models)} models {names}; name one with "
                                 "--engine-model", endpoint.url)
        return names[0], models[0]
    for m in models:
        if m["id"] == wanted:
            return wanted, m
    raise EngineMismatch(f"{endpoint.url} does not serve {wanted!r}; it serves {names}", endpoint.url)


def _identity(entry: dict) -> dict:
    """The entry minus what changes with the server's settings rather than its weights."""
    out = {k: v for k, v in entry.items() if k not in _VOLATILE}
    if isinstance(out.get("meta"), dict):  # llama.cpp: n_ctx is the slot size (-c / -np)
        out["meta"] = {k: v for k, v in out["meta"].items() if k != "n_ctx"}
    return out


async def _check_tokenizer(session: aiohttp.ClientSession, endpoint: Endpoint, name: str, entry: dict,
                           tokenizer: Any, timeout_s: float) -> None:
    ours = tokenizer(PROBE, add_special_tokens=False).input_ids
    body = {"model": name, "prompt": PROBE, "content": PROBE, "add_special_tokens": False, "add_special": False}
    status, reply = await _post(session, endpoint.url + "/tokenize", body, timeout_s)
    theirs = reply.get("tokens") if isinstance(reply, dict) else None
    if status == 200 and isinstance(theirs, list) and all(isinstance(t, int) for t in theirs):
        if theirs[:1] == [tokenizer.bos_token_id] and ours[:1] != theirs[:1]:
            theirs = theirs[1:]  # a server that adds BOS regardless
        if theirs != ours:
            raise EngineMismatch(
                f"{endpoint.url} serves {name!r}, whose tokenizer splits the probe {PROBE!r} into {theirs}; "
                f"ours ({getattr(tokenizer, 'name_or_path', '?')}) gives {ours}. The checkpoint given as "
                "--model must be the tokenizer and template of the served model", endpoint.url)
        return
    vocab = (entry.get("meta") or {}).get("n_vocab")
    if isinstance(vocab, int) and vocab != len(tokenizer):
        raise EngineMismatch(f"{endpoint.url} serves {name!r} with a vocabulary of {vocab} tokens; ours has "
                             f"{len(tokenizer)}", endpoint.url)


async def _probe_completions(session: aiohttp.ClientSession, endpoint: Endpoint, name: str, tokenizer: Any,
                             text_prompts: bool, n: int, timeout_s: float) -> tuple[bool, bool, bool]:
    """(token-id prompts accepted, n honoured, generated ids returned)."""
    ids = tokenizer("Hello", add_special_tokens=True).input_ids
    # n=3 at a high temperature: a server that honours n returns 3 choices, and 3 independent
    # samples of 8 tokens are never all equal; a server that seeds every choice alike returns copies.
    body = {"model": name, "prompt": ids, "n": n, "max_tokens": 8, "temperature": 1.5, "seed": 1,
            "return_token_ids": True, "return_tokens": True}
    status, reply = await _post(session, endpoint.url + "/v1/completions", body, timeout_s)
    token_prompts = status == 200
    if not token_prompts:
        if not text_prompts:
            raise EngineMismatch(
                f"{endpoint.url} refuses token-id prompts (HTTP {status}: {str(reply)[:200]}). Prompts are sent "
                "as token ids so that text inside a response cannot become a special token; to send rendered "
                "text instead, and let the server tokenize it, pass --text-prompts", endpoint.url)
        status, reply = await _post(session, endpoint.url + "/v1/completions", {**body, "prompt": "Hello"},
                                    timeout_s)
        if status != 200:
            raise EngineUnavailable(f"{endpoint.url}/v1/completions answered HTTP {status}: {str(reply)[:200]}",
                                    endpoint.url)
    choices = reply.get("choices") if isinstance(reply, dict) else None
    if not isinstance(choices, list) or not choices:
        raise EngineUnavailable(f"{endpoint.url}/v1/completions answered without choices: {str(reply)[:200]}",
                                endpoint.url)
    returns_ids = any(isinstance(c.get(f), list) for c in choices for f in ("token_ids", "tokens"))
    distinct = {str(c.get("text")) for c in choices if isinstance(c, dict)}
    return token_prompts, n > 1 and len(choices) == n and len(distinct) > 1, returns_ids


async def _props(session: aiohttp.ClientSession, endpoint: Endpoint, timeout_s: float) -> dict:
    """llama.cpp's ``/props`` (its slots and their context); {} where a server has none."""
    try:
        status, props = await _get(session, endpoint.url + "/props", timeout_s)
    except aiohttp.ClientError:
        return {}
    return props if status == 200 and isinstance(props, dict) else {}


def _context(entry: dict, props: dict) -> int | None:
    if isinstance(entry.get("max_model_len"), int):  # vLLM, SGLang
        return entry["max_model_len"]
    settings = props.get("default_generation_settings")  # llama.cpp: the context of one slot
    n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else None
    return n_ctx if isinstance(n_ctx, int) and n_ctx > 0 else None
