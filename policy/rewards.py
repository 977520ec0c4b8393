"""Reward backends for the GRPO trainer: the reward service, an in-process GRM, a function.

A backend gets one training step's rollouts at once, as groups: ``prompts[i]`` and the
completions ``groups[i]`` sampled for it. It returns one reward per completion, in the
same shape, with ``None`` for a completion that could not be scored (no valid judgment,
an input the service refused). The trainer leaves ``None`` out of its group's baseline
and gives it advantage 0; a backend never turns a failure into a number.

By default the GRM judges a prompt's whole group as one input (N = G responses, one
generation per sample compares them all, as DeepSeek-GRM is built to);
``per_response=True`` judges each completion alone (N = 1).

Example::

    backend = ServiceReward("127.0.0.1:50051", k=4, temperature=0.5, max_wait_s=600)
    rewards = backend.score_groups(["Name a prime."], [["7", "9", "8", "11"]])   # [[r, r, r, r]]

When the service is unreachable (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED),
``ServiceReward`` waits and retries with exponential backoff for up to ``max_wait_s``,
then raises ``RewardUnavailable``: the run stops with a clear error instead of training
on made-up rewards.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import grpc

from grm.grouping import Group, RowScore, spread_back
from grm.types import AggregationOptions, Message, SamplingOptions, ScoreInput
from services.client import RewardClient, outcome

log = logging.getLogger(__name__)

Conversation = str | Sequence[Message | dict]
Rewards = list[list[float | None]]

# Codes that mean "the service is not answering now", as opposed to "this request is wrong".
WAIT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                        grpc.StatusCode.RESOURCE_EXHAUSTED})


class RewardUnavailable(RuntimeError):
    """The reward backend could not be reached within the configured wait."""


class RewardBackend(Protocol):
    name: str

    def score_groups(self, prompts: Sequence[Conversation], groups: Sequence[Sequence[str]]) -> Rewards:
        """One reward (or None) per completion, shaped like ``groups``."""
        ...


def _check_shapes(prompts: Sequence[Conversation], groups: Sequence[Sequence[str]]) -> None:
    if len(prompts) != len(groups):
        raise ValueError(f"prompts ({len(prompts)}) and groups ({len(groups)}) must have the same length")
    for i, g in enumerate(groups):
        if not g:
            raise ValueError(f"groups[{i}] is empty")


def _as_groups(prompts: Sequence[Conversation], groups: Sequence[Sequence[str]],
               per_response: bool) -> list[Group]:
    """One GRM input per group, or with ``per_response`` one per completion; rows are the
    completions numbered row-major (``grm.grouping.spread_back`` maps results back)."""
    out: list[Group] = []
    start = 0
    for p, g in zip(prompts, groups):
        rows = range(start, start + len(g))
        if per_response:
            out += [Group(ScoreInput(p, [c]), (i,)) for i, c in zip(rows, g)]
        else:
            out.append(Group(ScoreInput(p, list(g)), tuple(rows)))
        start += len(g)
    return out


def _rewards(scores: Sequence[RowScore], groups: Sequence[Sequence[str]]) -> Rewards:
    flat = iter(scores)
    return [[next(flat).reward for _ in g] for g in groups]


class FunctionReward:
    """A plain Python reward: ``fn(prompt, completion) -> float | None``."""

    def __init__(self, fn: Callable[[Conversation, str], float | None], name: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "function")

    def score_groups(self, prompts: Sequence[Conversation], groups: Sequence[Sequence[str]]) -> Rewards:
        _check_shapes(prompts, groups)
        return [[_finite(self.fn(p, c)) for c in g] for p, g in zip(prompts, groups)]


def _finite(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"reward function returned {value}; return None for an unscorable completion")
    return value


class LocalGRMReward:
    """A ``GenerativeRewardModel`` in this process: one ``score_batch`` per step."""

    def __init__(self, grm, sampling: SamplingOptions = SamplingOptions(),
                 aggregation: AggregationOptions = AggregationOptions(), per_response: bool = False):
        self.grm, self.sampling, self.aggregation, self.per_response = grm, sampling, aggregation, per_response
        self.name = f"grm:{grm.engine.model_id or 'local'}"

    def score_groups(self, prompts: Sequence[Conversation], groups: Sequence[Sequence[str]]) -> Rewards:
        _check_shapes(prompts, groups)
        items = _as_groups(prompts, groups, self.per_response)
        results = self.grm.score_batch([g.item for g in items], self.sampling, self.aggregation)
        return _rewards(spread_back(items, results, sum(map(len, groups))), groups)


class ServiceReward:
    """The reward service over gRPC: one ``ScoreBatch`` call per step (the client splits it
    past the server's ``max_batch_items``), waiting out outages for up to ``max_wait_s``.

    ``options`` go to every call: k, temperature, top_p, max_new_tokens, seed, aggregation,
    k_meta, cache_policy (see ``services.client.RewardClient.score``).
    """

    def __init__(self, target: str, *, per_response: bool = False, max_wait_s: float = 600.0,
                 timeout_s: float = 300.0, initial_backoff_s: float = 1.0, max_backoff_s: float = 30.0,
                 **options):
        if max_wait_s < 0 or timeout_s <= 0 or not 0 < initial_backoff_s <= max_backoff_s:
            raise ValueError("ServiceReward needs max_wait_s >= 0, timeout_s > 0 and "
                             f"0 < initial_backoff_s <= max_backoff_s, got {max_wait_s}, {timeout_s}, "
                             f"{initial_backoff_s}, {max_backoff_s}")
        self.target, self.per_response, self.max_wait_s = target, per_response, max_wait_s
        self.timeout_s, self.initial_backoff_s, self.max_backoff_s = timeout_s, initial_backoff_s, max_backoff_s
        self.options = options
        self.client = RewardClient(target, timeout_s=timeout_s)
        self.name = f"service:{target}"
        # Counters for the trainer's log: item errors (a refused input) and calls waited out.
        self.stats = {"calls": 0, "item_errors": 0, "waits": 0}

    def score_groups(self, prompts: Sequence[Conversation], groups: Sequence[Sequence[str]]) -> Rewards:
        _check_shapes(prompts, groups)
        items = _as_groups(prompts, groups, self.per_response)
        replies = self._with_wait(lambda: self.client.score_batch([g.item for g in items], **self.options))
        self.stats["calls"] += 1
        outcomes = [outcome(r) for r in replies]  # a ScoreResult, or "CODE: message" for a refused input
        for i, (group, o) in enumerate(zip(items, outcomes)):
            if isinstance(o, str):  # the others were scored
                self.stats["item_errors"] += 1
                log.warning("reward service refused input %d (%s); its %d completion(s) get no reward",
                            i, o, len(group.rows))
        return _rewards(spread_back(items, outcomes, sum(map(len, groups))), groups)

    def _with_wait(self, call):
        start = time.monotonic()
        attempt = 0
        while True:
            try:
                return call()
            except grpc.RpcError as e:
                if e.code() not in WAIT_CODES:
                    raise
                waited = time.monotonic() - start
                if waited >= self.max_wait_s:
                    raise RewardUnavailable(
                        f"reward service at {self.target} did not answer for {waited:.0f} s "
                        f"(last error {e.code().name}: {e.details()}); max_wait_s={self.max_wait_s:g}. "
                        "Stopping rather than training without rewards.") from e
                attempt += 1
                self.stats["waits"] += 1
                delay = min(self.max_backoff_s, self.initial_backoff_s * 2 ** (attempt - 1),
                            max(0.0, self.max_wait_s - waited))
                log.warning("reward service at %s: %s (%s); retrying in %.1f s (waited %.0f of %g s)",
                            self.target, e.code().name, e.details(), delay, waited, self.max_wait_s)
                time.sleep(delay)

    def close(self) -> None:
        self.client.close()
