"""A bounded store of key/value tensors for token-id prefixes, shared across engine calls.

Every judge prompt opens with the template's fixed instruction, and the k permutations
of one input repeat its conversation before the responses differ. The in-process engine
(``grm.transformers_engine``) keeps the attention keys and values it computed for such
prefixes here and, on a later prompt that starts the same way, prefills only the rest.

The store is a trie of fixed-size blocks: a block holds ``block_tokens`` token ids and
their keys and values for every layer, and is keyed by (its parent block, its ids), so a
lookup compares token ids exactly (no hash can collide). Only whole blocks are kept; a
prompt reuses the longest chain of blocks that matches its start. Keys are position
dependent (RoPE), which is why only prefixes, always starting at position 0, are reused.

Memory is bounded by ``max_bytes``; the least recently used block goes first. A lookup
or insert touches its chain from the deepest block to the root, so a block is always
less recent than its parent and eviction removes leaves, never a block whose children
stay behind unreachable.

Example::

    store = PrefixCache(PrefixCacheConfig(max_bytes=64 << 20, block_tokens=16))
    length, layers = store.match(ids)      # tokens reused; per layer (keys, values) [H, length, D]
    store.insert(ids, row_layers)          # row_layers: per layer (keys, values) [H, >= len(ids), D]
    store.stats()                          # hits, misses, reused_tokens, blocks, bytes, evictions ...

``prefill_cached(engine, seqs, width)`` is how ``TransformersEngine`` prefills through
the store: it first prefills once the uncached prefixes that several prompts of the
call share, then runs each prompt's unmatched rest on top of its reused keys, with
positions starting at the reused length, and stores the new whole blocks.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from transformers import DynamicCache

_ROOT = 0  # id of the empty prefix


@dataclass(frozen=True)
class PrefixCacheConfig:
    """How much the prefix cache may hold and how it cuts prompts into blocks."""

    max_bytes: int = 512 << 20  # keys + values of every cached block, all layers
    block_tokens: int = 16  # tokens per block; a prompt reuses whole blocks only
    # Prompts of one call that share at least this many uncached tokens get that shared
    # prefix prefilled once first (one extra forward), then reuse it.
    min_shared_tokens: int = 32

    def __post_init__(self) -> None:
        if not isinstance(self.max_bytes, int) or self.max_bytes < 1:
            raise ValueError(f"PrefixCacheConfig.max_bytes must be a positive integer, got {self.max_bytes!r}")
        if not isinstance(self.block_tokens, int) or not 1 <= self.block_tokens <= 4096:
            raise ValueError(f"PrefixCacheConfig.block_tokens must be an integer in 1..4096, "
                             f"got {self.block_tokens!r}")
        if not isinstance(self.min_shared_tokens, int) or self.min_shared_tokens < 1:
            raise ValueError(f"PrefixCacheConfig.min_shared_tokens must be a positive integer, "
                             f"got {self.min_shared_tokens!r}")


@dataclass
class _Block:
    id: int
    key: tuple[int, tuple[int, ...]]  # (parent id, this block's token ids)
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]  # per layer (keys, values) [H, block, D]
    nbytes: int


class PrefixCache:
    """Keys and values of token-id prefixes, in blocks, least recently used evicted first."""

    def __init__(self, config: PrefixCacheConfig = PrefixCacheConfig()):
        self.config = config
        self._blocks: OrderedDict[tuple[int, tuple[int, ...]], _Block] = OrderedDict()  # LRU first
        self._next_id = _ROOT + 1
        self._bytes = 0
        self._lock = threading.Lock()  # the metrics thread reads stats while the engine works
        self._stats = {"hits": 0, "misses": 0, "lookup_tokens": 0, "reused_tokens": 0,
                       "inserted_blocks": 0, "evicted_blocks": 0}

    def __len__(self) -> int:
        return len(self._blocks)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def stats(self) -> dict[str, int]:
        """Counters since creation (hits and misses count lookups) and the current size."""
        with self._lock:
            return {**self._stats, "blocks": len(self._blocks), "bytes": self._bytes,
                    "max_bytes": self.config.max_bytes}

    def clear(self) -> None:
        with self._lock:
            self._blocks.clear()
            self._bytes = 0

    def cached_length(self, ids: Sequence[int]) -> int:
        """Tokens of ``ids`` the store holds, without touching or counting anything."""
        with self._lock:
            return len(self._chain(ids)) * self.config.block_tokens

    def match(self, ids: Sequence[int]) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]] | None]:
        """The longest cached whole-block prefix of ``ids``: (its length, per layer (keys, values)
        ``[H, length, D]``), or ``(0, None)``. Counts a hit or a miss and marks the chain used."""
        with self._lock:
            chain = self._chain(ids)
            self._stats["lookup_tokens"] += len(ids)
            self._stats["hits" if chain else "misses"] += 1
            if not chain:
                return 0, None
            self._touch(chain)
            length = len(chain) * self.config.block_tokens
            self._stats["reused_tokens"] += length
            layers = [(torch.cat([b.layers[i][0] for b in chain], dim=-2),
                       torch.cat([b.layers[i][1] for b in chain], dim=-2)) for i in range(len(chain[0].layers))]
            return length, layers

    def insert(self, ids: Sequence[int], layers: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> int:
        """Store the whole blocks of ``ids`` that are missing; ``layers`` holds per layer the
        (keys, values) ``[H, >= len(ids), D]`` of ``ids`` from position 0. Returns blocks added.

        A chain larger than the whole budget is stored only as far as it fits."""
        size = self.config.block_tokens
        with self._lock:
            chain: list[_Block] = []
            parent, added, budget = _ROOT, 0, self.config.max_bytes
            for start in range(0, len(ids) - size + 1, size):
                key = (parent, tuple(ids[start:start + size]))
                block = self._blocks.get(key)
                if block is None:
                    # Copies, so a stored block does not keep the caller's whole batch alive.
                    kv = tuple((k[:, start:start + size].clone(), v[:, start:start + size].clone())
                               for k, v in layers)
                    nbytes = sum(t.numel() * t.element_size() for pair in kv for t in pair)
                    if sum(b.nbytes for b in chain) + nbytes > budget:
                        break
                    block = _Block(self._next_id, key, kv, nbytes)
                    self._next_id += 1
                    self._blocks[key] = block
                    self._bytes += nbytes
                    added += 1
                chain.append(block)
                parent = block.id
            self._touch(chain)
            self._stats["inserted_blocks"] += added
            self._evict()
            return added

    def _chain(self, ids: Sequence[int]) -> list[_Block]:
        size, parent, chain = self.config.block_tokens, _ROOT, []
        for start in range(0, len(ids) - size + 1, size):
            block = self._blocks.get((parent, tuple(ids[start:start + size])))
            if block is None:
                break
            chain.append(block)
            parent = block.id
        return chain

    def _touch(self, chain: list[_Block]) -> None:
        for block in reversed(chain):  # the root ends most recent: parents outlive children
            self._blocks.move_to_end(block.key)

    def _evict(self) -> None:
        while self._bytes > self.config.max_bytes and self._blocks:
            _, block = self._blocks.popitem(last=False)
            self._bytes -= block.nbytes
            self._stats["evicted_blocks"] += 1


def shared_prefixes(seqs: Sequence[Sequence[int]], block_tokens: int) -> list[tuple[int, ...]]:
    """For every two of ``seqs``, the longest whole-block prefix they share (distinct, sorted).

    Sorted, the longest common prefix of any two sequences is that of two neighbours
    between them, so comparing neighbours finds every one."""
    ordered = sorted(tuple(s) for s in seqs)
    found = set()
    for a, b in zip(ordered, ordered[1:]):
        n, limit = 0, min(len(a), len(b))
        while n < limit and a[n] == b[n]:
            n += 1
        n -= n % block_tokens
        if n:
            found.add(a[:n])
    return sorted(found)


# How the engine prefills through the store. ``engine`` is a TransformersEngine: these use its
# model, prefix_cache, stats, _prefill_groups and _forward_prompts.


def prefill_cached(engine: Any, seqs: Sequence[Sequence[int]], width: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Keys and values of every token of ``seqs``, reusing and then feeding the prefix cache.

    Returns per layer ``(keys, values)`` ``[R, H, width, D]``, row j left-padded so that
    its tokens end at column ``width - 1``: the layout of a full prefill.
    """
    store = engine.prefix_cache
    _prefill_shared(engine, seqs)
    matches = [store.match(s) if s else (0, None) for s in seqs]
    layers = _fill_rows(engine, seqs, matches, width)
    block = store.config.block_tokens
    for j, (s, (reused, _)) in enumerate(zip(seqs, matches)):
        if len(s) - len(s) % block > reused:  # whole blocks the store lacks
            store.insert(s, [(k[j, :, width - len(s):], v[j, :, width - len(s):]) for k, v in layers])
    return layers


def _prefill_shared(engine: Any, seqs: Sequence[Sequence[int]]) -> None:
    """Prefill once, into the store, the uncached prefixes that two or more of ``seqs`` share.

    Their own shared prefixes go first (recursion), so a template head shared by two
    conversations, each shared by its permutations, is computed once too.
    """
    store = engine.prefix_cache
    shared = [p for p in shared_prefixes([s for s in seqs if s], store.config.block_tokens)
              if len(p) - store.cached_length(p) >= store.config.min_shared_tokens]
    if not shared:
        return
    _prefill_shared(engine, shared)
    matches = [store.match(p) for p in shared]
    width = max(len(p) for p in shared)
    layers = _fill_rows(engine, shared, matches, width)
    for j, p in enumerate(shared):
        store.insert(p, [(k[j, :, width - len(p):], v[j, :, width - len(p):]) for k, v in layers])


def _fill_rows(engine: Any, seqs: Sequence[Sequence[int]], matches: Sequence[tuple[int, Any]],
               width: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Run what the matched prefixes do not cover, in length-sorted groups, each group on
    top of its rows' reused keys (left-padded to the group's longest); assemble rows
    left-padded to ``width``. ``matches[j]``: (reused tokens, per layer (keys, values))."""
    rest = [s[reused:] for s, (reused, _) in zip(seqs, matches)]
    todo = [j for j, r in enumerate(rest) if r]
    parts = []  # (row indices, the group's filled cache)
    for group in engine._prefill_groups([rest[j] for j in todo], DynamicCache(config=engine.model.config)):
        rows = [todo[g] for g in group]
        part, past_mask = _reused_past(engine, [matches[j] for j in rows])
        engine._forward_prompts([rest[j] for j in rows], part, past_mask, [matches[j][0] for j in rows])
        engine.stats["prefill_tokens"] += sum(len(rest[j]) for j in rows)
        parts.append((rows, part))
    # One keys tensor per layer ([..., H, L, D]) to take the head count, size and dtype from.
    shapes = ([layer.keys for layer in parts[0][1].layers] if parts
              else [k for k, _ in next(layers for n, layers in matches if n)])
    out = []
    for layer, k0 in enumerate(shapes):
        keys = k0.new_zeros(len(seqs), k0.shape[-3], width, k0.shape[-1])
        values = torch.zeros_like(keys)
        for j, (s, (n, reused)) in enumerate(zip(seqs, matches)):
            if n:
                start = width - len(s)
                keys[j, :, start:start + n], values[j, :, start:start + n] = reused[layer]
        for rows, part in parts:
            for r, j in enumerate(rows):
                m = len(rest[j])
                keys[j, :, width - m:] = part.layers[layer].keys[r, :, -m:]
                values[j, :, width - m:] = part.layers[layer].values[r, :, -m:]
        out.append((keys, values))
    return out


def _reused_past(engine: Any, reused: Sequence[tuple[int, Any]]) -> tuple[DynamicCache, torch.Tensor | None]:
    """A cache holding the rows' reused keys and values, left-padded to the longest, and the
    mask of its real slots ``[R, C]`` (None when no row reuses anything)."""
    cache = DynamicCache(config=engine.model.config)
    width = max(n for n, _ in reused)
    if not width:
        return cache, None
    mask = torch.zeros((len(reused), width), dtype=torch.long, device=engine.model.device)
    like = next(layers for n, layers in reused if n)
    for layer, (k0, _) in enumerate(like):
        keys = k0.new_zeros(len(reused), k0.shape[0], width, k0.shape[-1])
        values = torch.zeros_like(keys)
        for r, (n, layers) in enumerate(reused):
            if n:
                keys[r, :, width - n:], values[r, :, width - n:] = layers[layer]
                mask[r, width - n:] = 1
        cache.update(keys, values, layer)
    return cache, mask
