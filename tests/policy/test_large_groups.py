"""Groups larger than the server's ``max_responses``, judged by the bundled GRM for real.

The bundled GRM writes valid judgments for up to three responses, so this server allows
three; a GRPO group of seven completions is then judged in three parts that all open with
the group's first completion (the anchor, ``grm.grouping.split_groups``), and every
completion gets a reward. The expected rewards are recomputed from the same parts scored
one by one over gRPC, aligned on the anchor by hand.
"""

from __future__ import annotations

import statistics
from dataclasses import replace

import pytest
from adapter_helpers import GRM_CONFIG, QUERY, SCORED, batch_calls

from grm.default_model import PACKAGED
from grm.judge import GenerativeRewardModel
from policy.adapters import trl_reward, verl_compute_score_batch
from policy.rewards import ServiceReward
from services.cache import MemoryCache
from services.client import RetryPolicy, RewardClient
from services.server import BackgroundServer

COMPLETIONS = ["IS IT BLUE?", "it is blue", "WHY IS THE SKY BLUE?", "the sky.", "ARE YOU HERE?", "I am here",
               "WHAT TIME IS IT?"]
PARTS = [(0, 1, 2), (0, 3, 4), (0, 5, 6)]  # the anchor (completion 0) opens every part


@pytest.fixture(scope="module")
def small_server():
    config = replace(GRM_CONFIG, limits=replace(GRM_CONFIG.limits, max_responses=3), http_port=None)
    bg = BackgroundServer(GenerativeRewardModel.load(str(PACKAGED)), "127.0.0.1:0", config,
                          cache_factory=MemoryCache).start()
    yield bg
    bg.stop()


@pytest.fixture(scope="module")
def expected(small_server) -> list[float]:
    """The parts scored one by one, then aligned: the anchor gets its mean over the parts,
    and each part's other rewards move by (that mean - the anchor's reward in the part)."""
    with RewardClient(small_server.address, timeout_s=120, retry=RetryPolicy(max_attempts=1)) as client:
        judged = [client.score(QUERY, [COMPLETIONS[i] for i in part], **SCORED).result.rewards for part in PARTS]
    assert all(r is not None for rewards in judged for r in rewards), judged  # the GRM scored every part
    anchor = statistics.fmean(rewards[0] for rewards in judged)
    out = [anchor] + [None] * 6
    for part, rewards in zip(PARTS, judged):
        for i, r in zip(part[1:], rewards[1:]):
            out[i] = min(10.0, max(1.0, r + anchor - rewards[0]))
    return out


def test_trl_gets_a_reward_for_every_completion_of_a_group_past_max_responses(small_server, expected):
    calls = batch_calls(small_server)
    rewards = trl_reward(small_server.address, **SCORED)(prompts=[QUERY] * 7, completions=COMPLETIONS)
    assert batch_calls(small_server) - calls == 1  # the three parts went in one ScoreBatch
    assert None not in rewards and rewards == pytest.approx(expected, abs=1e-9)


def test_verl_and_service_reward_get_the_same_aligned_rewards(small_server, expected):
    outs = verl_compute_score_batch(["tasks"] * 7, COMPLETIONS, [None] * 7, [{"question": QUERY}] * 7,
                                    target=small_server.address, **SCORED)
    assert [o["score"] for o in outs] == pytest.approx(expected, abs=1e-9) and all(o["scored"] for o in outs)
    reward = ServiceReward(small_server.address, max_wait_s=0, **SCORED)
    try:
        assert reward.score_groups([QUERY], [COMPLETIONS]) == [pytest.approx(expected, abs=1e-9)]
    finally:
        reward.close()
