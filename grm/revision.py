"""A stable name for a checkpoint's weights: the key under which caches store its results.

Example::

    checkpoint_revision("runs/english/sft-adapter")   # sha256 hex of its files and its base's
    checkpoint_revision("org/model", commit="abc123")  # a hub id: its commit
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from grm.lora import ADAPTER_CONFIG, adapter_base, is_adapter

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")

REVISION_FILES = frozenset({
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer.model",
    "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "grm_template.json",
    ADAPTER_CONFIG,
})


def checkpoint_revision(path_or_id: str | os.PathLike, commit: str | None = None) -> str:
    """A stable name for a checkpoint's weights, for cache keys.

    A local directory: sha256 over every file that shapes the output (weights, config,
    generation config, tokenizer, chat template, the judge template saved with the
    checkpoint), names and bytes, read in 1 MiB chunks, in sorted order. A hub id: its
    commit hash when known, else the id itself. A LoRA adapter folder: its own files and its
    base's revision together.
    """
    path = Path(path_or_id)
    if not path.is_dir():
        return commit or str(path_or_id)
    digest = hashlib.sha256()
    if is_adapter(path):
        digest.update(b"base\0" + checkpoint_revision(adapter_base(path)).encode() + b"\0")
    files = [p for p in sorted(path.iterdir())
             if p.is_file() and (p.name in REVISION_FILES or p.name.endswith(WEIGHT_SUFFIXES))]
    for p in files:
        digest.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()
