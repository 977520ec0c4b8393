"""SFT that weighs the score line, goes on from an adapter, and takes the other response order.

The weights are checked on real tokenized judgments; the stage runs for real on the tiny
test model over a drafts file written here.
"""

import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grm.templates import load_template
from grm.types import ScoreInput
from spct.cold_start import Draft, draft_scores, judgment_text
from spct.data import make_example, read_jsonl
from spct.english import EnglishOptions, run, sft_examples, training_items
from spct.lora_sft import nll_loss, score_weights
from test_english import _records, _write_drafts

TEMPLATE = load_template("grm-english-v1")


@pytest.fixture
def toy_data(tmp_path):
    path = tmp_path / "toy.jsonl"
    path.write_text("\n".join(_records(20)) + "\n")
    return path


def _example(tokenizer, best: int = 0):
    """A drafted judgment of a two-answer pair, shown in data order, as a training example."""
    draft = Draft(("A good answer gives a rule.",), ("The answer gives a rule.", "The answer gives nothing."),
                  ("Water it", "No idea."))
    rng = random.Random(0)
    text = judgment_text(draft, (0, 1), draft_scores(best, 2, rng), rng)
    pair = ScoreInput("How do I keep a plant alive?", ["Water it once a week.", "No idea."])
    return make_example(tokenizer, TEMPLATE, pair, (0, 1), text)


def test_the_score_line_and_only_it_carries_the_weight(tiny_model_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    example = _example(tokenizer)
    [weights] = score_weights(tokenizer, [example], 10.0)
    assert len(weights) == len(example.target_ids)
    cut = weights.index(10.0)
    assert all(w == 1.0 for w in weights[:cut]) and all(w == 10.0 for w in weights[cut:])
    assert tokenizer.decode(example.target_ids[cut:]).startswith("Scores:")
    assert tokenizer.decode(example.target_ids[:cut]).endswith("\n") and "Scores" not in tokenizer.decode(
        example.target_ids[:cut])
    no_scores = example.__class__(example.prompt_ids, example.target_ids[:cut])
    with pytest.raises(ValueError, match="no 'Scores:' line"):
        score_weights(tokenizer, [no_scores], 10.0)


def test_weights_of_one_give_the_plain_loss_and_a_heavy_score_line_moves_it(tiny_model_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    examples = [_example(tokenizer, best) for best in (0, 1)]
    with torch.no_grad():
        plain, tokens = nll_loss(examples)(model, [0, 1])
        ones, ones_tokens = nll_loss(examples, score_weights(tokenizer, examples, 1.0))(model, [0, 1])
        heavy, heavy_tokens = nll_loss(examples, score_weights(tokenizer, examples, 50.0))(model, [0, 1])
    assert torch.allclose(plain, ones) and tokens == ones_tokens == heavy_tokens
    assert sum(len(e.target_ids) for e in examples) == tokens  # tokens counted once, not weighted
    assert not torch.allclose(plain, heavy)


def test_one_order_and_the_other_order_together_are_every_order(tiny_model_path, toy_data, tmp_path):
    _write_drafts(tmp_path, 4)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    items = training_items([str(toy_data)], 4, 0)
    rows = read_jsonl(tmp_path / "drafts.jsonl")
    one, other, every = (sft_examples(tokenizer, TEMPLATE, items, rows, 0, orders) for orders in ("one", "other", "all"))
    assert len(one) == len(other) == 4 and len(every) == 8
    assert sorted(e.prompt_ids for e in one + other) == sorted(e.prompt_ids for e in every)
    assert all(a.prompt_ids != b.prompt_ids for a, b in zip(one, other))  # each pair, its two orders


def test_sft_goes_on_from_an_adapter_with_content_free_pairs_and_a_weighted_score_line(
        tiny_model_path, toy_data, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    _write_drafts(first, 4)
    small = {"sft.batch_size": 2, "sft.top_layers": 1, "sft.rank": 4, "sft.epochs": 1.0}
    opts = EnglishOptions(data=(str(toy_data),), out=first, base=str(tiny_model_path), stages=("sft",),
                          items_per_source=4, extra={**small, "sft.orders": "one"})
    run(opts, log=lambda _: None)
    start = first / "sft-adapter"
    [done] = run(EnglishOptions(**{**vars(opts), "out": second, "drafts_from": first,
                                   "extra": {**small, "sft.orders": "other", "sft.start": str(start),
                                             "sft.content_free": 1, "sft.score_weight": 10}}), log=lambda _: None)
    assert done["status"] == "done" and done["examples"] == 8  # 4 other-order drafts + 4 content-free pairs
    assert done["settings"]["start"] == str(start) and done["settings"]["score_weight"] == 10.0
    assert done["settings"]["orders"] == "other" and done["settings"]["content_free"] == 1
    from safetensors.torch import load_file
    before, after = (load_file(str(f / "sft-adapter" / "adapter_model.safetensors")) for f in (first, second))
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="sft.start: .* is not an adapter folder"):
        run(EnglishOptions(**{**vars(opts), "out": tmp_path / "third",
                              "extra": {**small, "sft.start": str(tmp_path)}}), log=lambda _: None)
