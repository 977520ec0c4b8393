"""Rejective fine-tuning (RFT), SPCT's first stage (Liu et al. 2025, section 3.2).

For every training prompt the current GRM samples 3 judgments (each with its own
response order). A judgment is rejected when its scores do not put the labelled best
response strictly on top (for one response: when its score differs from the label);
prompts whose samples are ALL correct are dropped as too easy. What is kept is the
fine-tuning data. Hinted sampling (optional) adds one sample per prompt whose prompt
says which response is best; it is kept only if it parses, ranks as the label says and
never refers to the hint (``mentions_hint``), and it is trained on WITHOUT the hint (the
paper notes that hints can teach shortcuts, so it is off by default).

Example::

    groups = sample_groups(grm, items, k=3, temperature=1.0, seed=0)
    kept, stats = rft_filter(groups)      # stats: prompts, dropped_all_correct, kept, ...
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from grm.seeds import mix_seed
from grm.types import SamplingOptions
from spct.data import LabeledItem, is_correct

RFT_SAMPLES = 3  # trajectories per prompt (paper)
HINT = "\n\nHint: the best response is Response {i}."
# A judgment that leans on its hint instead of the responses: it names the hint, says in the
# first person that it was told, or copies the hint's own sentence word for word (with its
# "Hint:" label or as a sentence of its own). Trained on without the hint, such text would
# teach the judge to cite a hint it never gets. Ordinary judging words ("is given a score",
# "as noted above", "Response 2 is the best response") are not traces.
_HINT_TRACES = re.compile(
    r"\bhint(s|ed)?\b|\bI(?:'ve| have| was| am|'m)? (?:been )?(?:told|informed)\b"
    r"|(?:^|[.!?]\s+)the best response is Response \d+\.", re.IGNORECASE | re.MULTILINE)


def mentions_hint(text: str) -> bool:
    """Whether a hinted judgment refers to its hint (and so must not be trained on)."""
    return _HINT_TRACES.search(text) is not None


@dataclass(frozen=True)
class Trajectory:
    """One sampled judgment of one prompt, with the verdict of the rejection rule."""

    item: int  # index into the items that were sampled
    permutation: tuple[int, ...]  # [N] the order the responses were shown in
    text: str  # the judgment as generated
    scores: tuple[int, ...] | None  # [N] original order; None when unparseable
    correct: bool
    hinted: bool = False


def sample_groups(grm, items: Sequence[LabeledItem], k: int = RFT_SAMPLES, temperature: float = 1.0,
                  max_new_tokens: int = 256, seed: int = 0, batch_size: int = 16) -> list[list[Trajectory]]:
    """``k`` judgments per item from ``grm`` (a GenerativeRewardModel), judged by the rule."""
    if grm.template.pointwise:  # its judgments are merged from one prompt per response: no one text to train on
        raise ValueError(f"RFT trains on judgments of all responses at once; {grm.template.version} is pointwise")
    groups = []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        options = [SamplingOptions(k=k, temperature=temperature, max_new_tokens=max_new_tokens,
                                   seed=mix_seed(seed, start + i)) for i in range(len(chunk))]
        for i, (labeled, result) in enumerate(zip(chunk, grm.score_batch([it.item for it in chunk], options))):
            groups.append([Trajectory(start + i, j.permutation, j.text, j.scores, is_correct(j.scores, labeled))
                           for j in result.judgments])
    return groups


def rft_filter(groups: Sequence[Sequence[Trajectory]]) -> tuple[list[Trajectory], dict]:
    """Keep the correct trajectories of prompts that are not all-correct (the paper's rule).

    Hinted trajectories never make a prompt "all correct"; a correct hinted one is kept.
    """
    kept: list[Trajectory] = []
    dropped = 0
    for group in groups:
        plain = [t for t in group if not t.hinted]
        if plain and all(t.correct for t in plain):
            dropped += 1
            continue
        kept += [t for t in group if t.correct]
    samples = sum(len(g) for g in groups)
    stats = {"prompts": len(groups), "samples": samples, "dropped_all_correct": dropped, "kept": len(kept),
             "sample_accuracy": round(sum(t.correct for g in groups for t in g) / max(1, samples), 4),
             "parse_rate": round(sum(t.scores is not None for g in groups for t in g) / max(1, samples), 4)}
    return kept, stats


def hinted_samples(grm, items: Sequence[LabeledItem], temperature: float = 1.0, max_new_tokens: int = 256,
                   seed: int = 0) -> list[Trajectory]:
    """One judgment per item sampled with a hint naming the best response (shown position)."""
    plans = []
    for i, labeled in enumerate(items):
        n = len(labeled.item.responses)
        perm = tuple(range(n))[::-1] if i % 2 else tuple(range(n))  # alternate orders, no position cue
        sampling = SamplingOptions(k=1, temperature=temperature, max_new_tokens=max_new_tokens,
                                   seed=mix_seed(seed, i))
        plans.append(grm.plan(labeled.item, sampling, permutations=[perm],
                              suffix=HINT.format(i=perm.index(labeled.best) + 1)))
    out = []
    for i, (labeled, [s]) in enumerate(zip(items, grm.sample(plans))):
        scores, text = s.judgment.scores, s.completion.text
        correct = is_correct(scores, labeled) and not mentions_hint(text)
        out.append(Trajectory(i, s.prompt.permutation, text, scores, correct, hinted=True))
    return out
