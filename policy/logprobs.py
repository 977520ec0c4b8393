"""Log-probabilities of target tokens under a causal LM, for SFT and for GRPO.

``batch_logprobs`` scores a batch of (prompt, target) pairs in one forward pass. Rows
often share a long token prefix (a judge template's instructions, a system prompt): that
prefix runs once, its KV cache is copied to every row, and only each row's own suffix
runs after it. The result equals one forward per row; gradients flow through the shared
prefix too.

Example::

    logp, mask = batch_logprobs(model, [Example(prompt_ids, completion_ids + (eos,)), ...])
    nll = -(logp * mask).sum() / mask.sum()
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from grm.types import Completion


@dataclass(frozen=True)
class Example:
    prompt_ids: tuple[int, ...]  # [P] context only
    target_ids: tuple[int, ...]  # [T] the tokens that are scored (a judgment or completion, + EOS)


def target_ids(completion: Completion, eos_token_id: int) -> tuple[int, ...]:
    """The tokens the policy produced: the completion plus the EOS that ended it, if one did."""
    if not completion.finished:
        return completion.token_ids or (eos_token_id,)
    eos = eos_token_id if completion.eos_token_id is None else completion.eos_token_id
    return completion.token_ids + (eos,)


def _common_prefix(rows: Sequence[Sequence[int]]) -> int:
    """Length of the longest shared prefix, leaving every row at least one token of its own."""
    limit = min(len(r) for r in rows) - 1
    first = rows[0]
    for i in range(limit):
        if any(r[i] != first[i] for r in rows):
            return i
    return max(limit, 0)


def _head_on_targets_only(model) -> bool:
    """True when the logits are the output embedding applied to the decoder's last hidden
    state and nothing else (no soft-capping or scale, which some model families add)."""
    config = model.config
    return (getattr(config, "final_logit_softcapping", None) is None and not hasattr(config, "logit_scale")
            and model.get_output_embeddings() is not None and hasattr(model, "get_decoder"))


def _target_logits(model, inputs: dict, rows: list[int], cols: list[int]) -> torch.Tensor:
    """Logits at the ``(row, col)`` positions that predict target tokens.

    The vocabulary projection is most of the cost of a short model's forward over a long
    prompt (49k x 576 for every prompt token of SmolLM2), and only the target positions
    need it; so, where the model's logits are its output embedding over the decoder's last
    hidden state, only those positions are projected.
    """
    if _head_on_targets_only(model):
        hidden = model.get_decoder()(**inputs).last_hidden_state  # [B, S, H]
        return model.get_output_embeddings()(hidden[rows, cols])  # [sum T_j, V]
    return model(**inputs).logits[rows, cols]


def batch_logprobs(model, batch: Sequence[Example], logits_at: Sequence[int] | None = None):
    """Log-probabilities of every example's target tokens under ``model``.

    Returns ``(logp, mask)``, both ``[B, T]`` with T the longest target; mask is 1 on real
    target tokens. Gradients flow through the shared prefix too. With ``logits_at`` (one
    target index per example), also the whole logits that predict that target token of each
    example (``[B, V]``, what the model would write there): ``(logp, mask, logits)``.
    """
    device = model.device
    P = _common_prefix([e.prompt_ids for e in batch])
    cache = None
    if P:
        cache = DynamicCache(config=model.config)
        model(input_ids=torch.tensor([batch[0].prompt_ids[:P]], device=device), past_key_values=cache,
              use_cache=True, logits_to_keep=1)
        cache.batch_repeat_interleave(len(batch))
    suffixes = [list(e.prompt_ids[P:]) + list(e.target_ids) for e in batch]
    S = max(len(s) for s in suffixes)
    ids = torch.zeros(len(batch), S, dtype=torch.long)
    mask = torch.zeros(len(batch), P + S, dtype=torch.long)
    mask[:, :P] = 1
    for j, s in enumerate(suffixes):  # right padding: padded slots come after every real token
        ids[j, :len(s)] = torch.tensor(s)
        mask[j, P:P + len(s)] = 1
    positions = torch.arange(P, P + S).expand(len(batch), S)
    inputs = dict(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                  past_key_values=cache, use_cache=cache is not None)
    T = max(len(e.target_ids) for e in batch)
    rows, cols, tgt = [], [], []
    tmask = torch.zeros(len(batch), T)
    for j, e in enumerate(batch):
        start = len(e.prompt_ids) - P  # suffix index of the first target token
        for t, token in enumerate(e.target_ids):
            rows.append(j), cols.append(start + t - 1), tgt.append(token)  # predicted one step earlier
        tmask[j, :len(e.target_ids)] = 1
    if logits_at is not None:
        rows += range(len(batch))
        cols += [len(e.prompt_ids) - P + t - 1 for e, t in zip(batch, logits_at)]
    logits = _target_logits(model, inputs, rows, cols).float()  # [sum T_j (+ B), V]
    at = logits[len(tgt):]
    picked = logits[:len(tgt)].log_softmax(-1)
    flat = picked.gather(-1, torch.tensor(tgt, device=device)[:, None])[:, 0]
    logp = torch.zeros(len(batch), T, device=device, dtype=flat.dtype)
    logp[tmask.bool().to(device)] = flat  # row-major order matches the (j, t) loop above
    return (logp, tmask.to(device), at) if logits_at is not None else (logp, tmask.to(device))
