"""SPCT building blocks: the RFT filter, labels from preference data, training examples that
match what the judge renders, and the shared-prefix log-probabilities."""

import dataclasses
import json
import re

import pytest
import torch

from grm.prompts import build_judge_content, encode_prompt
from grm.judge import GenerativeRewardModel
from grm.testing import NoisyRuleEngine, build_tokenizer, shown_numbers, tiny_config
from grm.types import Completion, ScoreInput
from spct.data import (
    SPCT_TEMPLATE,
    Example,
    LabeledItem,
    is_correct,
    items_from_tasks,
    load_preference_data,
    make_example,
    teacher_batches,
)
from spct.rft import Trajectory, hinted_samples, mentions_hint, rft_filter
from policy.sft import SFTConfig, batch_logprobs, lr_at
from grm.tasks import generate_tasks


def traj(item, correct, hinted=False):
    return Trajectory(item, (0, 1), "text", (7, 3) if correct else (3, 7), correct, hinted)


def test_rft_filter_keeps_correct_and_drops_all_correct_prompts():
    groups = [
        [traj(0, True), traj(0, True), traj(0, True)],  # too easy: dropped
        [traj(1, True), traj(1, False), traj(1, True)],  # keep the two correct
        [traj(2, False), traj(2, False), traj(2, False)],  # nothing to keep
        [traj(3, True), traj(3, True), traj(3, False), traj(3, True, hinted=True)],
    ]
    kept, stats = rft_filter(groups)
    assert all(t.correct for t in kept)
    assert [t.item for t in kept] == [1, 1, 3, 3, 3]
    assert stats["dropped_all_correct"] == 1 and stats["kept"] == 5 and stats["prompts"] == 4


def test_is_correct_with_best_only_and_with_scores():
    best_only = LabeledItem(ScoreInput("q", ["a", "b", "c"]), best=1)
    assert is_correct((2, 9, 5), best_only)
    assert not is_correct((9, 9, 5), best_only)  # a tie at the top is wrong
    assert not is_correct(None, best_only)
    single = LabeledItem(ScoreInput("q", ["a"]), best=0, scores=(6,))
    assert is_correct((6,), single) and not is_correct((7,), single)


def test_load_preference_data_formats(tmp_path):
    path = tmp_path / "prefs.jsonl"
    rows = [{"prompt": "Name a prime.", "chosen": "7", "rejected": "9"},
            {"messages": [{"role": "user", "content": "Hi"}], "responses": ["a", "b", "c"], "scores": [3, 8, 1]},
            {"conversation": [{"role": "user", "content": "Hi"}], "responses": ["x", "y"], "best": 1,
             "judgment": "Specific Criteria: ...\nAnalysis: ...\nScores: \\boxed{2, 9}"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    items = load_preference_data(path)
    assert [it.best for it in items] == [0, 1, 1]
    assert items[0].item.responses == ("7", "9") and items[1].scores == (3, 8, 1)
    assert items[2].judgment.endswith("\\boxed{2, 9}")
    path.write_text(json.dumps({"prompt": "q", "responses": ["a", "b"]}) + "\n")
    with pytest.raises(ValueError, match="prefs.jsonl:1"):
        load_preference_data(path)


def test_examples_are_what_the_judge_renders():
    tok = build_tokenizer()
    items = items_from_tasks(generate_tasks(20, seed=1, split="train"))
    batch = next(teacher_batches(tok, SPCT_TEMPLATE, items, batch_size=6, seed=0))
    assert len({len(e.prompt_ids) > 0 for e in batch}) == 1
    for e in batch:
        assert e.target_ids[-1] == tok.eos_token_id
        assert "\\boxed{" in tok.decode(e.target_ids)
    item = items[0].item
    e = make_example(tok, SPCT_TEMPLATE, item, (1, 0), "Scores: \\boxed{3, 4}")
    assert list(e.prompt_ids) == encode_prompt(tok, build_judge_content(SPCT_TEMPLATE, item, (1, 0)))


def _tiny_judge_model():
    from transformers import AutoModelForCausalLM

    tok = build_tokenizer()
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(tiny_config("llama", len(tok), hidden=32, layers=2)), tok


def test_shared_prefix_logprobs_equal_one_forward_per_row():
    model = _tiny_judge_model()[0].eval()
    rows = [Example((5, 6, 7, 8, 9), (10, 11, 12)), Example((5, 6, 7, 20), (13,)), Example((5, 6, 7, 8, 21, 22), (14, 15))]
    with torch.no_grad():
        logp, mask = batch_logprobs(model, rows)
        for j, e in enumerate(rows):
            ids = torch.tensor([list(e.prompt_ids) + list(e.target_ids)])
            full = model(input_ids=ids).logits[0].log_softmax(-1)
            P, T = len(e.prompt_ids), len(e.target_ids)
            want = full[P - 1:P - 1 + T].gather(-1, torch.tensor(e.target_ids)[:, None])[:, 0]
            torch.testing.assert_close(logp[j, :T], want, atol=1e-5, rtol=1e-5)
            assert mask[j].sum() == T


def test_lr_schedule_warms_up_then_anneals_by_steps_or_time():
    cfg = SFTConfig(steps=100, lr=1e-3, warmup=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(100, cfg) == pytest.approx(1e-4)
    timed = SFTConfig(steps=100, lr=1e-3, warmup=10, min_lr_ratio=0.1, time_limit_s=60)
    assert lr_at(20, timed, elapsed_s=60) == pytest.approx(1e-4)  # the clock ran out first


def test_rl_time_limit_and_teacher_term():
    from spct.rl import RLConfig, train_rl

    items = items_from_tasks(generate_tasks(12, 0, "train"))
    base = RLConfig(steps=3, prompts_per_step=2, max_new_tokens=8, seed=0)
    model, tok = _tiny_judge_model()
    stats = train_rl(model, tok, items, dataclasses.replace(base, time_limit_s=0.0))
    assert stats["steps"] == 1  # the first step always runs, the limit stops the next
    runs = {}
    for coef in (0.0, 1.0):
        model, tok = _tiny_judge_model()
        stats = train_rl(model, tok, items, dataclasses.replace(base, teacher_coef=coef, teacher_batch=2))
        assert stats["steps"] == 3 and stats["teacher_coef"] == coef
        runs[coef] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert not torch.equal(runs[0.0], runs[1.0])  # the teacher term changed the update
    with pytest.raises(ValueError, match="teacher_coef"):
        RLConfig(teacher_coef=-1)
    with pytest.raises(ValueError, match="loss_mode must be one of"):
        RLConfig(loss_mode="per-token")


def test_rl_grid_settings_parse_by_field_name_and_type():
    from spct.rl import RLConfig
    from spct.rl_grid import parse_settings

    base = RLConfig(steps=5)
    betas = parse_settings("0,0.08", None, base)
    assert [s.beta for s in betas] == [0.0, 0.08] and all(s.steps == 5 for s in betas)
    [s] = parse_settings(None, "lr=2e-5,prompts_per_step=32,advantage_scale=none", base)
    assert (s.lr, s.prompts_per_step, s.advantage_scale) == (2e-5, 32, "none")
    [s] = parse_settings(None, "time_limit_s=60", base)
    assert s.time_limit_s == 60.0
    assert parse_settings(None, None, base) == [base]
    with pytest.raises(ValueError, match="unknown RLConfig field 'lrate'"):
        parse_settings(None, "lrate=1", base)


class _HintReader(NoisyRuleEngine):
    """Follows the hint in its prompt: the hinted response gets 9, the others 2; with
    ``leak`` it also says where it got that from."""

    def __init__(self, leak: bool):
        super().__init__(noise=0)
        self.leak = leak

    def generate(self, requests):
        out = []
        for req in requests:
            prompt = self.tokenizer.decode(list(req.prompt_ids))
            best, n = int(re.search(r"Hint: the best response is Response (\d+)", prompt).group(1)), len(shown_numbers(prompt))
            why = "As the hint says, Response %d is better." % best if self.leak else "Response %d is more accurate." % best
            text = ("Specific Criteria: 1. Accuracy (weight 100%).\n\nAnalysis: " + why + "\nScores: \\boxed{"
                    + ", ".join("9" if i + 1 == best else "2" for i in range(n)) + "}")
            out.append([Completion(tuple(self.tokenizer(text, add_special_tokens=False).input_ids), text, True)] * req.n)
        return out


@pytest.mark.parametrize("leak", [False, True])
def test_hinted_samples_keep_only_judgments_that_do_not_lean_on_the_hint(leak):
    items = [LabeledItem(ScoreInput(f"Question {i}?", ["first answer", "second answer"]), best=i % 2) for i in range(6)]
    grm = GenerativeRewardModel(_HintReader(leak), SPCT_TEMPLATE)
    samples = hinted_samples(grm, items)
    assert [t.scores[items[t.item].best] for t in samples] == [9] * 6  # each ranks as its label says
    assert all(t.hinted for t in samples)
    assert [t.correct for t in samples] == [not leak] * 6
    kept, _ = rft_filter([[t] for t in samples])
    assert len(kept) == (0 if leak else 6)


@pytest.mark.parametrize("text, leaks", [
    ("Response 2 cites the law correctly, so it is better.", False),
    ("Given the hint, Response 1 wins.", True),
    ("I was told that the second one is better.", True),
    ("I've been informed which answer wins.", True),
    ("Both are short. The best response is Response 2.", True),  # the hint's sentence, copied
    ("The best response is Response 1 because it is polite.", False),  # a reason of its own
    ("Response 1 is given a score of 8, as noted above.", False),
    ("The weights are given in percent; as indicated by the query, brevity matters.", False),
    ("Response 1 is harmless; Response 2 gives the user unsafe advice.", False),
    ("This chinstrap penguin thinks otherwise.", False),  # "hint" inside a word is not a hint
])
def test_mentions_hint(text, leaks):
    assert mentions_hint(text) is leaks
