"""The pointwise stage (``spct.pointwise``): one answer a prompt, a Bradley-Terry loss on its score.

The cases and texts are checked on real tokenized judgments, the reward against the
model's own next-token distribution, the loss against its parts computed one text at a
time; training and the stage run for real on the tiny test model.
"""

import shutil

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from grm.judge import GenerativeRewardModel
from grm.parsing import parse_judgment
from grm.pointwise import digit_ids
from grm.templates import load_template
from grm.testing import PointEngine
from policy.logprobs import batch_logprobs
from spct.english import EnglishOptions, run
from spct.pointwise import (BLANK_CRITIQUES, BLANKS, POINT_TEMPLATE, expected_score, point_cases, point_example,
                            point_loss)
from test_english import _records, _write_drafts
from test_verdict import DRAFT, _items, _rows, trained_loss

POINT = load_template(POINT_TEMPLATE)


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    return (AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(tiny_model_path))


def test_one_case_per_usable_two_answer_draft_critiques_exchanged_by_a_seeded_coin():
    items, rows = _items(40), _rows(41)
    rows[1]["reason"] = "no_critique"
    cases = point_cases(items, rows, hold_out=1, seed=0)
    assert [c.index for c in cases] == list(range(2, 40))  # 0 held out, 1 unusable, 40 has three answers
    assert 5 < sum(c.exchanged for c in cases) < 32 and cases == point_cases(items, rows, 1, seed=0)
    for case in cases:
        assert case.draft.critiques == (DRAFT.critiques[::-1] if case.exchanged else DRAFT.critiques)
        assert case.draft.quotes == DRAFT.quotes


def test_a_share_of_the_pairs_comes_again_against_a_content_free_answer_critiqued_as_saying_nothing(tiny):
    _, tokenizer = tiny
    items, rows = _items(40), _rows(40)
    cases = point_cases(items, rows, hold_out=0, seed=0, blank_share=0.5)
    real, blanks = cases[:40], cases[40:]
    assert [c.blank for c in real] == [""] * 40 and 8 < len(blanks) < 32
    assert cases == point_cases(items, rows, 0, seed=0, blank_share=0.5) and point_cases(items, rows, 0, 0) == real
    assert all(c.blank in BLANKS or items[c.index].item.conversation[-1].content.startswith(c.blank) for c in blanks)
    assert 0 < sum(c.exchanged for c in blanks) < len(blanks)
    for case in blanks:
        labeled, other = items[case.index], 1 - items[case.index].best
        critiques = case.draft.critiques[::-1] if case.exchanged else case.draft.critiques
        assert critiques[other] in BLANK_CRITIQUES and critiques[labeled.best] == DRAFT.critiques[labeled.best]
        example, _ = point_example(tokenizer, POINT, labeled, case, other, seed=0)
        prompt = tokenizer.decode(example.prompt_ids)
        assert case.blank in prompt and labeled.item.responses[other] not in prompt
        assert f'"{case.blank}"' in tokenizer.decode(example.target_ids, skip_special_tokens=True)
        preferred, _ = point_example(tokenizer, POINT, labeled, case, labeled.best, seed=0)
        assert labeled.item.responses[labeled.best] in tokenizer.decode(preferred.prompt_ids)


def test_kept_blank_cases_keep_the_real_answers_critique_and_train_the_bradley_terry_term_alone(tiny):
    model, tokenizer = tiny
    items, rows = _items(40), _rows(40)
    empty = point_cases(items, rows, 0, seed=0, blank_share=0.5)[40:]
    kept = point_cases(items, rows, 0, seed=0, blank_share=0.5, blank_critique="kept")
    real, blanks = kept[:40], kept[40:]
    assert not any(c.bt_only for c in real + empty) and all(c.bt_only for c in blanks)
    assert [(c.index, c.blank, c.exchanged) for c in blanks] == [(c.index, c.blank, c.exchanged) for c in empty]
    for case in blanks:
        other = 1 - items[case.index].best
        critiques = case.draft.critiques[::-1] if case.exchanged else case.draft.critiques
        assert critiques == DRAFT.critiques and case.draft.quotes[other] == case.blank
    drafted = next(i for i, c in enumerate(kept) if c.bt_only and not c.exchanged)
    with torch.no_grad():
        losses = [float(point_loss(tokenizer, POINT, items, kept, 0, nll_weight=w)(model, [drafted])[0])
                  for w in (0.0, 1.0)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    with pytest.raises(ValueError, match="blank critique must be one of"):
        point_cases(items, rows, 0, seed=0, blank_share=0.5, blank_critique="none")


@pytest.mark.parametrize("answer", [0, 1])
def test_an_example_shows_one_answer_and_its_own_critique_and_points_at_its_score(tiny, answer):
    _, tokenizer = tiny
    items = _items(2)
    case = point_cases(items, _rows(2), 0, seed=0)[1]  # the preferred answer is the second
    example, digit = point_example(tokenizer, POINT, items[1], case, answer, seed=0)
    prompt = tokenizer.decode(example.prompt_ids)
    shown = items[1].item.responses[answer]
    assert prompt.count("[Answer 1]") == 1 and "[Answer 2]" not in prompt and shown in prompt
    assert items[1].item.responses[1 - answer] not in prompt
    text = tokenizer.decode(example.target_ids, skip_special_tokens=True)
    parsed = parse_judgment(text, 1)
    assert parsed.scores == (int(tokenizer.decode(example.target_ids[digit])),)
    assert case.draft.critiques[answer] in parsed.critique and f'"{case.draft.quotes[answer]}"' in parsed.critique
    other, _ = point_example(tokenizer, POINT, items[1], case, 1 - answer, seed=0)
    criteria = parse_judgment(tokenizer.decode(other.target_ids, skip_special_tokens=True), 1).principles
    assert criteria == parsed.principles  # both answers of a pair share the principle weights


def test_the_loss_is_bradley_terry_on_expected_scores_plus_sft_without_the_digit_on_drafted_cases(tiny):
    model, tokenizer = tiny
    items = _items(6)
    cases = point_cases(items, _rows(6), 0, seed=0)
    assert {c.exchanged for c in cases} == {False, True}
    digits = digit_ids(tokenizer)
    with torch.no_grad():
        one = []
        for i, case in enumerate(cases):
            rewards, nll = [], []
            for answer in (items[case.index].best, 1 - items[case.index].best):  # one text at a time
                example, digit = point_example(tokenizer, POINT, items[case.index], case, answer, seed=0)
                logp, mask = batch_logprobs(model, [example])
                full = model(input_ids=torch.tensor([example.prompt_ids + example.target_ids])).logits[0]
                at = full[len(example.prompt_ids) + digit - 1]  # the position that predicts the score
                p = at[digits].softmax(-1)
                rewards.append(float((p * torch.arange(1, 10)).sum()))
                mask[0, digit] = 0
                nll.append(float(-(logp * mask).sum() / mask.sum()))
            bt = float(-F.logsigmoid(torch.tensor(rewards[0] - rewards[1])))
            loss, _ = point_loss(tokenizer, POINT, items, cases, 0, nll_weight=0.5)(model, [i])
            expected = bt + (0 if case.exchanged else 0.5 * (nll[0] + nll[1]) / 2)
            assert float(loss) == pytest.approx(expected, abs=1e-4)
            one.append(float(loss))
        both, _ = point_loss(tokenizer, POINT, items, cases, 0, nll_weight=0.5)(model, [0, 1, 2])
        assert float(both) == pytest.approx(sum(one[:3]) / 3, abs=1e-4)  # a batch's loss is its cases' mean
    logits = torch.full((1, 50), -1e4)
    logits[0, digits[6]] = 0.0  # all the mass on "7"
    assert float(expected_score(logits, digits)) == pytest.approx(7.0)


def test_training_on_the_loss_ranks_the_preferred_answer_higher(tiny_model_path, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    items = _items(4)
    cases = point_cases(items, _rows(4), 0, seed=0)
    loss_fn = point_loss(tokenizer, POINT, items, cases, 0, nll_weight=0)
    before, after = trained_loss(tiny_model_path, loss_fn, len(cases), tmp_path, epochs=30)
    assert 0.6 < before < 0.8 and after < 0.1, (before, after)  # log 2 at the start: no preference yet


def test_the_stage_holds_out_the_first_drafts_resumes_and_writes_a_pointwise_judge(tiny_model_path, tmp_path):
    data = tmp_path / "toy.jsonl"
    data.write_text("\n".join(_records(20)) + "\n")
    out = tmp_path / "run"
    _write_drafts(out, 4)
    small = {"sft.batch_size": 2, "sft.top_layers": 1, "sft.rank": 4, "sft.epochs": 0.5,
             "point.batch_size": 1, "point.hold_out": 1, "point.save_every": 1}
    opts = EnglishOptions(data=(str(data),), out=out, base=str(tiny_model_path), stages=("point",),
                          items_per_source=4, extra=small)
    with pytest.raises(ValueError, match="the point stage starts from an adapter"):
        run(opts, log=lambda _: None)
    [sft] = run(EnglishOptions(**{**vars(opts), "stages": ("sft",)}), log=lambda _: None)
    shutil.copytree(out / "sft-adapter", out / "rft-adapter")
    [cut] = run(EnglishOptions(**{**vars(opts), "stage_minutes": 1e-9}), log=lambda _: None)
    assert cut["status"] == "partial" and cut["steps"] == 1 and cut["planned_steps"] == 3 and cut["pairs"] == 3
    with pytest.raises(ValueError, match="begun from .*rft-adapter on 3 cases, now .*sft-adapter"):
        run(EnglishOptions(**{**vars(opts), "extra": {**small, "point.start": str(out / "sft-adapter")}}),
            log=lambda _: None)
    logs = []
    [point] = run(opts, log=logs.append)
    assert point["status"] == "done" and point["steps"] == 3 and any("resuming at step 1/3" in x for x in logs)
    assert point["start"] == str(out / "rft-adapter") and point["settings"]["hold_out"] == 1
    held = point["held_out"]
    assert held["pairs"] == 1 and all(0 <= held[k] <= 1 for k in ("drafted", "exchanged", "blank", "blank_kept"))
    judge = GenerativeRewardModel.load(str(out / "point-adapter"))
    assert judge.template == POINT  # served with the template it was trained on
    [again] = run(opts, log=lambda _: None)
    assert again == {"stage": "point", "status": "done", "adapter": "point-adapter"}


@pytest.mark.parametrize("setting, message", [({"point.hold_out": -1}, "point.hold_out must be >= 0"),
                                              ({"point.blank_share": 1.5}, "point.blank_share must be at most 1"),
                                              ({"point.blank_critique": "x"}, "point.blank_critique must be"),
                                              ({"point.rank": 8}, "point.rank: .* keeps its rank"),
                                              ({"point.hold_out": 9}, "no usable two-answer draft past")])
def test_bad_settings_are_refused_naming_the_setting(tiny_model_path, tmp_path, setting, message):
    data = tmp_path / "toy.jsonl"
    data.write_text("\n".join(_records(8)) + "\n")
    _write_drafts(tmp_path / "run", 2)
    opts = EnglishOptions(data=(str(data),), out=tmp_path / "run", base=str(tiny_model_path), stages=("point",),
                          items_per_source=2, extra=setting)
    with pytest.raises(ValueError, match=message):
        run(opts, log=lambda _: None)


def test_rft_and_online_rl_refuse_a_pointwise_judge_instead_of_training_on_one_answers_text():
    from spct.rft import sample_groups
    from spct.rl import RLConfig, rollouts
    judge = GenerativeRewardModel(PointEngine(), POINT)
    items = _items(2)
    with pytest.raises(ValueError, match="RFT trains on judgments of all responses .* is pointwise"):
        sample_groups(judge, items)
    with pytest.raises(ValueError, match="online RL trains on judgments of all responses .* is pointwise"):
        rollouts(judge, items, RLConfig(), seed=0)
