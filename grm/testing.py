"""Tiny Hugging Face format models for tests and benchmarks, built here with random weights.

No model hub is needed: a byte-level BPE tokenizer is trained with the ``tokenizers``
library on a small built-in corpus, given a ChatML-style chat template, and saved with
the model through ``save_pretrained``, so tests load it back through ``from_pretrained``
exactly as a real checkpoint is loaded. Random weights emit garbage, which is how the
invalid-sample paths get exercised for real.

Example::

    path = build_tiny_model(tmp_path / "llama", arch="llama")
    engine = TransformersEngine.load(path)
"""

from __future__ import annotations

import re
from pathlib import Path

from grm.seeds import rng
from grm.types import Completion

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]

_CORPUS = """
You are a careful judge. Read the conversation and the responses, write the criteria that
matter for this query with weights, analyse each response against them, then give every
response an integer score from 1 to 10.
Specific Criteria: 1. Correctness (weight 50%). 2. Follows the format (weight 30%).
3. Clarity (weight 20%).
Analysis: Response 1 answers the question and uses 5 words, so it meets criterion 2.
Response 2 uses 6 words instead of 5, so it fails criterion 2. Total 80% versus 50%.
Scores: \\boxed{8, 5}
[The Begin of Response 1] [The End of Response 1] [The Begin of Response 2]
#### Conversation Context #### #### Responses to be Scored ####
User: Write a sentence in uppercase that ends with a question mark and includes the word blue.
Assistant: IS THE SKY BLUE TODAY?
the quick brown fox jumps over the lazy dog 0 1 2 3 4 5 6 7 8 9 10 , . ; : ! ? ( ) { } [ ]
apple, banana, cherry, date, elderberry. What is 12 + 30? The answer is 42.
"""


def build_tokenizer(vocab_size: int = 512, corpus: str = _CORPUS):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with ChatML markers as special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([line for line in corpus.splitlines() if line.strip()] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<pad>",
        bos_token=None,
        unk_token=None,
        additional_special_tokens=["<|endoftext|>", "<|im_start|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def tiny_config(arch: str, vocab_size: int, hidden: int = 64, layers: int = 2, heads: int = 4,
                max_positions: int = 4096, **extra):
    """A small config of a known architecture (``llama``, ``qwen2`` or ``qwen3``)."""
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    configs = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}
    if arch == "qwen3":  # its head size is a field of its own (128 unless set)
        extra = {"head_dim": hidden // heads, **extra}
    if arch not in configs:
        raise ValueError(f"arch must be one of {sorted(configs)}, got {arch!r}")
    return configs[arch](
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        **extra,
    )


def build_tiny_model(path: str | Path, arch: str = "llama", seed: int = 0, hidden: int = 64,
                     layers: int = 2, heads: int = 4, vocab_size: int = 512) -> Path:
    """Write a random-weight causal LM and its tokenizer to ``path``; return the path."""
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(path)
    tokenizer = build_tokenizer(vocab_size)
    config = tiny_config(arch, len(tokenizer), hidden, layers, heads,
                         bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_meta_rm(path: str | Path, seed: int = 0, hidden: int = 64, layers: int = 2,
                       vocab_size: int = 512) -> Path:
    """Write a random-weight one-label sequence classifier (a meta RM) and its tokenizer."""
    import torch
    from transformers import AutoModelForSequenceClassification

    path = Path(path)
    tokenizer = build_tokenizer(vocab_size)
    config = tiny_config("llama", len(tokenizer), hidden, layers, num_labels=1,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


_SHOWN = re.compile(r"\[The Begin of Response (\d+)\]\s*(.*?)\s*\[The End of Response \1\]", re.S)


def shown_numbers(prompt: str) -> list[int]:
    """The first integer of each response fenced in a rendered judge prompt, in the order
    shown (5 for a response without one): what the stand-in engines score by."""
    return [int(m.group()) if (m := re.search(r"\d+", body)) else 5 for _, body in _SHOWN.findall(prompt)]


class NoisyRuleEngine:
    """A ``GenerationEngine`` standing in for a trained GRM where the tests need valid,
    varied judgments fast: sample i of a request scores each shown response by the first
    integer in its text plus noise in ``[-noise, noise]`` drawn from the stream
    ``grm.seeds.rng(seed, i)`` (the protocol's seeding contract: sample i of a request draws
    from the stream named by the request's seed and i). It records every call's requests in ``calls``."""

    model_id, revision, max_context = "noisy-rule-engine", "n0", 4096

    def __init__(self, noise: int = 3):
        self.tokenizer = build_tokenizer()
        self.noise = noise
        self.calls: list[list] = []

    def generate(self, requests):
        self.calls.append(list(requests))
        out = []
        for req in requests:
            prompt = self.tokenizer.decode(list(req.prompt_ids))
            shown = shown_numbers(prompt)
            samples = []
            for i in range(req.n):
                noise = rng(req.seed, i)
                scores = [min(10, max(1, v + noise.randint(-self.noise, self.noise))) for v in shown]
                text = ("Specific Criteria: 1. Bigger is better (weight 100%).\n\nAnalysis: by value.\n"
                        "Scores: \\boxed{" + ", ".join(map(str, scores)) + "}")
                samples.append(Completion(tuple(self.tokenizer(text, add_special_tokens=False).input_ids), text, True))
            out.append(samples)
        return out


# A pointwise prompt's one answer (template grm-english-point-v1): its position and its text.
ONE_ANSWER = re.compile(r"\[Answer (\d+)\]\n(.*?)\n\[End of Answer \1\]", re.S)


class PointEngine:
    """Judges the one answer shown: quotes it and scores it by its first integer; the
    ``broken`` answers (by text) get a judgment without scores."""

    model_id, revision, max_context = "point-engine", "p0", 4096

    def __init__(self, broken: tuple[str, ...] = ()):
        self.tokenizer = build_tokenizer()
        self.requests: list = []
        self.broken = broken

    def generate(self, requests):
        self.requests.extend(requests)
        out = []
        for req in requests:
            prompt = self.tokenizer.decode(list(req.prompt_ids))
            shown = ONE_ANSWER.findall(prompt)
            assert len(shown) == 1, "a pointwise prompt shows one answer"
            body = shown[0][1]
            number = re.search(r"\d+", body)  # none in the empty answer principles are drafted for
            score = "no box" if body in self.broken else "\\boxed{" + (number.group() if number else "5") + "}"
            text = (f'Specific Criteria:\n1. Bigger is better (100%)\nAnalysis:\nAnswer 1: "{body}" is sized.\n'
                    f"Scores: {score}")
            ids = tuple(self.tokenizer(text, add_special_tokens=False).input_ids)
            out.append([Completion(ids, text, True) for _ in range(req.n)])
        return out
