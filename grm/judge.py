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
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

from grm.aggregation import aggregate
from grm.engine import GenerationEngine, GenerationRequest
from grm.parsing import parse_judgment, unshuffle
from grm.prompts import build_judge_content, encode_prompt, sample_permutations
from grm.seeds import mix_seed
from grm.templates import DEFAULT_TEMPLATE, JudgeTemplate, load_template
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
    revision: str  # the weights by content; part of a result's cache identity

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """(judge prompt text, judgment text) -> probability the judgment is correct."""
        ...


@dataclass(frozen=True)
class PlanPrompt:
    """One distinct prompt of a plan and the samples drawn from it."""

    content: str  # the judge's user message
    ids: tuple[int, ...]  # [L] rendered and tokenized
    permutation: tuple[int, ...]  # [N] the order the responses are shown in
    samples: tuple[int, ...]  # which of the k samples use this prompt


@dataclass(frozen=True)
class Sample:
    """One sampled judgment: the prompt it was drawn from, the engine's output, its parse."""

    prompt: PlanPrompt
    completion: Completion  # token ids kept: RL trains on them
    judgment: Judgment  # scores mapped back to the original response order


@dataclass(frozen=True)
class Plan:
    """The distinct prompts one input needs; samples that share a permutation share a prompt."""

    item: ScoreInput
    sampling: SamplingOptions
    aggregation: AggregationOptions
    prompts: tuple[PlanPrompt, ...]

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p.ids) for p in self.prompts)

    @property
    def cost(self) -> tuple[int, int]:
        """(tokens, sequences) the engine holds for this plan: each of the k sequences keeps
        its prompt plus its whole generation budget, the bound a scheduler packs against."""
        tokens = sum(len(p.samples) * (len(p.ids) + self.sampling.max_new_tokens) for p in self.prompts)
        return tokens, self.sampling.k


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
        from grm.meta_rm import MetaRewardModel  # torch: importing grm stays light
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

    def cache_identity(self, aggregation: AggregationOptions = AggregationOptions()) -> dict[str, str]:
        """What names this judge's results, apart from the input and its options: the model,
        its weights by content, the template, and under meta voting the meta RM's weights too.
        A result cache keys on this, so new weights or a new template never read old scores."""
        revision = self.revision
        if aggregation.aggregation is Aggregation.META_VOTING and self.meta_rm is not None:
            revision += "+meta:" + self.meta_rm.revision
        return {"model_id": self.model_id, "revision": revision, "template_version": self.template.version}

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
             aggregation: AggregationOptions = AggregationOptions(), *,
             permutations: Sequence[Sequence[int]] | None = None, suffix: str = "") -> Plan:
        """Render and tokenize the distinct prompts of one input; raise InputTooLong if one cannot fit.

        ``permutations`` (one per sample) replaces the seeded shuffles and ``suffix`` is
        appended to every prompt; training uses both for hinted sampling, serving neither.
        """
        if aggregation.aggregation is Aggregation.META_VOTING and self.meta_rm is None:
            raise ValueError("aggregation meta_voting needs a meta RM; load one with meta_rm=...")
        if permutations is None:
            perms = sample_permutations(len(item.responses), sampling.k, sampling.seed, sampling.shuffle)
        elif len(permutations) != sampling.k:
            raise ValueError(f"permutations must give one order per sample ({sampling.k}), got {len(permutations)}")
        else:
            perms = [tuple(p) for p in permutations]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, perm in enumerate(perms):
            groups.setdefault(tuple(perm), []).append(i)
        prompts = []
        for perm, samples in groups.items():
            content = build_judge_content(self.template, item, perm) + suffix
            ids = tuple(encode_prompt(self.engine.tokenizer, content))
            if len(ids) >= self.max_context:
                raise InputTooLong(f"the rendered prompt has {len(ids)} tokens; the model's context "
                                   f"is {self.max_context} tokens, leaving no room to generate")
            prompts.append(PlanPrompt(content, ids, perm, tuple(samples)))
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

    def sample(self, plans: Sequence[Plan]) -> list[list[Sample]]:
        """Every plan's k samples from one engine call, parsed; per plan, in sample order.

        The one place the judge is sampled: serving and evaluation aggregate these, RFT
        filters them, RL trains on their token ids. Each distinct prompt is one request for
        as many samples as chose it, seeded by the plan's seed and its first sample.
        """
        requests = [
            GenerationRequest(p.ids, n=len(p.samples), temperature=plan.sampling.temperature,
                              top_p=plan.sampling.top_p, max_new_tokens=plan.sampling.max_new_tokens,
                              seed=mix_seed(plan.sampling.seed, p.samples[0]))
            for plan in plans for p in plan.prompts
        ]
        outputs = iter(self.engine.generate(requests)) if requests else iter(())
        sampled = []
        for plan in plans:
            by_index: list[Sample | None] = [None] * plan.sampling.k
            for prompt in plan.prompts:
                for index, completion in zip(prompt.samples, next(outputs)):
                    judgment = _judgment(completion, len(plan.item.responses), prompt.permutation)
                    by_index[index] = Sample(prompt, completion, judgment)
            sampled.append(by_index)
        return sampled

    def run_plans(self, plans: Sequence[Plan]) -> list[ScoreResult]:
        """Sample every plan in one engine call, then rate (meta voting) and aggregate each."""
        return [self._finish(plan, samples) for plan, samples in zip(plans, self.sample(plans))]

    def _finish(self, plan: Plan, samples: list[Sample]) -> ScoreResult:
        judgments = [s.judgment for s in samples]
        if plan.aggregation.aggregation is Aggregation.META_VOTING:
            judgments = self._rate(judgments, [s.prompt.content for s in samples])
        result = aggregate(judgments, len(plan.item.responses), plan.aggregation.aggregation,
                           plan.aggregation.k_meta, seed=plan.sampling.seed)
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
