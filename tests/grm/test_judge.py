"""The judge end to end: prompts -> engine -> parsing -> permutation mapping -> aggregation.

Two engines: the real TransformersEngine on a tiny random model (garbage out, so every
sample is invalid and the result must be unscored, never 0), and a rule-following engine
standing in for a trained GRM (none can be downloaded here): it reads the rendered
prompt, finds the responses in the order they were shown, and scores each one by the
number it contains, so the permutation round trip can be checked exactly.
"""

from __future__ import annotations

import re

import pytest

from grm import GenerativeRewardModel, InputTooLong, ScoreInput, SamplingOptions
from grm.engine import GenerationRequest
from grm.testing import build_tokenizer
from grm.types import AggregationOptions, Completion

SHOWN = re.compile(r"\[The Begin of Response (\d+)\]\s*(.*?)\s*\[The End of Response \1\]", re.S)


class RuleEngine:
    """Writes a well-formed judgment whose score for a response is the integer in its text."""

    model_id, revision, max_context = "rule-engine", "r0", 4096

    def __init__(self, broken_every: int = 0):
        self.tokenizer = build_tokenizer()
        self.broken_every = broken_every  # every n-th sample is malformed
        self.requests: list[GenerationRequest] = []

    def generate(self, requests):
        self.requests.extend(requests)
        out, count = [], 0
        for req in requests:
            prompt = self.tokenizer.decode(list(req.prompt_ids))
            shown = [int(re.search(r"\d+", body).group()) for _, body in SHOWN.findall(prompt)]
            samples = []
            for _ in range(req.n):
                count += 1
                broken = self.broken_every and count % self.broken_every == 0
                boxed = "no scores here" if broken else "\\boxed{" + ", ".join(map(str, shown)) + "}"
                text = (f"Specific Criteria: 1. Bigger is better (weight 100%).\n"
                        f"Analysis: scored by value.\nScores: {boxed}")
                samples.append(Completion(token_ids=(1,) * 5, text=text, finished=True))
            out.append(samples)
        return out


def test_scores_map_back_to_original_order():
    grm = GenerativeRewardModel(RuleEngine())
    result = grm.score("Pick the biggest.", ["value 3", "value 9", "value 5"], k=8, seed=4)
    assert result.num_valid == 8
    assert result.vote_sums == (24, 72, 40)
    assert result.rewards == (3.0, 9.0, 5.0)
    assert result.spread == (0.0, 0.0, 0.0)
    assert result.best == 1
    perms = {j.permutation for j in result.judgments}
    assert len(perms) > 1, "eight samples over 3 responses should see more than one order"
    for j in result.judgments:
        assert j.scores == (3, 9, 5)
        assert j.principles.startswith("1. Bigger is better")


def test_distinct_permutations_share_one_prompt():
    engine = RuleEngine()
    grm = GenerativeRewardModel(engine)
    result = grm.score("Pick one.", ["1", "2"], k=8, seed=0)
    assert sum(r.n for r in engine.requests) == 8
    assert len(engine.requests) == len({j.permutation for j in result.judgments}) <= 2


def test_invalid_samples_are_counted_not_scored():
    grm = GenerativeRewardModel(RuleEngine(broken_every=4))
    result = grm.score("Pick one.", ["value 2", "value 6"], k=8, seed=1)
    assert result.num_valid == 6 and result.num_used == 6
    assert result.vote_sums == (12, 36)
    assert result.invalid_reasons == {"no_scores": 2}
    assert sum(not j.valid for j in result.judgments) == 2


def test_same_seed_same_permutations():
    a = GenerativeRewardModel(RuleEngine()).score("q", ["1", "2", "3"], k=6, seed=9)
    b = GenerativeRewardModel(RuleEngine()).score("q", ["1", "2", "3"], k=6, seed=9)
    assert [j.permutation for j in a.judgments] == [j.permutation for j in b.judgments]


def test_batch_matches_single_calls():
    items = [ScoreInput("q1", ["value 1", "value 4"]), ScoreInput("q2", ["value 7"])]
    grm = GenerativeRewardModel(RuleEngine())
    batch = grm.score_batch(items, SamplingOptions(k=4, seed=2))
    single = [grm.score_batch([it], SamplingOptions(k=4, seed=2))[0] for it in items]
    assert batch == single
    assert batch[1].rewards == (7.0,)


def test_meta_voting_needs_meta_rm():
    grm = GenerativeRewardModel(RuleEngine())
    with pytest.raises(ValueError, match="meta RM"):
        grm.score("q", ["1", "2"], k=2, aggregation="meta_voting")


def test_too_long_input_is_refused():
    engine = RuleEngine()
    engine.max_context = 64
    with pytest.raises(InputTooLong, match="context"):
        GenerativeRewardModel(engine).score("q " * 100, ["1"], k=1)


@pytest.fixture(scope="module")
def tiny_grm(tmp_path_factory):
    from grm.testing import build_tiny_model

    path = build_tiny_model(tmp_path_factory.mktemp("tiny") / "llama")
    return GenerativeRewardModel.load(str(path))


def test_untrained_model_is_unscored_not_zero(tiny_grm):
    result = tiny_grm.score("Say hi.", ["hi", "hello"], k=4, max_new_tokens=12, seed=3)
    assert len(result.judgments) == 4
    assert result.num_valid == 0 and result.num_used == 0
    assert result.rewards == (None, None) and result.best is None
    assert sum(result.invalid_reasons.values()) == 4
    assert result.completion_tokens == sum(j.num_tokens for j in result.judgments) > 0
    assert result.prompt_tokens > 0


def test_real_engine_is_deterministic(tiny_grm):
    kwargs = dict(k=3, max_new_tokens=10, seed=5)
    a = tiny_grm.score("Say hi.", ["hi", "hello"], **kwargs)
    b = tiny_grm.score("Say hi.", ["hi", "hello"], **kwargs)
    assert [j.text for j in a.judgments] == [j.text for j in b.judgments]
    c = tiny_grm.score_batch([ScoreInput("Other.", ["x"]), ScoreInput("Say hi.", ["hi", "hello"])],
                             [SamplingOptions(k=2, max_new_tokens=10, seed=1), SamplingOptions(**kwargs)],
                             AggregationOptions())[1]
    assert [j.text for j in c.judgments] == [j.text for j in a.judgments]


def test_checkpoint_carries_its_template(tmp_path):
    from grm.judge import save_template
    from grm.templates import load_template
    from grm.testing import build_tiny_model

    path = build_tiny_model(tmp_path / "m")
    compact = load_template("grm-compact-v1")
    save_template(compact, path)
    assert GenerativeRewardModel.load(str(path)).template == compact
    default = load_template("grm-default-v1")
    assert GenerativeRewardModel.load(str(path), template="grm-default-v1").template == default
