"""``grm.eval.run`` and ``grm.eval.report``: scoring through a scripted judge, the judgments
file, unscorable items, per-source figures and the baselines (longer response wins, a second
model on the same items), the table, and the command end to end (the hack check's counting
is in test_attacks.py)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from grm.eval.records import EvalItem, SkipReason
from grm.eval.report import format_table, write_judgments
from grm.eval.run import EvalSettings, evaluate, item_seed, local_scorer, score_items, source_groups
from grm.eval.statistics import accuracy_figures, matrix_from_results, summarize
from grm.judge import GenerativeRewardModel, save_template
from grm.templates import load_template
from grm.testing import NoisyRuleEngine, build_tokenizer
from grm.types import Completion, ScoreInput
from grm_cli.eval import remote_scorer

DATA = Path(__file__).with_name("data")


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
