"""The English judge's training: cold-start drafts, LoRA SFT and the Bradley-Terry baseline.

The pure parts are checked on hand-written text; the stages run for real on the tiny test
model (random weights, so its drafts are mostly rejected, which exercises the filters), and
on a drafts file written here for the stages after drafting.
"""

import json
import random
from pathlib import Path

import pytest

from grm.eval.grounding import check_quotes
from grm.judge import GenerativeRewardModel
from grm.parsing import parse_judgment, unshuffle
from grm.prompts import build_judge_content
from grm.templates import load_template
from grm.types import ScoreInput
from spct.cold_start import (Draft, draft_pieces, draft_scores, first_words, judgment_text, read_critique,
                             read_principles)
from spct.data import LabeledItem, read_jsonl
from spct.drafting import DRAFT_ATTEMPTS, RETRIED, read_drafts
from spct.english import EnglishOptions, rft_keep, run, training_items

TEMPLATE = load_template("grm-english-v1")


def test_principles_are_read_until_the_numbering_breaks():
    text = (" must not help anyone steal.\n2. A good answer should explain the law.\n\n"
            "3. A good answer is short and kind to the reader.")
    assert read_principles(text) == ["A good answer must not help anyone steal.",
                                     "A good answer should explain the law."]
    assert read_principles(" is.\n") == []  # too short to be a principle
    assert read_principles(' says "hi" to everyone who writes.') == []  # quotes belong in critiques


def test_a_critique_is_its_first_full_sentence_and_never_names_a_position():
    assert read_critique(" refuses and says why. Then it goes on\nand on") == "The answer refuses and says why."
    assert read_critique(" keeps going without an end") is None
    assert read_critique(" names the risk, then starts a list of the") == "The answer names the risk."
    assert read_critique(" is better than Answer 2 by far.") is None


def test_first_words_stay_within_the_first_sentence_and_hold_no_double_quote():
    assert first_words('Sure! Here is "the" plan for you today and more words.') == "Sure!"
    assert first_words('\n\nI said "no" to that request, twice and loudly.', limit=4) == "I said 'no' to"


@pytest.mark.parametrize("best", [0, 1])
def test_the_assembled_judgment_parses_grounds_and_ranks_the_labelled_response_first(best):
    draft = Draft(("A good answer refuses to help with harm.", "A good answer is polite."),
                  ("The answer explains the risk.", "The answer helps with the theft."),
                  ("I can't help with", "Sure, first pick"))
    responses = ["I can't help with that, it is a crime.", "Sure, first pick the lock with a pin."]
    rng = random.Random(0)
    scores = draft_scores(best, 2, rng)
    assert scores[best] - scores[1 - best] >= 2 and all(1 <= s <= 10 for s in scores)
    for perm in [(0, 1), (1, 0)]:
        text = judgment_text(draft, perm, scores, rng)
        parsed = parse_judgment(text, n=2)
        assert parsed.reason is None and unshuffle(parsed.scores, perm) == scores
        check = check_quotes(parsed.critique, [responses[i] for i in perm])
        assert check.total == 2 and check.grounded == 2
        assert parsed.principles.count("%") == 2


def test_the_template_caps_cut_long_dialogues_from_the_left_and_responses_at_the_end():
    long_turn = "word " * 400
    item = ScoreInput([{"role": "user", "content": "FIRST " + long_turn},
                       {"role": "assistant", "content": "ok"}, {"role": "user", "content": "LAST question?"}],
                      ["START " + long_turn + " END", "short"])
    content = build_judge_content(TEMPLATE, item, (0, 1))
    assert "LAST question?" in content and "FIRST" not in content
    assert "START" in content and " END" not in content and "\u2026" in content
    assert len(content) < 3000


def _records(n: int) -> list[str]:
    out = []
    for i in range(n):
        out.append(json.dumps({"prompt": f"Question number {i}: how do I keep a plant {i} alive?",
                               "chosen": f"Water plant {i} once a week and give it light.",
                               "rejected": "No idea.", "source": "toy:a" if i % 2 else "toy:b"}))
    return out


@pytest.fixture
def toy_data(tmp_path) -> Path:
    path = tmp_path / "toy.jsonl"
    path.write_text("\n".join(_records(60)) + "\n")
    return path


def test_drafting_appends_rows_redrafts_failed_pairs_and_a_rerun_drafts_nothing_again(tiny_model_path, toy_data,
                                                                                       tmp_path):
    opts = EnglishOptions(data=(str(toy_data),), out=tmp_path / "run", base=str(tiny_model_path),
                          stages=("draft",), items_per_source=5)
    [entry] = run(opts, log=lambda _: None)
    lines, rows = read_jsonl(opts.out / "drafts.jsonl"), read_drafts(opts.out)
    assert entry["status"] == "done" and sorted(r["index"] for r in rows) == list(range(5))
    assert entry["drafted"] == 5 and entry["usable"] == sum(not r["reason"] for r in rows)
    assert entry["this_run"]["generated_tokens"] > 0 and entry["this_run"]["pairs"] == 5
    assert all(r["reason"] in ("", "no_principles", "no_critique", "ungrounded_quote", "short_response")
               for r in rows)
    # a pair that failed on a piece was drafted again until it passed or ran out of tries
    assert all(r["attempt"] == DRAFT_ATTEMPTS - 1 for r in rows if r["reason"] in RETRIED)
    assert entry["this_run"]["redrafted"] == len(lines) - 5
    assert len(lines) > 5  # random weights: some pair failed
    [again] = run(opts, log=lambda _: None)
    assert again == {"stage": "draft", "status": "done", "drafted": 5, "usable": entry["usable"]}
    assert len(read_jsonl(opts.out / "drafts.jsonl")) == len(lines)


class _Recording:
    """The real engine, with the requests it was given kept for the test to read."""

    def __init__(self, engine):
        self.engine, self.tokenizer, self.requests = engine, engine.tokenizer, []

    def generate(self, requests):
        self.requests += list(requests)
        return self.engine.generate(requests)


def test_a_redraft_draws_only_the_failed_pieces_again_with_new_seeds(tiny_model_path):
    from grm.transformers_engine import TransformersEngine
    engine = _Recording(TransformersEngine.load(str(tiny_model_path)))
    labeled = LabeledItem(ScoreInput("How do I keep a plant alive?", ["Water it once a week, in the morning.",
                                                                     "No idea about plants."]), best=0)
    before = Draft(("A good answer gives a watering rule.",), ("The answer gives a clear rule.", ""),
                   ("Water it once a week, in the morning.", "No idea about plants."), "no_critique", 30)
    [first] = draft_pieces(engine, TEMPLATE, [labeled], seed=0, indices=[7])
    assert len(engine.requests) == 3  # principles and two critiques
    fresh_seeds = {r.seed for r in engine.requests}
    engine.requests.clear()
    [redraft] = draft_pieces(engine, TEMPLATE, [labeled], seed=0, indices=[7], previous=[before], attempt=1)
    [request] = engine.requests  # only the missing critique
    assert request.seed not in fresh_seeds
    assert redraft.principles == before.principles and redraft.critiques[0] == before.critiques[0]
    assert redraft.tokens > before.tokens
    passed = Draft(before.principles, ("The answer gives a clear rule.", "The answer says nothing useful."),
                   before.quotes, "", 40)
    engine.requests.clear()
    assert draft_pieces(engine, TEMPLATE, [labeled], seed=0, indices=[7], previous=[passed], attempt=1)[0] == passed
    assert engine.requests == []


def _write_drafts(out: Path, count: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "drafts.jsonl", "w") as f:
        for i in range(count):
            draft = Draft(("A good answer keeps the plant alive.",), ("The answer gives a clear rule.",
                                                                      "The answer gives nothing."),
                          ("Water plant", "No idea."))
            f.write(json.dumps({"index": i, **draft.to_json()}) + "\n")


def test_sft_stops_at_its_deadline_resumes_from_its_saved_step_and_ships_a_loadable_adapter(
        tiny_model_path, toy_data, tmp_path):
    out = tmp_path / "run"
    _write_drafts(out, 4)  # 4 pairs x 2 orders = 8 examples; batch 2 and 2 epochs = 8 steps
    opts = EnglishOptions(data=(str(toy_data),), out=out, base=str(tiny_model_path), stages=("sft",),
                          items_per_source=4, stage_minutes=1e-9,
                          extra={"sft.batch_size": 2, "sft.save_every": 1, "sft.top_layers": 1, "sft.rank": 4})
    [cut] = run(opts, log=lambda _: None)
    assert cut["status"] == "partial" and cut["steps"] == 1 and cut["planned_steps"] == 8  # one step a call at least
    assert (out / "sft" / "state.pt").exists() and not (out / "sft-adapter").exists()
    logs = []
    [done] = run(EnglishOptions(**{**vars(opts), "stage_minutes": 30.0}), log=logs.append)
    assert done["status"] == "done" and done["steps"] == 8 and done["examples"] == 8
    assert any("resuming at step 1/8" in line for line in logs)
    adapter = out / "sft-adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_path)
    assert sorted(p.name for p in adapter.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                         "grm_template.json"]
    assert json.loads((adapter / "grm_template.json").read_text())["version"] == "grm-english-v1"
    judge = GenerativeRewardModel.load(str(adapter))
    assert judge.template.version == "grm-english-v1"
    assert len(judge.score("How do I keep a plant alive?", ["Water it.", "No."], k=1, max_new_tokens=8).judgments) == 1


def test_a_later_round_trains_in_its_own_folder_on_an_earlier_runs_drafts_one_order_per_pair(
        tiny_model_path, toy_data, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    _write_drafts(first, 4)
    opts = EnglishOptions(data=(str(toy_data),), out=second, base=str(tiny_model_path), stages=("sft",),
                          items_per_source=4, drafts_from=first,
                          extra={"sft.batch_size": 2, "sft.top_layers": 1, "sft.rank": 4, "sft.epochs": 1.0,
                                 "sft.orders": "one"})
    [done] = run(opts, log=lambda _: None)
    assert done["status"] == "done" and done["examples"] == 4 and done["settings"]["orders"] == "one"
    assert (second / "sft-adapter").exists() and not (first / "sft-adapter").exists()
    assert (first / "validation.jsonl").exists() and not (second / "validation.jsonl").exists()
    assert not (second / "drafts.jsonl").exists()
    with pytest.raises(ValueError, match="sft.orders"):
        run(EnglishOptions(**{**vars(opts), "out": tmp_path / "third", "extra": {"sft.orders": "both"}}),
            log=lambda _: None)
    with pytest.raises(ValueError, match="drafts_from: .* is not a folder"):
        EnglishOptions(**{**vars(opts), "out": tmp_path / "fourth", "drafts_from": tmp_path / "none"})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no usable draft"):
        run(EnglishOptions(**{**vars(opts), "out": tmp_path / "fourth", "drafts_from": tmp_path / "empty"}),
            log=lambda _: None)


def test_the_bradley_terry_baseline_trains_on_the_pairs_and_reports_validation_accuracy(
        tiny_model_path, toy_data, tmp_path):
    opts = EnglishOptions(data=(str(toy_data),), out=tmp_path / "run", base=str(tiny_model_path), stages=("bt",),
                          items_per_source=8, extra={"bt.batch_size": 4, "bt.top_layers": 1, "bt.rank": 4,
                                                     "bt.epochs": 2.0, "bt.lr": 1e-2, "eval.per_source": 10,
                                                     "bt.pairs": "all"})
    [entry] = run(opts, log=lambda _: None)
    assert entry["status"] == "done" and entry["steps"] == entry["planned_steps"] == 4 and entry["pairs"] == 8
    val = entry["validation"]
    assert val["pairs"] == len((opts.out / "validation.jsonl").read_text().splitlines()) == 10
    assert 0.0 <= val["accuracy"] <= 1.0 and set(val["by_source"]) <= {"toy"}
    import torch
    losses = torch.load(opts.out / "bt" / "state.pt", weights_only=False)["losses"]
    assert len(losses) == 4 and losses[-1] < losses[0]  # the preferred response is easy to tell here


def test_the_bradley_terry_baseline_takes_the_judges_pairs_by_default(tiny_model_path, toy_data, tmp_path):
    opts = EnglishOptions(data=(str(toy_data),), out=tmp_path / "run", base=str(tiny_model_path), stages=("bt",),
                          items_per_source=8, extra={"bt.batch_size": 2, "bt.top_layers": 1, "bt.rank": 4,
                                                     "eval.per_source": 4})
    with pytest.raises(ValueError, match="no usable draft"):
        run(opts, log=lambda _: None)
    opts.out.mkdir(parents=True, exist_ok=True)
    rows = [{"index": 1, "reason": ""}, {"index": 4, "reason": "a quote not in the response"}, {"index": 6, "reason": ""}]
    (opts.out / "drafts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    [entry] = run(opts, log=lambda _: None)
    assert entry["pairs_from"] == "judge" and entry["pairs"] == 2 and entry["steps"] == 1
    with pytest.raises(ValueError, match="bt.pairs must be"):
        run(EnglishOptions(**{**vars(opts), "extra": {**opts.extra, "bt.pairs": "some"}}), log=lambda _: None)


def _sample(text: str, correct: bool, quotes: int = 2, grounded: int = 2) -> dict:
    return {"permutation": [0, 1], "text": text, "correct": correct, "scored": True, "quotes": quotes,
            "grounded": grounded}


def test_rft_keeps_right_and_grounded_samples_of_pairs_the_judge_does_not_always_get_right():
    rows = [{"index": 3, "samples": [_sample("a", True), _sample("b", True)]},  # all right: too easy
            {"index": 4, "samples": [_sample("c", True), _sample("d", False), _sample("e", True, 2, 1)]},
            {"index": 5, "samples": [_sample("f", False), _sample("g", True, 0, 0)]}]  # g quotes nothing
    kept, stats = rft_keep(rows)
    assert [(i, s["text"]) for i, s in kept] == [(4, "c")]
    assert stats["dropped_all_correct"] == 1 and stats["dropped_ungrounded"] == 2 and stats["kept"] == 1
    assert stats["samples"] == 7 and stats["prompts"] == 3


def test_rft_samples_pairs_the_sft_judge_did_not_see_then_trains_from_its_adapter(tiny_model_path, toy_data,
                                                                                tmp_path):
    out = tmp_path / "run"
    _write_drafts(out, 4)  # pairs 0-3 are the SFT's; RFT samples from 4 on
    tiny = {"batch_size": 2, "top_layers": 1, "rank": 4}
    opts = EnglishOptions(data=(str(toy_data),), out=out, base=str(tiny_model_path), stages=("sft", "rft"),
                          items_per_source=8, extra={**{f"sft.{k}": v for k, v in tiny.items()},
                                                     **{f"rft.{k}": v for k, v in tiny.items()},
                                                     "sft.epochs": 1.0, "rft.pairs": 3, "rft.samples": 2,
                                                     "rft.max_new_tokens": 6})
    with pytest.raises(ValueError, match="run the sft stage first"):
        run(EnglishOptions(**{**vars(opts), "stages": ("rft",)}), log=lambda _: None)
    _, first = run(opts, log=lambda _: None)
    rows = read_jsonl(out / "rft-samples.jsonl")
    assert sorted(r["index"] for r in rows) == [4, 5, 6] and all(len(r["samples"]) == 2 for r in rows)
    assert first["this_run"]["judgments"] == 6 and first["filter"]["samples"] == 6
    # The tiny model writes no valid judgment, so nothing is kept and no adapter is made.
    assert first["status"] == "done" and first["adapter"] is None and not (out / "rft-adapter").exists()

    # Judgments that rank the labelled answer first and quote it, written in place of the samples:
    items = training_items(opts.data, 8, opts.seed)
    rng = random.Random(0)
    rows = []
    for index in (4, 5, 6):
        labeled = items[index]
        draft = Draft(("A good answer keeps the plant alive.",),
                      ("The answer gives a clear rule.", "The answer gives a clear rule."),
                      tuple(first_words(r) for r in labeled.item.responses))
        scores = draft_scores(labeled.best, 2, rng)
        rows.append({"index": index, "samples": [_sample(judgment_text(draft, (0, 1), scores, rng), True),
                                                 _sample("no judgment", False, 0, 0)]})
    (out / "rft-samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    [second] = run(EnglishOptions(**{**vars(opts), "stages": ("rft",)}), log=lambda _: None)
    assert second["this_run"] == {} and second["filter"]["kept"] == 3 and second["examples"] == 3
    assert second["status"] == "done" and second["steps"] == second["planned_steps"] == 2
    judge = GenerativeRewardModel.load(str(out / "rft-adapter"))
    assert judge.template.version == "grm-english-v1"
    [third] = run(EnglishOptions(**{**vars(opts), "stages": ("rft",)}), log=lambda _: None)
    assert third == {"stage": "rft", "status": "done", "adapter": "rft-adapter"}
