"""verl custom reward functions backed by the GRM service.

verl loads a custom reward function by file path and name, and passes the config's
``reward_kwargs`` to every call. Point it at this module::

    reward:
      custom_reward_function:
        path: <site-packages>/policy/adapters/verl_reward.py
        name: verl_compute_score            # naive reward manager, one call per response
        # name: verl_compute_score_batch    # batch reward manager: one RPC per batch
        reward_kwargs: {target: "127.0.0.1:50051", k: 4, on_unscored: raise}

or call them yourself::

    verl_compute_score("gsm8k", "The answer is 4.", "4", {"question": "2+2?"}, target="127.0.0.1:50051")
    # -> {"score": 8.5, "scored": True, "spread": 0.5, "num_valid": 4, "vote_sum": 34.0, "group_size": 1}

Where things come from:
- The prompt: verl does not pass it to a reward function, so it is read from the row's
  ``extra_info``: ``extra_info["prompt"]`` (text or chat messages), else
  ``extra_info["question"]`` (what verl's example data preprocessing stores).
- ``ground_truth``, when it is a non-empty string, is shown to the judge as the
  reference answer (``use_reference=False`` turns that off).
- The service: ``target="host:port"``, else the ``GRM_TARGET`` environment variable. Inside
  a Ray cluster that runs the service as a Serve application, ``target="serve:APP"`` (or
  the handle itself, when calling these functions directly) scores through Serve's handle.
- The other keyword arguments go to the service call (k, temperature, max_new_tokens,
  seed, cache_policy, aggregation, ...); ``timeout_s`` is the per-call deadline.

Unscorable responses: verl needs a number for every response, and this service never
invents one. ``on_unscored="raise"`` (the default) raises ``UnscoredError`` naming the
response and the reason; ``on_unscored=<float>`` is an explicit, visible choice of a
stand-in score, and the returned dict then says ``scored: False``. Every dict has the same
keys, which verl logs as ``reward_extra_info``; ``spread`` and ``vote_sum`` are NaN for
an unscored response.

The batch form judges the responses that share a prompt together (one input with N
responses; past the server's ``max_responses`` in parts aligned on shared anchors), as
the TRL adapter does, through ``services.client.RewardClient.score_rows``; the single
form judges one response alone.
"""

from __future__ import annotations

import math
import os
import threading
from typing import Any, Sequence

from grm.grouping import Row, RowScore
from services.client import RewardClient
from services.serve_client import reward_client

# Keyword arguments verl itself may add (reward loop with a reward router); not ours.
VERL_KWARGS = ("reward_router_address", "reward_model_tokenizer")
_clients: dict[tuple, RewardClient] = {}
_clients_lock = threading.Lock()


class UnscoredError(RuntimeError):
    """The service could not score a response and ``on_unscored`` is "raise"."""


def check_on_unscored(on_unscored: str | float) -> float | None:
    """None for "raise", else the stand-in score as a float."""
    if on_unscored == "raise":
        return None
    if isinstance(on_unscored, bool) or not isinstance(on_unscored, (int, float)) or not math.isfinite(on_unscored):
        raise ValueError(f'on_unscored must be "raise" or a finite number, got {on_unscored!r}')
    return float(on_unscored)


def prompt_of(extra_info: dict | None, index: int = 0):
    """The prompt of a row: extra_info["prompt"], else extra_info["question"]."""
    for key in ("prompt", "question"):
        if extra_info and extra_info.get(key):
            return extra_info[key]
    raise KeyError(f'extra_info[{index}] must hold the prompt as "prompt" or "question" (verl does not pass the '
                   f"prompt to reward functions), got keys {sorted(extra_info or {})}")


def resolve_target(target):
    """``target``, else $GRM_TARGET: "host:port[,...]", "serve:APP", or a Serve handle."""
    target = target if target is not None else os.environ.get("GRM_TARGET")
    if not target:
        raise ValueError('target is not set: pass target="host:port" (or "serve:APP") in reward_kwargs '
                         "or set GRM_TARGET")
    return target


def client_for(target, timeout_s: float) -> RewardClient:
    """One client per process, target and deadline: verl calls the single form per response,
    from several threads, and a channel must not cross a fork (hence the pid in the key)."""
    key = (os.getpid(), target, timeout_s)
    with _clients_lock:
        if key not in _clients:
            _clients[key] = reward_client(target, timeout_s=timeout_s)
        return _clients[key]


def score_dict(s: RowScore, stand_in: float | None, where: str) -> dict[str, Any]:
    if not s.scored and stand_in is None:
        why = s.error or "no valid judgment (every sampled judgment failed to parse)"
        raise UnscoredError(f"{where}: the GRM could not score this response: {why}. Pass on_unscored=<float> "
                            "to use a stand-in score instead")
    nan = float("nan")
    return {"score": s.reward if s.scored else stand_in, "scored": s.scored,
            "spread": nan if s.spread is None else s.spread, "num_valid": s.num_valid,
            "vote_sum": float(s.vote_sum) if s.scored else nan, "group_size": s.group_size}


def verl_compute_score_batch(data_sources: Sequence[str], solution_strs: Sequence[str],
                             ground_truths: Sequence, extra_infos: Sequence[dict | None], *,
                             target=None, on_unscored: str | float = "raise",
                             use_reference: bool = True, per_response: bool = False, timeout_s: float = 120.0,
                             **options) -> list[dict[str, Any]]:
    """verl's batch reward function: one dict per response, from ONE ScoreBatch call.

        verl_compute_score_batch(["gsm8k"] * 2, ["4", "5"], ["4", "4"], [{"question": "2+2?"}] * 2,
                                 target="127.0.0.1:50051", k=4)
    """
    stand_in = check_on_unscored(on_unscored)
    for key in VERL_KWARGS:
        options.pop(key, None)
    lengths = {len(data_sources), len(solution_strs), len(ground_truths), len(extra_infos)}
    if len(lengths) != 1:
        raise ValueError("data_sources, solution_strs, ground_truths and extra_infos must have one length, got "
                         f"{len(data_sources)}, {len(solution_strs)}, {len(ground_truths)}, {len(extra_infos)}")
    rows = [Row(prompt_of(info, i), text, gt if use_reference and isinstance(gt, str) and gt else None)
            for i, (text, gt, info) in enumerate(zip(solution_strs, ground_truths, extra_infos))]
    scores = client_for(resolve_target(target), timeout_s).score_rows(rows, per_response=per_response, **options)
    return [score_dict(s, stand_in, f"response {i} (data_source {data_sources[i]!r})")
            for i, s in enumerate(scores)]


def verl_compute_score(data_source: str, solution_str: str, ground_truth=None, extra_info: dict | None = None,
                       **kwargs) -> dict[str, Any]:
    """verl's per-response reward function; keyword arguments as for the batch form.

        verl_compute_score("gsm8k", "4", "4", {"question": "2+2?"}, target="127.0.0.1:50051")["score"]
    """
    return verl_compute_score_batch([data_source], [solution_str], [ground_truth], [extra_info], **kwargs)[0]
