"""The generative reward model: k sampled judgments per input, parsed and aggregated.

For each input the judge draws ``k`` permutations of the responses (one seeded shuffle per
sample, against position bias), renders one prompt per distinct permutation, asks the
engine for as many samples from that prompt as permutations chose it (so each distinct
prompt is prefilled once), parses every judgment, maps its scores back to the original
response order, optionally rates each judgment with the meta RM, and aggregates
(DeepSeek-GRM, Liu et al. 2025, section 3 and 4).

Example::

    grm = GenerativeRewardModel.load("path/to/checkpoint")
    result = grm.score("What is 2+2?", ["4", "5"], k=8, seed=1)
    result.rewards      # (8.5, 2.0): mean score per response over valid samples
    result.vote_sums    # (68, 16)
    result.judgments[0].critique
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

from grm.aggregation import aggregate
from grm.engine import GenerationEngine, GenerationRequest
from grm.parsing import parse_judgment, unshuffle
from grm.prompts import build_judge_content, encode_prompt, sample_permutations
from grm.templates import DEFAULT_TEMPLATE, JudgeTemplate
from grm.types import (Aggregation, AggregationOptions, Completion, Judgment, Message,
                       SamplingOptions, ScoreInput, ScoreResult)


CHECKPOINT_TEMPLATE = "grm_template.json"  # the template a checkpoint was trained with


def save_template(template: JudgeTemplate, checkpoint_dir: str | Path) -> Path:
    """Store ``template`` beside a checkpoint so ``GenerativeRewardModel.load`` uses it."""
    path = Path(checkpoint_dir) / CHECKPOINT_TEMPLATE
    path.write_text(json.dumps(template.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


class InputTooLong(ValueError):
    """A rendered prompt leaves no room to generate within the model's context."""


class MetaScorer(Protocol):
    model_id: str

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """(judge prompt text, judgment text) -> probability the judgment is correct."""
        ...


@dataclass(frozen=True)
class _Prompt:
    content: str  # the judge's user message
    ids: tuple[int, ...]  # [L] rendered and tokenized
    permutation: tuple[int, ...]  # [N]
    samples: tuple[int, ...]  # which of the k samples use this prompt


@dataclass(frozen=True)
class Plan:
    """The distinct prompts one input needs; samples that share a permutation share a prompt."""

    item: ScoreInput
    sampling: SamplingOptions
    aggregation: AggregationOptions
    prompts: tuple[_Prompt, ...]

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p.ids) for p in self.prompts)

    @property
    def max_prompt_len(self) -> int:
        return max(len(p.ids) for p in self.prompts)


def _mix_seed(seed: int, salt: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{salt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class GenerativeRewardModel:
    """Scores responses with k sampled principle-critique-score judgments and voting."""

    def __init__(self, engine: GenerationEngine, template: JudgeTemplate = DEFAULT_TEMPLATE,
                 meta_rm: MetaScorer | None = None):
        self.engine = engine
        self.template = template
        self.meta_rm = meta_rm

    @classmethod
    def load(cls, path: str, *, meta_rm: str | None = None, template: str | JudgeTemplate | None = None,
             device: str | None = None) -> "GenerativeRewardModel":
        """Load a Hugging Face causal LM (local path or hub id) and, optionally, a meta RM.

        The template is, in order: the one given; the one the checkpoint was trained with
        (``grm_template.json`` beside its weights, see ``save_template``); the default.
        """
        from grm.meta_rm import MetaRewardModel
        from grm.templates import load_template
        from grm.transformers_engine import TransformersEngine

        engine = TransformersEngine.load(path, device=device)
        if isinstance(template, str):
            template = load_template(template)
        if template is None and (Path(path) / CHECKPOINT_TEMPLATE).is_file():
            template = load_template(Path(path) / CHECKPOINT_TEMPLATE)
        meta = MetaRewardModel.load(meta_rm, device=device) if meta_rm else None
        return cls(engine, template or DEFAULT_TEMPLATE, meta)

    @property
    def model_id(self) -> str:
        return self.engine.model_id

    @property
    def revision(self) -> str:
        return self.engine.revision

    @property
    def max_context(self) -> int:
        return self.engine.max_context

    def score(self, conversation: str | Sequence[Message | dict], responses: Sequence[str], *,
              k: int = 8, temperature: float = 0.5, top_p: float = 1.0, max_new_tokens: int = 512,
              seed: int = 0, shuffle: bool = True, aggregation: str = "voting",
              k_meta: int | None = None, principles: str | None = None,
              reference: str | None = None) -> ScoreResult:
        """Score ``responses`` to the conversation (or a bare query string)."""
        item = ScoreInput(conversation, responses, principles=principles, reference=reference)
        sampling = SamplingOptions(k=k, temperature=temperature, top_p=top_p,
                                   max_new_tokens=max_new_tokens, seed=seed, shuffle=shuffle)
        return self.score_batch([item], sampling, AggregationOptions(Aggregation(aggregation), k_meta))[0]

    def plan(self, item: ScoreInput, sampling: SamplingOptions,
             aggregation: AggregationOptions = AggregationOptions()) -> Plan:
        """Render and tokenize the distinct prompts of one input; raise InputTooLong if one cannot fit."""
        if aggregation.aggregation is Aggregation.META_VOTING and self.meta_rm is None:
            raise ValueError("aggregation meta_voting needs a meta RM; load one with meta_rm=...")
        perms = sample_permutations(len(item.responses), sampling.k, sampling.seed, sampling.shuffle)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, perm in enumerate(perms):
            groups.setdefault(tuple(perm), []).append(i)
        prompts = []
        for perm, samples in groups.items():
            content = build_judge_content(self.template, item, perm)
            ids = tuple(encode_prompt(self.engine.tokenizer, content))
            if len(ids) >= self.max_context:
                raise InputTooLong(f"the rendered prompt has {len(ids)} tokens; the model's context "
                                   f"is {self.max_context} tokens, leaving no room to generate")
            prompts.append(_Prompt(content, ids, perm, tuple(samples)))
        return Plan(item, sampling, aggregation, tuple(prompts))

    def score_batch(self, items: Sequence[ScoreInput],
                    sampling: SamplingOptions | Sequence[SamplingOptions] = SamplingOptions(),
                    aggregation: AggregationOptions | Sequence[AggregationOptions] = AggregationOptions(),
                    ) -> list[ScoreResult]:
        """Score many inputs in one engine pass; options may be shared or given per input."""
        samplings = _per_item(sampling, len(items), "sampling")
        aggregations = _per_item(aggregation, len(items), "aggregation")
        plans = [self.plan(it, s, a) for it, s, a in zip(items, samplings, aggregations)]
        return self.run_plans(plans)

    def run_plans(self, plans: Sequence[Plan]) -> list[ScoreResult]:
        """Generate every plan's samples in one engine call, then parse and aggregate each."""
        requests = [
            GenerationRequest(p.ids, n=len(p.samples), temperature=plan.sampling.temperature,
                              top_p=plan.sampling.top_p, max_new_tokens=plan.sampling.max_new_tokens,
                              seed=_mix_seed(plan.sampling.seed, p.samples[0]))
            for plan in plans for p in plan.prompts
        ]
        outputs = iter(self.engine.generate(requests)) if requests else iter(())
        return [self._finish(plan, [next(outputs) for _ in plan.prompts]) for plan in plans]

    def _finish(self, plan: Plan, outputs: list[list[Completion]]) -> ScoreResult:
        n, k = len(plan.item.responses), plan.sampling.k
        judgments: list[Judgment | None] = [None] * k
        contents: list[str] = [""] * k
        for prompt, completions in zip(plan.prompts, outputs):
            for sample, completion in zip(prompt.samples, completions):
                judgments[sample] = _judgment(completion, n, prompt.permutation)
                contents[sample] = prompt.content
        if plan.aggregation.aggregation is Aggregation.META_VOTING:
            judgments = self._rate(judgments, contents)
        result = aggregate(judgments, n, plan.aggregation.aggregation, plan.aggregation.k_meta,
                           seed=plan.sampling.seed)
        return dataclasses.replace(result, prompt_tokens=plan.prompt_tokens,
                                   completion_tokens=sum(j.num_tokens for j in judgments))

    def _rate(self, judgments: list[Judgment], contents: list[str]) -> list[Judgment]:
        """Attach the meta RM's rating to every valid judgment (invalid ones never vote)."""
        valid = [i for i, j in enumerate(judgments) if j.valid]
        ratings = self.meta_rm.score([(contents[i], judgments[i].text) for i in valid]) if valid else []
        rated = list(judgments)
        for i, r in zip(valid, ratings):
            rated[i] = dataclasses.replace(judgments[i], meta_score=float(r))
        return rated


def _judgment(completion: Completion, n: int, permutation: tuple[int, ...]) -> Judgment:
    parsed = parse_judgment(completion.text, n, finished=completion.finished)
    scores = unshuffle(parsed.scores, permutation) if parsed.scores is not None else None
    return Judgment(text=completion.text, principles=parsed.principles, critique=parsed.critique,
                    scores=scores, permutation=permutation, reason=parsed.reason,
                    num_tokens=len(completion.token_ids))


def _per_item(option, count: int, name: str) -> list:
    if isinstance(option, (SamplingOptions, AggregationOptions)):
        return [option] * count
    option = list(option)
    if len(option) != count:
        raise ValueError(f"{name} must be one option or one per item ({count}), got {len(option)}")
    return option
