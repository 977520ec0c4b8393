"""The verdict stage (``spct.verdict``): a Bradley-Terry loss on the judge's own score line.

The cases and texts are checked on real tokenized judgments; the loss against log-probabilities
computed one text at a time; its training and the stage run for real on the tiny test model.
"""

import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from grm.parsing import parse_judgment
from grm.templates import load_template
from grm.types import ScoreInput
from policy.logprobs import batch_logprobs
from spct.cold_start import Draft
from spct.data import LabeledItem
from spct.english import EnglishOptions, run
from spct.lora_sft import LoraSettings, add_lora, train_resumable
from spct.verdict import (by_pair, case_examples, content_free_cases, first_difference, verdict_cases,
                          verdict_loss)
from test_english import _records, _write_drafts

TEMPLATE = load_template("grm-english-v1")
DRAFT = Draft(("A good answer gives a watering rule.",),
              ("The answer gives a clear rule.", "The answer gives nothing."), ("Water it", "No idea."))


def _items(n: int = 4) -> list[LabeledItem]:
    """Two-answer pairs, the preferred answer first in even pairs and second in odd ones, then a three-answer item."""
    items = [LabeledItem(ScoreInput(f"How do I keep plant {i} alive?",
                                    ["Water it once a week.", "No idea."][::1 if i % 2 == 0 else -1]), i % 2)
             for i in range(n)]
    return items + [LabeledItem(ScoreInput("Three answers?", ["Water it.", "No idea.", "Maybe."]), 0)]


def _rows(count: int) -> list[dict]:
    return [{"index": i, "reason": "", **DRAFT.to_json()} for i in range(count)]


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    return (AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(tiny_model_path))


def test_four_cases_per_usable_two_answer_draft_after_the_held_out_ones():
    items, rows = _items(), _rows(5)
    rows[1]["reason"] = "no_critique"
    cases = verdict_cases(items, rows, hold_out=1)  # usable two-answer: 0, 2, 3; the first held out
    assert [c.index for c in cases] == [2] * 4 + [3] * 4
    assert {(c.permutation, c.exchanged) for c in cases[:4]} == {((0, 1), False), ((0, 1), True),
                                                                  ((1, 0), False), ((1, 0), True)}
    for case in cases:
        critiques = DRAFT.critiques[::-1] if case.exchanged else DRAFT.critiques
        assert case.draft.critiques == critiques and case.draft.quotes == DRAFT.quotes  # quotes stay with their answer
    assert verdict_cases(items, rows, hold_out=3) == []


def test_content_free_cases_put_the_labelled_answer_beside_a_non_answer_and_score_it_higher(tiny):
    _, tokenizer = tiny
    items, rows = _items(), _rows(5)
    cases = content_free_cases(TEMPLATE, items, rows, hold_out=1, per_pair=2, seed=0)
    assert [c.index for c in cases] == [1] * 8 + [2] * 8 + [3] * 8  # item 4 has three answers
    for case in cases:
        real = items[case.index]
        assert case.pair.best == 0 and case.pair.item.responses[0] == real.item.responses[real.best]
        assert case.pair.item.responses[1] not in real.item.responses
        labelled, _ = case_examples(tokenizer, TEMPLATE, case.pair, case, seed=0)
        scores = parse_judgment(tokenizer.decode(labelled.target_ids, skip_special_tokens=True), 2).scores
        shown_real = case.permutation.index(0)
        assert scores[shown_real] > scores[1 - shown_real]
    assert len({c.pair.item.responses[1] for c in cases}) > 1  # the kinds taken in turn


@pytest.mark.parametrize("index", [0, 1])
def test_the_two_texts_differ_only_in_the_score_line_and_the_first_ranks_the_labelled_answer_on_top(tiny, index):
    _, tokenizer = tiny
    items = _items()
    for case in verdict_cases(items, _rows(2))[index * 4:(index + 1) * 4]:
        labelled, exchanged = case_examples(tokenizer, TEMPLATE, items[case.index], case, seed=0)
        assert labelled.prompt_ids == exchanged.prompt_ids
        a, b = (tokenizer.decode(e.target_ids, skip_special_tokens=True) for e in (labelled, exchanged))
        cut = a.rindex("Scores:")
        assert a[:cut] == b[:cut] and a != b
        shown = [parse_judgment(t, 2).scores for t in (a, b)]
        best = case.permutation.index(items[case.index].best)  # where the labelled answer is shown
        assert shown[0][best] > shown[0][1 - best] and shown[1] == shown[0][::-1]


def test_the_loss_is_the_bradley_terry_loss_of_the_score_lines_plus_sft_before_them_on_drafted_critiques(tiny):
    model, tokenizer = tiny
    items = _items()
    cases = verdict_cases(items, _rows(1))
    with torch.no_grad():
        for i, case in enumerate(cases):
            sums = []
            labelled, exchanged = case_examples(tokenizer, TEMPLATE, items[case.index], case, seed=0)
            cut = first_difference(labelled.target_ids, exchanged.target_ids)
            for example in (labelled, exchanged):  # one text at a time
                logp, mask = batch_logprobs(model, [example])
                sums.append(((logp * mask).sum(), mask.sum(), (logp[0, :cut]).sum()))
            bt = -F.logsigmoid(sums[0][0] - sums[1][0])
            plain, _ = verdict_loss(tokenizer, TEMPLATE, items, cases, 0, nll_weight=0)(model, [i])
            full, tokens = verdict_loss(tokenizer, TEMPLATE, items, cases, 0, nll_weight=0.5)(model, [i])
            assert plain == pytest.approx(float(bt), abs=1e-4)
            sft = 0 if case.exchanged else 0.5 * float(-sums[0][2] / cut)  # the judgment before its scores
            assert full == pytest.approx(float(bt) + sft, abs=1e-4)
            assert tokens == int(sums[0][1] + sums[1][1])
        both, _ = verdict_loss(tokenizer, TEMPLATE, items, cases, 0)(model, [0, 1])
        one = [verdict_loss(tokenizer, TEMPLATE, items, cases, 0)(model, [i])[0] for i in range(4)]
        assert both == pytest.approx(float(sum(one[:2])) / 2, abs=1e-4)  # a batch's loss is its cases' mean
        pair, tokens = by_pair(verdict_loss(tokenizer, TEMPLATE, items, cases, 0))(model, [0])
        assert pair == pytest.approx(float(sum(one)) / 4, abs=1e-4)  # pair 0 stands for its four cases
        assert {c.permutation for c in cases[:4]} == {(0, 1), (1, 0)} and {c.index for c in cases[:4]} == {0}


def trained_loss(tiny_model_path, loss_fn, count: int, folder: Path, epochs: float) -> tuple[float, float]:
    """``loss_fn`` over all ``count`` cases before and after training a fresh small adapter on them."""
    settings = LoraSettings(epochs=epochs, batch_size=4, lr=5e-3, rank=4, top_layers=2, dropout=0.0)
    model = add_lora(AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32), settings)
    model.eval()
    with torch.no_grad():
        before = float(loss_fn(model, list(range(count)))[0])
    train_resumable(model, count, loss_fn, settings, folder / "trained", log=lambda _: None)
    with torch.no_grad():
        after = float(loss_fn(model, list(range(count)))[0])
    return before, after


def test_training_on_the_loss_raises_the_labelled_scores_over_the_exchanged_ones(tiny_model_path, tmp_path):
    """On the cases that show the labelled answer first, the order alone can satisfy the loss,
    so a few steps must drive it far below log 2 (a wrong sign would raise it)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    items = _items(2)
    cases = [c for c in verdict_cases(items, _rows(2)) if c.permutation[0] == items[c.index].best]
    loss_fn = verdict_loss(tokenizer, TEMPLATE, items, cases, 0, nll_weight=0)
    before, after = trained_loss(tiny_model_path, loss_fn, len(cases), tmp_path, epochs=8)
    assert len(cases) == 4 and before > 0.6 and after < 0.1, (before, after)


def test_the_margin_counts_the_score_line_only_so_dropout_on_the_shared_tokens_adds_no_noise(tiny_model_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    items = _items(1)
    cases = verdict_cases(items, _rows(1))
    labelled, exchanged = case_examples(tokenizer, TEMPLATE, items[0], cases[0], seed=0)
    cut = first_difference(labelled.target_ids, exchanged.target_ids)
    assert labelled.target_ids[:cut] == exchanged.target_ids[:cut]
    assert "Scores:" in tokenizer.decode(labelled.target_ids[:cut]) and "Scores" not in tokenizer.decode(
        labelled.target_ids[cut:])
    settings = LoraSettings(rank=4, top_layers=2, dropout=0.5)
    model = add_lora(AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32), settings)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B starts at zero, where dropout on the adapter would change nothing
            torch.nn.init.normal_(p, std=0.5)
    model.train()
    with torch.no_grad():
        torch.manual_seed(1)
        logp, mask = batch_logprobs(model, [labelled, exchanged])
        whole = (logp * mask).sum(1)
        tail = (logp[:, cut:] * mask[:, cut:]).sum(1)
        torch.manual_seed(1)  # the same dropout draws
        loss, _ = verdict_loss(tokenizer, TEMPLATE, items, cases, 0, nll_weight=0)(model, [0])
    assert abs(float((whole[0] - whole[1]) - (tail[0] - tail[1]))) > 1e-3  # dropout moved the shared tokens
    assert loss == pytest.approx(float(-F.logsigmoid(tail[0] - tail[1])), abs=1e-5)


def test_the_stage_goes_on_from_the_runs_latest_adapter_resumes_on_it_and_holds_out_the_first_drafts(
        tiny_model_path, tmp_path):
    data = tmp_path / "toy.jsonl"
    data.write_text("\n".join(_records(20)) + "\n")
    out = tmp_path / "run"
    _write_drafts(out, 4)
    small = {"sft.batch_size": 2, "sft.top_layers": 1, "sft.rank": 4, "sft.epochs": 0.5,
             "verdict.batch_size": 2, "verdict.hold_out": 1, "verdict.epochs": 0.5, "verdict.save_every": 1}
    opts = EnglishOptions(data=(str(data),), out=out, base=str(tiny_model_path), stages=("verdict",),
                          items_per_source=4, extra=small)
    with pytest.raises(ValueError, match="the verdict stage starts from an adapter"):
        run(opts, log=lambda _: None)
    [sft] = run(EnglishOptions(**{**vars(opts), "stages": ("sft",)}), log=lambda _: None)
    assert sft["status"] == "done"
    shutil.copytree(out / "sft-adapter", out / "rft-adapter")  # the latest adapter is the start
    [cut] = run(EnglishOptions(**{**vars(opts), "stage_minutes": 1e-9}), log=lambda _: None)
    assert cut["status"] == "partial" and cut["steps"] == 1 and cut["planned_steps"] == 3
    assert cut["settings"]["start"] == str(out / "rft-adapter")
    other = {**small, "verdict.start": str(out / "sft-adapter")}
    with pytest.raises(ValueError, match="begun from .*rft-adapter on 12 cases, now .*sft-adapter"):
        run(EnglishOptions(**{**vars(opts), "extra": other}), log=lambda _: None)
    logs = []
    [verdict] = run(opts, log=logs.append)
    assert verdict["status"] == "done" and verdict["pairs"] == 3 and verdict["cases"] == 12
    assert verdict["steps"] == 3 and any("resuming at step 1/3" in line for line in logs)
    assert verdict["settings"]["start"] == str(out / "rft-adapter") and verdict["settings"]["hold_out"] == 1
    from safetensors.torch import load_file
    before, after = (load_file(str(out / f / "adapter_model.safetensors")) for f in ("rft-adapter", "verdict-adapter"))
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    [again] = run(opts, log=lambda _: None)
    assert again == {"stage": "verdict", "status": "done", "adapter": "verdict-adapter"}
    with_empty = {**small, "verdict.start": str(out / "sft-adapter"), "verdict.content_free": 1, "verdict.epochs": 0.1}
    [hardened] = run(EnglishOptions(**{**vars(opts), "out": tmp_path / "hardened", "drafts_from": out,
                                       "extra": with_empty}), log=lambda _: None)
    assert hardened["status"] == "done" and hardened["cases"] == 24 and hardened["pairs"] == 3
    assert hardened["settings"]["content_free"] == 1
    by_pairs = {**small, "verdict.start": str(out / "sft-adapter"), "verdict.group": "pair", "verdict.epochs": 1.0}
    del by_pairs["verdict.batch_size"]
    [grouped] = run(EnglishOptions(**{**vars(opts), "out": tmp_path / "grouped", "drafts_from": out,
                                      "extra": by_pairs}), log=lambda _: None)
    assert grouped["status"] == "done" and grouped["planned_steps"] == 3  # one pair (four cases) a step
    assert grouped["settings"]["group"] == "pair" and grouped["settings"]["batch_size"] == 1


@pytest.mark.parametrize("setting, message", [({"verdict.start": "{tmp}"}, "verdict.start: .* is not an adapter"),
                                              ({"verdict.hold_out": -1}, "verdict.hold_out must be >= 0"),
                                              ({"verdict.nll_weight": -0.5}, "verdict.nll_weight must be >= 0"),
                                              ({"verdict.rank": 8}, "verdict.rank: .* keeps its rank"),
                                              ({"verdict.group": "batch"}, 'verdict.group must be "case" or "pair"')])
def test_bad_settings_are_refused_naming_the_setting(tiny_model_path, tmp_path, setting, message):
    data = tmp_path / "toy.jsonl"
    data.write_text("\n".join(_records(8)) + "\n")
    _write_drafts(tmp_path / "run", 2)
    extra = {k: str(tmp_path) if v == "{tmp}" else v for k, v in setting.items()}
    opts = EnglishOptions(data=(str(data),), out=tmp_path / "run", base=str(tiny_model_path), stages=("verdict",),
                          items_per_source=2, extra=extra)
    with pytest.raises(ValueError, match=message):
        run(opts, log=lambda _: None)
