"""The GRM's starting point: any Hugging Face causal LM, or a small Llama built from nothing.

``build_model`` makes the model sized in docs/design.md ("The small judge"): hidden 256,
4 layers, 4 heads, tied embeddings, ~3.4M parameters with a 1k vocabulary; ``load_base``
reads a local checkpoint or hub id. Either way the result is saved with
``save_pretrained`` and read back with ``from_pretrained``, like any real checkpoint.

Example::

    model = build_model(tokenizer, seed=0)
    model, tokenizer = load_base("Qwen/Qwen2.5-0.5B-Instruct", device="cuda")
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grm.pretrained import resolve_model
from grm.transformers_engine import default_device_dtype


@dataclass(frozen=True)
class ModelSize:
    hidden: int = 256
    layers: int = 4
    heads: int = 4
    intermediate: int = 688  # ~2.7 x hidden, Llama's ratio
    max_positions: int = 2048

    def __post_init__(self) -> None:
        if self.hidden % self.heads:
            raise ValueError(f"ModelSize.hidden ({self.hidden}) must be a multiple of heads ({self.heads})")


def build_model(tokenizer, size: ModelSize = ModelSize(), seed: int = 0, num_labels: int | None = None):
    """A random-weight Llama causal LM (or, with ``num_labels``, a sequence classifier)."""
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        LlamaConfig,
    )

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=size.hidden, intermediate_size=size.intermediate,
        num_hidden_layers=size.layers, num_attention_heads=size.heads, num_key_value_heads=size.heads,
        max_position_embeddings=size.max_positions, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **({"num_labels": num_labels} if num_labels else {}))
    torch.manual_seed(seed)
    if num_labels:
        return AutoModelForSequenceClassification.from_config(config)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def load_base(path_or_id: str, device: str | None = None):
    """A pretrained causal LM and its tokenizer, in float32 for training; EOS wired for judging."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device, _ = default_device_dtype(device, None)
    path_or_id = resolve_model(path_or_id)  # a base name or a .gguf file: its converted folder
    tokenizer = AutoTokenizer.from_pretrained(path_or_id)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{path_or_id}: the tokenizer has no chat template; the judge renders prompts "
                         "through one (add it to tokenizer_config.json)")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path_or_id, dtype=torch.float32).to(device)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    model.generation_config.eos_token_id = sorted(eos | {tokenizer.eos_token_id})
    return model, tokenizer
