"""Principles once per query: one draft per conversation, every sample continues from it.

The engine stands in for a trained GRM through the GenerationEngine protocol: a prompt
that already ends with principles gets only an analysis and scores; any other prompt a
whole judgment whose principles weight depends on the request seed, so shared and
unshared principles can be told apart."""

from __future__ import annotations

import random
import re

from grm import GenerativeRewardModel, ScoreInput
from grm.seeds import mix_seed
from grm.shared_principles import principles_prefix
from grm.testing import build_tokenizer, shown_numbers
from grm.types import Completion, SamplingOptions

class PrinciplesEngine:
    model_id, revision, max_context = "principles-engine", "p0", 4096

    def __init__(self):
        self.tokenizer = build_tokenizer()
        self.calls: list[list] = []

    def generate(self, requests):
        self.calls.append(list(requests))
        out = []
        for req in requests:
            prompt = self.tokenizer.decode(list(req.prompt_ids))
            shown = shown_numbers(prompt)
            continued = prompt.rstrip().endswith("%).")
            samples = []
            for i in range(req.n):
                weight = random.Random(mix_seed(req.seed, i)).randint(10, 99)
                head = "" if continued else f"Specific Criteria:\n1. Bigger is better (weight {weight}%).\n\n"
                text = head + "Analysis: by value.\nScores: \\boxed{" + ", ".join(map(str, shown)) + "}"
                samples.append(Completion(tuple(self.tokenizer(text, add_special_tokens=False).input_ids),
                                          text, True))
            out.append(samples)
        return out


QUERY_A, QUERY_B = "Pick the biggest.", "Pick the largest number."
ITEMS = [ScoreInput(QUERY_A, ["value 3"]), ScoreInput(QUERY_A, ["value 7"]),
         ScoreInput(QUERY_B, ["value 4"]), ScoreInput(QUERY_A, ["value 9"])]


def test_one_draft_per_conversation_and_every_sample_continues_it():
    engine = PrinciplesEngine()
    judge = GenerativeRewardModel(engine)
    results = judge.score_batch(ITEMS, SamplingOptions(k=3, seed=2, shared_principles=True))
    drafts = engine.calls[0]
    assert len(drafts) == 2 and all(r.n == 1 for r in drafts)   # queries A and B, once each
    assert "[The Begin of Response 1]\n\n[The End of Response 1]" in engine.tokenizer.decode(list(drafts[0].prompt_ids))
    assert len({r.judgments[0].principles for r, it in zip(results, ITEMS) if it.query == QUERY_A}) == 1
    for result, item in zip(results, ITEMS):
        assert result.num_valid == 3
        assert len({j.principles for j in result.judgments}) == 1
        assert result.rewards[0] == float(re.search(r"\d+", item.responses[0]).group())
        assert all(j.text.startswith("Specific Criteria:") for j in result.judgments)
        # only the critique was generated per sample
        assert all(j.num_tokens < len(engine.tokenizer(j.text).input_ids) for j in result.judgments)


def test_unshared_samples_write_their_own_principles():
    results = GenerativeRewardModel(PrinciplesEngine()).score_batch(ITEMS, SamplingOptions(k=3, seed=2))
    assert any(len({j.principles for j in r.judgments}) > 1 for r in results)


def test_shared_principles_are_the_same_alone_or_batched():
    sampling = SamplingOptions(k=3, seed=5, shared_principles=True)
    batched = GenerativeRewardModel(PrinciplesEngine()).score_batch(ITEMS, sampling)
    for item, together in zip(ITEMS, batched):
        assert GenerativeRewardModel(PrinciplesEngine()).score_batch([item], sampling)[0] == together


def test_given_principles_are_not_drafted():
    engine = PrinciplesEngine()
    item = ScoreInput(QUERY_A, ["value 3"], principles="Bigger is better.")
    GenerativeRewardModel(engine).score_batch([item], SamplingOptions(k=2, shared_principles=True))
    assert len(engine.calls) == 1                                 # no draft call


def test_prefix_stops_before_the_analysis_header():
    tok = build_tokenizer()
    ids = tok("Specific Criteria:\n1. Short (weight 100%).\n\nAnalysis: ok.\nScores: \\boxed{3}",
              add_special_tokens=False).input_ids
    head = tok.decode(list(principles_prefix(tok, ids)))
    assert head.startswith("Specific Criteria:") and "Analysis" not in head and head.endswith("\n")
    assert principles_prefix(tok, tok("Scores: \\boxed{3}", add_special_tokens=False).input_ids) == ()
    assert principles_prefix(tok, tok("Analysis: none.", add_special_tokens=False).input_ids) == ()
