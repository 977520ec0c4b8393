"""A quick check of a GRM checkpoint during training: greedy accuracy and parse rate.

Each item is judged once, greedily, with its responses shown in a seeded random order
(seed = the item's index, so every stage sees the same orders). Accuracy is the SPCT rule
(the labelled best response strictly highest); an invalid judgment counts as wrong. The
full inference-time scaling figures (voting@k, MetaRM@k with bootstrapped k-subsets) come
from the evaluation harness, not from here.

Example::

    greedy_eval(model, tokenizer, items_from_tasks(generate_tasks(500, 0, "test")))
    # {'items': 500, 'accuracy': 0.74, 'parse_rate': 1.0}
"""

from __future__ import annotations

from collections.abc import Sequence

from grm.judge import GenerativeRewardModel
from grm.transformers_engine import TransformersEngine
from grm.types import SamplingOptions
from spct.data import SPCT_TEMPLATE, LabeledItem, is_correct


def judge_for(model, tokenizer) -> GenerativeRewardModel:
    """A judge on an in-memory model (no save/load round trip)."""
    return GenerativeRewardModel(TransformersEngine(model, tokenizer, model_id="training"), SPCT_TEMPLATE)


def greedy_eval(model, tokenizer, items: Sequence[LabeledItem], max_new_tokens: int = 256,
                batch_size: int = 32) -> dict:
    grm = judge_for(model.eval(), tokenizer)
    correct = valid = 0
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        options = [SamplingOptions(k=1, temperature=0.0, max_new_tokens=max_new_tokens, seed=start + i)
                   for i in range(len(chunk))]
        for labeled, result in zip(chunk, grm.score_batch([it.item for it in chunk], options)):
            judgment = result.judgments[0]
            valid += judgment.valid
            correct += is_correct(judgment.scores, labeled)
    n = max(1, len(items))
    return {"items": len(items), "accuracy": round(correct / n, 4), "parse_rate": round(valid / n, 4)}
