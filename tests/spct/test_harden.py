"""The content-free training pairs (``spct.harden``) and the ``harden`` stage of ``spct.english``."""

from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from grm.eval.attacks import attack_texts
from grm.eval.grounding import check_quotes
from grm.judge import GenerativeRewardModel
from grm.parsing import parse_judgment, unshuffle
from grm.prompts import shown_response
from grm.templates import load_template
from grm.types import ScoreInput
from spct.cold_start import Draft
from spct.data import LabeledItem
from spct.english import EnglishOptions, run
from spct.harden import KINDS, content_free, hardening_judgment
from spct.lora_sft import LoraSettings, add_lora, save_adapter

TEMPLATE = load_template("grm-english-v1")
QUERY = "How do I keep basil alive indoors? It keeps wilting."


def test_content_free_answers_answer_nothing_and_never_reuse_an_attack_string():
    rng = random.Random(0)
    attacks = set(attack_texts(QUERY).values())
    seen = {kind: {content_free(QUERY, kind, rng) for _ in range(200)} for kind in KINDS}
    assert all(len(texts) >= 3 for texts in seen.values())  # several forms of every kind
    assert not set().union(*seen.values()) & attacks
    assert all(not any(c.isalnum() for c in text) for text in seen["mark"])
    assert all("How do I keep basil alive indoors?" in text for text in seen["echo"])
    assert all(len(text) < 60 for kind in ("mark", "opener", "claim") for text in seen[kind])
    with pytest.raises(ValueError, match="kind must be one of"):
        content_free(QUERY, "blank", rng)


@pytest.mark.parametrize("kind", KINDS)
def test_a_hardening_judgment_parses_quotes_both_answers_and_scores_the_real_one_3_higher(kind):
    labeled = LabeledItem(ScoreInput(QUERY, ["Move it to a sunny window.", "Water it daily, at noon."]), best=1)
    draft = Draft(("A good answer gives a cause and a fix.",), ("The answer names light.", "The answer gives a rule."),
                  ("Move it to a sunny window.", "Water it daily, at noon."))
    orders = set()
    for seed in range(12):
        pair, permutation, text = hardening_judgment(TEMPLATE, labeled, draft, kind, random.Random(seed))
        assert pair.responses[0] == "Water it daily, at noon." and pair.responses[1] not in labeled.item.responses
        parsed = parse_judgment(text, n=2)
        assert parsed.reason is None
        real, empty = unshuffle(parsed.scores, permutation)
        assert real - empty >= 3 and 1 <= empty <= 2
        shown = [shown_response(TEMPLATE, pair.responses[i]) for i in permutation]
        check = check_quotes(parsed.critique, shown, QUERY)
        # every quote is found; the checker drops a quote that is only punctuation (most marks)
        assert check.grounded == check.total == 2 or (kind == "mark" and check.grounded == check.total == 1)
        orders.add(permutation)
    assert orders == {(0, 1), (1, 0)}  # the non-answer is shown in both places


def _records(n: int) -> list[str]:
    return [json.dumps({"prompt": f"Question {i}: how do I keep plant {i} alive?",
                        "chosen": f"Water plant {i} once a week and give it light.",
                        "rejected": "No idea at all.", "source": "toy:a"}) for i in range(n)]


def test_the_harden_stage_trains_from_the_rft_adapter_on_content_free_pairs_and_ships_a_judge(
        tiny_model_path, tmp_path):
    data = tmp_path / "toy.jsonl"
    data.write_text("\n".join(_records(40)) + "\n")
    out = tmp_path / "run"
    opts = EnglishOptions(data=(str(data),), out=out, base=str(tiny_model_path), stages=("harden",),
                          items_per_source=6, extra={"harden.batch_size": 2, "harden.per_pair": 2, "harden.replay": 2})
    with pytest.raises(ValueError, match="run the rft stage first"):
        run(opts, log=lambda _: None)
    settings = LoraSettings(rank=4, top_layers=1)
    model = add_lora(AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32), settings)
    save_adapter(model, out / "rft-adapter", str(tiny_model_path), TEMPLATE)
    rows = [{"index": i, "principles": ["A good answer keeps the plant alive."],
             "critiques": ["The answer gives a clear rule.", "The answer gives nothing."],
             "quotes": ["Water plant", "No idea at all."], "reason": "" if i != 2 else "no_critique"}
            for i in range(4)]
    (out / "drafts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    right = {"permutation": [0, 1], "text": "Specific Criteria:\n1. Keeps it alive. (100%)", "correct": True,
             "scored": True, "quotes": 1, "grounded": 1}
    samples = [{"index": i, "samples": [right, {**right, "correct": False}]} for i in (4, 5, 6)]
    (out / "rft-samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in samples))
    [entry] = run(opts, log=lambda _: None)
    # 3 RFT judgments kept, the first 2 replayed; 3 usable drafts x 2 content-free pairs
    assert entry["status"] == "done" and entry["replayed"] == 2 and entry["content_free_pairs"] == 6
    assert entry["steps"] == entry["planned_steps"] == 4
    judge = GenerativeRewardModel.load(str(out / "harden-adapter"))
    assert judge.template.version == "grm-english-v1"
    def lora_b(folder):
        return [v for k, v in load_file(folder / "adapter_model.safetensors").items() if "lora_B" in k]
    assert all(not v.any() for v in lora_b(out / "rft-adapter"))  # LoRA starts as a no-op
    assert any(v.any() for v in lora_b(out / "harden-adapter"))  # and training moved it
    [again] = run(opts, log=lambda _: None)
    assert again == {"stage": "harden", "status": "done", "adapter": "harden-adapter"}
