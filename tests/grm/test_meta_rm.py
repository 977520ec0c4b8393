"""MetaRewardModel on a tiny random-weight one-label classifier built by grm.testing."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from grm.meta_rm import MetaRewardModel
from grm.testing import build_tiny_meta_rm, build_tokenizer, tiny_config

torch.set_num_threads(2)

PROMPT = "#### Conversation Context ####\nUser: What is 12 + 30?\n#### Responses to be Scored ####"
JUDGMENT = "Specific Criteria: 1. Correctness (weight 50%).\nAnalysis: Response 1 is right.\nScores: \\boxed{8, 5}"


@pytest.fixture(scope="module")
def meta_rm(tmp_path_factory) -> MetaRewardModel:
    return MetaRewardModel.load(str(build_tiny_meta_rm(tmp_path_factory.mktemp("meta_rm"))))


def test_scores_are_probabilities(meta_rm):
    scores = meta_rm.score([(PROMPT, JUDGMENT), (PROMPT, "Scores: \\boxed{1, 10}"), ("", "")])
    assert len(scores) == 3
    assert all(0 < s < 1 for s in scores)
    assert len(meta_rm.revision) == 64 and meta_rm.model_id


def test_padding_does_not_change_a_score(meta_rm):
    short = ("Name a prime.", "Scores: \\boxed{7}")
    long = (PROMPT * 4, JUDGMENT * 3)
    [alone] = meta_rm.score([short])
    batched = meta_rm.score([long, short, long], batch_size=3)
    assert abs(batched[1] - alone) < 1e-5
    assert batched[0] == pytest.approx(batched[2], abs=1e-6)


def test_batches_keep_input_order(meta_rm):
    pairs = [(PROMPT * (j % 3 + 1), JUDGMENT[: 20 + 7 * j]) for j in range(7)]
    one_by_one = [meta_rm.score([p])[0] for p in pairs]
    assert meta_rm.score(pairs, batch_size=2) == pytest.approx(one_by_one, abs=1e-5)


def test_special_token_strings_stay_plain_text(meta_rm):
    ids = meta_rm.encode("<|im_end|>", "<|im_start|>assistant")
    special = set(meta_rm.tokenizer.all_special_ids)
    assert [i for i in ids if i in special] == meta_rm.separator * 2  # only our own separators


def test_long_prompt_is_cut_from_the_left(meta_rm):
    meta_rm_short = MetaRewardModel(meta_rm.model, meta_rm.tokenizer, max_length=64)
    judgment_ids = meta_rm.encode("", JUDGMENT)[1:-1]
    ids = meta_rm_short.encode(PROMPT * 10 + " END", JUDGMENT)
    assert len(ids) == 64
    assert ids[-len(judgment_ids) - 1:-1] == judgment_ids  # the judgment is whole
    assert meta_rm.tokenizer.decode(ids[: -len(judgment_ids) - 2]).endswith("END")
    # A judgment longer than the context keeps its end, where the scores are.
    ids = meta_rm_short.encode(PROMPT, JUDGMENT * 10)
    assert len(ids) == 64 and meta_rm.tokenizer.decode(ids[:-1]).endswith("\\boxed{8, 5}")
    assert 0 < meta_rm_short.score([(PROMPT * 10, JUDGMENT * 10)])[0] < 1


def test_two_labels_are_refused(tmp_path):
    tokenizer = build_tokenizer()
    config = tiny_config("llama", len(tokenizer), num_labels=2, pad_token_id=tokenizer.pad_token_id)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="num_labels == 1"):
        MetaRewardModel.load(str(tmp_path))
