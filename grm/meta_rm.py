"""The meta reward model: a scalar classifier that rates how likely a sampled judgment is correct.

Meta-RM guided voting (SPCT paper, section 3.3) sums only the ``k_meta`` judgments this
model rates highest. It is a one-label sequence classifier trained with binary
cross-entropy, so ``sigmoid(logit)`` is the probability that the judgment is correct.

Both texts of a pair are untrusted (the judge prompt holds the responses, the judgment
may quote them), so both are tokenized with ``split_special_tokens=True``: a response
that writes ``<|im_end|>`` gets plain text, never a real marker. The model reads::

    [prompt tokens] [eos] [judgment tokens] [eos]

and ``encode`` is the one place that layout is written, for scoring and training alike.
When a pair does not fit the context, the prompt loses tokens from its left end first
(the judgment, which is what is rated, stays whole when it can).

Example::

    meta_rm = MetaRewardModel.load("path/to/meta_rm")
    meta_rm.score([(judge_prompt, judgment_text)])  # -> [0.83]
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from grm.lora import is_adapter, load_merged
from grm.revision import checkpoint_revision
from grm.transformers_engine import context_length, default_device_dtype


class MetaRewardModel:
    """A one-label sequence classifier scoring (judge prompt, judgment) pairs."""

    def __init__(self, model: Any, tokenizer: Any, model_id: str = "", revision: str = "",
                 max_length: int | None = None):
        if model.config.num_labels != 1:
            raise ValueError(f"a meta RM needs num_labels == 1, got {model.config.num_labels}")
        if model.config.get_text_config().pad_token_id is None:
            raise ValueError("a meta RM needs pad_token_id in its config to find the last token of a batch row")
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.revision = revision
        self.max_length = max_length or context_length(model.config, tokenizer)
        self.pad_token_id = model.config.get_text_config().pad_token_id
        eos = tokenizer.eos_token_id
        self.separator = [] if eos is None else [eos]  # also closes the sequence

    @classmethod
    def load(cls, path: str, device: str | None = None, dtype: Any = None) -> "MetaRewardModel":
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        device, dtype = default_device_dtype(device, dtype)
        if is_adapter(path):  # a LoRA adapter with its scalar head, on a base causal LM
            model, tokenizer, _ = load_merged(path, AutoModelForSequenceClassification, dtype, num_labels=1)
            revision = checkpoint_revision(path)
        else:
            config = AutoConfig.from_pretrained(path)
            if config.num_labels != 1:  # refuse before loading the weights
                raise ValueError(f"{path} is not a meta RM: it needs num_labels == 1, got {config.num_labels}")
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype)
            revision = checkpoint_revision(path, getattr(model.config, "_commit_hash", None))
        model.to(device).eval()
        return cls(model, tokenizer, model_id=str(path), revision=revision)

    def encode(self, prompt: str, judgment: str) -> list[int]:
        """Token ids of one pair, fitted to ``max_length`` (see the module docstring)."""
        def plain(text: str) -> list[int]:
            return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids

        prompt_ids, judgment_ids, sep = plain(prompt), plain(judgment), self.separator
        room = self.max_length - 2 * len(sep) - len(judgment_ids)  # tokens left for the prompt
        if room <= 0:  # the judgment alone is too long: keep its end, where the scores are
            prompt_ids, judgment_ids = [], judgment_ids[len(judgment_ids) - (self.max_length - 2 * len(sep)):]
        elif len(prompt_ids) > room:
            prompt_ids = prompt_ids[len(prompt_ids) - room:]
        return prompt_ids + sep + judgment_ids + sep

    @torch.inference_mode()
    def score(self, pairs: Sequence[tuple[str, str]], batch_size: int = 16) -> list[float]:
        """Probability, per (judge prompt, judgment) pair, that the judgment is correct."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        encoded = [self.encode(prompt, judgment) for prompt, judgment in pairs]
        # Sort by length so each batch pads little; results go back to the input order.
        order = sorted(range(len(encoded)), key=lambda j: len(encoded[j]))
        scores = [0.0] * len(encoded)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            logits = self._logits([encoded[j] for j in chunk])
            for j, p in zip(chunk, torch.sigmoid(logits).tolist()):
                scores[j] = p
        return scores

    def _logits(self, rows: list[list[int]]) -> torch.Tensor:  # -> [batch] float32
        # Right padding keeps every real token at the position it has alone; the
        # classifier reads the rightmost token that is not pad_token_id.
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            ids[j, :len(r)] = torch.tensor(r)
            mask[j, :len(r)] = 1
        device = self.model.device
        out = self.model(input_ids=ids.to(device), attention_mask=mask.to(device))
        return out.logits[:, 0].float()
