"""TRL reward functions backed by the GRM service, for ``trl.GRPOTrainer(reward_funcs=...)``.

    from trl import GRPOConfig, GRPOTrainer
    from policy.adapters import trl_reward

    reward = trl_reward("127.0.0.1:50051", k=4, timeout_s=120)      # or asynchronous=True
    trainer = GRPOTrainer(model=policy, reward_funcs=[reward], args=GRPOConfig(...),
                          train_dataset=dataset)

TRL calls ``reward(prompts=[...], completions=[...], completion_ids=[...], **columns,
trainer_state=..., log_metric=...)`` with the G completions of each prompt side by side.
The prompts and completions are strings (standard format) or chat messages
(conversational format: a prompt is a message list, a completion a list holding the
assistant message). By default the completions that share a prompt are judged together,
as one GRM input with G responses, and the whole call is ONE ``ScoreBatch`` RPC;
``per_response=True`` judges each completion alone. A group larger than the server's
``max_responses`` is judged in parts that share anchor completions and are aligned on
them (``services.client.RewardClient.score_rows``, ``grm.grouping``).

The reward is the GRM's mean score, 1..10. A completion the service could not score
(every judgment invalid, or its input rejected, e.g. too long) gets ``None``, which TRL
turns into NaN and leaves out of the group baseline; it is never turned into 0. Every
call has a deadline (``timeout_s``) and UNAVAILABLE is retried with backoff; any other
RPC failure is raised, so a broken service stops training instead of feeding it zeros.

The callables pickle (the gRPC channel is opened lazily and dropped when pickled), so
they survive ``multiprocessing`` and accelerate's process spawning.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
from typing import Sequence

from grm.grouping import Row, RowScore
from services.client import ClientTLS, RetryPolicy, batch_request
from services.serve_client import async_reward_client, reward_client

log = logging.getLogger(__name__)


def completion_text(completion: str | Sequence[dict]) -> str:
    """The response text: the string itself, or the content of a conversational completion's
    last message (TRL passes ``[{"role": "assistant", "content": ...}]``)."""
    if isinstance(completion, str):
        return completion
    if not completion:
        raise ValueError("completions: a conversational completion must hold at least one message, got []")
    content = completion[-1].get("content")
    if not isinstance(content, str):
        raise ValueError(f"completions: the last message's content must be a string, got {type(content).__name__}")
    return content


def trl_rows(prompts: Sequence, completions: Sequence) -> list[Row]:
    if len(prompts) != len(completions):
        raise ValueError(f"prompts and completions must have the same length, got {len(prompts)} "
                         f"and {len(completions)}")
    return [Row(p, completion_text(c)) for p, c in zip(prompts, completions)]


def report(name: str, scores: list[RowScore], log_metric=None) -> list[float | None]:
    """The rewards; warns about unscored completions and logs two TRL metrics when it can."""
    failed = [s.error for s in scores if s.error]
    if failed:
        log.warning("%s: %d of %d completions unscored because their input failed; first: %s",
                    name, len(failed), len(scores), failed[0])
    unscored = sum(not s.scored for s in scores)
    if log_metric is not None:
        log_metric(f"{name}/unscored_fraction", unscored / max(1, len(scores)))
        spreads = [s.spread for s in scores if s.spread is not None]
        if spreads:
            log_metric(f"{name}/spread", statistics.fmean(spreads))
    return [s.reward for s in scores]


class _RemoteReward:
    """Settings and a lazily opened client; the client is never pickled."""

    def __init__(self, target, *, per_response: bool = False, name: str = "grm",
                 timeout_s: float = 120.0, retry: RetryPolicy = RetryPolicy(), tls: ClientTLS | None = None,
                 token: str | None = None, **options):
        batch_request((), **options)  # unknown or invalid options fail here, not mid-training
        self.target, self.per_response, self.timeout_s, self.retry = target, per_response, timeout_s, retry
        self.connect = {"tls": tls, "token": token}  # TLS files and bearer token ($GRM_TLS_*, $GRM_TOKEN if None)
        self.options = options  # k, temperature, max_new_tokens, seed, cache_policy, aggregation, ...
        self.__name__ = name  # TRL names the reward column and its logs after it
        self._client = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_client": None}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.target!r}, per_response={self.per_response}, {self.options})"


class TRLReward(_RemoteReward):
    """A synchronous TRL reward function; see the module docstring."""

    def __call__(self, prompts: Sequence, completions: Sequence, log_metric=None, **kwargs) -> list[float | None]:
        rows = trl_rows(prompts, completions)
        if self._client is None:
            self._client = reward_client(self.target, timeout_s=self.timeout_s, retry=self.retry, **self.connect)
        return report(self.__name__, self._client.score_rows(rows, per_response=self.per_response, **self.options),
                      log_metric)


class AsyncTRLReward(_RemoteReward):
    """The ``async def`` twin: TRL awaits it on its own event loop, beside other async rewards."""

    async def __call__(self, prompts: Sequence, completions: Sequence, log_metric=None,
                       **kwargs) -> list[float | None]:
        rows = trl_rows(prompts, completions)
        loop = asyncio.get_running_loop()
        if self._client is None or self._client[0] is not loop:  # a grpc.aio channel serves one loop
            self._client = (loop, async_reward_client(self.target, timeout_s=self.timeout_s, retry=self.retry,
                                                      **self.connect))
        scores = await self._client[1].score_rows(rows, per_response=self.per_response, **self.options)
        return report(self.__name__, scores, log_metric)


def trl_reward(target, *, asynchronous: bool = False, per_response: bool = False, name: str = "grm",
               timeout_s: float = 120.0, **options) -> TRLReward | AsyncTRLReward:
    """A picklable TRL reward function scoring through the GRM service at ``target``: "host:port"
    (gRPC), or inside a Ray cluster a Serve handle or "serve:APP" (services/serve_client.py).

    ``options`` go to every ScoreBatch call: k, temperature, top_p, max_new_tokens, seed,
    shuffle, adaptive, adaptive_z, shared_principles, aggregation ("voting" | "meta_voting"), k_meta, cache_policy ("use" |
    "refresh" | "bypass"). ``retry=RetryPolicy(...)`` tunes the UNAVAILABLE retries;
    ``tls=ClientTLS(...)`` and ``token`` reach a service that wants them.

        reward = trl_reward("127.0.0.1:50051", k=4, temperature=0.5)
        reward(prompts=["2+2?", "2+2?"], completions=["4", "5"])    # -> e.g. [8.5, 2.0]
    """
    cls = AsyncTRLReward if asynchronous else TRLReward
    return cls(target, per_response=per_response, name=name, timeout_s=timeout_s, **options)
