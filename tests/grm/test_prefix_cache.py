"""The prefix cache: the block store on its own, and the engine with it on against it off.

With the cache on, the engine must give the same tokens as with it off (greedy token for
token, sampled with the same seeds), compute fewer prompt tokens, keep the cache laid out
as a full prefill lays it out, stay within its memory bound, and forget what it holds
when the weights change in place.
"""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from grm.default_model import PACKAGED
from grm.engine import GenerationRequest
from grm.judge import GenerativeRewardModel
from grm.prefix_cache import PrefixCache, PrefixCacheConfig, shared_prefixes
from grm.templates import DEFAULT_TEMPLATE
from grm.testing import build_tiny_model
from grm.transformers_engine import TransformersEngine
from grm.types import SamplingOptions, ScoreInput

torch.set_num_threads(2)

HEAD = ("You are a careful judge. Read the conversation and the responses, write the criteria that matter "
        "for this query with weights, analyse each response against them, then give every response a score. ")
TAILS = ["What is 12 + 30? The answer is 42.",
         "Write a sentence in uppercase that ends with a question mark and includes the word blue.",
         "apple, banana, cherry, date, elderberry. Response 2 uses 6 words instead of 5."]


def kv(tokens: int, fill: float = 1.0, heads: int = 2, dim: int = 4, layers: int = 2):
    """Per layer (keys, values) [H, tokens, D]; keys hold the token position, so slices can be checked."""
    pos = torch.arange(tokens, dtype=torch.float32)[None, :, None].expand(heads, tokens, dim)
    return [(pos * fill + layer, -pos * fill - layer) for layer in range(layers)]


BLOCK_BYTES = 2 * 2 * (2 * 4 * 4) * 4  # layers x (k, v) x (H x block x D) x float32, block of 4


# ---- the store ----------------------------------------------------------------------

def test_match_returns_the_longest_whole_block_prefix():
    store = PrefixCache(PrefixCacheConfig(block_tokens=4))
    ids = list(range(100, 111))  # 11 tokens: two whole blocks
    assert store.match(ids) == (0, None)
    assert store.insert(ids, kv(11)) == 2 and len(store) == 2 and store.nbytes == 2 * BLOCK_BYTES
    n, layers = store.match(ids[:9] + [7, 7])
    assert n == 8
    for layer, (k, v) in enumerate(layers):
        assert torch.equal(k, kv(8)[layer][0]) and torch.equal(v, kv(8)[layer][1])
    assert store.match(ids[:6])[0] == 4  # a half block is not reused
    assert store.match([100, 101, 102, 999] + ids[4:])[0] == 0  # ids compare exactly, block by block
    assert store.insert(ids, kv(11)) == 0  # already there
    stats = store.stats()
    assert (stats["hits"], stats["misses"], stats["reused_tokens"], stats["lookup_tokens"]) == (2, 2, 12, 11 + 11 + 6 + 11)
    assert (stats["blocks"], stats["bytes"], stats["inserted_blocks"]) == (2, 2 * BLOCK_BYTES, 2)


def test_stored_blocks_are_copies():
    store = PrefixCache(PrefixCacheConfig(block_tokens=4))
    layers = kv(8)
    store.insert(list(range(8)), layers)
    layers[0][0].add_(1000)  # the caller reuses its buffer
    assert torch.equal(store.match(list(range(8)))[1][0][0], kv(8)[0][0])


def test_memory_bound_evicts_least_recently_used_leaves_first():
    store = PrefixCache(PrefixCacheConfig(block_tokens=4, max_bytes=5 * BLOCK_BYTES))
    shared = [1, 2, 3, 4, 5, 6, 7, 8]
    a, b, c = shared + [10] * 4, shared + [20] * 4, shared + [30] * 4
    store.insert(a, kv(12))
    store.insert(b, kv(12))  # 4 blocks: the shared two, a's and b's last
    store.match(a)  # b's last block is now the least recently used
    store.insert(c, kv(12))  # a fifth block: fits
    assert len(store) == 5
    store.insert([9] * 8, kv(8))  # two more: b's leaf goes, then a's (never the shared parents)
    assert store.nbytes <= 5 * BLOCK_BYTES and store.stats()["evicted_blocks"] == 2
    assert store.cached_length(a) == 8 and store.cached_length(b) == 8 and store.cached_length(c) == 12
    assert store.cached_length([9] * 8) == 8


def test_a_chain_over_the_budget_is_stored_as_far_as_it_fits():
    store = PrefixCache(PrefixCacheConfig(block_tokens=4, max_bytes=3 * BLOCK_BYTES))
    ids = list(range(40))
    assert store.insert(ids, kv(40)) == 3
    assert store.cached_length(ids) == 12 and store.nbytes == 3 * BLOCK_BYTES


@pytest.mark.parametrize("field,value", [("max_bytes", 0), ("block_tokens", 0), ("block_tokens", 5000),
                                         ("min_shared_tokens", 0), ("max_bytes", 1.5)])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"PrefixCacheConfig.{field} .*{value}"):
        PrefixCacheConfig(**{field: value})


def test_shared_prefixes_are_every_branch_point():
    """Against brute force: every whole-block prefix two sequences share is a prefix of one found,
    and every one found is the longest whole-block prefix some two sequences share."""
    rng = random.Random(0)
    for _ in range(200):
        block = rng.choice([1, 2, 3])
        seqs = [tuple(rng.choice([1, 2]) for _ in range(rng.randint(0, 9))) for _ in range(rng.randint(1, 6))]
        found = shared_prefixes(seqs, block)
        shared = {a[:n] for a, b in itertools.combinations(seqs, 2)
                  for n in range(block, min(len(a), len(b)) + 1, block) if a[:n] == b[:n]}
        assert all(any(f[:len(s)] == s for f in found) for s in shared)
        longest = set()
        for a, b in itertools.combinations(seqs, 2):
            n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            if n >= block:
                longest.add(a[:n - n % block])
        assert set(found) == longest


# ---- the engine, cache on vs off ----------------------------------------------------------

@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model_path(request, tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp(request.param), arch=request.param)


@pytest.fixture(scope="module")
def engines(model_path):
    """(off, on): two engines on the same weights, the second with a prefix cache of 4-token blocks."""
    off = TransformersEngine.load(str(model_path), prefix_cache=None)
    on = TransformersEngine(off.model, off.tokenizer, off.model_id, off.revision, eos_token_ids=set(),
                            prefix_cache=PrefixCacheConfig(block_tokens=4, min_shared_tokens=4))
    return TransformersEngine(off.model, off.tokenizer, off.model_id, off.revision, eos_token_ids=set()), on


def judge_like_prompts(tokenizer) -> list[tuple[int, ...]]:
    """One head, three conversations, two orders of two responses each: six prompts, many shared prefixes."""
    out = []
    for tail in TAILS:
        for first, second in (("IS THE SKY BLUE TODAY?", "The answer is 42."), ("The answer is 42.", "IS THE SKY BLUE TODAY?")):
            out.append(tuple(tokenizer(f"{HEAD}User: {tail}\n[1] {first}\n[2] {second}\nScores:").input_ids))
    return out


def token_ids(outputs) -> list[list[tuple[int, ...]]]:
    return [[c.token_ids for c in samples] for samples in outputs]


def test_on_and_off_give_the_same_tokens_and_the_cache_saves_prompt_tokens(engines):
    off, on = engines
    on.prefix_cache.clear()
    prompts = judge_like_prompts(off.tokenizer)
    greedy = [GenerationRequest(p, n=2, temperature=0, max_new_tokens=8) for p in prompts]
    sampled = [GenerationRequest(p, n=3, temperature=0.8, top_p=0.95, max_new_tokens=8, seed=j)
               for j, p in enumerate(prompts)]
    computed = on.stats["prefill_tokens"]
    assert token_ids(on.generate(greedy)) == token_ids(off.generate(greedy))  # cold: shared parts first
    first = on.stats["prefill_tokens"] - computed
    assert first < sum(len(p) - 1 for p in prompts) // 2  # the head once, each conversation once
    assert on.prefix_cache.stats()["hits"] > 0
    # Warm: every prompt is cached but its last block; and one at a time, as separate calls.
    assert token_ids(on.generate(sampled)) == token_ids(off.generate(sampled))
    for request in sampled[::-1]:
        assert token_ids(on.generate([request])) == token_ids(off.generate([request]))
    extra = GenerationRequest(prompts[0][:-3] + prompts[3][-3:], n=2, temperature=0.8, max_new_tokens=8, seed=5)
    assert token_ids(on.generate([extra, greedy[4]])) == token_ids(off.generate([extra, greedy[4]]))


def test_cached_prefill_is_laid_out_as_a_full_prefill(engines):
    off, on = engines
    on.prefix_cache.clear()
    prompts = judge_like_prompts(off.tokenizer) + [(off.tokenizer.bos_token_id or 1,)]  # and a one-token prompt
    requests = [GenerationRequest(p, n=2, temperature=0.7, max_new_tokens=4, seed=j) for j, p in enumerate(prompts)]
    on.generate(requests[:2])  # some prompts fully cached, some in part, some not at all
    assert_same_prefill(on, off, requests)


def assert_same_prefill(on: TransformersEngine, off: TransformersEngine, requests) -> None:
    """The keys and values the decode attends to, and their mask, are those of a full prefill."""
    with torch.inference_mode():
        cache, mask = on._prefill(requests)
        whole, whole_mask = off._prefill(requests)
    assert torch.equal(mask, whole_mask)
    real = mask.bool()[:, None, :, None]
    for layer, whole_layer in zip(cache.layers, whole.layers):
        for t, w in ((layer.keys, whole_layer.keys), (layer.values, whole_layer.values)):
            torch.testing.assert_close(t * real, w * real, atol=1e-5, rtol=1e-4)


def test_computes_only_what_is_not_cached(engines):
    """Tokens through the embedding: the shared head once, then only each prompt's uncached rest."""
    off, on = engines
    on.prefix_cache.clear()
    a, b = judge_like_prompts(off.tokenizer)[:2]
    shared = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    fed = []
    hook = on.model.get_input_embeddings().register_forward_hook(lambda mod, args, out: fed.append(args[0].shape))
    try:
        on.generate([GenerationRequest(a, n=1, temperature=0, max_new_tokens=1)])
        cached = on.prefix_cache.cached_length(b)
        del fed[:]
        on.generate([GenerationRequest(b, n=1, temperature=0, max_new_tokens=1)])
    finally:
        hook.remove()
    assert cached == shared - shared % 4 and cached > len(HEAD) // 8
    assert [tuple(s) for s in fed] == [(1, len(b) - 1 - cached), (1, 1)]  # the rest of b, then one decode step


def test_memory_stays_within_the_bound(engines):
    off, on = engines
    small = TransformersEngine(off.model, off.tokenizer, eos_token_ids=set(),
                               prefix_cache=PrefixCacheConfig(max_bytes=60_000, block_tokens=4))
    prompts = judge_like_prompts(off.tokenizer)
    for p in prompts:
        [samples] = small.generate([GenerationRequest(p, n=2, temperature=0.8, max_new_tokens=6, seed=1)])
        assert [c.token_ids for c in samples] == [c.token_ids for c in off.generate(
            [GenerationRequest(p, n=2, temperature=0.8, max_new_tokens=6, seed=1)])[0]]
        assert 0 < small.prefix_cache.nbytes <= 60_000
    assert small.prefix_cache.stats()["evicted_blocks"] > 0


def test_new_weights_empty_the_cache(engines):
    off, on = engines
    prompt = judge_like_prompts(off.tokenizer)[0]
    request = GenerationRequest(prompt, n=2, temperature=0, max_new_tokens=8)
    on.generate([request])
    assert on.prefix_cache.cached_length(prompt) > 0
    hits = on.prefix_cache.stats()["hits"]
    weight = on.model.get_input_embeddings().weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.mul_(1.5)  # an optimizer step writes the weights in place like this
        assert_same_prefill(on, off, [request])
        assert on.prefix_cache.stats()["hits"] == hits  # emptied: nothing reused
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert_same_prefill(on, off, [request])


def test_bundled_judge_gives_the_same_judgments_with_the_cache_on_and_off():
    """The trained GRM (peaked logits, unlike random weights, so a wrong key shows in its
    tokens), the default template's long fixed head, N=3 and k=4, one input greedy and one
    sampled: calls one after another, then batched on a warm cache."""
    on_engine = TransformersEngine.load(str(PACKAGED))
    off_engine = TransformersEngine(on_engine.model, on_engine.tokenizer, on_engine.model_id, on_engine.revision)
    on, off = GenerativeRewardModel(on_engine, DEFAULT_TEMPLATE), GenerativeRewardModel(off_engine, DEFAULT_TEMPLATE)
    items = [ScoreInput(f"Write exactly {i + 3} words about the number {i}, ending with a question mark.",
                        [f"Is the number {i} fine?", f"{i} {i} {i}.", "WHY IS IT SO?"]) for i in range(2)]
    sampling = [SamplingOptions(k=4, temperature=t, max_new_tokens=32, seed=s) for t, s in ((0.0, 1), (0.5, 2))]
    texts = lambda results: [[j.text for j in r.judgments] for r in results]  # noqa: E731
    one_by_one = [on.score_batch([it], s)[0] for it, s in zip(items, sampling)]
    assert texts(one_by_one) == texts(off.score_batch(items, sampling))
    assert texts(on.score_batch(items[::-1], sampling[::-1])) == texts(one_by_one[::-1])  # warm, batched
    assert on_engine.stats["prefill_tokens"] < off_engine.stats["prefill_tokens"] // 2


def test_load_turns_the_cache_on_and_a_plain_engine_leaves_it_off(engines, model_path):
    off, _ = engines
    assert TransformersEngine.load(str(model_path)).prefix_cache is not None
    assert TransformersEngine(off.model, off.tokenizer).prefix_cache is None
