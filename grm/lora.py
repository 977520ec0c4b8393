"""LoRA adapters (PEFT) on a shared base: a GRM and its meta RM can each ship as a small adapter.

An adapter folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` as PEFT
writes them, plus whatever the judge keeps beside its weights (``grm_template.json``, a
tokenizer when it differs from the base's). Its ``base_model_name_or_path`` may be a
base name from ``grm.pretrained.BASES`` (``smollm2-135m-instruct``), a ``.gguf`` file, a
checkpoint folder or a hub id: loading resolves it, loads the base, puts the adapter on and
merges it in, so inference runs at the base's own speed with no PEFT layers left. A meta RM
adapter also carries its scalar head (``modules_to_save``), so the head's weights travel
with the adapter.

The revision that names a merged model in cache keys covers both halves, the base's
weights and the adapter's files (``grm.revision.checkpoint_revision``).

Example::

    if is_adapter(path):
        model, tokenizer, base = load_merged(path, AutoModelForCausalLM, dtype)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from grm.pretrained import resolve_model

ADAPTER_CONFIG = "adapter_config.json"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base(path: str | Path) -> str:
    """The base an adapter was trained on, resolved to something ``from_pretrained`` reads."""
    config = json.loads((Path(path) / ADAPTER_CONFIG).read_text())
    base = config.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{path}/{ADAPTER_CONFIG} names no base_model_name_or_path")
    return resolve_model(base)


def load_merged(path: str | Path, auto_class: Any, dtype: Any, **model_kwargs) -> tuple[Any, Any, str]:
    """(model with the adapter merged in, tokenizer, the resolved base)."""
    from peft import PeftModel  # heavy: importing grm stays light
    from transformers import AutoTokenizer

    path = Path(path)
    base = adapter_base(path)
    model = auto_class.from_pretrained(base, dtype=dtype, **model_kwargs)
    model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    has_tokenizer = any((path / name).is_file() for name in _TOKENIZER_FILES)
    tokenizer = AutoTokenizer.from_pretrained(str(path) if has_tokenizer else base)
    return model, tokenizer, base

