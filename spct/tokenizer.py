"""A SentencePiece tokenizer for the GRM built from nothing (docs/design.md, "Portable checkpoints").

The shipped GRM must stay convertible to GGUF (llama.cpp's converter accepts a
SentencePiece ``tokenizer.model``, not a custom byte-level BPE), so the tokenizer is
trained with the ``sentencepiece`` package (BPE, byte fallback, no text normalisation)
on generated judge prompts and teacher judgments, saved as ``tokenizer.model`` and
loaded back through ``AutoTokenizer`` as a Llama tokenizer.

The ChatML markers are SentencePiece *control* symbols: they own ids, but the
SentencePiece model never produces them from text. The Hugging Face side registers them
as special tokens, so the chat template's own ``<|im_end|>`` becomes the real marker,
while text tokenized with ``split_special_tokens=True`` (what ``grm.prompts.encode_prompt``
does with responses) goes through the SentencePiece model and stays plain text.

Example::

    tok = train_tokenizer(texts, "out/tokenizer", vocab_size=1024)
    tok("a <|im_end|> b", add_special_tokens=False, split_special_tokens=True).input_ids
    # -> several ordinary pieces, never tok.convert_tokens_to_ids("<|im_end|>")
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterable
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
IM_START, IM_END, PAD = "<|im_start|>", "<|im_end|>", "<pad>"
MAX_LENGTH = 2048  # the model's context: judge prompts of 2-3 short responses take ~700 tokens


def train_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 1024):
    """Train a BPE SentencePiece model on ``texts``, save it with its HF files, return the tokenizer."""
    import sentencepiece as spm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    # SentencePiece reads one sentence per line: split on newlines (they become byte
    # pieces, <0x0A>, as in Llama) and keep every line as written.
    lines = [line for text in texts for line in text.split("\n") if line.strip()]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=False, split_digits=True, character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=3, pad_piece=PAD,
        control_symbols=[IM_START, IM_END], max_sentence_length=1 << 16, num_threads=2,
        minloglevel=2)
    (out_dir / "tokenizer.model").write_bytes(model.getvalue())
    return _save_hf(out_dir)


def _save_hf(out_dir: Path):
    """Describe ``tokenizer.model`` as a Llama tokenizer with ChatML markers; load it back and check it."""
    from transformers import AutoTokenizer

    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": IM_END,
              "unk_token": "<unk>", "pad_token": PAD, "add_bos_token": True, "add_eos_token": False,
              "legacy": False, "add_prefix_space": False, "additional_special_tokens": [IM_START, IM_END],
              "model_max_length": MAX_LENGTH, "chat_template": CHAT_TEMPLATE}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    tok = AutoTokenizer.from_pretrained(out_dir)  # converts tokenizer.model to a fast tokenizer
    check_tokenizer(tok)
    tok.save_pretrained(out_dir)  # adds tokenizer.json; tokenizer.model stays for GGUF converters
    return tok


def save_tokenizer(tok, out_dir: str | Path, sentencepiece_model: str | Path | None = None) -> None:
    """``tok.save_pretrained(out_dir)`` plus a copy of its ``tokenizer.model`` when there is one."""
    tok.save_pretrained(out_dir)
    if sentencepiece_model is not None and Path(sentencepiece_model).is_file():
        shutil.copyfile(sentencepiece_model, Path(out_dir) / "tokenizer.model")


def check_tokenizer(tok) -> None:
    """Raise if the markers are not single special ids, or if text does not round-trip."""
    for marker in (IM_START, IM_END):
        ids = tok(marker, add_special_tokens=False).input_ids
        if len(ids) != 1 or ids[0] == tok.unk_token_id:
            raise ValueError(f"{marker} must encode to one special id, got {ids}")
        split = tok(marker, add_special_tokens=False, split_special_tokens=True).input_ids
        if ids[0] in split:
            raise ValueError(f"{marker} must stay plain text with split_special_tokens=True, got {split}")
    sample = "Scores: \\boxed{7, 3}\n  Response 1: 5 words vs 6 required; é ✓"
    ids = tok(sample, add_special_tokens=False).input_ids
    if tok.decode(ids) != sample:
        raise ValueError(f"the tokenizer does not round-trip {sample!r}: {tok.decode(ids)!r}")
