"""The generative reward model: k sampled judgments per input, parsed and aggregated.

For each input the judge draws ``k`` permutations of the responses (one seeded shuffle per
sample, against position bias), renders one prompt per distinct permutation, asks the
engine for as many samples from that prompt as permutations chose it (so each distinct
prompt is prefilled once), parses every judgment, maps its scores back to the original
response order, optionally rates each judgment with the meta RM, and aggregates
(DeepSeek-GRM, Liu et al. 2025, section 3 and 4). Two opt-in savings change how the
samples are drawn: adaptive k draws them in rounds and stops early (``grm.adaptive``), and
shared principles continue every sample from one principles draft per conversation
(``grm.shared_principles``).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import grm.defaults as defaults
from grm.adaptive import Adaptive, rounds, stop_reason
from grm.aggregation import aggregate
from grm.engine import GenerationEngine, GenerationRequest
from grm.parsing import parse_judgment, unshuffle
from grm.pretrained import JUDGES
from grm.pointwise import merge, read_expected
from grm.prompts import build_judge_content, encode_prompt, one_response, sample_permutations
from grm.seeds import mix_seed
from grm.shared_principles import DRAFT_MAX_TOKENS, DRAFT_STAGE, draft_item, draft_key, principles_prefix
from grm.templates import DEFAULT_TEMPLATE, JudgeTemplate, load_template
from grm.types import (Aggregation, AggregationOptions, Completion, Judgment, Message,
                       SamplingOptions, ScoreInput, ScoreResult, ValidationError)


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
    # [N] the order the responses are shown in; under a pointwise template (one response a
    # prompt) the one response shown, (i,)
    permutation: tuple[int, ...]
    samples: tuple[int, ...]  # which of the k samples use this prompt


@dataclass(frozen=True)
class Sample:
    """One sampled judgment: the prompt it was drawn from, the engine's output, its parse."""

    prompt: PlanPrompt
    completion: Completion  # token ids kept: RL trains on them
    judgment: Judgment  # scores mapped back to the original response order
    # Under a pointwise template, every response's (prompt, completion) in response order
    # (``prompt`` and ``completion`` are the first); the judgment merges them (``grm.pointwise``)
    parts: tuple[tuple[PlanPrompt, Completion], ...] = ()


@dataclass(frozen=True)
class Plan:
    """The distinct prompts one input needs; samples that share a permutation share a prompt."""

    item: ScoreInput
    sampling: SamplingOptions
    aggregation: AggregationOptions
    prompts: tuple[PlanPrompt, ...]
    # Whether anyone still waits for this input (set by a scheduler); the engine stops the
    # input's rows mid-pass once it says False. None: always wanted.
    wanted: Callable[[], bool] | None = field(default=None, compare=False, repr=False)

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p.ids) for p in self.prompts)

    @property
    def cost(self) -> tuple[int, int]:
        """(tokens, sequences) the engine holds for this plan: each of the k sequences keeps
        its prompt plus its whole generation budget, the bound a scheduler packs against."""
        tokens = sum(len(p.samples) * (len(p.ids) + self.sampling.max_new_tokens) for p in self.prompts)
        return tokens, sum(len(p.samples) for p in self.prompts)


class GenerativeRewardModel:
    """Scores responses with k sampled principle-critique-score judgments and voting."""

    def __init__(self, engine: GenerationEngine, template: JudgeTemplate = DEFAULT_TEMPLATE,
                 meta_rm: MetaScorer | None = None):
        self.engine = engine
        self.template = template
        self.meta_rm = meta_rm

    @classmethod
    def load(cls, path: str, *, meta_rm: str | None = None, template: str | JudgeTemplate | None = None,
             device: str | None = None, engine: GenerationEngine | None = None,
             prefix_cache_mb: float = 512) -> "GenerativeRewardModel":
        """Load a Hugging Face causal LM (local path or hub id) and, optionally, a meta RM.

        The template is, in order: the one given; the one the checkpoint was trained with
        (``grm_template.json`` beside its weights, see ``save_template``); the default.
        ``engine`` samples instead of the checkpoint's weights in-process (a remote server
        serving them); the checkpoint then gives only the template. ``prefix_cache_mb`` bounds
        the in-process engine's prefix cache (``grm.prefix_cache``); 0 turns it off.
        """
        from grm.meta_rm import MetaRewardModel  # torch: importing grm stays light
        from grm.prefix_cache import PrefixCacheConfig
        from grm.transformers_engine import TransformersEngine

        if prefix_cache_mb < 0:
            raise ValueError(f"prefix_cache_mb must be >= 0 (0 = off), got {prefix_cache_mb}")
        cache = PrefixCacheConfig(max_bytes=int(prefix_cache_mb * 2**20)) if prefix_cache_mb else None
        engine = engine or TransformersEngine.load(path, device=device, prefix_cache=cache)
        if isinstance(template, str):
            template = load_template(template)
        folder = Path(JUDGES[path]) if path in JUDGES and not Path(path).exists() else Path(path)  # a judge's name
        if template is None and (folder / CHECKPOINT_TEMPLATE).is_file():
            template = load_template(folder / CHECKPOINT_TEMPLATE)
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
              k: int = defaults.K, temperature: float = defaults.TEMPERATURE, top_p: float = defaults.TOP_P,
              max_new_tokens: int = defaults.MAX_NEW_TOKENS,
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
        Under a pointwise template every response is one prompt that all k samples share.
        """
        if self.template.pointwise:
            return self._plan_pointwise(item, sampling, aggregation, permutations, suffix)
        aggregation.check(sampling, meta_rm=self.meta_rm is not None)
        if permutations is None:
            perms = sample_permutations(len(item.responses), sampling.k, sampling.seed, sampling.shuffle)
        elif len(permutations) != sampling.k:
            raise ValueError(f"permutations must give one order per sample ({sampling.k}), got {len(permutations)}")
        else:
            perms = [tuple(p) for p in permutations]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, perm in enumerate(perms):
            groups.setdefault(tuple(perm), []).append(i)
        prompts = [self._prompt(build_judge_content(self.template, item, perm) + suffix, perm, samples)
                   for perm, samples in groups.items()]
        return Plan(item, sampling, aggregation, tuple(prompts))

    def _plan_pointwise(self, item: ScoreInput, sampling: SamplingOptions, aggregation: AggregationOptions,
                        permutations: Sequence[Sequence[int]] | None, suffix: str) -> Plan:
        if aggregation.aggregation is Aggregation.META_VOTING:
            raise ValidationError("aggregation.method", f"META_VOTING rates judgments of all responses at once; "
                                  f"the template {self.template.version} judges each response alone (pointwise)")
        aggregation.check(sampling, meta_rm=self.meta_rm is not None)
        if permutations is not None:
            raise ValueError(f"the template {self.template.version} shows one response a prompt (pointwise): "
                             "there is no order of responses to give")
        single = (0,)
        prompts = [self._prompt(build_judge_content(self.template, one_response(item, i), single) + suffix, (i,),
                                range(sampling.k)) for i in range(len(item.responses))]
        return Plan(item, sampling, aggregation, tuple(prompts))

    def _prompt(self, content: str, shown: Sequence[int], samples: Sequence[int]) -> PlanPrompt:
        ids = tuple(encode_prompt(self.engine.tokenizer, content))
        if len(ids) >= self.max_context:
            raise InputTooLong(f"the rendered prompt has {len(ids)} tokens; the model's context "
                               f"is {self.max_context} tokens, leaving no room to generate")
        return PlanPrompt(content, ids, tuple(shown), tuple(samples))

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
        heads = self._shared_principles(plans)
        return [samples for samples, _ in self._draw(plans, [range(p.sampling.k) for p in plans], heads)]

    def _draw(self, plans: Sequence[Plan], wanted: Sequence[range], heads: Sequence[tuple[int, ...]],
              ) -> list[tuple[list[Sample], int]]:
        """Samples ``wanted[j]`` of plan j from one engine call, each continuing ``heads[j]``:
        per plan (samples in index order, prompt tokens sent). A distinct prompt is one request
        seeded by the plan's seed and the first of its samples drawn here, so drawing all k at
        once is exactly ``sample``; a later adaptive round starts its own streams."""
        requests, owners = [], []
        for j, (plan, indices, head) in enumerate(zip(plans, wanted, heads)):
            for prompt in plan.prompts:
                chosen = tuple(i for i in prompt.samples if i in indices)
                if chosen:
                    requests.append(GenerationRequest(
                        prompt.ids + head, n=len(chosen), temperature=plan.sampling.temperature,
                        top_p=plan.sampling.top_p, max_new_tokens=plan.sampling.max_new_tokens,
                        seed=mix_seed(plan.sampling.seed, chosen[0]), wanted=plan.wanted))
                    owners.append((j, prompt, chosen))
        outputs = self.engine.generate(requests) if requests else []
        texts = [self.engine.tokenizer.decode(h, skip_special_tokens=True) if h else "" for h in heads]
        by_index: list[dict[int, list[tuple[PlanPrompt, Completion]]]] = [{} for _ in plans]
        sent = [0] * len(plans)
        for (j, prompt, chosen), request, completions in zip(owners, requests, outputs):
            sent[j] += len(request.prompt_ids)
            for index, completion in zip(chosen, completions):
                by_index[j].setdefault(index, []).append((prompt, completion))
        drawn = [[_sample(plan, found[i], text) for i in indices] for plan, found, indices, text
                 in zip(plans, by_index, wanted, texts)]
        if self.template.pointwise and callable(getattr(self.engine, "next_token_logprobs", None)):
            drawn = read_expected(self.engine, drawn, heads)  # expected scores (grm.pointwise)
        return list(zip(drawn, sent))

    def _shared_principles(self, plans: Sequence[Plan]) -> list[tuple[int, ...]]:
        """Per plan, the principles tokens its samples continue from (``grm.shared_principles``);
        () for plans without the option. One draft per distinct key, all in one engine call."""
        keys = [draft_key(p.item, p.sampling) for p in plans]
        first = {key: plan for key, plan in zip(keys, plans) if key is not None}
        if not first:
            return [()] * len(plans)
        requests = []
        for plan in first.values():
            shown = draft_item(plan.item)  # pointwise: the principles for one response stand for each
            shown = one_response(shown, 0) if self.template.pointwise else shown
            ids = tuple(encode_prompt(self.engine.tokenizer, build_judge_content(
                self.template, shown, range(len(shown.responses)))))
            requests.append(GenerationRequest(
                ids, n=1, temperature=plan.sampling.temperature, top_p=plan.sampling.top_p,
                max_new_tokens=min(DRAFT_MAX_TOKENS, plan.sampling.max_new_tokens),
                seed=mix_seed(plan.sampling.seed, DRAFT_STAGE)))
        drafts = {key: principles_prefix(self.engine.tokenizer, out[0].token_ids)
                  for key, out in zip(first, self.engine.generate(requests))}
        heads = []
        for key, plan in zip(keys, plans):
            head = drafts.get(key, ()) if key is not None else ()
            # A head that leaves no room to generate is dropped: the samples write their own.
            fits = all(len(p.ids) + len(head) < self.max_context for p in plan.prompts)
            heads.append(head if fits else ())
        return heads

    def run_plans(self, plans: Sequence[Plan]) -> list[ScoreResult]:
        """Sample, rate (meta voting) and aggregate every plan.

        Plans with adaptive k draw in rounds (``grm.adaptive.rounds``): each engine call
        draws the next round of every plan still open, and a plan leaves once
        ``grm.adaptive.stop_reason`` says so. Other plans draw all k in the first call.
        """
        heads = self._shared_principles(plans)
        schedule = [rounds(p.sampling.k) if p.sampling.adaptive != Adaptive.OFF else [(0, p.sampling.k)]
                    for p in plans]
        drawn: list[list[Sample]] = [[] for _ in plans]
        sent, reasons = [0] * len(plans), [None] * len(plans)
        while todo := [j for j, r in enumerate(reasons) if r is None]:
            step = [range(*schedule[j][_done(drawn[j], schedule[j])]) for j in todo]
            out = self._draw([plans[j] for j in todo], step, [heads[j] for j in todo])
            for j, (samples, tokens) in zip(todo, out):
                drawn[j].extend(samples)
                sent[j] += tokens
                s = plans[j].sampling
                reason = stop_reason(s.adaptive, [x.judgment.scores for x in drawn[j]], s.k, s.adaptive_z)
                reasons[j] = "" if s.adaptive == Adaptive.OFF else str(reason) if reason else None
        return [dataclasses.replace(self._finish(plan, samples), prompt_tokens=tokens, stop_reason=reason)
                for plan, samples, tokens, reason in zip(plans, drawn, sent, reasons)]

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


def _done(samples: list[Sample], schedule: list[tuple[int, int]]) -> int:
    """The index of the next round: the rounds already drawn end at ``len(samples)``."""
    return sum(end <= len(samples) for _, end in schedule)


def _sample(plan: Plan, parts: list[tuple[PlanPrompt, Completion]], head: str) -> Sample:
    """One sample from its (prompt, completion) parts: one prompt that shows every response,
    or under a pointwise template one per response, their judgments merged."""
    n = len(plan.item.responses)
    if len(parts) == 1 and len(parts[0][0].permutation) == n:
        prompt, completion = parts[0]
        return Sample(prompt, completion, _judgment(completion, n, prompt.permutation, head))
    parts = sorted(parts, key=lambda part: part[0].permutation)
    judgment = merge([_judgment(completion, 1, (0,), head) for _, completion in parts])
    return Sample(parts[0][0], parts[0][1], judgment, tuple(parts))


def _judgment(completion: Completion, n: int, permutation: tuple[int, ...], head: str = "") -> Judgment:
    """``head``: shared principles the completion continued from, part of the judgment's text;
    ``num_tokens`` counts only what this sample generated."""
    text = head + completion.text
    parsed = parse_judgment(text, n, finished=completion.finished)
    scores = unshuffle(parsed.scores, permutation) if parsed.scores is not None else None
    return Judgment(text=text, principles=parsed.principles, critique=parsed.critique,
                    scores=scores, permutation=permutation, reason=parsed.reason,
                    num_tokens=len(completion.token_ids))


def _per_item(option, count: int, name: str) -> list:
    if isinstance(option, (SamplingOptions, AggregationOptions)):
        return [option] * count
    option = list(option)
    if len(option) != count:
        raise ValueError(f"{name} must be one option or one per item ({count}), got {len(option)}")
    return option
