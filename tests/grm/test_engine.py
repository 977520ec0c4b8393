"""TransformersEngine on tiny random-weight models: shared-prefix sampling must match plain
``model.generate`` token for token under greedy decoding, and seeded sampling must not
depend on what else shares the batch."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from grm.engine import GenerationRequest
from grm.seeds import mix_seed
from grm.testing import build_tiny_model
from grm.revision import checkpoint_revision
from grm.kv_room import ReservedLayer
from grm.transformers_engine import TransformersEngine

torch.set_num_threads(2)

TEXTS = [
    "Write a sentence in uppercase that ends with a question mark.",
    "What is 12 + 30?",
    "Analysis: Response 1 answers the question and uses 5 words, so it meets criterion 2. " * 3,
]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def engine(request, tmp_path_factory) -> TransformersEngine:
    path = build_tiny_model(tmp_path_factory.mktemp(request.param), arch=request.param)
    return TransformersEngine.load(str(path))


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> TransformersEngine:
    return TransformersEngine.load(str(build_tiny_model(tmp_path_factory.mktemp("llama"), arch="llama")))


def with_eos(engine: TransformersEngine, eos: set[int], **kwargs) -> TransformersEngine:
    """The same weights with other stop tokens (or other limits)."""
    return TransformersEngine(engine.model, engine.tokenizer, engine.model_id, engine.revision,
                              eos_token_ids=eos, **kwargs)


def prompts(engine: TransformersEngine) -> list[tuple[int, ...]]:
    ids = [tuple(engine.tokenizer(t).input_ids) for t in TEXTS]
    assert len({len(p) for p in ids}) == len(ids)  # different lengths: the batch is left-padded
    return ids


def reference(engine: TransformersEngine, prompt: tuple[int, ...], max_new_tokens: int) -> list[int]:
    """Plain greedy ``model.generate`` on the prompt alone, EOS disabled."""
    ids = torch.tensor([prompt], device=engine.model.device)
    out = engine.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                eos_token_id=None, pad_token_id=engine.tokenizer.pad_token_id)
    return out[0, len(prompt):].tolist()


def cut_at_eos(tokens: list[int], eos: set[int]) -> tuple[list[int], bool]:
    for t, token in enumerate(tokens):
        if token in eos:
            return tokens[:t], True
    return tokens, False


def token_ids(samples) -> list[tuple[int, ...]]:
    return [c.token_ids for c in samples]


def test_greedy_matches_generate(engine):
    m = 12
    batch = prompts(engine)
    out = engine.generate([GenerationRequest(p, n=3, temperature=0, max_new_tokens=m) for p in batch])
    assert [len(samples) for samples in out] == [3, 3, 3]
    for prompt, samples in zip(batch, out):
        expected, finished = cut_at_eos(reference(engine, prompt, m), engine.eos_token_ids)
        for c in samples:
            assert list(c.token_ids) == expected
            assert c.finished == finished
            assert c.text == engine.tokenizer.decode(expected, skip_special_tokens=True)


def test_stops_right_before_eos(engine):
    batch = prompts(engine)
    ref = reference(engine, batch[0], 12)
    eos = ref[6]  # a token the greedy path is known to produce
    stop = ref.index(eos)
    stopping = with_eos(engine, {eos})
    # The other prompt keeps going (unless it meets the same token): finished rows leave the batch.
    out = stopping.generate([GenerationRequest(batch[0], n=2, temperature=0, max_new_tokens=12),
                             GenerationRequest(batch[1], n=2, temperature=0, max_new_tokens=12)])
    for c in out[0]:
        assert list(c.token_ids) == ref[:stop] and c.finished
    expected, finished = cut_at_eos(reference(engine, batch[1], 12), {eos})
    assert [list(c.token_ids) for c in out[1]] == [expected, expected]
    assert all(c.finished == finished for c in out[1])


def test_prefills_each_prompt_once(llama):
    """Tokens through the embedding: (L - 1) for the prompt, then one per sample per step."""
    prompt, n, m = prompts(llama)[2], 8, 5
    no_eos = with_eos(llama, set())
    fed = []
    hook = llama.model.get_input_embeddings().register_forward_hook(lambda mod, args, out: fed.append(args[0].numel()))
    try:
        no_eos.generate([GenerationRequest(prompt, n=n, temperature=1.0, max_new_tokens=m)])
    finally:
        hook.remove()
    assert sum(fed) == (len(prompt) - 1) + n * m  # num_return_sequences would feed n * L + n * (m - 1)
    assert no_eos.stats == {"prefill_tokens": len(prompt) - 1, "generated_tokens": n * m, "calls": 1,
                            "abandoned_rows": 0}


def test_same_seed_same_samples_other_seed_other_samples(llama):
    p = prompts(llama)[0]
    run = lambda seed: token_ids(llama.generate([GenerationRequest(p, n=4, temperature=1.0, max_new_tokens=16,
                                                                   seed=seed)])[0])
    first = run(7)
    assert run(7) == first
    assert run(8) != first
    assert mix_seed(7, 0) != mix_seed(7, 1) != mix_seed(8, 0)


def test_samples_do_not_depend_on_the_batch(engine):
    """A request alone and batched with others gives the same tokens.

    Logits are not bit-identical on CPU (about 1e-7 apart: a one-row matmul takes another
    kernel than a many-row one, and left padding shifts the attention sums), but each
    sample's noise comes from its own generator, so tokens agree unless two candidates
    lie within ~1e-7 of each other, which these fixed seeds do not meet.
    """
    batch = prompts(engine)
    target = GenerationRequest(batch[1], n=3, temperature=0.8, top_p=0.95, max_new_tokens=24, seed=11)
    alone = engine.generate([target])[0]
    batched = engine.generate([
        GenerationRequest(batch[2], n=2, temperature=1.0, max_new_tokens=10, seed=3),
        target,
        GenerationRequest(batch[0], n=5, temperature=0, max_new_tokens=30, seed=11),
    ])[1]
    assert token_ids(batched) == token_ids(alone)


def test_temperature_gives_varied_samples(llama):
    samples = llama.generate([GenerationRequest(prompts(llama)[0], n=8, temperature=1.0, max_new_tokens=12)])[0]
    assert len(set(token_ids(samples))) > 1


def test_max_new_tokens_and_per_row_options(llama):
    batch = prompts(llama)
    no_eos = with_eos(llama, set())
    out = no_eos.generate([
        GenerationRequest(batch[0], n=2, temperature=0, max_new_tokens=5),
        GenerationRequest(batch[1], n=3, temperature=1.0, max_new_tokens=9, seed=1),
        GenerationRequest(batch[2], n=2, temperature=1.0, top_p=1e-6, max_new_tokens=7, seed=2),
    ])
    assert token_ids(out[0]) == [tuple(reference(llama, batch[0], 5))] * 2
    assert all(len(c.token_ids) == 9 and not c.finished for c in out[1])
    # top_p that keeps one token is greedy, whatever the temperature.
    assert token_ids(out[2]) == [tuple(reference(llama, batch[2], 7))] * 2


def test_prompt_of_one_token(llama):
    one = (prompts(llama)[1][0],)
    expected = tuple(reference(llama, one, 8))
    no_eos = with_eos(llama, set())
    alone = no_eos.generate([GenerationRequest(one, n=2, temperature=0, max_new_tokens=8)])[0]
    mixed = no_eos.generate([GenerationRequest(prompts(llama)[2], n=1, temperature=0, max_new_tokens=8),
                             GenerationRequest(one, n=2, temperature=0, max_new_tokens=8)])[1]
    assert token_ids(alone) == token_ids(mixed) == [expected, expected]


def test_max_context_caps_the_budget(llama):
    prompt = prompts(llama)[0]
    capped = with_eos(llama, set(), max_context=len(prompt) + 4)
    [[c]] = capped.generate([GenerationRequest(prompt, temperature=1.0, max_new_tokens=50)])
    assert len(c.token_ids) == 4 and not c.finished
    too_small = with_eos(llama, set(), max_context=len(prompt))
    with pytest.raises(ValueError, match="max_context"):
        too_small.generate([GenerationRequest(prompt, max_new_tokens=1)])


def test_load_attributes(llama):
    assert llama.max_context == llama.model.config.max_position_embeddings == 4096
    assert llama.tokenizer.eos_token_id in llama.eos_token_ids
    assert len(llama.revision) == 64 and llama.revision == checkpoint_revision(llama.model_id)
    assert checkpoint_revision("org/not-a-local-dir") == "org/not-a-local-dir"
    assert llama.generate([]) == []


def test_reserved_cache_layer_equals_concatenation():
    keys, values = torch.randn(2, 2, 5, 4), torch.randn(2, 2, 5, 4)
    layer = ReservedLayer(keys, values, room=1)  # the third update outgrows the room
    new = [torch.randn(2, 2, 1, 4) for _ in range(3)]
    for t in new:
        k, v = layer.update(t, 2 * t)
    assert torch.equal(k, torch.cat([keys, *new], dim=2))
    assert torch.equal(v, torch.cat([values, *(2 * t for t in new)], dim=2))
    layer.batch_select_indices(torch.tensor([1, 1, 0]))
    assert torch.equal(layer.keys, k[[1, 1, 0]]) and layer.get_seq_length() == 8


def test_revision_follows_weights_tokenizer_and_template(tmp_path):
    from grm.testing import build_tiny_model

    path = build_tiny_model(tmp_path / "m")
    before = checkpoint_revision(path)
    assert checkpoint_revision(path) == before
    config = (path / "tokenizer_config.json").read_text()
    (path / "tokenizer_config.json").write_text(config.replace("im_start", "im_begin", 1))
    after_tokenizer = checkpoint_revision(path)
    assert after_tokenizer != before
    (path / "grm_template.json").write_text("{}")
    after_template = checkpoint_revision(path)
    assert after_template not in (before, after_tokenizer)
    (path / "notes.txt").write_text("not part of the model")
    assert checkpoint_revision(path) == after_template


@pytest.mark.parametrize("chunk", [1, 12, 40])
def test_grouped_prefill_gives_the_same_tokens(engine, chunk):
    """Prompts prefilled in length-sorted groups (a CPU speed-up) decode exactly as in one batch."""
    batch = prompts(engine) + [(engine.tokenizer.bos_token_id or 1,)]  # and a one-token prompt
    requests = [GenerationRequest(p, n=2, temperature=0.7, max_new_tokens=10, seed=j) for j, p in enumerate(batch)]
    before, engine.prefill_chunk_tokens = engine.prefill_chunk_tokens, None
    try:
        whole = engine.generate(requests)
        assert len(engine._prefill_groups([p[:-1] for p in batch], DynamicCache(config=engine.model.config))) == 1
        engine.prefill_chunk_tokens = chunk
        groups = engine._prefill_groups([p[:-1] for p in batch], DynamicCache(config=engine.model.config))
        assert len(groups) > 1 and sorted(j for g in groups for j in g) == list(range(len(batch)))
        grouped = engine.generate(requests)
        cache, mask = engine._prefill(requests)
        engine.prefill_chunk_tokens = None
        whole_cache, whole_mask = engine._prefill(requests)
    finally:
        engine.prefill_chunk_tokens = before
    assert [token_ids(s) for s in grouped] == [token_ids(s) for s in whole]
    assert torch.equal(mask, whole_mask)
    real = mask.bool()[:, None, :, None]  # the keys and values the decode attends to
    for layer, whole_layer in zip(cache.layers, whole_cache.layers):
        for t, w in ((layer.keys, whole_layer.keys), (layer.values, whole_layer.values)):
            torch.testing.assert_close(t * real, w * real, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("piece_tokens", [16_384, 40])
def test_reading_gives_the_next_token_log_probabilities_of_a_full_forward_and_reuses_the_sampled_prompt(
        engine, piece_tokens, monkeypatch):
    monkeypatch.setattr("grm.transformers_engine.READ_TOKENS", piece_tokens)  # 40: a piece per sequence
    cached = TransformersEngine.load(engine.model_id)  # with its prefix cache
    prompt = prompts(cached)[2]
    [samples] = cached.generate([GenerationRequest(prompt, n=2, temperature=1.0, seed=5, max_new_tokens=6)])
    sequences = [prompt + c.token_ids for c in samples] + [prompts(cached)[1]]
    watched = [3, 7, 11]
    before = cached.prefix_cache.stats()["reused_tokens"]
    got = cached.next_token_logprobs(sequences, watched)
    assert cached.prefix_cache.stats()["reused_tokens"] - before >= 2 * (len(prompt) // 16 * 16 - 16)
    for seq, row in zip(sequences, got):
        with torch.no_grad():
            full = cached.model(torch.tensor([seq])).logits[0, -1].float().log_softmax(-1)[watched]
        assert row == pytest.approx(full.tolist(), abs=1e-4)
    assert cached.next_token_logprobs([], watched) == []
    with pytest.raises(ValueError, match="max_context"):
        cached.next_token_logprobs([tuple(range(1, 3)) * cached.max_context], watched)
