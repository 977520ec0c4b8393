"""A journalled evaluation resumes where it stopped: items found in the journal are not scored again."""

import dataclasses
import json

from grm.eval.journal import Journal, result_from_json, result_to_json
from grm.eval.run import EvalSettings, evaluate, local_scorer
from grm.judge import GenerativeRewardModel
from test_eval_run import ConstantMeta, NumberJudge, number_items


def _counting(scorer, seen: list):
    def score(jobs):
        seen.extend(jobs)
        return scorer(jobs)
    return score


def test_results_survive_the_json_round_trip():
    grm = GenerativeRewardModel(NumberJudge(), meta_rm=ConstantMeta())
    [result] = grm.score_batch([number_items()[1].input])
    assert result_from_json(json.loads(json.dumps(result_to_json(result)))) == result
    read = dataclasses.replace(result, expected_rewards=(7.5, 6.25), judgments=tuple(
        dataclasses.replace(j, expected_scores=(7.5, 6.25) if j.valid else None) for j in result.judgments))
    assert result_from_json(json.loads(json.dumps(result_to_json(read)))) == read
    older = result_to_json(result)  # a line written before results carried expected scores
    del older["expected_rewards"]
    for j in older["judgments"]:
        del j["expected_scores"]
    assert result_from_json(older) == result


def test_a_rerun_scores_only_the_items_the_journal_lacks_and_reports_the_same(tmp_path):
    grm = GenerativeRewardModel(NumberJudge(), meta_rm=ConstantMeta())
    items = number_items()
    settings = EvalSettings("numbers", ks=(1, 2), samples=2, bootstrap=50, journal=str(tmp_path / "j.jsonl"))
    model = {"id": "numbers", "revision": "r1", "template_version": "grm-default-v2"}
    first_jobs, second_jobs = [], []
    # a run cut off after two items
    evaluate(_counting(local_scorer(grm), first_jobs), model, items[:2], [], settings)
    assert len(first_jobs) == 4  # a sampled and a greedy job per item
    resumed = evaluate(_counting(local_scorer(grm), second_jobs), model, items, [], settings)
    assert len(second_jobs) == 2 and resumed.report["timing"]["items_from_journal"] == 2
    assert resumed.report["timing"]["judgments_per_s"] > 0
    # a report rebuilt from the journal alone, on fewer items than it holds: nothing judged, no rate
    rebuilt = evaluate(_counting(local_scorer(grm), second_jobs), model, items[:2], [], settings)
    assert len(second_jobs) == 2 and rebuilt.report["timing"]["items_from_journal"] == 2
    assert rebuilt.report["timing"]["judgments_per_s"] is None
    fresh = evaluate(local_scorer(grm), model, items, [], EvalSettings(**{**vars(settings), "journal": None}))
    assert resumed.report["accuracy"] == fresh.report["accuracy"]
    assert [r.judgments for r in resumed.sampled] == [r.judgments for r in fresh.sampled]


def test_lines_of_other_settings_or_cut_mid_write_are_ignored(tmp_path):
    grm = GenerativeRewardModel(NumberJudge(), meta_rm=ConstantMeta())
    path = tmp_path / "j.jsonl"
    model = {"id": "numbers", "revision": "r1", "template_version": "grm-default-v2"}
    evaluate(local_scorer(grm), model, number_items(), [], EvalSettings("n", ks=(1,), samples=1, bootstrap=10,
                                                                        journal=str(path)))
    with open(path, "a") as f:
        f.write('{"line": 1, "key": {"cut')  # a crash mid-write
    assert len(Journal(path, {"model": model, "samples": 1, "temperature": 0.5, "max_new_tokens": 512,
                              "seed": 0, "meta": False}).done) == 3
    other = {**model, "revision": "r2"}  # other weights: nothing to reuse
    seen = []
    evaluate(_counting(local_scorer(grm), seen), other, number_items(), [],
             EvalSettings("n", ks=(1,), samples=1, bootstrap=10, journal=str(path)))
    assert len(seen) == 6
