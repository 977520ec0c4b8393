"""The scalar baseline: a Bradley-Terry reward model on the same base and the same pairs.

This is what a user would otherwise train: the base with a scalar head, fit so that the
preferred response of each pair scores higher, ``loss = -log sigmoid(r_chosen - r_rejected)``
(Bradley and Terry 1952; the reward-model loss of InstructGPT, Ouyang et al. 2022). LoRA on
the upper layers plus the whole new head (``modules_to_save``), as for the judge. A
response is read as the judge reads it: the conversation and the response cut by the
judge template's caps, the conversation as a user turn and the response after it.

Accuracy on validation pairs counts a tie as wrong (the same rule as the judge's
"unscored counts as wrong").

Example::

    rows = [pair_ids(tokenizer, template, labeled) for labeled in items]
    figures = train_bt(model, rows, LoraSettings(epochs=1), Path("runs/en/bt"))
    correct = bt_correct(model, val_rows, pad_id)
    report = bt_validation(model, tokenizer, template, records, pad_id, seed=0)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from grm.eval.statistics import item_bootstrap
from grm.prompts import encode_prompt, shown_response
from grm.templates import JudgeTemplate
from spct.cold_start import query_text
from spct.data import LabeledItem, record_item
from spct.lora_sft import LoraSettings, train_resumable


def response_ids(tokenizer, template: JudgeTemplate, labeled: LabeledItem, index: int) -> list[int]:
    """The conversation as a user turn, then response ``index``; special-token text kept plain."""
    prompt = encode_prompt(tokenizer, query_text(template, labeled.item))
    answer = shown_response(template, labeled.item.responses[index])
    return prompt + tokenizer(answer, add_special_tokens=False, split_special_tokens=True).input_ids


def pair_ids(tokenizer, template: JudgeTemplate, labeled: LabeledItem) -> tuple[list[int], list[int]]:
    """(preferred, other) token rows of a two-response item."""
    if len(labeled.item.responses) != 2:
        raise ValueError(f"a Bradley-Terry pair needs 2 responses, got {len(labeled.item.responses)}")
    return (response_ids(tokenizer, template, labeled, labeled.best),
            response_ids(tokenizer, template, labeled, 1 - labeled.best))


def rewards(model, rows: Sequence[Sequence[int]], pad: int) -> torch.Tensor:  # -> [len(rows)]
    """The scalar head at each row's last token (right padding)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, r in enumerate(rows):
        ids[j, :len(r)], mask[j, :len(r)] = torch.tensor(list(r)), 1
    hidden = model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, L, H]
    last = mask.sum(1) - 1
    return model.score(hidden[torch.arange(len(rows)), last]).float()[:, 0]


def bt_loss(pairs: Sequence[tuple[list[int], list[int]]], pad: int):
    def loss(model, indices: list[int]) -> tuple[torch.Tensor, int]:
        rows = [row for i in indices for row in pairs[i]]  # chosen, rejected, chosen, ...
        r = rewards(model, rows, pad)
        return -F.logsigmoid(r[0::2] - r[1::2]).mean(), sum(len(row) for row in rows)
    return loss


def train_bt(model, pairs: Sequence[tuple[list[int], list[int]]], settings: LoraSettings, state_dir: Path,
             pad: int, deadline_s: float | None = None, log=print) -> dict:
    return train_resumable(model, len(pairs), bt_loss(pairs, pad), settings, state_dir, deadline_s, log,
                           lengths=[max(len(chosen), len(rejected)) for chosen, rejected in pairs])


@torch.no_grad()
def bt_correct(model, pairs: Sequence[tuple[list[int], list[int]]], pad: int, batch_pairs: int = 8) -> list[bool]:
    """Per pair: did the preferred response get the strictly higher reward?"""
    model.eval()
    out = []
    for start in range(0, len(pairs), batch_pairs):
        chunk = pairs[start:start + batch_pairs]
        r = rewards(model, [row for pair in chunk for row in pair], pad)
        out += (r[0::2] > r[1::2]).tolist()
    return out


def bt_validation(model, tokenizer, template: JudgeTemplate, records: Sequence[dict], pad: int, seed: int) -> dict:
    """Accuracy on validation records (lines of the preference files) with 95% bootstrap
    intervals, pooled and per source, and the seconds it took."""
    began = time.monotonic()
    correct = np.array(bt_correct(model, [pair_ids(tokenizer, template, record_item(r)) for r in records], pad))
    sources = np.array([str(r.get("source", "")).split(":")[0] for r in records])
    by_source = {name: item_bootstrap(correct[sources == name], seed=seed).to_json() for name in sorted(set(sources))}
    return {"pairs": len(records), "wall_s": round(time.monotonic() - began, 1),
            **item_bootstrap(correct, seed=seed).to_json(), "by_source": by_source}
