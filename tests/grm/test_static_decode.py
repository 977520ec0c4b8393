"""The engine's static decode loop (grm.static_decode) against its eager loop, and the sampler
both share (grm.token_sampling).

On the tiny test models and on SmolLM2-135M: greedy tokens equal the eager loop's token for
token; sampled tokens too (one stream per row, whichever loop draws it) and whatever shares
the batch; the padded bucket layout that CUDA graphs replay gives the same tokens as the
exact one; cancelled requests stop within a check; weights changed in place are repacked.
"""

from __future__ import annotations

import math

import pytest
import torch

from grm.engine import GenerationRequest
from grm.seeds import mix_seed
from grm.static_decode import StaticDecoder, dense_enough, dense_groups, supports
from grm.token_sampling import _mix32, row_uniforms, sample
from grm.transformers_engine import WANTED_EVERY, TransformersEngine
from test_engine import TEXTS, engine, llama  # noqa: F401 (the tiny llama and qwen2 engines, shared)

torch.set_num_threads(2)


def twin(engine: TransformersEngine, static: bool, eos: set[int] | None = None) -> TransformersEngine:
    """The same weights, decoding with the static loop or the eager one."""
    return TransformersEngine(engine.model, engine.tokenizer, engine.model_id, engine.revision,
                              eos_token_ids=engine.eos_token_ids if eos is None else eos, static_decode=static)


def token_ids(out) -> list[list[tuple[int, ...]]]:
    return [[c.token_ids for c in samples] for samples in out]


def mixed_requests(engine: TransformersEngine, temperature: float) -> list[GenerationRequest]:
    """Prompts of different lengths (one of a single token), n and budgets that differ."""
    ids = [tuple(engine.tokenizer(t).input_ids) for t in TEXTS] + [(engine.tokenizer.bos_token_id or 1,)]
    return [GenerationRequest(p, n=n, temperature=temperature, top_p=top_p, max_new_tokens=m, seed=j)
            for j, (p, n, m, top_p) in enumerate(zip(ids, (3, 1, 4, 2), (12, 20, 7, 9), (1.0, 0.9, 1.0, 0.5)))]


def test_greedy_static_equals_eager(engine):
    requests = mixed_requests(engine, temperature=0)
    eager, static = twin(engine, False), twin(engine, True)
    expected = eager.generate(requests)
    got = static.generate(requests)
    assert static._static is not None and eager._static is None  # each ran its own loop
    assert token_ids(got) == token_ids(expected)
    assert [[c.finished for c in s] for s in got] == [[c.finished for c in s] for s in expected]
    assert static.stats == eager.stats


def test_qwen3_heads_normalised_before_rope_decode_alike(tmp_path):
    from grm.testing import build_tiny_model
    engine = TransformersEngine.load(str(build_tiny_model(tmp_path / "qwen3", arch="qwen3")))
    assert engine.model.config.model_type == "qwen3" and supports(engine.model) is None
    for temperature in (0, 0.8):
        requests = mixed_requests(engine, temperature)
        eager, static = twin(engine, False), twin(engine, True)
        assert token_ids(static.generate(requests)) == token_ids(eager.generate(requests))
        assert static._static is not None


def test_eos_ends_rows_alike(engine):
    """A stop token the greedy path meets ends those rows early; the others run to their budget."""
    requests = mixed_requests(engine, temperature=0)
    first = twin(engine, False, eos=set()).generate(requests[:1])[0][0].token_ids
    eos = {first[4]}
    expected = twin(engine, False, eos=eos).generate(requests)
    static = twin(engine, True, eos=eos)
    got = static.generate(requests)
    assert token_ids(got) == token_ids(expected)
    assert [[(c.finished, c.eos_token_id) for c in s] for s in got] == [[(c.finished, c.eos_token_id) for c in s]
                                                                      for s in expected]
    assert got[0][0].finished and len(got[0][0].token_ids) == first.index(first[4])


def test_sampled_static_equals_eager(engine):
    requests = mixed_requests(engine, temperature=0.9)
    expected = twin(engine, False).generate(requests)
    assert token_ids(twin(engine, True).generate(requests)) == token_ids(expected)
    assert len({c.token_ids for c in expected[0]}) > 1  # really sampled: the 3 samples differ


def test_sampled_rows_do_not_depend_on_the_batch(engine):
    static = twin(engine, True)
    requests = mixed_requests(engine, temperature=1.0)
    alone = [static.generate([r])[0] for r in requests]
    together = static.generate(requests)
    reordered = static.generate(requests[::-1])[::-1]
    assert token_ids(together) == token_ids(alone) == token_ids(reordered)


def test_bucketed_layout_gives_the_same_tokens(engine):
    """Rows, prompt width and budget padded to buckets, buffers reused across calls (what CUDA
    graphs replay) decode exactly as the exact layout does."""
    exact, bucketed = twin(engine, True), twin(engine, True)
    bucketed.generate(mixed_requests(engine, 0)[:1])
    bucketed._static.buckets = True
    for temperature in (0, 0.8):
        requests = mixed_requests(engine, temperature)
        for batch in (requests, requests[1:3], requests):  # the second shape, then the first again
            assert token_ids(bucketed.generate(batch)) == token_ids(exact.generate(batch))
    assert len(bucketed._static._captured) == 2  # one set of buffers per bucket shape, reused


def test_compiled_step_gives_the_same_tokens(llama):
    """The step compiled by torch.compile (the CUDA default; forced here on the CPU) samples
    exactly what the eager loop samples."""
    requests = mixed_requests(llama, temperature=0.9)
    expected = twin(llama, False).generate(requests)
    compiled = twin(llama, True)
    compiled._static = StaticDecoder(compiled.model, check_every=WANTED_EVERY, compile_step=True)
    assert token_ids(compiled.generate(requests)) == token_ids(expected)
    assert compiled._static.compile_step and compiled._static.compile_error is None
    assert compiled._static._compiled is not None


def test_a_step_that_fails_to_compile_runs_eagerly(llama):
    requests = mixed_requests(llama, temperature=0.9)
    expected = twin(llama, False).generate(requests)
    broken = twin(llama, True)
    broken._static = StaticDecoder(broken.model, check_every=WANTED_EVERY, compile_step=True)

    def fails(_buffers):
        raise RuntimeError("no kernel for this op")
    broken._static._compiled = fails
    assert token_ids(broken.generate(requests)) == token_ids(expected)
    assert not broken._static.compile_step and "RuntimeError: no kernel" in broken._static.compile_error
    assert broken._static.pack == broken._static.can_pack  # packed weights again from now on


def test_cancelled_request_stops_within_a_check(engine):
    static = twin(engine, True, eos=set())
    asked = []

    def wanted() -> bool:
        asked.append(1)
        return len(asked) < 2  # gone at the second ask (the first is before the first step)

    gone = GenerationRequest(tuple(engine.tokenizer(TEXTS[0]).input_ids), n=3, temperature=1.0, max_new_tokens=40,
                             wanted=wanted)
    kept = GenerationRequest(tuple(engine.tokenizer(TEXTS[1]).input_ids), n=2, temperature=0, max_new_tokens=40)
    out = static.generate([gone, kept])
    assert [len(c.token_ids) for c in out[0]] == [WANTED_EVERY] * 3 and not any(c.finished for c in out[0])
    assert [len(c.token_ids) for c in out[1]] == [40, 40]
    assert token_ids(out)[1] == token_ids(twin(engine, False, eos=set()).generate([kept]))[0]
    assert static.stats["abandoned_rows"] == 3
    assert static.stats["generated_tokens"] == 3 * WANTED_EVERY + 2 * 40
    # callers gone before decoding began (while a call's earlier layouts decoded): no step at all
    left = GenerationRequest(gone.prompt_ids, n=8, temperature=1.0, max_new_tokens=40, wanted=lambda: False)
    out = static.generate([left, kept])
    assert [len(c.token_ids) for c in out[0]] == [0] * 8 and static.stats["abandoned_rows"] == 3 + 8


def test_weights_changed_in_place_are_repacked(engine):
    requests = mixed_requests(engine, temperature=0)
    static, eager = twin(engine, True), twin(engine, False)
    before = token_ids(static.generate(requests))
    weight = engine.model.model.layers[0].mlp.up_proj.weight
    noise = torch.randn(weight.shape, generator=torch.Generator().manual_seed(3)) * 0.5
    with torch.no_grad():
        weight.add_(noise)
    try:
        after = token_ids(static.generate(requests))
        assert after == token_ids(eager.generate(requests)) and after != before
    finally:
        with torch.no_grad():
            weight.sub_(noise)


def test_a_sparse_call_decodes_statically_in_dense_groups(engine):
    """One request with n=8 beside nine with n=1 would leave 63 of 80 slots empty: it decodes
    as two layouts, 2 x 8 and 8 x 1, each with its own rows of the prefill."""
    prompts = [tuple(engine.tokenizer(TEXTS[j % len(TEXTS)]).input_ids) for j in range(10)]
    requests = [GenerationRequest(prompts[j], n=8 if j == 0 else 1, temperature=0.8, max_new_tokens=6, seed=j)
                for j in range(10)]
    assert not dense_enough(requests) and dense_enough(requests[:2])  # 2 x 8 slots for 9 rows
    assert dense_groups(requests) == [[0, 1], list(range(2, 10))]
    assert dense_groups(requests[:2]) == [[0, 1]]
    static, eager = twin(engine, True), twin(engine, False)
    assert token_ids(static.generate(requests)) == token_ids(eager.generate(requests))
    assert static._static is not None
    greedy = [GenerationRequest(r.prompt_ids, n=r.n, temperature=0, max_new_tokens=6) for r in requests]
    assert token_ids(static.generate(greedy)) == token_ids(eager.generate(greedy))


def test_training_mode_decodes_eagerly(engine):
    assert supports(engine.model) is None
    engine.model.train()
    try:
        assert "training" in supports(engine.model)
        static = twin(engine, True)
        static.generate(mixed_requests(engine, 0)[:1])
        assert static._static is None
    finally:
        engine.model.eval()


# ---- the sampler ------------------------------------------------------------------------

def lowbias32(x: int) -> int:
    """The hash in plain Python integers, as published."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_mix32_is_lowbias32():
    xs = [0, 1, 2, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xDEADBEEF, 123456789]
    assert _mix32(torch.tensor(xs)).tolist() == [lowbias32(x) for x in xs]


def test_row_uniforms_depend_only_on_key_and_step():
    keys = torch.tensor([mix_seed(7, i) for i in range(64)])
    u = row_uniforms(keys, 300)
    assert u.shape == (64, 300) and u.dtype == torch.float64
    assert torch.equal(row_uniforms(keys.flip(0), 100), u.flip(0)[:, :100])
    assert 0 < u.min() and u.max() < 1
    # Uniform on (0, 1): mean 1/2, variance 1/12, each tenth holds a tenth (19,200 draws).
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.005
    counts = torch.histc(u.float(), bins=10, min=0, max=1)
    chi2 = ((counts - u.numel() / 10) ** 2 / (u.numel() / 10)).sum().item()
    assert chi2 < 27.9  # the 0.999 quantile of chi-square with 9 degrees of freedom
    assert abs(torch.corrcoef(torch.stack([u[:, :-1].flatten(), u[:, 1:].flatten()]))[0, 1].item()) < 0.03


def test_sample_draws_from_the_softmax():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, -30.0])
    rows = 20_000
    keys = torch.tensor([mix_seed(1, i) for i in range(rows)])
    temperature = torch.full((rows,), 0.8)
    drawn = sample(logits.expand(rows, -1), temperature, None, row_uniforms(keys, 1)[:, 0])
    freq = torch.bincount(drawn, minlength=5).double() / rows
    expected = (logits / 0.8).double().softmax(-1)
    assert torch.all((freq - expected).abs() < 4 * (expected * (1 - expected) / rows).sqrt() + 1e-9)
    # top_p keeps the fewest most likely tokens whose mass reaches it: here the first two.
    cut = sample(logits.expand(rows, -1), temperature, torch.full((rows,), 0.8), row_uniforms(keys, 1)[:, 0])
    kept = expected[:2] / expected[:2].sum()
    freq = torch.bincount(cut, minlength=5).double() / rows
    assert freq[2:].sum() == 0 and abs(freq[0] - kept[0]) < 4 * math.sqrt(kept[0] * kept[1] / rows)


def test_sample_greedy_rows_and_tiny_top_p_take_the_argmax():
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    u = torch.rand(6, dtype=torch.float64)
    temperature = torch.tensor([0, 0, 0, 1.0, 1.0, 1.0])
    top_p = torch.tensor([1.0, 0.5, 1.0, 1e-6, 1e-6, 1e-6])
    assert torch.equal(sample(logits, temperature, top_p, u), logits.argmax(-1))
    assert torch.equal(sample(logits, torch.zeros(6), None, u), logits.argmax(-1))


# ---- the real base ----------------------------------------------------------------------

@pytest.mark.slow
def test_smollm2_greedy_static_equals_eager():
    from grm.pretrained import resolve_model

    base = TransformersEngine.load(resolve_model("smollm2-135m-instruct"), prefix_cache=None)
    assert supports(base.model) is None
    chats = [[{"role": "user", "content": q}] for q in
             ("What is the capital of France?", "Write a haiku about rain.", "List three prime numbers.")]
    prompts = [tuple(base.tokenizer(base.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False))
                     .input_ids) for c in chats]
    requests = [GenerationRequest(p, n=2, temperature=0, max_new_tokens=32) for p in prompts]
    eager, static = twin(base, False, eos=set()), twin(base, True, eos=set())
    expected = eager.generate(requests)
    assert token_ids(static.generate(requests)) == token_ids(expected)
    assert all(len(c.token_ids) == 32 for s in expected for c in s)
    sampled = [GenerationRequest(p, n=2, temperature=0.7, max_new_tokens=32, seed=j) for j, p in enumerate(prompts)]
    assert token_ids(static.generate(sampled)) == token_ids(eager.generate(sampled))
