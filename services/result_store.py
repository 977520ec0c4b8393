"""Score results in a cache: the stored format, lookups, and writes batched per engine pass.

The servicer asks two things: "look up these keys" (``ResultStore.lookup``) and "store
this result" (``ResultStore.store``). How a result is laid out in the cache lives here.

A result is stored as two entries: the ScoreResult without its judgments under ``key``
(a few dozen bytes) and one holding only the judgments under ``judgments_key(key)``
(k critiques: kilobytes to megabytes). A lookup that does not return judgments reads the
small entry alone; one that does reads both in the same ``get_many`` and merges them,
which gives back exactly the stored message. Either entry missing or corrupt is a miss,
and the recomputed result overwrites both.

Results that resolve together (one engine pass) are written with one ``set_many`` (one
Redis pipeline): ``store`` queues its entries and the flush runs one loop turn later, in
a task of its own, so a caller cancelled meanwhile cannot lose the write.

Example (inside a coroutine)::

    store = ResultStore(MemoryCache())
    await store.store(key, result_proto)                     # returns once stored
    [hit] = await store.lookup([key], with_judgments=False)  # a ScoreResult, from_cache set
"""

from __future__ import annotations

import asyncio
import logging
from typing import Mapping, Sequence

from google.protobuf.message import DecodeError

from services.proto.grm.v1 import reward_pb2 as pb

log = logging.getLogger(__name__)


def judgments_key(key: str) -> str:
    """The cache entry that holds the judgments of the result stored under ``key``."""
    return key + ":judgments"


def result_entries(key: str, msg: pb.ScoreResult) -> list[tuple[str, bytes]]:
    """A result's two cache entries: all but the judgments, then the judgments alone."""
    summary = pb.ScoreResult()
    summary.CopyFrom(msg)
    del summary.judgments[:]
    return [(key, summary.SerializeToString()),
            (judgments_key(key), pb.ScoreResult(judgments=msg.judgments).SerializeToString())]


def read_result(key: str, blobs: Mapping[str, bytes | None], with_judgments: bool) -> pb.ScoreResult | None:
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


class ResultStore:
    """Results over a cache backend (``services.cache``); never raises on backend trouble."""

    def __init__(self, cache):
        self.cache = cache
        self._pending: list[tuple[list[tuple[str, bytes]], asyncio.Future]] = []
        self._flush: asyncio.Task | None = None

    async def lookup(self, keys: Sequence[str], with_judgments: bool) -> list[pb.ScoreResult | None]:
        """The stored result of each key, in order (None for a miss), in one ``get_many``."""
        keys = list(keys)
        wanted = keys + [judgments_key(k) for k in keys] if with_judgments else keys
        try:
            blobs = dict(zip(wanted, await self.cache.get_many(wanted)))
        except Exception:  # a cache must never fail a request: run uncached
            log.warning("cache lookup failed; scoring without it", exc_info=True)
            blobs = {}
        return [read_result(key, blobs, with_judgments) for key in keys]

    async def store(self, key: str, msg: pb.ScoreResult) -> None:
        """Store ``msg`` (with its judgments) under ``key``; returns once the write is done."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._pending.append((result_entries(key, msg), done))
        if self._flush is None:
            self._flush = loop.create_task(self._flush_soon())
        await asyncio.shield(done)

    async def _flush_soon(self) -> None:
        await asyncio.sleep(0)  # the other results of the same pass resolve in this loop turn
        batch, self._pending, self._flush = self._pending, [], None
        try:
            await self.cache.set_many([entry for entries, _ in batch for entry in entries])
        except Exception:  # set_many should never raise; a cache must not fail requests anyway
            log.warning("cache write failed", exc_info=True)
        finally:
            for _, done in batch:
                if not done.done():
                    done.set_result(None)
