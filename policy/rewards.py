"""Reward backends for the GRPO trainer: the reward service, an in-process GRM, a function.

A backend gets one training step's rollouts at once, as groups: ``prompts[i]`` and the
completions ``groups[i]`` sampled for it. It returns one reward per completion, in the
same shape, with ``None`` for a completion that could not be scored (no valid judgment,
an input the service refused). The trainer leaves ``None`` out of its group's baseline
and gives it advantage 0; a backend never turns a failure into a number.

By default the GRM judges a prompt's whole group as one input (N = G responses, one
generation per sample compares them all, as DeepSeek-GRM is built to; completions of
equal prompts are judged together even when they come in two groups);
``per_response=True`` judges each completion alone (N = 1).

Example::

    backend = ServiceReward("127.0.0.1:50051", k=4, temperature=0.5, max_wait_s=600)
    rewards = backend.score_groups(["Name a prime."], [["7", "9", "8", "11"]])   # [[r, r, r, r]]

``ServiceReward`` scores through ``services.client.RewardClient.score_rows`` (the helper
every adapter shares; a group past the server's ``max_responses`` is judged in parts
aligned on shared anchors, see ``grm.grouping``). Its only retry layer is the client's
``RetryPolicy``: UNAVAILABLE (loading, restarting, unreachable) and RESOURCE_EXHAUSTED
(busy) are retried with exponential backoff for up to ``max_wait_s``; then
``RewardUnavailable`` is raised, so the run stops with a clear error instead of training
on made-up rewards.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

import grpc

from grm.grouping import Row, RowScore, group_rows, spread_back
from grm.types import AggregationOptions, Conversation, SamplingOptions
from services.client import ClientTLS, RetryPolicy, RewardClient

log = logging.getLogger(__name__)

Rewards = list[list[float | None]]

# Codes that mean "the service cannot answer now", as opposed to "this request is wrong".
WAIT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


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


def _rows(prompts: Sequence[Conversation], groups: Sequence[Sequence[str]]) -> list[Row]:
    """The completions as flat rows, row-major; ``grm.grouping`` folds them back by prompt."""
    return [Row(p, c) for p, g in zip(prompts, groups) for c in g]


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
        rows = _rows(prompts, groups)
        items = group_rows(rows, per_response=self.per_response)
        results = self.grm.score_batch([g.item for g in items], self.sampling, self.aggregation)
        return _rewards(spread_back(items, results, len(rows)), groups)


class ServiceReward:
    """The reward service over gRPC: one ``score_rows`` call per step (one ScoreBatch, split
    by the client past the server's limits), waiting out outages for up to ``max_wait_s``.

    ``options`` go to every call: k, temperature, top_p, max_new_tokens, seed, aggregation,
    k_meta, cache_policy (see ``services.client.RewardClient.score``). ``retry`` replaces
    the default policy (backoff 1 s doubling to 30 s on ``WAIT_CODES``, for ``max_wait_s``).
    """

    def __init__(self, target: str, *, per_response: bool = False, max_wait_s: float = 600.0,
                 timeout_s: float = 300.0, initial_backoff_s: float = 1.0, max_backoff_s: float = 30.0,
                 retry: RetryPolicy | None = None, tls: ClientTLS | None = None, token: str | None = None,
                 **options):
        if max_wait_s < 0 or timeout_s <= 0:
            raise ValueError(f"ServiceReward needs max_wait_s >= 0 and timeout_s > 0, got {max_wait_s}, {timeout_s}")
        self.retry = retry or RetryPolicy(max_attempts=None, initial_backoff_s=initial_backoff_s,
                                          max_backoff_s=max_backoff_s, max_wait_s=max_wait_s, codes=WAIT_CODES)
        self.target, self.per_response, self.options = target, per_response, options
        self.client = RewardClient(target, timeout_s=timeout_s, retry=self.retry, tls=tls, token=token)
        self.name = f"service:{target}"
        # Counters for the trainer's log: calls, and completions whose input the service refused.
        self.stats = {"calls": 0, "refused": 0, "waits": 0}

    def score_groups(self, prompts: Sequence[Conversation], groups: Sequence[Sequence[str]]) -> Rewards:
        _check_shapes(prompts, groups)
        try:
            scores = self.client.score_rows(_rows(prompts, groups), per_response=self.per_response, **self.options)
        except grpc.RpcError as e:
            self.stats["waits"] = self.client.waits
            if e.code() not in self.retry.codes:
                raise
            raise RewardUnavailable(
                f"reward service at {self.target} did not answer ({e.code().name}: {e.details()}) within "
                f"its retry policy (max_wait_s={self.retry.max_wait_s:g}). Stopping rather than training "
                "without rewards.") from e
        self.stats["calls"] += 1
        self.stats["waits"] = self.client.waits
        refused = [s.error for s in scores if s.error]  # their input was refused; the others were scored
        if refused:
            self.stats["refused"] += len(refused)
            log.warning("reward service refused the input of %d completion(s), which get no reward; first: %s",
                        len(refused), refused[0])
        return _rewards(scores, groups)

    def close(self) -> None:
        self.client.close()
