"""The score probe (``spct.score_probe``) on the tiny test model: margins and their bookkeeping."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grm.templates import load_template
from grm.types import ScoreInput
from spct.cold_start import Draft
from spct.data import LabeledItem
from spct.score_probe import label_margin, score_probe

TEMPLATE = load_template("grm-english-v1")
DRAFT = Draft(("A good answer gives a watering rule.",), ("The answer gives a clear rule.", "The answer gives nothing."),
              ("Water it", "No idea."))


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    return (AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(tiny_model_path))


def test_the_margin_is_the_score_lines_log_odds_and_turns_with_the_label(tiny):
    model, tokenizer = tiny
    pair = ScoreInput("How do I keep a plant alive?", ["Water it once a week.", "No idea."])
    for permutation in [(0, 1), (1, 0)]:
        first = label_margin(model, tokenizer, TEMPLATE, LabeledItem(pair, 0), DRAFT, permutation)
        second = label_margin(model, tokenizer, TEMPLATE, LabeledItem(pair, 1), DRAFT, permutation)
        assert first != 0 and first == pytest.approx(-second, abs=1e-4)


def test_the_probe_counts_each_usable_two_answer_pair_once_per_setting_and_position(tiny):
    model, tokenizer = tiny
    items = [LabeledItem(ScoreInput(f"How do I keep plant {i} alive?", ["Water it once a week.", "No idea."]), i % 2)
             for i in range(4)]
    items.append(LabeledItem(ScoreInput("Three answers?", ["Water it.", "No idea.", "Maybe."]), 0))
    rows = [{"index": i, "reason": "", **DRAFT.to_json()} for i in range(5)]
    rows[1]["reason"] = "no_critique"
    probe = score_probe(model, tokenizer, TEMPLATE, items, rows)
    assert set(probe) == {"drafted", "swapped"}
    for setting in probe.values():
        assert set(setting) == {"first", "second", "both_orders"}
        for entry in setting.values():
            assert entry["pairs"] == 3 and 0 <= entry["labelled_likelier"] <= 1
