"""``ServiceReward`` has one retry layer, the client's ``RetryPolicy``: it waits out a service
that is still loading, and stops with ``RewardUnavailable`` once ``max_wait_s`` is spent.

Both against real servers: the bundled GRM loaded late by a ``BackgroundServer``, and a
free port where nothing listens.
"""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from adapter_helpers import BAD, GOOD, GRM_CONFIG, QUERY, SCORED

from grm.default_model import PACKAGED
from grm.judge import GenerativeRewardModel
from policy.rewards import RewardUnavailable, ServiceReward
from services.client import RetryPolicy
from services.server import BackgroundServer
from services.testing.redis_servers import free_port


def test_waits_out_a_loading_service_longer_than_the_clients_default_retries():
    """The load takes 3 s; the client's default policy (5 attempts from 0.1 s) gives up after
    about 1.5 s, ServiceReward's policy (``max_wait_s``) keeps waiting and scores."""
    def slow_load():
        time.sleep(3.0)
        return GenerativeRewardModel.load(str(PACKAGED))

    bg = BackgroundServer(slow_load, "127.0.0.1:0", replace(GRM_CONFIG, http_port=None)).start(wait_ready=False)
    reward = ServiceReward(bg.address, max_wait_s=60, timeout_s=120, **SCORED)
    try:
        assert reward.retry.max_wait_s == 60 and reward.client.retry is reward.retry  # the one retry layer
        rewards = reward.score_groups([QUERY], [[GOOD, BAD]])
        assert all(isinstance(r, float) and 1 <= r <= 10 for r in rewards[0]), rewards
        assert reward.stats["calls"] == 1 and reward.stats["refused"] == 0
    finally:
        reward.close()
        bg.stop()


def test_an_absent_service_stops_the_run_after_max_wait_s():
    reward = ServiceReward(f"127.0.0.1:{free_port()}", max_wait_s=2.0, timeout_s=0.5, **SCORED)
    start = time.monotonic()
    try:
        with pytest.raises(RewardUnavailable, match="UNAVAILABLE.*max_wait_s=2"):
            reward.score_groups([QUERY], [[GOOD]])
    finally:
        reward.close()
    assert 0.8 <= time.monotonic() - start < 2.5 + 1.0  # waited (1 s backoff at least), never past 2.5 s + slack


def test_settings_are_checked_and_a_retry_policy_can_be_given():
    with pytest.raises(ValueError, match="max_wait_s >= 0 and timeout_s > 0, got -1"):
        ServiceReward("127.0.0.1:1", max_wait_s=-1)
    policy = RetryPolicy(max_attempts=2)
    reward = ServiceReward("127.0.0.1:1", retry=policy)
    assert reward.client.retry is policy
    reward.close()
