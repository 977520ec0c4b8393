"""End to end: GRPO steps on a tiny policy whose rewards come from the real reward service
(the bundled GRM, gRPC over loopback, a real Redis as its cache)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grm.default_model import default_model_path
from grm.judge import GenerativeRewardModel
from grm.testing import build_tiny_model
from policy.rewards import ServiceReward
from grm.tasks import generate_tasks
from policy.trainer import GRPOConfig, GRPOTrainer
from redis_fixtures import redis_server  # noqa: F401 (fixture)
from services.cache import RedisCache
from services.scheduler import SchedulerConfig
from services.server import BackgroundServer, ServerConfig

pytestmark = pytest.mark.slow


def test_two_grpo_steps_against_the_service_with_redis(tmp_path, redis_server):  # noqa: F811
    judge = GenerativeRewardModel.load(str(default_model_path()))
    config = ServerConfig(scheduler=SchedulerConfig(max_wait_ms=5), metrics_port=0)
    prompts = [t.query for t in generate_tasks(4, seed=0, split="validation")]
    path = build_tiny_model(tmp_path / "policy", arch="llama", seed=1)
    model, tok = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    before = copy.deepcopy(model.state_dict())
    cfg = GRPOConfig(steps=2, prompts_per_step=2, group_size=3, lr=1e-2, beta=0.04, max_new_tokens=12,
                     output_dir=str(tmp_path / "run"))

    with BackgroundServer(judge, "127.0.0.1:0", config,
                          cache_factory=lambda: RedisCache(redis_server.url, timeout_s=1.0)) as server:
        reward = ServiceReward(server.address, k=2, temperature=0.5, max_new_tokens=256, max_wait_s=30)
        history = GRPOTrainer(model, tok, reward, prompts, cfg).train()
        passes = server.metrics.value("grm_batch_size_count")
        inputs = server.metrics.value("grm_batch_size_sum")
        single_passes = server.metrics.value("grm_batch_size_bucket", le="1.0")
        reward.close()

    assert [h["completions"] for h in history] == [6, 6]
    assert all(h["reward"] is not None and 1 <= h["reward"] <= 10 for h in history), history
    assert reward.stats["calls"] == 2  # one ScoreBatch per step
    assert inputs == 4 and passes < inputs and single_passes < passes  # each step's groups shared a pass
    keys = redis_server.client().keys("*")
    assert len([k for k in keys if not k.endswith(b":judgments")]) == 4  # every scored group was cached
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, f"no parameter moved; rewards per step: {[h['reward'] for h in history]}"
