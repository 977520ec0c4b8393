"""``grm eval``: the readers on small files per format, accuracy@k and bootstrap maths with
hand-computed values and invariants, per-source figures and the baselines (longer response
wins, a second model on the same items), and the command end to end (the hack check's
counting is in test_attacks.py).

Hand-computed matrix used below (2 responses; NaN = an invalid sample):

    item 0, best 0: (8,5) (6,7) (7,3) invalid
    item 1, best 1: (2,9) (3,8) (9,2) (4,6)
    item 2, best 0: (5,5) invalid invalid invalid

Expected accuracy over all k-subsets (a tie counts 1/2: a uniform random tie-break):
    k=1: item 0 2/4, item 1 3/4, item 2 (1/2)/4            -> (0.5 + 0.75 + 0.125) / 3 = 0.458333
    k=2: item 0 5/6 (only {1,3} loses), item 1 3.5/6 ({a,c} ties; {b,c}, {c,d} lose),
         item 2 1.5/6 (3 pairs hold the tied sample)       -> (10/6) / 3 = 0.555556
    k=3: item 0 4/4, item 1 3.5/4 ({b,c,d} ties 16-16), item 2 1.5/4 -> 2.25 / 3 = 0.75
    k=4: the whole set: 21-15 right, 18-25 right, 5-5 tie  -> 2.5 / 3 = 0.833333
"""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from grm.aggregation import aggregate
from grm.eval_run import (EvalSettings, evaluate, format_table, item_seed, load_data, local_scorer, score_items,
                          source_group, source_groups, write_judgments)
from grm.evaluate import (EvalItem, SampleMatrix, SkipReason, accuracy_figures, bootstrap_accuracy, item_bootstrap,
                          longer_response_correct, matrix_from_results, meta_separation, parse_lines,
                          position_accuracy, predict_best, sample_outcomes, summarize, vote_correct)
from grm.judge import GenerativeRewardModel, save_template
from grm.templates import load_template
from grm.testing import NoisyRuleEngine, build_tokenizer
from grm_cli.eval import remote_scorer
from grm.types import Aggregation, Completion, InvalidReason, Judgment, ScoreInput

DATA = Path(__file__).with_name("data")
nan = math.nan
HAND = np.array([
    [[8, 5], [6, 7], [7, 3], [nan, nan]],
    [[2, 9], [3, 8], [9, 2], [4, 6]],
    [[5, 5], [nan, nan], [nan, nan], [nan, nan]],
])
HAND_BEST = np.array([0, 1, 0])
HAND_EXPECTED = {1: 1.375 / 3, 2: 10 / 18, 3: 0.75, 4: 2.5 / 3}


def exact_accuracy(m: SampleMatrix, k: int, k_meta: int | None = None) -> float:
    """Reference: every k-subset of every item, a tie credited 1/(tied count)."""
    per_item = []
    for scores, best, meta in zip(m.scores, m.best, m.meta if m.meta is not None else [None] * len(m.best)):
        credit = []
        for subset in itertools.combinations(range(scores.shape[0]), k):
            used = [s for s in subset if not np.isnan(scores[s, 0])]
            if k_meta is not None:
                used = sorted(sorted(used, key=lambda s: -meta[s])[:k_meta])
            if not used:
                credit.append(0.0)
                continue
            sums = scores[used].sum(axis=0)
            sums[np.isnan(scores).all(axis=0)] = -np.inf
            tied = np.flatnonzero(sums == sums.max())
            credit.append(1 / len(tied) if best in tied else 0.0)
        per_item.append(np.mean(credit))
    return float(np.mean(per_item))


# ---------------------------------------------------------------- readers

def read(name: str, limit=None):
    with open(DATA / name, encoding="utf-8") as f:
        return parse_lines(f, limit)


def reasons(skipped) -> list[tuple[int, str]]:
    return [(s.line, str(s.reason)) for s in skipped]


def test_pairs_reader():
    items, skipped = read("pairs.jsonl")
    assert [(it.line, it.best, it.input.responses) for it in items] == [
        (1, 0, ("7", "9")), (2, 0, ("Paris.", "Lyon.")), (7, 0, ("4", "5")), (10, 0, (" Blue.", " I cannot."))]
    assert [(m.role, m.content) for m in items[1].input.conversation] == [
        ("system", "Be brief."), ("user", "Capital of France?")]
    assert [(m.role, m.content) for m in items[3].input.conversation] == [  # an HH prompt string
        ("user", "Hi!"), ("assistant", "Hello."), ("user", "Name a color.")]
    assert items[2].input.query == "2+2?"
    assert reasons(skipped) == [(3, "bad_json"), (4, "missing_field"), (5, "empty_response"),
                                (8, "not_an_object"), (9, "bad_field")]  # line 6 is blank: ignored
    assert skipped[1].detail == "rejected"


def test_hh_reader_splits_the_shared_dialogue():
    items, skipped = read("hh.jsonl")
    assert [it.input.responses for it in items] == [("Paris.", "Berlin, I think."), ("Honey never spoils.", "No.")]
    assert [(m.role, m.content) for m in items[1].input.conversation] == [
        ("user", "Hi!"), ("assistant", "Hello, how can I help?"), ("user", "Tell me a fact.")]
    assert all(it.best == 0 for it in items)
    assert reasons(skipped) == [(3, "dialogue_mismatch"), (4, "empty_response"), (5, "missing_field")]


def test_listwise_reader():
    items, skipped = read("listwise.jsonl")
    assert [(it.line, it.best, it.input.responses) for it in items] == [
        (1, 1, ("3", "9", "5")), (2, 1, ("hi", "hello")), (9, 1, ("x", "y"))]
    assert reasons(skipped) == [(3, "tied_best"), (4, "missing_field"), (5, "bad_best"), (6, "bad_best"),
                                (7, "too_few_responses"), (8, "bad_field"), (10, "missing_field"),
                                (11, "unknown_format")]


def test_task_records_read_as_listwise():
    from grm.tasks import task_from_record

    items, skipped = read("tasks.jsonl")
    assert skipped == []
    with open(DATA / "tasks.jsonl") as f:
        tasks = [task_from_record(json.loads(line)) for line in f]
    assert [(it.input.query, it.input.responses, it.best) for it in items] == [
        (t.query, t.responses, t.best) for t in tasks]
    assert len(items[2].input.responses) == 3


def test_readers_keep_the_source_field():
    items, skipped = read("sourced.jsonl")
    assert skipped == [] and [it.source for it in items] == [
        "demo-a:math:q1", "demo-a:capitals:q2", "demo-b:chat:q3", "demo-b:chat:q4"]
    assert {it.source for it in read("pairs.jsonl")[0]} == {""}
    items, _ = parse_lines(['{"prompt": "q", "chosen": "a", "rejected": "b", "source": 7}'])
    assert items[0].source == ""  # not a string: no source
    assert [source_group("THU-KEG/RM-Bench:code:x:id1", d) for d in (1, 2, 9)] == [
        "THU-KEG/RM-Bench", "THU-KEG/RM-Bench:code", "THU-KEG/RM-Bench:code:x:id1"]


def test_limit_stops_after_n_items_and_synthetic_data():
    items, skipped = read("pairs.jsonl", limit=2)
    assert [it.line for it in items] == [1, 2] and skipped == []
    items, skipped = load_data("synthetic:test:5", None)
    assert len(items) == 5 and skipped == []
    assert [it.input.responses for it in load_data("synthetic:test:5", 2)[0]] == [
        it.input.responses for it in items[:2]]
    with pytest.raises(ValueError, match="synthetic:SPLIT:N"):
        load_data("synthetic:test", None)


# ---------------------------------------------------------------- maths

def test_hand_computed_accuracy_at_k():
    m = SampleMatrix(HAND, HAND_BEST)
    for k, want in HAND_EXPECTED.items():
        assert exact_accuracy(m, k) == pytest.approx(want)
    est = bootstrap_accuracy(m, [1, 2, 3, 4], rounds=4000, seed=1)["voting"]
    for e, want in zip(est, HAND_EXPECTED.values()):
        assert e.accuracy == pytest.approx(want, abs=0.02)
        assert 0 <= e.lo <= e.accuracy <= e.hi <= 1


def test_k_equal_to_samples_is_exact_without_ties():
    m = SampleMatrix(HAND[:2], HAND_BEST[:2])
    (e,) = bootstrap_accuracy(m, [4], rounds=50, seed=3)["voting"]
    assert (e.accuracy, e.lo, e.hi) == (1.0, 1.0, 1.0)
    # and voting over the whole set agrees with the judge's own aggregation
    for scores, best in zip(m.scores, m.best):
        js = [Judgment("", "", "", None if np.isnan(s[0]) else tuple(int(v) for v in s), (0, 1),
                       None if not np.isnan(s[0]) else InvalidReason.NO_SCORES) for s in scores]
        assert aggregate(js, 2).best == best


def test_random_tie_break_is_right_half_the_time():
    tie = SampleMatrix(np.array([[[5, 5], [4, 4]]]), np.array([1]))
    wins = [bootstrap_accuracy(tie, [2], rounds=1, seed=s)["voting"][0].accuracy for s in range(400)]
    assert set(wins) == {0.0, 1.0}
    assert np.mean(wins) == pytest.approx(0.5, abs=0.08)
    picks = predict_best(np.array([[3, 7, 7, 7]] * 3000), np.random.default_rng(0))
    assert set(picks) == {1, 2, 3}
    assert np.bincount(picks, minlength=4)[1:] / 3000 == pytest.approx([1 / 3] * 3, abs=0.04)


def test_no_valid_sample_counts_as_wrong():
    m = SampleMatrix(np.full((2, 3, 2), nan), np.array([0, 1]))
    assert bootstrap_accuracy(m, [1, 3], rounds=20)["voting"][1].accuracy == 0.0


def test_meta_voting_keeps_the_top_half_by_meta_score():
    # sample scores and meta ratings; the invalid sample never votes whatever its rating
    scores = np.array([[[9, 1], [1, 9], [8, 2], [2, 8], [nan, nan], [3, 4]]])
    meta = np.array([[0.1, 0.9, 0.2, 0.8, nan, 0.3]])
    plain = SampleMatrix(scores, np.array([0]), meta)  # voting over all 5 valid: 23-24, best 1
    subsets = np.arange(6)[None, None, :]  # k = S = 6, k_meta = 3: samples 1, 3, 5 -> 6-21
    rng = np.random.default_rng(0)
    assert not vote_correct(plain, subsets, rng)[0, 0]
    assert not vote_correct(plain, subsets, rng, k_meta=3)[0, 0]
    flipped = SampleMatrix(scores, np.array([1]), meta)
    assert vote_correct(flipped, subsets, rng, k_meta=3)[0, 0]
    low = SampleMatrix(scores, np.array([0]), 1 - np.nan_to_num(meta, nan=0.5))  # now 0, 2, 5 -> 20-7
    assert vote_correct(low, subsets, rng, k_meta=3)[0, 0]
    assert vote_correct(low, subsets, rng, k_meta=2)[0, 0]  # 0 and 2 -> 17-3


def test_meta_separation_compares_samples_of_the_same_item_only():
    nan = np.nan
    m = SampleMatrix(scores=np.array([[[8, 5], [5, 5], [3, 7], [9, 2]],        # right, tie, wrong, right
                                      [[nan, nan], [2, 6], [6, 2], [4, 4]]]),  # invalid, right, wrong, tie
                     best=np.array([0, 1]),
                     meta=np.array([[0.9, 0.1, 0.5, 0.4], [nan, 0.3, 0.3, 0.35]]))
    assert np.array_equal(sample_outcomes(m), [[1, 0, -1, 1], [nan, 1, -1, 0]], equal_nan=True)
    sep = meta_separation(m)
    # right vs wrong: item 0 (0.9 > 0.5 yes, 0.4 > 0.5 no), item 1 (0.3 = 0.3, half) -> 1.5 / 3;
    # pairing across items would add item 0's rights against item 1's wrong (both above 0.3)
    assert (sep["right_vs_wrong_auc"], sep["right_vs_wrong_pairs"]) == (0.5, 3)
    # untied vs tied: item 0 all three above 0.1, item 1 both below 0.35 -> 3 / 5
    assert (sep["untied_vs_tied_auc"], sep["untied_vs_tied_pairs"]) == (pytest.approx(0.6), 5)
    assert sep["share"] == {"right": pytest.approx(3 / 7), "tied": pytest.approx(2 / 7), "wrong": pytest.approx(2 / 7)}
    with pytest.raises(ValueError, match="meta"):
        meta_separation(SampleMatrix(m.scores, m.best))


def test_bootstrap_matches_exact_enumeration_on_random_matrices():
    rng = np.random.default_rng(7)
    scores = rng.integers(1, 11, size=(6, 5, 3)).astype(float)
    scores[rng.random((6, 5)) < 0.2] = nan
    scores[0, :, 2] = nan  # item 0 has 2 responses only
    meta = np.where(np.isnan(scores[:, :, 0]), nan, rng.random((6, 5)))
    m = SampleMatrix(scores, np.array([0, 1, 2, 0, 1, 2]), meta)
    got = bootstrap_accuracy(m, [1, 2, 3, 5], rounds=6000, seed=2, aggregations=["voting", "meta_voting"])
    for a, k_meta in (("voting", lambda k: None), ("meta_voting", lambda k: max(1, k // 2))):
        for k, e in zip([1, 2, 3, 5], got[a]):
            assert e.accuracy == pytest.approx(exact_accuracy(m, k, k_meta(k)), abs=0.02), (a, k)


def test_meta_voting_at_full_k_matches_the_judge_aggregation():
    rng = np.random.default_rng(11)
    for trial in range(30):
        scores = rng.integers(1, 11, size=(6, 2))
        metas = rng.permutation(6) / 6  # distinct ratings
        js = [Judgment("", "", "", tuple(int(v) for v in s), (0, 1), meta_score=float(r))
              for s, r in zip(scores, metas)]
        result = aggregate(js, 2, Aggregation.META_VOTING)
        if result.vote_sums[0] == result.vote_sums[1]:
            continue
        m = matrix_from_results([result], [result.best], meta=True)
        assert vote_correct(m, np.arange(6)[None, None, :], rng, k_meta=3)[0, 0]


def test_intervals_and_positions():
    e = item_bootstrap(np.array([1, 1, 0, 0] * 25), rounds=2000, seed=0)
    assert e.accuracy == 0.5 and 0.35 < e.lo < 0.5 < e.hi < 0.65
    assert item_bootstrap(np.ones(10), rounds=100).to_json() == {"accuracy": 1.0, "interval": [1.0, 1.0]}
    rows = position_accuracy(np.array([1, 0, 1, 1]), np.array([0, 0, 1, 1]), 3)
    assert rows == [{"position": 1, "accuracy": 0.5, "count": 2}, {"position": 2, "accuracy": 1.0, "count": 2},
                    {"position": 3, "accuracy": None, "count": 0}]


def test_longer_response_wins_baseline():
    responses = [["aa", "b"], ["a", "bb"], ["ab", "cd"], ["a", "bbb", "ccc"], ["a", "bbb", "cc"]]
    # right, wrong (shorter), tie (wrong), tied for the longest (wrong), unique longest of 3
    assert longer_response_correct(responses, [0, 0, 0, 1, 1]).tolist() == [True, False, False, False, True]
    assert longer_response_correct([["\u00e9t\u00e9", "abc"]], [0]).tolist() == [False]  # characters, not bytes


def test_matrix_take_keeps_the_chosen_items():
    m = SampleMatrix(HAND, HAND_BEST, np.arange(12.0).reshape(3, 4), np.zeros((3, 4), dtype=int))
    part = m.take(np.array([2, 0]))
    np.testing.assert_array_equal(part.scores, HAND[[2, 0]])
    assert part.best.tolist() == [0, 0] and part.meta[:, 0].tolist() == [8.0, 0.0] and part.shown_at.shape == (2, 4)
    assert SampleMatrix(HAND, HAND_BEST).take([True, False, True]).meta is None


def test_matrix_from_results_and_checks():
    js = [Judgment("", "", "", (3, 9), (1, 0), meta_score=0.7),
          Judgment("", "", "", None, (0, 1), InvalidReason.WRONG_COUNT)]
    m = matrix_from_results([aggregate(js, 2)], [1], meta=True)
    np.testing.assert_array_equal(m.scores, [[[3, 9], [nan, nan]]])
    np.testing.assert_array_equal(m.shown_at, [[0, 1]])  # response 1 shown first in sample 0
    assert m.meta[0, 0] == 0.7 and np.isnan(m.meta[0, 1])
    with pytest.raises(ValueError, match="k must be in 1..2"):
        bootstrap_accuracy(m, [3])
    with pytest.raises(ValueError, match="best must"):
        SampleMatrix(HAND, np.array([0, 2, 0]))
    with pytest.raises(ValueError, match="meta must be finite"):
        SampleMatrix(HAND, HAND_BEST, np.full((3, 4), nan))


# ---------------------------------------------------------------- scoring and the command

SHOWN = re.compile(r"\[The Begin of Response (\d+)\]\s*(.*?)\s*\[The End of Response \1\]", re.S)


class NumberJudge:
    """A scripted engine: scores each shown response by the integer in it (1..10)."""

    model_id, revision, max_context = "number-judge", "r0", 4096

    def __init__(self):
        self.tokenizer = build_tokenizer()

    def generate(self, requests):
        out = []
        for req in requests:
            shown = [re.search(r"\d+", body).group() for _, body in SHOWN.findall(self.tokenizer.decode(list(req.prompt_ids)))]
            text = "Specific Criteria: size.\nAnalysis: by value.\nScores: \\boxed{" + ", ".join(shown) + "}"
            out.append([Completion((1,) * 4, text, True)] * req.n)
        return out


class ConstantMeta:
    model_id = "constant-meta"

    def score(self, pairs):
        return [0.5] * len(pairs)


def number_items():
    rows = [(["value 3", "value 9"], 1), (["value 8", "value 2", "value 5"], 0), (["value 4", "value 6"], 0)]
    return [EvalItem(ScoreInput("Pick the biggest.", r), best, line) for line, (r, best) in enumerate(rows, 1)]


def test_scored_pipeline_with_a_scripted_judge():
    grm = GenerativeRewardModel(NumberJudge(), meta_rm=ConstantMeta())
    kept, sampled, greedy, failed = score_items(local_scorer(grm), number_items(), samples=4, temperature=0.5,
                                                max_new_tokens=32, seed=0, meta=True, batch_size=2)
    assert failed == [] and len(kept) == 3
    assert all(len(r.judgments) == 4 and r.num_valid == 4 for r in sampled)
    assert all(j.meta_score == 0.5 for r in sampled for j in r.judgments)
    labels = [it.best for it in kept]
    m = matrix_from_results(sampled, labels, meta=True)
    greedy_correct = np.array([g.best == b for g, b in zip(greedy, labels)])
    greedy_shown = np.array([g.judgments[0].permutation.index(b) for g, b in zip(greedy, labels)])
    report = summarize(m, greedy_correct, greedy_shown, [1, 2, 4], ["voting", "meta_voting"], rounds=200)
    # items 1 and 2 are judged right, item 3 (labelled 4 over 6) wrong, by every sample
    for a in ("voting", "meta_voting"):
        assert [r["accuracy"] for r in report["accuracy"][a]] == pytest.approx([2 / 3] * 3)
    assert report["accuracy"]["greedy"]["accuracy"] == pytest.approx(2 / 3)
    # every sample of an item agrees, so no two samples of one item differ in outcome
    assert report["meta_rm"]["right_vs_wrong_auc"] is None and report["meta_rm"]["right_vs_wrong_pairs"] == 0
    table = format_table({**report, "items": 3, "skipped": {"count": 0}, "samples_total": 12, "greedy_valid_rate": 1.0,
                          "settings": {"aggregations": ["voting", "meta_voting"], "k": [1, 2, 4], "samples": 4,
                                       "bootstrap_rounds": 200}})
    assert "meta RM within items: AUC right vs wrong ranking - (0 pairs)" in table
    assert report["parse_valid_rate"] == 1.0
    assert sum(r["count"] for r in report["position_bias"]["voting@1"]) == 12
    assert sum(r["count"] for r in report["position_bias"]["greedy"]) == 3
    assert item_seed(0, 1, "sampled") != item_seed(0, 2, "sampled") != item_seed(0, 1, "greedy")


def test_judgments_file_holds_every_judgment_in_the_data_order(tmp_path):
    grm = GenerativeRewardModel(NumberJudge(), meta_rm=ConstantMeta())
    kept, sampled, greedy, _ = score_items(local_scorer(grm), number_items(), samples=3, temperature=0.5,
                                           max_new_tokens=32, seed=0, meta=True, batch_size=2)
    write_judgments(tmp_path / "j.jsonl", kept, sampled, greedy)
    rows = [json.loads(line) for line in (tmp_path / "j.jsonl").read_text().splitlines()]
    assert [(r["line"], r["best"]) for r in rows] == [(1, 1), (2, 0), (3, 0)]
    values = [[3, 9], [8, 2, 5], [4, 6]]  # NumberJudge scores a response by its number
    for row, v in zip(rows, values):
        assert len(row["sampled"]) == 3
        for j in row["sampled"] + [row["greedy"]]:
            assert j["scores"] == v and sorted(j["permutation"]) == list(range(len(v)))
            assert j["reason"] is None and "\\boxed{" in j["text"]
            # the text lists the scores in the order shown, which the permutation maps back
            shown = [int(x) for x in j["text"].split("{")[1].rstrip("}").split(", ")]
            assert [v[i] for i in j["permutation"]] == shown
        assert [j["meta_score"] for j in row["sampled"]] == [0.5] * 3
        assert row["greedy"]["meta_score"] is None  # greedy judgments are not rated


def test_unscorable_items_are_skipped_with_a_reason():
    import grpc

    engine = NumberJudge()
    engine.max_context = 1500  # the items' prompts take about 1100 tokens, the long one 2100
    items = number_items()
    long = EvalItem(ScoreInput("Pick. " * 200, ["value 1", "value 2"]), 1, 4)
    kept, _, _, failed = score_items(local_scorer(GenerativeRewardModel(engine)), items + [long], samples=2,
                                     temperature=0.5, max_new_tokens=8, seed=0, meta=False, batch_size=8)
    assert len(kept) == 3 and [(f.line, f.reason) for f in failed] == [(4, SkipReason.TOO_LONG)]

    class Refused(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.INVALID_ARGUMENT

        def details(self):
            return "sampling.k: must be in 1..8"

    class FakeClient:  # the RewardClient.score surface remote_scorer uses
        def score(self, conversation, responses, **options):
            raise Refused()

    kept, _, _, failed = score_items(remote_scorer(FakeClient(), 2), items[:1], samples=2, temperature=0.5,
                                     max_new_tokens=8, seed=0, meta=False, batch_size=1)
    assert kept == [] and failed[0].reason == SkipReason.SCORING_ERROR
    assert failed[0].detail == "INVALID_ARGUMENT: sampling.k: must be in 1..8"


def sourced_items():
    rows = [(["value 9 is big", "value 2"], "x:a"), (["value 8", "value 3"], "x:b"),
            (["value 2", "value 7 here"], "y"), (["value 6", "value 4"], "")]  # best: the first, always
    return [EvalItem(ScoreInput("Pick the biggest.", r), 0, line, source) for line, (r, source) in enumerate(rows, 1)]


def test_report_gives_accuracy_per_source_and_both_baselines():
    # scored by the first integer, no noise: items 1, 2 and 4 right, item 3 (2 over 7) wrong
    judge = GenerativeRewardModel(NoisyRuleEngine(noise=0), meta_rm=ConstantMeta())
    base_engine = NoisyRuleEngine(noise=0)
    settings = EvalSettings("toy", ks=(1, 4), samples=4, bootstrap=100, batch_size=3)
    run = evaluate(local_scorer(judge), {"id": "judge"}, sourced_items(), [], settings, has_meta=True,
                   baseline=(local_scorer(GenerativeRewardModel(base_engine)), {"id": "base"}))
    r = run.report
    assert r["settings"]["source_depth"] == 1 and r["accuracy"]["voting"][-1]["accuracy"] == 0.75
    assert {name: g["items"] for name, g in r["by_source"].items()} == {"(none)": 1, "x": 2, "y": 1}
    for a in ("voting", "meta_voting"):
        assert [g[a][-1]["accuracy"] for g in r["by_source"].values()] == [1.0, 1.0, 0.0]
    # a source's figures are the overall maths on that source's items, intervals included
    labels = [it.best for it in run.kept]
    m = matrix_from_results(run.sampled, labels, meta=True)
    greedy = np.array([g.best == b for g, b in zip(run.greedy, labels)])
    rows = np.array([0, 1])
    assert r["by_source"]["x"] == {"items": 2, **accuracy_figures(m.take(rows), greedy[rows], [1, 4],
                                                                  ["voting", "meta_voting"], 100, 0)}
    # longer wins: item 1 right, items 2 and 4 tie (wrong), item 3 shorter best (wrong)
    length = r["baselines"]["length"]
    assert length["accuracy"] == 0.25 and 0 <= length["interval"][0] <= 0.25 <= length["interval"][1]
    assert {n: g["accuracy"] for n, g in length["by_source"].items()} == {"(none)": 0.0, "x": 0.5, "y": 0.0}
    # the same engine on the same items with the same settings: the judge's voting figures again
    base = r["baselines"]["base_model"]
    assert base["model"] == {"id": "base"} and (base["items"], base["failed"]) == (4, 0)
    assert list(base["accuracy"]) == ["voting", "greedy"] and base["accuracy"]["voting"] == r["accuracy"]["voting"]
    assert base["accuracy"]["greedy"] == r["accuracy"]["greedy"]
    assert base["by_source"]["y"]["voting"] == r["by_source"]["y"]["voting"]
    assert sum(req.n for call in base_engine.calls for req in call) == 4 * (4 + 1)  # S samples + greedy
    assert "hack" not in r
    lines = format_table(r).splitlines()
    start = lines.index("compared (accuracy %, hack rate % of items; 95% intervals):")
    assert lines[start + 1].split() == ["all", "(4)", "(none)", "(1)", "x", "(2)", "y", "(1)"]
    assert [line[:22].strip() for line in lines[start + 2:]] == [
        "judge Voting@4", "judge MetaRM@4", "judge greedy", "base model Voting@4", "base model greedy",
        "longer response wins"]
    assert lines[-1].split()[3:] == ["25.0", "[", "0.0,", "75.0]", "0.0", "[", "0.0,", "0.0]", "50.0",
                                     "[", "0.0,", "100.0]", "0.0", "[", "0.0,", "0.0]"]
    by_depth = {name: rows.tolist() for name, rows in source_groups(run.kept, 2).items()}
    assert by_depth == {"(none)": [3], "x:a": [0], "x:b": [1], "y": [2]}
    assert source_groups(run.kept[:0], 1) == {} and source_groups([EvalItem(ScoreInput("q", ["a", "b"]), 0, 1)], 1) == {}


def test_a_baseline_that_scores_nothing_is_reported_not_fatal():
    tight = NoisyRuleEngine()
    tight.max_context = 50  # no judge prompt fits
    settings = EvalSettings("toy", ks=(1,), samples=1, bootstrap=20)
    r = evaluate(local_scorer(GenerativeRewardModel(NoisyRuleEngine())), {"id": "judge"}, sourced_items(), [],
                 settings, baseline=(local_scorer(GenerativeRewardModel(tight)), {"id": "tight"})).report
    assert r["baselines"]["base_model"] == {"model": {"id": "tight"}, "items": 0,
                                            "error": "toy: no item could be scored (4 failed)"}
    table = format_table(r)
    assert "base model tight: toy: no item could be scored (4 failed)" in table and "base model Voting" not in table


@pytest.mark.slow
def test_eval_command_end_to_end_on_a_tiny_model(tmp_path, capsys):
    from grm_cli.main import main
    from grm.testing import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny")
    out, png = tmp_path / "report.json", tmp_path / "acc.png"
    rc = main(["eval", "--data", str(DATA / "pairs.jsonl"), "--model", str(model), "--limit", "3",
               "--samples", "2", "-k", "1,2", "--max-new-tokens", "8", "--bootstrap", "50",
               "--output", str(out), "--plot", str(png), "--judgments", str(tmp_path / "j.jsonl")])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["items"] == 3
    rows = [json.loads(line) for line in (tmp_path / "j.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 7] and all(r["best"] == 0 for r in rows)
    assert all(j["scores"] is None and j["reason"] for r in rows for j in r["sampled"] + [r["greedy"]])
    assert report["skipped"]["by_reason"] == {"bad_json": 1, "empty_response": 1, "missing_field": 1}
    assert [s["line"] for s in report["skipped"]["lines"]] == [3, 4, 5]
    assert [r["accuracy"] for r in report["accuracy"]["voting"]] == [0.0, 0.0]
    assert report["accuracy"]["greedy"] == {"accuracy": 0.0, "interval": [0.0, 0.0]}
    assert report["parse_valid_rate"] == 0.0 and report["greedy_valid_rate"] == 0.0
    assert report["samples_total"] == 6 and sum(report["invalid_reasons"].values()) == 6
    assert report["settings"]["model"]["template_version"] and report["settings"]["k"] == [1, 2]
    assert "meta_voting" not in report["accuracy"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    table = capsys.readouterr().out
    assert "Voting@k" in table and "greedy" in table


@pytest.mark.slow
def test_eval_command_with_baselines_and_the_hack_check(tmp_path, tiny_model_path, capsys):
    from grm_cli.main import main

    judge = tmp_path / "judge"  # the same weights, trained (say) with another template
    shutil.copytree(tiny_model_path, judge)
    save_template(load_template("grm-compact-v1"), judge)
    out = tmp_path / "report.json"
    rc = main(["eval", "--data", str(DATA / "sourced.jsonl"), "--model", str(judge), "--baseline-model",
               str(tiny_model_path), "--hack-check", "--hack-k", "1", "--samples", "2", "-k", "1,2",
               "--max-new-tokens", "8", "--bootstrap", "50", "--output", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["items"] == 4 and list(report["by_source"]) == ["demo-a", "demo-b"]
    base = report["baselines"]["base_model"]
    assert base["items"] == 4 and base["model"]["template_version"] == "grm-compact-v1"  # the judge's template
    assert report["settings"]["model"]["template_version"] == "grm-compact-v1"
    assert list(base["by_source"]) == ["demo-a", "demo-b"] and base["accuracy"]["voting"][-1]["accuracy"] == 0.0
    length = report["baselines"]["length"]  # the data: longer best, longer best, longer best, a tie
    assert length["accuracy"] == 0.75 and {n: g["accuracy"] for n, g in length["by_source"].items()} == {
        "demo-a": 1.0, "demo-b": 0.5}
    hack = report["hack"]  # random weights write no valid judgment: every pair unscored, so no hack
    assert (hack["k"], hack["items"], hack["rates"]["any"]["rate"]) == (1, 4, 0.0)
    assert hack["unscored_pairs"] == {kind: 4 for kind in hack["attacks"]} and len(hack["attacks"]) == 5
    assert list(hack["by_source"]) == ["demo-a", "demo-b"]
    table = capsys.readouterr().out
    for row in ("judge Voting@2", "base model Voting@2", "base model greedy", "longer response wins",
                "hack rate, judge Voting@1", "any attack", "claims its own top scores", "demo-b (2)"):
        assert row in table, row
