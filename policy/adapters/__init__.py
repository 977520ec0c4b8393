"""Reward adapters for RL frameworks, all scoring through the GRM service over gRPC.

- ``trl_reward(target, asynchronous=False, **options)``: a picklable reward function for
  ``trl.GRPOTrainer(reward_funcs=[...])`` (``policy/adapters/trl_reward.py``).
- ``verl_compute_score`` / ``verl_compute_score_batch``: verl's custom reward function
  interface, single and batch forms (``policy/adapters/verl_reward.py``).
- OpenRLHF's remote reward model is an HTTP endpoint served by ``grm serve --http-port``
  (``services/http_reward.py``).

The TRL and verl adapters also take a Ray Serve handle of the service, or "serve:APP",
for trainers inside the Ray cluster that runs it (services/ray_serve.py): the calls then
go through Serve's handle, with the same requests, results and retries
(services/serve_client.py).

All of them turn the framework's flat rows into rewards with one helper,
``services.client.RewardClient.score_rows`` (and its async twin): completions sharing a
prompt are judged together, a group past the server's ``max_responses`` in parts aligned
on shared anchor completions (``grm.grouping``), and UNAVAILABLE is retried by the
client's ``RetryPolicy`` only.

Unscorable responses come back as ``None`` (TRL), an explicit error or an explicit
stand-in (verl), or ``null`` (OpenRLHF): never as a silent 0.
"""

from policy.adapters.trl_reward import AsyncTRLReward, TRLReward, trl_reward
from policy.adapters.verl_reward import UnscoredError, verl_compute_score, verl_compute_score_batch

__all__ = ["AsyncTRLReward", "TRLReward", "UnscoredError", "trl_reward", "verl_compute_score",
           "verl_compute_score_batch"]
