"""Train and validation splits of preference data, by prompt.

A record goes to a split by a hash of its prompt text, so every record that shares a
prompt lands on the same side (RM-Bench writes each prompt's responses in three styles;
Open Assistant ranks several replies to one message): nothing seen in training is asked
again in validation. The hash is SHA-256, so the split is the same on every machine, in
every process, and for every order of the records.

``record_prompt`` finds the prompt of a record in any format ``grm eval`` and ``grm spct``
read, so both put a record in the same split.

Example::

    split_of("How do I bake bread?")        # 'train' or 'validation', always the same one
    [r for r in rows if split_of(record_prompt(r)) == "validation"]
"""

from __future__ import annotations

import hashlib
import json

SPLITS = ("train", "validation")
_HH_ASSISTANT = "\n\nAssistant:"
VALIDATION_SHARE = 0.3  # of prompts (not of records)


def check_split(split: str) -> str:
    """``split`` when it names a split, else a ValueError naming the choices."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def split_of(prompt: str | list, validation_share: float = VALIDATION_SHARE) -> str:
    """The split a prompt belongs to; a conversation (a list of messages) hashes as JSON."""
    if not 0.0 <= validation_share <= 1.0:
        raise ValueError(f"validation_share must be in [0, 1], got {validation_share}")
    text = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)
    point = int.from_bytes(hashlib.sha256(b"grm-split\0" + text.encode("utf-8")).digest()[:8], "big") / 2**64
    return "validation" if point < validation_share else "train"


def record_prompt(record: dict) -> str | list:
    """What a preference record asks, whatever its format (KeyError when it names none).

    ``prompt``, ``conversation``, ``messages`` or ``query`` when present; else, for a
    ``chosen``/``rejected`` pair that holds the whole dialogue, the part both share before
    the final reply: the messages before the last one, or an Anthropic HH text up to its
    last "Assistant:" turn."""
    for key in ("prompt", "conversation", "messages", "query"):
        if record.get(key):
            return record[key]
    chosen, rejected = record["chosen"], record["rejected"]
    if isinstance(chosen, list) and isinstance(rejected, list):
        return chosen[:-1]
    if isinstance(chosen, str) and isinstance(rejected, str) and _HH_ASSISTANT in chosen:
        return chosen[:chosen.rindex(_HH_ASSISTANT)]
    raise KeyError("prompt")
